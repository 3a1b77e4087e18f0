"""The gunicorn worker that answers whole small predictions on its event loop (services/inline_worker.py).

Which requests it serves inline is decided on bytes peeked from the socket: the table below pins
that decision down. Through a real gunicorn of one worker process, with the inline worker (the
default) and with plain gthread (MNIST_WEB_WORKER=gthread) alike: predictions, errors and other
routes on one kept-alive connection all answer as before, pipelined requests are all answered in
order, and a client that withholds part of a prediction's body holds a pool thread, never the
event loop: other clients keep being answered.
"""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Iterator

import numpy as np
import orjson
import pytest
import redis

from services.inline_worker import INLINE_BODY_BYTES, complete_inline_request
from shared import mlp, serialization
from shared.keys import Keys
from shared.registry import Registry
from tests.live_fixtures import Server, new_env, start_server
from tests.redis_fixtures import delete_prefix

PARAMS = mlp.init_params((mlp.INPUT_SIZE, 16, mlp.CLASSES), np.random.default_rng(5))
IMAGE = np.random.default_rng(6).integers(0, 256, (1, mlp.INPUT_SIZE), dtype=np.uint8)
V2_BODY = orjson.dumps(
    {"inputs": [{"name": "input", "datatype": "UINT8", "shape": [1, mlp.INPUT_SIZE], "data": IMAGE}]},
    option=orjson.OPT_SERIALIZE_NUMPY,
)
#: Seconds within which a prediction must answer while another client stalls (a bound, not a figure).
BOUND = 5.0


def head(line: bytes, body: bytes = b"xy", length: int | None = None, extra: bytes = b"") -> bytes:
    size = len(body) if length is None else length
    return line + b"Host: x\r\n" + extra + b"Content-Length: %d\r\n\r\n" % size + body


