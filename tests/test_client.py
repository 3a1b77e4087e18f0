"""The Python client against a real gunicorn, Redis and RQ worker; retries against a tiny local server."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from client.api import Client, ClientError, as_pixels, parse_sse
from shared import serialization
from tests.api_helpers import SMALL_JOB, sample_npz
from tests.client_fixtures import Stack, client_stack, predict_locally, sample_digits, trained
from tests.live_fixtures import free_port

PREDICT_TOKEN = "predict-secret"


@pytest.fixture(scope="module")
def stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One gunicorn (with a predict token) and one worker for the module, the quick model as mnist v1."""
    with client_stack(
        redis_url, tmp_path_factory.mktemp("client"), worker=True, MNIST_PREDICT_TOKEN=PREDICT_TOKEN
    ) as s:
        yield s


@pytest.fixture
def client(stack: Stack) -> Iterator[Client]:
    with Client(stack.live.url, stack.live.env.token, predict_token=PREDICT_TOKEN) as c:
        yield c


# --- Models and aliases --------------------------------------------------------------------------


def test_models_model_version_and_weights(stack: Stack, client: Client) -> None:
    listing = client.models()
    assert [m["name"] for m in listing] == ["mnist"]
    assert listing[0]["latest"] == stack.version
    model = client.model("mnist")
    assert [v["version"] for v in model["versions"]] == [stack.version]
    detail = client.version("mnist", stack.version)
    assert detail["architecture"]["sizes"] == [784, 64, 10]
    assert detail["metrics"]["test_accuracy"] > 0.8
    params, meta = serialization.model_from_bytes(client.weights("mnist", stack.version))
    for got, want in zip(params, trained()[0], strict=True):
        np.testing.assert_array_equal(got, want)


def test_set_and_delete_alias(stack: Stack, client: Client) -> None:
    answer = client.set_alias("mnist", "staging", stack.version)
    assert answer == {
        "model": "mnist",
        "alias": "staging",
        "version": stack.version,
        "previous": None,
        "split": None,
    }
    assert client.model("mnist")["aliases"] == {"staging": stack.version}
    client.delete_alias("mnist", "staging")
    assert client.model("mnist")["aliases"] == {}
    with pytest.raises(ClientError) as err:
        client.delete_alias("mnist", "staging")
    assert err.value.code == 404 and "staging" in err.value.message


# --- Predictions ---------------------------------------------------------------------------------


def test_predict_matches_the_model_in_process(stack: Stack, client: Client) -> None:
    x, y = sample_digits()
    images = x[:250]
    result = client.predict(images, batch_size=100)  # three requests: 100, 100, 50
    assert result.model == "mnist" and result.version == stack.version
    assert result.labels.shape == (250,) and result.probabilities.shape == (250, 10)
    assert result.probabilities.dtype == np.float32
    np.testing.assert_array_equal(result.labels, predict_locally(images))
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1, atol=1e-5)
    assert (result.labels == y[:250]).mean() > 0.8
    square = client.predict(images.reshape(-1, 28, 28), version=stack.version, batch_size=1000)
    np.testing.assert_array_equal(square.labels, result.labels)
    labels, probs = result.top_k(3)
    assert labels.shape == (250, 3) and (labels[:, 0] == result.labels).all()
    assert (np.diff(probs, axis=1) <= 0).all()
    np.testing.assert_allclose(result.confidence, probs[:, 0])


def test_predict_by_alias(stack: Stack, client: Client) -> None:
    client.set_alias("mnist", "canary", stack.version)
    try:
        assert client.predict(sample_digits()[0][:3], alias="canary").version == stack.version
    finally:
        client.delete_alias("mnist", "canary")
    with pytest.raises(ClientError) as err:
        client.predict(sample_digits()[0][:3], alias="never-set")
    assert err.value.code == 404 and "never-set" in err.value.message


def test_predict_needs_the_predict_token(stack: Stack) -> None:
    # The write token is never sent to a predict route: without a predict token, none goes (401).
    with Client(stack.live.url, stack.live.env.token) as c, pytest.raises(ClientError) as err:
        c.predict(sample_digits()[0][:2])
    assert err.value.code == 401 and err.value.status == "Unauthorized"
    with Client(stack.live.url) as c, pytest.raises(ClientError) as err:
        c.predict(sample_digits()[0][:2])
    assert err.value.code == 401
    with Client(stack.live.url, predict_token="wrong") as c, pytest.raises(ClientError) as err:
        c.predict(sample_digits()[0][:2])
    assert err.value.code == 403


