"""Every bad request gets the one JSON error body with the right 4xx, through real gunicorn."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from services.app import create_app
from tests.api_helpers import Live, live_stack, new_env
from tests.live_fixtures import BIN, ROOT, Process
from tests.routes import ROUTES, fill

pytestmark = pytest.mark.slow

#: Every route that writes, with a body it would accept.
WRITES = [
    ("POST", "/v1/jobs", {"json": {"dataset": "mnist-sample", "epochs": 1}}),
    ("DELETE", "/v1/jobs/some-job", {}),
    ("DELETE", "/v1/models/mnist/versions/1", {}),
    ("PUT", "/v1/models/mnist/aliases/production", {"json": {"version": 1}}),
    ("DELETE", "/v1/models/mnist/aliases/production", {}),
    ("POST", "/v1/datasets/mine", {"data": b"label,pixel0\n", "headers": {"Content-Type": "text/csv"}}),
    ("DELETE", "/v1/datasets/mine", {}),
]


@pytest.fixture(scope="module")
def live(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """One gunicorn for the module; nothing here writes successfully."""
    with live_stack(redis_url, tmp_path_factory.mktemp("errors"), workers=1) as stack:
        yield stack


def assert_error(
    r: requests.Response | http.client.HTTPResponse, status: int, body: bytes | None = None
) -> dict:
    """Check the status and the JSON error shape; return the body."""
    raw = body if body is not None else r.content  # type: ignore[union-attr]
    code = r.status_code if isinstance(r, requests.Response) else r.status
    assert code == status, raw
    assert r.headers["Content-Type"] == "application/json"
    payload = json.loads(raw)
    assert payload["code"] == status and isinstance(payload["status"], str) and payload["message"]
    assert set(payload) <= {"code", "status", "message", "errors"}
    return payload


@pytest.mark.parametrize(("method", "path", "kw"), WRITES)
def test_writes_need_the_token(live: Live, method: str, path: str, kw: dict) -> None:
    headers = kw.get("headers", {})
    missing = live.http.request(method, live.url + path, headers=headers, timeout=10, **_body(kw))
    body = assert_error(missing, 401)
    assert missing.headers["WWW-Authenticate"] == "Bearer" and "Bearer" in body["message"]
    basic = {**headers, "Authorization": "Basic dXNlcjpwYXNz"}
    assert_error(live.http.request(method, live.url + path, headers=basic, timeout=10, **_body(kw)), 401)
    wrong = {**headers, "Authorization": "Bearer not-the-token"}
    assert_error(live.http.request(method, live.url + path, headers=wrong, timeout=10, **_body(kw)), 403)


def _body(kw: dict) -> dict:
    return {k: v for k, v in kw.items() if k != "headers"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"hidden": "abc"}, "hidden"),
        ({"hidden": [0]}, "hidden"),
        ({"hidden": ["x"]}, "hidden"),
        ({"epochs": "two"}, "epochs"),
        ({"epochs": 1.5}, "epochs"),
        ({"learning_rate": "fast"}, "learning_rate"),
        ({"seed": -1}, "seed"),
        ({"validation_fraction": 0.9}, "validation_fraction"),
        ({"recipe": "secret"}, "recipe"),
        ({"optimizer": ""}, "optimizer"),
        ({"epochs": "3"}, "epochs"),
        ({"epochs": True}, "epochs"),
        ({"dataset": ""}, "dataset"),
        ({"dataset": 7}, "dataset"),
        ({"dataset": "a..b"}, "dataset"),
        ({"model": "a..b"}, "model"),
        ({"unknown_field": 1}, "unknown_field"),
        ({"hidden": [32], "__class__": "x"}, "__class__"),
    ],
)
def test_bad_job_specs(live: Live, body: dict, field: str) -> None:
    payload = assert_error(live.post("/v1/jobs", json=body, headers=live.auth), 400)
    assert field in payload["errors"]


@pytest.mark.parametrize(
    ("data", "content_type", "status"),
    [
        (b"{", "application/json", 400),
        (b'{"epochs": 1,}', "application/json", 400),
        (b"", "application/json", 400),
        (b"[1, 2]", "application/json", 400),
        (b'"text"', "application/json", 400),
        (b"\xff\xfe", "application/json", 400),
        (b'{"epochs": 1}', "text/plain", 415),
        (b'{"epochs": 1}', "", 415),
        (b"epochs=1", "application/x-www-form-urlencoded", 415),
    ],
)
def test_malformed_bodies(live: Live, data: bytes, content_type: str, status: int) -> None:
    headers = {**live.auth, "Content-Type": content_type}
    assert_error(live.post("/v1/jobs", data=data, headers=headers), status)
    alias = live.put("/v1/models/mnist/aliases/production", data=data, headers=headers)
    assert_error(alias, status)


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b'{"hidden": [' + b"1," * 200_000 + b"1]}", "values"),
        (b'{"hidden": ' + b"[" * 140_000 + b"]" * 140_000 + b"}", "arrays"),
        (b'{"a":' * 140_000 + b"1" + b"}" * 140_000, "values"),  # objects nest by their keys
    ],
    ids=["values", "arrays", "objects"],
)
def test_argument_bodies_holding_more_than_a_request_needs_are_413_before_parsing(
    live: Live, data: bytes, kind: str
) -> None:
    """:evaluate reads its body before any token; each such body would take 10 to 40 MB parsed."""
    headers = {**live.auth, "Content-Type": "application/json"}
    routes = [("POST", "/v1/jobs", live.auth), ("POST", "/v1/models/mnist/versions/1:evaluate", {})]
    for method, path, auth in routes:
        r = live.http.request(method, live.url + path, data=data, headers={**headers, **auth}, timeout=30)
        payload = assert_error(r, 413)
        assert f"JSON {kind}" in payload["message"] and "the arguments of a request" in payload["message"]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/jobs/0123456789abcdef",
        "/v1/jobs/0123456789abcdef/events",
        "/v1/models/no-such-model",
        "/v1/models/no-such-model/versions/1",
        "/v1/models/no-such-model/versions/1/weights",
        "/v1/models/no-such-model/aliases/production",
        "/v1/models/no-such-model/versions/x",
        "/v1/datasets/no-such-dataset",
        "/v1/no-such-resource",
        "/nothing-here",
    ],
)
def test_unknown_things_are_404(live: Live, path: str) -> None:
    assert_error(live.get(path), 404)


def test_deleting_unknown_things_is_404(live: Live) -> None:
    for path in (
        "/v1/jobs/0123456789abcdef",
        "/v1/models/no-such-model/versions/1",
        "/v1/models/no-such-model/aliases/production",
        "/v1/datasets/no-such-dataset",
    ):
        assert_error(live.delete(path, headers=live.auth), 404)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/v1/jobs"),
        ("PATCH", "/v1/jobs/abc"),
        ("POST", "/v1/models"),
        ("DELETE", "/v1/models/mnist"),
        ("POST", "/v1/models/mnist/versions/1/weights"),
        ("POST", "/v1/models/mnist/aliases/production"),
        ("PUT", "/v1/datasets"),
        ("PATCH", "/v1/datasets/mine"),
    ],
)
def test_wrong_method_is_405(live: Live, method: str, path: str) -> None:
    r = live.http.request(method, live.url + path, headers=live.auth, timeout=10)
    assert_error(r, 405)
    assert r.headers["Allow"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/datasets/..%2F..%2Fetc%2Fpasswd"),
        ("GET", "/v1/datasets/%2e%2e%2f%2e%2e%2fetc%2fpasswd"),
        ("GET", "/v1/datasets/../../etc/passwd"),
        ("GET", "/v1/datasets/..%5C..%5Cetc%5Cpasswd"),
        ("GET", "/v1/models/..%2F..%2Fetc%2Fpasswd"),
        ("GET", "/v1/models/..%2F..%2Fetc%2Fpasswd/versions/1/weights"),
        ("GET", "/v1/models/..%2F..%2Fetc/versions/1"),
        ("GET", "/v1/models/.."),
        ("GET", "/v1/jobs/..%2F..%2Fetc%2Fpasswd"),
        ("GET", "/v1/jobs/..%2F..%2Fetc%2Fpasswd/events"),
        ("POST", "/v1/datasets/..%2F..%2Ftmp%2Fevil"),
        ("POST", "/v1/datasets/.."),
        ("DELETE", "/v1/datasets/..%2F..%2Fetc%2Fpasswd"),
        ("PUT", "/v1/models/..%2Fevil/aliases/production"),
        ("PUT", "/v1/models/mnist/aliases/..%2Fevil"),
    ],
)
def test_path_traversal_is_refused(live: Live, method: str, path: str) -> None:
    """Send the path byte for byte (no client normalisation): a 4xx, and nothing from the disk."""
    netloc = urlsplit(live.url).netloc
    conn = http.client.HTTPConnection(netloc, timeout=10)
    body = b'{"version": 1}' if method == "PUT" else (b"label,pixel0\n" if method == "POST" else None)
    headers = {**live.auth, "Content-Type": "application/json" if method == "PUT" else "text/csv"}
    try:
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        raw = r.read()
    finally:
        conn.close()
    assert 400 <= r.status < 500, (r.status, raw)
    assert r.getheader("Content-Type") == "application/json"
    assert b"root:" not in raw
    assert not Path("/tmp/evil").exists()


#: The names of a route's path that are registry or dataset names, by parameter.
NAMED = {"model": "model", "alias": "alias", "name": "dataset"}
#: A body each method of a named route accepts, but for the name.
BODIES = {
    "PUT": (b'{"version": 1}', "application/json"),
    "POST": (b"{}", "application/json"),
}
#: Every (method, rule, parameter) whose parameter is a name, from the table of every route.
NAMED_ROUTES = sorted(
    (method, rule, param) for (method, rule) in ROUTES for param in NAMED if f"<{param}>" in rule
)


@pytest.mark.parametrize(
    ("method", "rule", "param"), NAMED_ROUTES, ids=[f"{m} {r} {p}" for m, r, p in NAMED_ROUTES]
)
def test_a_name_with_a_trailing_newline_is_refused(live: Live, method: str, rule: str, param: str) -> None:
    """`mnist%0A` in a path: the one name rule (a fullmatch) refuses it with a 400, on every route."""
    values = {"model": "mnist", "alias": "production", "name": "mine", "version": "1", "job_id": "j"}
    path = fill(rule, {**values, param: values[param] + "%0A"})
    body, content_type = BODIES.get(method, (None, "application/json"))
    if rule == "/v1/datasets/<name>" and method == "POST":
        body, content_type = b"label,pixel0\n", "text/csv"
    elif rule.endswith("/from-feedback"):
        body = b'{"model": "mnist"}'
    elif rule.endswith(":predict"):  # a valid prediction: only the name is wrong
        body = json.dumps({"instances": [[0] * 784]}).encode()
    elif rule.endswith("/infer"):
        tensor = {"name": "input", "datatype": "UINT8", "shape": [1, 784], "data": [0] * 784}
        body = json.dumps({"inputs": [tensor]}).encode()
    netloc = urlsplit(live.url).netloc
    conn = http.client.HTTPConnection(netloc, timeout=10)
    try:  # byte for byte: no client normalises the %0A away
        conn.request(method, path, body=body, headers={**live.auth, "Content-Type": content_type})
        r = conn.getresponse()
        raw = r.read()
    finally:
        conn.close()
    assert r.status == 400, raw
    payload = json.loads(raw)  # the one error shape (V2's routes add their "error" key)
    assert payload["code"] == 400 and f"invalid {NAMED[param]} name" in payload["message"], payload


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/jobs", {"model": "mnist\n", "dataset": "mnist-sample"}, "model"),
        ("/v1/jobs", {"dataset": "mnist-sample\n"}, "dataset"),
        ("/v1/models/mnist/versions/1:evaluate", {"dataset": "mnist-sample\n"}, "dataset"),
        ("/v1/datasets/fb/from-feedback", {"model": "mnist\n"}, "model"),
        ("/v1/datasets/fb/from-feedback", {"model": "mnist", "merge": "mnist-sample\n"}, "merge"),
    ],
)
def test_a_name_with_a_trailing_newline_in_a_body_is_refused(
    live: Live, path: str, body: dict, field: str
) -> None:
    r = live.post(path, json=body, headers=live.auth)
    assert field in assert_error(r, 400)["errors"], r.text


def test_server_refuses_to_start_without_token(redis_url: str, tmp_path: Path) -> None:
    env = new_env(redis_url)
    args = [
        str(BIN / "gunicorn"),
        "--config", str(ROOT / "services" / "gunicorn_conf.py"),
        "--bind", "127.0.0.1:0",
        "--workers", "1",
        "services.app:create_app()",
    ]  # fmt: skip
    prom = tmp_path / "prometheus"  # gunicorn_conf empties it at start
    prom.mkdir()
    environ = env.environ(MNIST_API_TOKEN="", MNIST_ENV="production", PROMETHEUS_MULTIPROC_DIR=str(prom))
    process = Process(args, environ, tmp_path / "gunicorn.log")
    try:
        deadline = time.monotonic() + 30
        while process.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not process.alive(), "gunicorn kept running without MNIST_API_TOKEN"
        assert process.popen.returncode != 0
        assert "MNIST_API_TOKEN is not set" in process.log()
    finally:
        process.stop()


def test_create_app_refuses_to_start_without_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MNIST_API_TOKEN", raising=False)
    monkeypatch.delenv("MNIST_ENV", raising=False)
    with pytest.raises(RuntimeError, match="MNIST_API_TOKEN is not set"):
        create_app({"MODEL_WATCHER": False})
    monkeypatch.setenv("MNIST_ENV", "development")
    app = create_app({"MODEL_WATCHER": False})
    assert app.test_client().get("/healthz").status_code == 200