@pytest.mark.parametrize(
    ("raw", "inline"),
    [
        (head(b"POST /v2/models/m/infer HTTP/1.1\r\n"), True),
        (head(b"POST /v1/models/m:predict HTTP/1.1\r\n"), True),
        (head(b"POST /v1/models/m:predict?top_k=3 HTTP/1.0\r\n"), True),
        (head(b"POST /v2/models/m/versions/2/infer HTTP/1.1\r\n"), False),  # pinned: may load from Redis
        (head(b"POST /v1/models/m/labels/prod:predict HTTP/1.1\r\n"), False),  # an alias: the same
        (head(b"GET /v2/models/m/infer HTTP/1.1\r\n"), False),
        (head(b"POST /v1/jobs HTTP/1.1\r\n"), False),
        (head(b"GET /v1/jobs/j/events HTTP/1.1\r\n"), False),
        (head(b"POST /v2/models/m/infer HTTP/1.1\r\n", length=3), False),  # body not all received
        (head(b"POST /v2/models/m/infer HTTP/1.1\r\n")[:30], False),  # head not all received
        (head(b"POST /v2/models/m/infer HTTP/1.1\r\n", b"x" * (INLINE_BODY_BYTES + 1)), False),
        (head(b"POST /v2/models/m/infer HTTP/1.1\r\n", extra=b"Transfer-Encoding: chunked\r\n"), False),
        (head(b"POST /v2/models/m/infer HTTP/1.1\r\n", extra=b"Content-Length: 2\r\n"), False),  # twice
        (b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\n\r\n", False),  # no length
    ],
)
def test_what_is_served_inline(raw: bytes, inline: bool) -> None:
    assert complete_inline_request(raw) is inline


@pytest.fixture(scope="module", params=["inline", "gthread"])
def one_process(
    request: pytest.FixtureRequest, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """A gunicorn of ONE worker process serving model `m` (what one process does is what is tested)."""
    env = new_env(redis_url, MNIST_DEFAULT_MODEL="m")
    client = redis.Redis.from_url(redis_url)
    Registry(client, Keys(env.prefix)).publish("m", serialization.model_to_bytes(PARAMS, {}), {})
    server = start_server(env, tmp_path_factory.mktemp("inline"), workers=1, MNIST_WEB_WORKER=request.param)
    yield server
    server.process.stop()
    delete_prefix(client, env.prefix)
    client.close()


def connect(server: Server) -> http.client.HTTPConnection:
    host, port = server.url.removeprefix("http://").split(":")
    return http.client.HTTPConnection(host, int(port), timeout=30)


def test_one_connection_serves_predictions_errors_and_other_routes_in_turn(one_process: Server) -> None:
    conn = connect(one_process)
    expected = mlp.predict_proba(PARAMS, mlp.scale_pixels(IMAGE))
    json_type = {"Content-Type": "application/json"}
    for _ in range(3):
        conn.request("POST", "/v2/models/m/infer", body=V2_BODY, headers=json_type)
        response = conn.getresponse()
        answer = orjson.loads(response.read())
        assert response.status == 200
        probabilities = next(o for o in answer["outputs"] if o["name"] == "probabilities")["data"]
        np.testing.assert_allclose(probabilities, expected.ravel(), rtol=1e-6)
        raw_type = {"Content-Type": "application/octet-stream"}
        conn.request("POST", "/v1/models/m:predict", body=IMAGE.tobytes(), headers=raw_type)
        response = conn.getresponse()
        assert response.status == 200 and orjson.loads(response.read())["model_version"] == 1
        conn.request("POST", "/v2/models/m/infer", body=b'{"inputs": 1}', headers=json_type)
        response = conn.getresponse()
        error = orjson.loads(response.read())
        assert response.status == 400 and error["code"] == 400 and "exactly one tensor" in error["error"]
        conn.request("GET", "/healthz")  # through the pool, on the same connection
        response = conn.getresponse()
        assert response.status == 200 and orjson.loads(response.read()) == {"status": "ok"}
    conn.close()


def test_pipelined_requests_are_all_answered_in_order(one_process: Server) -> None:
    host, port = one_process.url.removeprefix("http://").split(":")
    predict = head(
        b"POST /v2/models/m/infer HTTP/1.1\r\n", V2_BODY, extra=b"Content-Type: application/json\r\n"
    )
    last = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with socket.create_connection((host, int(port)), timeout=BOUND) as sock:
        sock.sendall(predict * 3 + last)  # one send: the first request's bytes come with the rest
        replies = b""
        deadline = time.monotonic() + BOUND
        while time.monotonic() < deadline and (chunk := sock.recv(65_536)):
            replies += chunk  # until the server closes, after the last
    assert replies.count(b"HTTP/1.1 200 OK\r\n") == 4, replies[:300]
    assert replies.count(b'"model_version":"1"') + replies.count(b'"model_version": "1"') == 3
    assert replies.rstrip().endswith(b'{"status":"ok"}') or replies.rstrip().endswith(b'{"status": "ok"}')


def test_a_client_that_withholds_its_body_holds_a_pool_thread_not_the_loop(one_process: Server) -> None:
    host, port = one_process.url.removeprefix("http://").split(":")
    stalled = socket.create_connection((host, int(port)), timeout=30)
    request = head(
        b"POST /v2/models/m/infer HTTP/1.1\r\n", V2_BODY, extra=b"Content-Type: application/json\r\n"
    )
    half = len(request) - len(V2_BODY) // 2
    stalled.sendall(request[:half])
    time.sleep(0.3)  # the worker has seen the head, and part of the body
    try:
        for _ in range(5):  # other clients, each on a fresh connection: accepted by the same process
            conn = connect(one_process)
            started = time.monotonic()
            conn.request(
                "POST", "/v2/models/m/infer", body=V2_BODY, headers={"Content-Type": "application/json"}
            )
            response = conn.getresponse()
            response.read()
            assert response.status == 200 and time.monotonic() - started < BOUND
            conn.close()
        stalled.sendall(request[half:])  # the rest arrives: the stalled request is answered too
        stalled.settimeout(BOUND)
        reply = stalled.recv(65_536)
        assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    finally:
        stalled.close()
