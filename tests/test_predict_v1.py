"""v1 predictions through a real gunicorn: bodies, options, every refusal, hot reload, outages.

One server per module (2 workers, a predict token, small limits) serves most tests; each test
publishes under its own model name. The outage test runs its own server on a private Redis.
"""

from __future__ import annotations

import io
import json
import pickle
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pytest
import redis
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared import mlp, serialization
from shared.keys import Keys
from shared.registry import Registry
from tests.live_fixtures import Server, StackEnv, new_env, start_server
from tests.redis_fixtures import delete_prefix
from tests.reliability.stack import PrivateRedis
from tests.reliability.stack import private_redis as run_private_redis

#: Limits of the module's server, small so that refusals are cheap to provoke.
MAX_BATCH = 64
MAX_BODY = 300_000
HIDDEN = 16
RNG = np.random.default_rng(7)
IMAGES = RNG.integers(0, 256, (5, mlp.INPUT_SIZE), dtype=np.uint8)
RAW = "application/octet-stream"
NPY = "application/x-npy"
JSON = "application/json"


def make_params(seed: int, label: int | None = None) -> list[np.ndarray]:
    """Return random 784-16-10 parameters; with `label`, a model that always answers it."""
    params = mlp.init_params((mlp.INPUT_SIZE, HIDDEN, mlp.CLASSES), np.random.default_rng(seed))
    if label is not None:
        params[-1][label] = 50.0
    return params


def npy(array: np.ndarray) -> bytes:
    """Return `array` as .npy bytes (pickling object arrays, as np.save does when allowed)."""
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


def expected(params: list[np.ndarray], images: np.ndarray = IMAGES) -> np.ndarray:
    """Return what the pure core answers for uint8 images."""
    return mlp.predict_proba(params, mlp.scale_pixels(images.reshape(len(images), -1)))