def test_each_request_carries_the_token_of_its_kind(stack: Stack) -> None:
    # The server has both tokens: reads take either, predictions the predict token, writes the write token.
    images = sample_digits()[0][:2]
    with Client(stack.live.url, stack.live.env.token) as writer:
        assert [m["name"] for m in writer.models()] == ["mnist"]  # a read with the write token
        assert writer.weights("mnist", stack.version)[:2] == b"PK"
    with Client(stack.live.url, predict_token=PREDICT_TOKEN) as reader:
        assert reader.model("mnist")["latest"] == stack.version  # a read with the predict token
        assert len(reader.predict(images).labels) == 2
        with pytest.raises(ClientError) as err:
            reader.set_alias("mnist", "staging", stack.version)  # no write token: none is sent
        assert err.value.code == 401
    with Client(stack.live.url) as anonymous, pytest.raises(ClientError) as err:
        anonymous.models()
    assert err.value.code == 401


def test_predict_refuses_bad_images_before_sending(client: Client) -> None:
    with pytest.raises(ValueError, match="shape"):
        client.predict(np.zeros((2, 27, 28), np.uint8))
    with pytest.raises(ValueError, match="0-255"):
        client.predict(np.full((1, 784), 256, np.int64))
    with pytest.raises(ValueError, match="dtype"):
        client.predict(np.zeros((1, 784), np.float32))
    with pytest.raises(ValueError, match="not both"):
        client.predict(np.zeros((1, 784), np.uint8), version=1, alias="production")
    np.testing.assert_array_equal(
        as_pixels(np.full((1, 28, 28), 7, np.int64)), np.full((1, 784), 7, np.uint8)
    )


def test_predict_unknown_model_or_version_is_a_404(stack: Stack, client: Client) -> None:
    with pytest.raises(ClientError) as err:
        client.predict(sample_digits()[0][:1], model="nosuch")
    assert err.value.code == 404 and "nosuch" in err.value.message
    with pytest.raises(ClientError) as err:
        client.predict(sample_digits()[0][:1], version=stack.version + 50)
    assert err.value.code == 404


# --- Jobs ----------------------------------------------------------------------------------------


def test_submit_and_follow_a_job_to_its_published_version(stack: Stack, client: Client) -> None:
    view = client.submit({**SMALL_JOB, "model": "followed"})
    assert view["status"] == "queued"
    events = list(client.events(view["id"]))
    names = [name for name, _ in events]
    assert names[-1] == "end" and set(names[:-1]) <= {"progress"}
    final = events[-1][1]
    assert final["status"] == "finished", final
    assert final["result"]["model"] == "followed" and final["result"]["version"] >= 1
    assert client.job(view["id"])["status"] == "finished"
    assert view["id"] in [j["id"] for j in client.jobs(status="finished")]
    assert len(client.jobs(limit=1)) == 1
    with pytest.raises(ClientError) as err:
        client.cancel(view["id"])
    assert err.value.code == 409


def test_cancel_a_job(client: Client) -> None:
    view = client.submit({"dataset": "mnist-sample", "hidden": [512], "optimizer": "sgd", "epochs": 200})
    answer = client.cancel(view["id"])
    assert answer["status"] in ("canceled", "queued", "started")
    final = list(client.events(view["id"]))[-1][1]
    assert final["status"] == "canceled"


def test_submit_errors_carry_the_service_message_and_fields(stack: Stack, client: Client) -> None:
    with pytest.raises(ClientError) as err:
        client.submit({"dataset": "mnist-sample", "epochs": 0, "optimiser": "adam"})
    exc = err.value
    assert exc.code == 400 and exc.status == "Bad Request"
    assert exc.errors is not None and "epochs" in exc.errors and "optimiser" in exc.errors
    assert "epochs" in str(exc)
    with Client(stack.live.url) as anonymous, pytest.raises(ClientError) as err:
        anonymous.submit(SMALL_JOB)
    assert err.value.code == 401
    with Client(stack.live.url, "wrong") as wrong, pytest.raises(ClientError) as err:
        wrong.submit(SMALL_JOB)
    assert err.value.code == 403 and "not valid" in err.value.message
    with pytest.raises(ClientError) as err:
        client.job("no-such-job")
    assert err.value.code == 404 and "no-such-job" in err.value.message
    with pytest.raises(ClientError) as err:
        list(client.events("no-such-job"))
    assert err.value.code == 404


# --- Datasets ------------------------------------------------------------------------------------


def test_upload_list_and_delete_a_dataset(client: Client) -> None:
    names = [d["name"] for d in client.datasets()]
    assert "mnist-sample" in names
    entry = client.upload_dataset("digits-up", sample_npz(), format="npz")
    assert entry["name"] == "digits-up" and entry["train_size"] == 300
    assert "digits-up" in [d["name"] for d in client.datasets()]
    with pytest.raises(ClientError) as err:
        client.upload_dataset("digits-up", sample_npz())
    assert err.value.code == 409
    client.delete_dataset("digits-up")
    with pytest.raises(ClientError) as err:
        client.delete_dataset("digits-up")
    assert err.value.code == 404


