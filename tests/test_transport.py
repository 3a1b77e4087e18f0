"""The standard-library transport of `mnist predict` against a tiny scripted HTTP/1.1 server."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from client import api
from client.errors import ClientError
from client.transport import Transport
from tests.live_fixtures import free_port

RAW = {"Content-Type": "application/octet-stream"}


class Scripted:
    """A keep-alive HTTP server that answers each POST with the next step of `steps`, then 200s.

    A step is a status (the service's JSON error body), ("drop",) to close the connection without
    an answer, ("sleep", seconds) to answer late, ("early", status) to answer with the error body
    before reading the request's body and close, or (status, headers, body) for a raw answer.
    A 200 echoes the request body, its path and its headers.
    """

    def __init__(self, steps: list) -> None:
        self.steps = list(steps)
        self.requests = 0
        self.connections = 0
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive

            def log_message(self, *args: object) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                scripted.connections += 1

            def do_POST(self) -> None:
                scripted.requests += 1
                step = scripted.steps.pop(0) if scripted.steps else 200
                if isinstance(step, tuple) and step[0] == "early":  # as gunicorn refuses a Content-Length
                    self.close_connection = True
                    error = {"code": step[1], "status": "Payload Too Large", "message": "too big"}
                    self._send(step[1], {"Connection": "close"}, json.dumps(error).encode())
                    return
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if step == ("drop",):
                    self.close_connection = True
                    return
                if isinstance(step, tuple) and step[0] == "sleep":
                    time.sleep(step[1])
                    step = 200
                if step == 200:
                    echo = {"path": self.path, "headers": dict(self.headers), "body": body.decode("latin1")}
                    self._send(200, {"Content-Type": "application/json"}, json.dumps(echo).encode())
                elif isinstance(step, int):
                    error = {"code": step, "status": "Service Unavailable", "message": "warming up"}
                    self._send(step, {"Content-Type": "application/json"}, json.dumps(error).encode())
                else:
                    self._send(*step)

            def _send(self, status: int, headers: dict[str, str], data: bytes) -> None:
                self.send_response(status)
                for name, value in {**headers, "Content-Length": str(len(data))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted(request: pytest.FixtureRequest) -> Iterator[Scripted]:
    server = Scripted(getattr(request, "param", []))
    yield server
    server.close()


def test_posts_share_one_keep_alive_connection_and_send_the_token(scripted: Scripted) -> None:
    with Transport(scripted.url + "/mnist/", "secret") as t:
        for i in range(3):
            body, headers = t.post("/v1/models/m:predict", bytes([i]) * 784, RAW)
            echo = json.loads(body)
            assert echo["body"] == chr(i) * 784 and headers["Content-Type"] == "application/json"
    assert echo["path"] == "/mnist/v1/models/m:predict"  # a service under a path prefix
    assert echo["headers"]["Authorization"] == "Bearer secret"
    assert echo["headers"]["User-Agent"] == "mnist-client/1"
    assert echo["headers"]["Content-Type"] == "application/octet-stream"
    assert scripted.requests == 3 and scripted.connections == 1


@pytest.mark.parametrize("scripted", [[503, 502]], indirect=True)
def test_5xx_answers_are_retried_with_backoff(scripted: Scripted) -> None:
    started = time.monotonic()
    with Transport(scripted.url, retries=3, backoff=0.1) as t:
        body, _ = t.post("/v1/models/m:predict", b"x", RAW)
    assert json.loads(body)["body"] == "x" and scripted.requests == 3
    assert time.monotonic() - started >= 0.2  # waits of 0, then 2 × 0.1 s


@pytest.mark.parametrize(
    "scripted", [[(503, {"Retry-After": "1", "Content-Type": "text/plain"}, b"busy")]], indirect=True
)
def test_retry_after_is_respected(scripted: Scripted) -> None:
    started = time.monotonic()
    with Transport(scripted.url, retries=1, backoff=0) as t:
        t.post("/v1/models/m:predict", b"x", RAW)
    assert time.monotonic() - started >= 1 and scripted.requests == 2


@pytest.mark.parametrize("scripted", [[503, 503, 503]], indirect=True)
def test_too_many_failures_end_with_the_last_answer(scripted: Scripted) -> None:
    with Transport(scripted.url, retries=2, backoff=0) as t, pytest.raises(ClientError) as err:
        t.post("/v1/models/m:predict", b"x", RAW)
    assert (err.value.code, err.value.status, err.value.message) == (503, "Service Unavailable", "warming up")
    assert scripted.requests == 3


@pytest.mark.parametrize(
    "scripted",
    [
        [
            (
                400,
                {"Content-Type": "application/json"},
                b'{"code": 400, "status": "Bad Request", "message": "bad body", "errors": {"top_k": ["no"]}}',
            ),
            (502, {"Content-Type": "text/html"}, b"<html>Bad Gateway</html>\n<p>nginx</p>"),
        ]
    ],
    indirect=True,
)
def test_4xx_is_not_retried_and_errors_read_like_the_library(scripted: Scripted) -> None:
    with Transport(scripted.url, retries=3, backoff=0) as t:
        with pytest.raises(ClientError) as err:
            t.post("/v1/models/m:predict", b"x", RAW)
        assert scripted.requests == 1
        assert str(err.value) == "400 Bad Request: bad body (top_k: no)"
        assert err.value.errors == {"top_k": ["no"]}
        t.retries = 0
        with pytest.raises(ClientError) as err:
            t.post("/v1/models/m:predict", b"x", RAW)
    assert str(err.value) == "502 Bad Gateway: <html>Bad Gateway</html>"  # a proxy's page: its first line
    assert api.ClientError is ClientError  # the library raises the same class


@pytest.mark.parametrize("scripted", [[("drop",)]], indirect=True)
def test_a_dropped_connection_is_retried_on_a_new_one(scripted: Scripted) -> None:
    with Transport(scripted.url, retries=1, backoff=0) as t:
        body, _ = t.post("/v1/models/m:predict", b"x", RAW)
    assert json.loads(body)["body"] == "x"
    assert scripted.requests == 2 and scripted.connections == 2


@pytest.mark.parametrize("scripted", [[("early", 413)]], indirect=True)
def test_an_answer_sent_before_the_body_was_read_is_read(scripted: Scripted) -> None:
    """A body larger than the socket buffers: sending it breaks off, and the 413 is still read."""
    with Transport(scripted.url, retries=2, backoff=0) as t, pytest.raises(ClientError) as err:
        t.post("/v1/models/m:predict", bytes(32 << 20), RAW)
    assert str(err.value) == "413 Payload Too Large: too big"
    assert scripted.requests == 1  # not retried as a dropped connection


@pytest.mark.parametrize("scripted", [[("sleep", 1.0)]], indirect=True)
def test_no_answer_within_the_timeout_is_a_timeout_error(scripted: Scripted) -> None:
    with Transport(scripted.url, timeout=0.2, retries=0) as t, pytest.raises(ClientError) as err:
        t.post("/v1/models/m:predict", b"x", RAW)
    assert err.value.status == "Timeout" and err.value.code is None and "0.2 s" in str(err.value)


def test_an_unreachable_service_is_one_clear_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with Transport(url, retries=1, backoff=0) as t, pytest.raises(ClientError) as err:
        t.post("/v1/models/m:predict", b"x", RAW)
    assert err.value.code is None
    assert str(err.value) == f"cannot reach {url} (connection refused); is the service running?"


def test_a_url_without_scheme_or_host_is_refused() -> None:
    for bad in ("127.0.0.1:8000", "ftp://host", "http://"):
        with pytest.raises(ValueError, match="not a service URL"):
            Transport(bad)