@dataclass
class Live:
    """A running server and the registry it serves."""

    server: Server
    registry: Registry
    redis: redis.Redis
    keys: Keys
    auth: dict[str, str]

    def __post_init__(self) -> None:
        self.session = requests.Session()
        self.session.headers.update(self.auth)

    def url(self, route: str) -> str:
        return f"{self.server.url}{route}"

    def publish(self, model: str, seed: int, label: int | None = None) -> int:
        params = make_params(seed, label)
        return self.registry.publish(model, serialization.model_to_bytes(params, {}), {"seed": seed})

    def predict(
        self, body: bytes, content_type: str | None = JSON, route: str = "/v1/models/mnist:predict", **kw
    ) -> requests.Response:
        headers = {"Content-Type": content_type} if content_type else {}
        return self.session.post(self.url(route), data=body, headers=headers, timeout=30, **kw)

    def answer(self, model: str, route: str = ":predict") -> tuple[int, int]:
        """Return (model_version, label) of one image on a fresh connection (any worker)."""
        r = requests.post(
            self.url(f"/v1/models/{model}{route}"),
            data=IMAGES[:1].tobytes(),
            headers={"Content-Type": RAW, "Connection": "close", **self.auth},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        body = r.json()
        return body["model_version"], body["predictions"][0]["label"]


def serving_processes(live: Live, model: str, version: int) -> int:
    """Return how many server processes report serving `version` of `model` in /metrics."""
    text = requests.get(live.url("/metrics"), timeout=30).text
    prefix = "mnist_model_version_served{"
    return sum(
        1
        for line in text.splitlines()
        if line.startswith(prefix) and f'model="{model}"' in line and float(line.rsplit(" ", 1)[1]) == version
    )


def settles(check: Callable[[], bool], timeout: float = 10.0, streak: int = 10) -> float:
    """Wait until `check` holds `streak` times in a row (so every worker agrees); return the seconds."""
    started = time.monotonic()
    run = 0
    while run < streak:
        run = run + 1 if check() else 0
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not settled within {timeout} s")
    return time.monotonic() - started


@pytest.fixture(scope="module")
def live(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """A gunicorn with a predict token and small limits, serving model `mnist` v1 (seed 0)."""
    env = new_env(redis_url, MNIST_MAX_BATCH=str(MAX_BATCH), MNIST_MAX_BODY_BYTES=str(MAX_BODY))
    env.extra["MNIST_PREDICT_TOKEN"] = f"predict-{env.token}"
    client = redis.Redis.from_url(redis_url)
    keys = Keys(env.prefix)
    registry = Registry(client, keys)
    registry.publish("mnist", serialization.model_to_bytes(make_params(0), {}), {})
    server = start_server(env, tmp_path_factory.mktemp("v1"))
    live = Live(
        server, registry, client, keys, {"Authorization": f"Bearer {env.extra['MNIST_PREDICT_TOKEN']}"}
    )
    yield live
    live.session.close()
    server.process.stop()
    delete_prefix(client, env.prefix)
    client.close()


# --- bodies ---------------------------------------------------------------------------------------
def test_json_batch_matches_the_pure_core(live: Live) -> None:
    r = live.predict(orjson.dumps({"instances": IMAGES.tolist()}))
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "application/json"
    body = r.json()
    assert (body["model"], body["model_version"]) == ("mnist", 1)
    probs = np.array([p["probabilities"] for p in body["predictions"]])
    np.testing.assert_allclose(probs, expected(make_params(0)), atol=1e-5)
    assert [p["label"] for p in body["predictions"]] == probs.argmax(axis=1).tolist()
    assert all(set(p) == {"label", "probabilities"} for p in body["predictions"])


@pytest.mark.parametrize(
    ("content_type", "body", "query"),
    [
        (JSON, orjson.dumps({"instances": IMAGES.reshape(5, 28, 28).tolist()}), ""),
        (JSON, orjson.dumps({"instances": (IMAGES / 255).tolist(), "pixel_range": "unit"}), ""),
        (JSON, orjson.dumps({"instances": IMAGES.astype(float).tolist()}), ""),
        (None, orjson.dumps({"instances": IMAGES.tolist()}), ""),
        (RAW, IMAGES.tobytes(), ""),
        (NPY, npy(IMAGES), ""),
        (NPY, npy(IMAGES.reshape(5, 28, 28)), ""),
        (NPY, npy(IMAGES.astype(np.float32)), ""),
        (NPY, npy(np.asfortranarray(IMAGES.astype(">f8"))), ""),
        (NPY, npy(IMAGES.astype(np.float64) / 255), "?pixel_range=unit"),
        (NPY, npy(IMAGES.astype(np.int64)), ""),
    ],
    ids=["json-28x28", "json-unit", "json-floats", "json-no-type", "raw", "npy", "npy-28x28", "npy-f32",
         "npy-fortran-bigendian", "npy-unit", "npy-int64"],
)  # fmt: skip
def test_every_body_format_gives_the_same_answer(live: Live, content_type, body: bytes, query: str) -> None:
    r = live.predict(body, content_type, route=f"/v1/models/mnist:predict{query}")
    assert r.status_code == 200, r.text
    probs = np.array([p["probabilities"] for p in r.json()["predictions"]])
    np.testing.assert_allclose(probs, expected(make_params(0)), atol=1e-5)


def test_top_k_adds_the_best_labels(live: Live) -> None:
    r = live.predict(orjson.dumps({"instances": IMAGES.tolist(), "top_k": 3}))
    assert r.status_code == 200, r.text
    reference = expected(make_params(0))
    for prediction, row in zip(r.json()["predictions"], reference, strict=True):
        assert len(prediction["probabilities"]) == 10
        best = np.argsort(-row, kind="stable")[:3].tolist()
        assert [t["label"] for t in prediction["top_k"]] == best
        np.testing.assert_allclose([t["probability"] for t in prediction["top_k"]], row[best], atol=1e-5)
    r = live.predict(IMAGES.tobytes(), RAW, route="/v1/models/mnist:predict?top_k=1")
    assert [p["top_k"][0]["label"] for p in r.json()["predictions"]] == reference.argmax(axis=1).tolist()


def test_accept_npy_answers_the_probabilities_as_a_float32_npy(live: Live) -> None:
    def post(accept: str, query: str = "") -> requests.Response:
        headers = {"Content-Type": RAW, "Accept": accept}
        url = live.url(f"/v1/models/mnist:predict{query}")
        return live.session.post(url, data=IMAGES.tobytes(), headers=headers, timeout=30)

    r = post(NPY)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == NPY
    assert (r.headers["Mnist-Model"], r.headers["Mnist-Model-Version"]) == ("mnist", "1")
    probs = np.load(io.BytesIO(r.content), allow_pickle=False)
    assert probs.dtype == np.float32 and probs.shape == (len(IMAGES), mlp.CLASSES)
    as_json = post("*/*").json()["predictions"]  # the same numbers as the JSON answer's, exactly
    np.testing.assert_array_equal(probs, np.array([p["probabilities"] for p in as_json], np.float32))
    for accept in ("*/*", "", f"{JSON}, {NPY};q=0.5"):  # JSON stays the default, and wins when preferred
        assert post(accept).headers["Content-Type"] == JSON
    r = post(NPY, "?top_k=2")
    assert r.status_code == 400 and "top_k" in r.json()["message"]


def test_pinned_version_and_metrics(live: Live) -> None:
    r = live.predict(IMAGES.tobytes(), RAW, route="/v1/models/mnist/versions/1:predict")
    assert r.status_code == 200 and r.json()["model_version"] == 1
    metrics = requests.get(live.url("/metrics"), timeout=10).text
    line = next(
        x for x in metrics.splitlines() if x.startswith('mnist_images_predicted_total{model="mnist"}')
    )
    assert float(line.split()[-1]) >= 5


def test_openapi_documents_the_routes(live: Live) -> None:
    paths = requests.get(live.url("/openapi.json"), timeout=10).json()["paths"]
    for path in ("/v1/models/{model}:predict", "/v1/models/{model}/versions/{version}:predict",
                 "/v1/models/{model}/labels/{alias}:predict"):  # fmt: skip
        content = paths[path]["post"]["requestBody"]["content"]
        assert set(content) == {JSON, RAW, NPY}
        assert set(paths[path]["post"]["responses"]["200"]["content"]) == {JSON, NPY}
        assert {"200", "400", "404", "413", "415"} <= set(paths[path]["post"]["responses"])


# --- refusals -------------------------------------------------------------------------------------
ROW = [0] * mlp.INPUT_SIZE
BAD = [
    ("malformed JSON", JSON, b'{"instances": [', 400, "not valid JSON"),
    ("not an object", JSON, b"[[0, 1]]", 400, "JSON object"),
    ("no instances", JSON, b"{}", 400, "instances"),
    ("unknown field", JSON, orjson.dumps({"instances": [ROW], "signature": "x"}), 400, "unknown fields"),
    ("783 pixels", JSON, orjson.dumps({"instances": [ROW[:-1]]}), 400, "shape [1, 783]"),
    ("ragged", JSON, orjson.dumps({"instances": [ROW, ROW[:-1]]}), 400, "ragged"),
    ("flat", JSON, orjson.dumps({"instances": ROW}), 400, "list of images"),
    ("too deep", JSON, orjson.dumps({"instances": [[ROW]]}), 400, "shape [1, 1, 784]"),
    ("infinity", JSON, b'{"instances": [[1e999]]}', 400, "not valid JSON"),
    ("NaN", JSON, b'{"instances": [[NaN]]}', 400, "not valid JSON"),
    ("above 255", JSON, orjson.dumps({"instances": [[256] + ROW[1:]]}), 400, "outside the pixel_range"),
    ("negative", JSON, orjson.dumps({"instances": [[-1] + ROW[1:]]}), 400, "outside the pixel_range"),
    (
        "unit above 1",
        JSON,
        orjson.dumps({"instances": [[1.5] + ROW[1:]], "pixel_range": "unit"}),
        400,
        "outside",
    ),
    ("huge int", JSON, orjson.dumps({"instances": [[2**64 - 1] + ROW[1:]]}), 400, "outside the pixel_range"),
    ("string", JSON, orjson.dumps({"instances": [["7"] + ROW[1:]]}), 400, "not numbers"),
    ("null", JSON, orjson.dumps({"instances": [[None] + ROW[1:]]}), 400, "not numbers"),
    ("object", JSON, orjson.dumps({"instances": [[{}] + ROW[1:]]}), 400, "not numbers"),
    ("boolean", JSON, orjson.dumps({"instances": [[True] + ROW[1:]]}), 400, "boolean"),
    ("instances not a list", JSON, orjson.dumps({"instances": "pixels"}), 400, "list of images"),
    ("empty batch", JSON, orjson.dumps({"instances": []}), 400, "0 images"),
    # Refused on the body's bytes (more values than 64 images hold), before it is parsed.
    ("too many images", JSON, orjson.dumps({"instances": [ROW] * 65}), 413, "64 images (MNIST_MAX_BATCH)"),
    ("too many rows", JSON, orjson.dumps({"instances": [[0]] * 65}), 413, "limit is 64 images"),
    ("image of 785 pixels", JSON, orjson.dumps({"instances": [[0] * 785]}), 400, "image 0 holds 785 values"),
    ("values", JSON, b'{"instances": [[' + b"0," * 60_000 + b"0]]}", 413, "64 images (MNIST_MAX_BATCH)"),
    ("bad pixel_range", JSON, orjson.dumps({"instances": [ROW], "pixel_range": "0-1"}), 400, "pixel_range"),
    ("top_k 0", JSON, orjson.dumps({"instances": [ROW], "top_k": 0}), 400, "top_k"),
    ("top_k 11", JSON, orjson.dumps({"instances": [ROW], "top_k": 11}), 400, "top_k"),
    ("top_k true", JSON, orjson.dumps({"instances": [ROW], "top_k": True}), 400, "top_k"),
    ("top_k text", JSON, orjson.dumps({"instances": [ROW], "top_k": "3"}), 400, "top_k"),
    ("top_k float", JSON, orjson.dumps({"instances": [ROW], "top_k": 2.5}), 400, "top_k"),
    ("raw 1000 bytes", RAW, bytes(1000), 400, "multiple of 784"),
    ("raw empty", RAW, b"", 400, "empty"),
    ("raw too many", RAW, bytes(784 * (MAX_BATCH + 1)), 413, "limit is 64"),
    ("npy garbage", NPY, b"\x93NUMPY garbage", 400, ".npy"),
    ("npy pickled objects", NPY, npy(np.array([[object()]] * 2, dtype=object)), 400, "dtype object"),
    ("a pickle", NPY, pickle.dumps(IMAGES), 400, "pickles are refused"),
    ("npy truncated", NPY, npy(IMAGES)[:-10], 400, "truncated"),
    ("npy booleans", NPY, npy(IMAGES > 100), 400, "dtype bool"),
    ("npy strings", NPY, npy(np.array([["1"] * 784])), 400, "dtype <U1"),
    ("npy one image flat", NPY, npy(IMAGES[0]), 400, "shape [784]"),
    ("npy NaN", NPY, npy(np.full((1, 784), np.nan, np.float32)), 400, "NaN or Inf"),
    ("npy Inf", NPY, npy(np.full((1, 784), np.inf)), 400, "NaN or Inf"),
    ("npy above 255", NPY, npy(np.full((1, 784), 300.0)), 400, "outside"),
    ("npy empty", NPY, npy(np.zeros((0, 784), np.uint8)), 400, "0 images"),
    ("wrong type", "text/plain", b"0,0,0", 415, "cannot read 'text/plain'"),
    ("form", "application/x-www-form-urlencoded", b"a=1", 415, "cannot read"),
]


@pytest.mark.parametrize(
    ("content_type", "body", "status", "fragment"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_bad_bodies_get_a_json_4xx(
    live: Live, content_type: str, body: bytes, status: int, fragment: str
) -> None:
    r = live.predict(body, content_type)
    assert r.status_code == status, r.text
    error = r.json()
    assert error["code"] == status and error["status"] and fragment in error["message"]


@pytest.mark.parametrize(
    ("route", "content_type", "status"),
    [
        ("/v1/models/absent:predict", RAW, 404),
        ("/v1/models/mnist/versions/9:predict", RAW, 404),
        ("/v1/models/mnist/versions/0:predict", RAW, 400),
        ("/v1/models/mnist/labels/canary:predict", RAW, 404),
        ("/v1/models/Not_A_Name:predict", RAW, 400),
        ("/v1/models/mnist:predict?top_k=abc", RAW, 400),
        ("/v1/models/mnist:predict?pixel_range=unit", RAW, 400),
        ("/v1/models/mnist:predict?pixel_range=percent", NPY, 400),
    ],
)
def test_bad_routes_and_options_get_a_json_4xx(
    live: Live, route: str, content_type: str, status: int
) -> None:
    body = npy(IMAGES) if content_type == NPY else IMAGES.tobytes()
    r = live.predict(body, content_type, route=route)
    assert r.status_code == status, r.text
    assert r.json()["code"] == status


def test_a_body_over_the_limit_gets_a_413(live: Live) -> None:
    # gunicorn closes a connection whose unread body exceeds 64 KiB: a fresh one is used here.
    r = requests.post(
        live.url("/v1/models/mnist:predict"),
        data=bytes(MAX_BODY + 784),
        headers={"Content-Type": RAW, **live.auth},
        timeout=30,
    )
    assert r.status_code == 413 and r.json()["code"] == 413


def test_the_predict_token_is_required(live: Live) -> None:
    url = live.url("/v1/models/mnist:predict")
    r = requests.post(url, data=IMAGES.tobytes(), headers={"Content-Type": RAW}, timeout=10)
    assert r.status_code == 401 and r.json()["code"] == 401
    r = requests.post(
        url, data=IMAGES.tobytes(), headers={"Content-Type": RAW, "Authorization": "Bearer wrong"}, timeout=10
    )
    assert r.status_code == 403


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=4),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=30,
)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    instances=JSON_VALUES | st.lists(st.lists(st.integers(-5, 300), min_size=783, max_size=785), max_size=3),
    extra=st.dictionaries(st.sampled_from(["pixel_range", "top_k", "x"]), JSON_VALUES, max_size=2),
    raw=st.binary(max_size=2000),
    kind=st.sampled_from([JSON, RAW, NPY]),
)
def test_no_input_produces_a_5xx(live: Live, instances, extra, raw: bytes, kind: str) -> None:
    if kind == JSON:
        # The standard library writes what orjson refuses: ints beyond 64 bits, NaN, Infinity.
        body = json.dumps({"instances": instances, **extra}).encode()
    else:
        body = (b"\x93NUMPY" + raw) if kind == NPY and raw[:1] == b"\x01" else raw
    r = live.predict(body, kind)
    assert r.status_code in (200, 400, 413), r.text
    assert r.headers["Content-Type"] == "application/json"
    if r.status_code != 200:
        assert r.json()["code"] == r.status_code


# --- versions, aliases, reloads -------------------------------------------------------------------
def test_production_alias_wins_and_predictions_follow_alias_moves(live: Live) -> None:
    m = "aliased"
    v1 = live.publish(m, 1, label=1)
    v2 = live.publish(m, 2, label=2)
    settles(lambda: live.answer(m) == (v2, 2))
    live.registry.set_alias(m, "production", v1)
    settles(lambda: live.answer(m) == (v1, 1))
    assert live.answer(m, "/labels/production:predict") == (v1, 1)

    live.registry.set_alias(m, "staging", v2)
    assert live.answer(m, "/labels/staging:predict") == (v2, 2)
    live.registry.set_alias(m, "staging", v1)
    settles(lambda: live.answer(m, "/labels/staging:predict") == (v1, 1))

    live.registry.delete_alias(m, "production")
    settles(lambda: live.answer(m) == (v2, 2))
    assert live.answer(m, f"/versions/{v1}:predict") == (v1, 1)


def test_hot_reload_under_load_loses_no_request(live: Live) -> None:
    m = "hot"
    live.publish(m, 0)
    settles(lambda: live.answer(m)[0] == 1)
    stop = threading.Event()
    failures: list[str] = []
    served = [0]

    def client() -> None:
        with requests.Session() as s:
            s.headers.update(live.auth)
            while not stop.is_set():
                r = s.post(live.url(f"/v1/models/{m}:predict"), data=IMAGES.tobytes(),
                           headers={"Content-Type": RAW}, timeout=30)  # fmt: skip
                served[0] += 1
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text}")

    threads = [threading.Thread(target=client, daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    latencies = []
    try:
        for seed in range(1, 21):
            version = live.publish(m, seed)
            published = time.perf_counter()
            while live.answer(m)[0] != version:
                assert time.perf_counter() - published < 10, f"v{version} not served after 10 s"
            latencies.append(time.perf_counter() - published)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert failures == []
    assert served[0] > 20
    # The target is < 0.5 s (bench/predict.py measures it); the bounds tolerate a busy machine.
    assert np.median(latencies) < 1.0 and max(latencies) < 5.0, latencies


def test_a_corrupt_version_is_refused_and_readiness_says_why(live: Live) -> None:
    m = "fragile"
    v1 = live.publish(m, 1, label=1)
    live.registry.set_alias(m, "production", v1)
    settles(lambda: live.answer(m) == (v1, 1))
    # Both gunicorn workers must hold v1 before the default moves to the corrupt v2: a worker
    # that first meets the model then has nothing to fall back on (reliability.md, known limits).
    settles(lambda: live.answer(m) == (v1, 1) and serving_processes(live, m, v1) == 2, timeout=30, streak=1)
    v2 = live.publish(m, 2, label=2)
    live.redis.set(live.keys.blob(m, v2), b"bytes that do not match the sha256")
    live.registry.delete_alias(m, "production")  # the default moves to v2, which must be refused

    def reason() -> str:
        body = requests.get(live.url("/readyz"), timeout=30).json()
        return body["reason"] or ""

    settles(lambda: f"v{v2} refused" in reason(), streak=6)
    ready = requests.get(live.url("/readyz"), timeout=30)
    assert ready.status_code == 200 and "sha256" in ready.json()["reason"]
    assert all(live.answer(m) == (v1, 1) for _ in range(10))
    r = live.predict(IMAGES.tobytes(), RAW, route=f"/v1/models/{m}/versions/{v2}:predict")
    assert r.status_code == 503 and "sha256" in r.json()["message"]

    v3 = live.publish(m, 3, label=3)
    settles(lambda: live.answer(m) == (v3, 3))
    settles(lambda: reason() == "", streak=6)


# --- Redis away -----------------------------------------------------------------------------------
@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    with run_private_redis(tmp_path) as server:
        yield server


def test_predictions_survive_a_redis_outage_and_reload_after_it(
    private_redis: PrivateRedis, tmp_path: Path
) -> None:
    env = StackEnv(redis_url=private_redis.url, prefix="test-outage:", queue="training-outage", token="tok",
                   extra={"MNIST_DEFAULT_MODEL": "steady"})  # fmt: skip
    client = redis.Redis.from_url(private_redis.url)
    registry = Registry(client, Keys(env.prefix))
    blob = serialization.model_to_bytes(make_params(1, label=3), {})
    v1 = registry.publish("steady", blob, {})
    server = start_server(env, tmp_path)  # both workers preload the default model at start
    try:
        live = Live(server, registry, client, Keys(env.prefix), {})
        settles(lambda: live.answer("steady") == (v1, 3))
        # Both gunicorn workers must hold the model before Redis goes: /healthz answers as soon
        # as one of them is up, and the other may still be booting.
        settles(lambda: serving_processes(live, "steady", v1) == 2, timeout=30, streak=1)

        private_redis.kill()
        assert all(live.answer("steady") == (v1, 3) for _ in range(10))
        assert live.answer("steady", f"/versions/{v1}:predict") == (v1, 3)
        ready = requests.get(live.url("/readyz"), timeout=30)
        assert ready.status_code == 200, ready.text
        assert ready.json()["redis"] is False and "Redis does not answer" in ready.json()["reason"]
        absent = live.predict(IMAGES.tobytes(), RAW, route="/v1/models/other:predict")
        assert absent.status_code == 503 and absent.json()["code"] == 503

        private_redis.start()  # same port, empty: the registry starts over
        v_new = registry.publish("steady", serialization.model_to_bytes(make_params(2, label=7), {}), {})
        settles(lambda: live.answer("steady") == (v_new, 7), timeout=30)
        assert requests.get(live.url("/readyz"), timeout=30).json()["redis"] is True
    finally:
        server.process.stop()
        client.close()