# --- Connection failures and retries (a tiny local server) ---------------------------------------


def test_unreachable_server_is_a_clear_client_error() -> None:
    with (
        Client(f"http://127.0.0.1:{free_port()}", retries=1, backoff=0) as c,
        pytest.raises(ClientError) as err,
    ):
        c.models()
    assert err.value.code is None and "cannot reach" in str(err.value) and "refused" in str(err.value)


class Flaky:
    """A local HTTP server that answers 503 to the first `failures` requests of each path, then 200."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.seen: dict[str, int] = {}
        self.streams = 0
        flaky = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                path = self.path.split("?")[0]
                if path.endswith("/events"):
                    flaky.stream(self)
                    return
                count = flaky.seen[path] = flaky.seen.get(path, 0) + 1
                if count <= flaky.failures:
                    body = {"code": 503, "status": "Service Unavailable", "message": "warming up"}
                    self._send(503, body)
                elif path.endswith(":predict"):
                    n = length // 784
                    row = [0.0] * 9 + [1.0]
                    self._send(
                        200,
                        {
                            "model": "m",
                            "model_version": 4,
                            "predictions": [{"label": 9, "probabilities": row}] * n,
                        },
                    )
                else:
                    self._send(200, [] if self.command == "GET" else {"id": "j1", "status": "queued"})

            def _send(self, status: int, body: object) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def stream(self, handler: BaseHTTPRequestHandler) -> None:
        """Serve an event stream that breaks after one event the first time, and ends the second."""
        self.streams += 1
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.end_headers()
        handler.wfile.write(b"retry: 2000\n\n: keep-alive\n\n")
        handler.wfile.write(b'event: progress\ndata: {"id": "j1", "status": "started"}\n\n')
        if self.streams > 1:
            handler.wfile.write(b'event: end\ndata: {"id": "j1",\ndata:  "status": "finished"}\n\n')
        handler.wfile.flush()
        handler.close_connection = True

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def flaky() -> Iterator[Flaky]:
    server = Flaky(failures=2)
    yield server
    server.close()


def test_reads_and_predictions_are_retried_after_503(flaky: Flaky) -> None:
    with Client(flaky.url, "t", retries=3, backoff=0.01) as c:
        assert c.models() == []
        assert flaky.seen["/v1/models"] == 3
        result = c.predict(np.zeros((2, 784), np.uint8), model="m")
        assert flaky.seen["/v1/models/m:predict"] == 3
        assert result.labels.tolist() == [9, 9] and result.version == 4


def test_job_submission_is_not_retried_after_a_5xx(flaky: Flaky) -> None:
    with Client(flaky.url, "t", retries=3, backoff=0.01) as c, pytest.raises(ClientError) as err:
        c.submit(SMALL_JOB)
    assert err.value.code == 503 and err.value.message == "warming up"
    assert flaky.seen["/v1/jobs"] == 1


def test_too_many_failures_end_with_the_last_answer(flaky: Flaky) -> None:
    with Client(flaky.url, retries=1, backoff=0.01) as c, pytest.raises(ClientError) as err:
        c.models()
    assert err.value.code == 503 and flaky.seen["/v1/models"] == 2


def test_a_broken_event_stream_is_reopened(flaky: Flaky) -> None:
    with Client(flaky.url, retries=2, backoff=0.01) as c:
        events = list(c.events("j1"))
    assert [name for name, _ in events] == ["progress", "progress", "end"]
    assert events[-1][1] == {"id": "j1", "status": "finished"}
    assert flaky.streams == 2


def test_parse_sse_skips_comments_and_joins_data_lines() -> None:
    text = 'retry: 2000\n\n: keep-alive\n\nevent: progress\ndata: {"a":\ndata: 1}\n\ndata: {"b": 2}\n\n'
    assert list(parse_sse(io.StringIO(text).read().splitlines())) == [
        ("progress", {"a": 1}),
        ("message", {"b": 2}),
    ]


def test_names_that_would_change_the_path_are_refused(client: Client) -> None:
    for bad in ("../x", "a/b", "x?y", ""):
        with pytest.raises(ValueError):
            client.model(bad)


def test_weights_of_a_missing_version_is_a_404(tmp_path: Path, client: Client) -> None:
    with pytest.raises(ClientError) as err:
        client.weights("mnist", 999)
    assert err.value.code == 404
