"""Request ids, the prediction log, feedback, the monitor and shadows through a real gunicorn.

One server per module (2 workers, every image logged, a predict token); each test publishes
under its own model name, so tests never see each other's log or counters.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pytest
import redis
import requests

from client.api import Client
from services.web.metrics import MONITOR_CACHE_SECONDS, MonitorCollector
from shared import drift, mlp, serialization
from shared.keys import Keys
from shared.registry import Registry
from tests.api_helpers import new_env
from tests.live_fixtures import Server, start_server, wait_for
from tests.redis_fixtures import delete_prefix

RNG = np.random.default_rng(5)
IMAGES = RNG.integers(0, 256, (20, mlp.INPUT_SIZE), dtype=np.uint8)
RAW = {"Content-Type": "application/octet-stream"}


@dataclass
class Live:
    server: Server
    registry: Registry
    keys: Keys
    predict_auth: dict[str, str]
    write_auth: dict[str, str]

    def url(self, route: str) -> str:
        return f"{self.server.url}{route}"

    def publish(self, model: str, label: int) -> int:
        """Publish a 784-8-10 network answering `label`, with IMAGES' profile as its reference."""
        params = mlp.init_params((mlp.INPUT_SIZE, 8, mlp.CLASSES), np.random.default_rng(label))
        params[-1][label] = 50.0
        meta = {"profile": drift.profile(IMAGES, np.full(len(IMAGES), label))}
        return self.registry.publish(model, serialization.model_to_bytes(params, {}), meta)

    def predict(
        self, model: str, images: np.ndarray, headers: dict[str, str] | None = None
    ) -> requests.Response:
        """POST raw images on a fresh connection (either worker may answer)."""
        return requests.post(
            self.url(f"/v1/models/{model}:predict"),
            data=images.tobytes(),
            headers={**RAW, **self.predict_auth, "Connection": "close", **(headers or {})},
            timeout=30,
        )

    def get(self, route: str, **params: Any) -> requests.Response:
        return requests.get(self.url(route), params=params, headers=self.predict_auth, timeout=30)

    def feedback(self, model: str, labels: list[tuple[str, int]], auth: bool = True) -> requests.Response:
        body = {"labels": [{"request_id": r, "label": lab} for r, lab in labels]}
        headers = self.predict_auth if auth else {}
        return requests.post(self.url(f"/v1/models/{model}/feedback"), json=body, headers=headers, timeout=30)

    def logged(self, model: str, count: int, **params: Any) -> list[dict[str, Any]]:
        """Wait until the log holds `count` entries (of `params`' filter); return them."""

        def enough() -> list[dict[str, Any]] | None:
            found = self.get(f"/v1/models/{model}/predictions", limit=1000, **params).json()["predictions"]
            return found if len(found) >= count else None

        return wait_for(enough, 15, f"{count} logged predictions of {model}")

    def monitor(self, model: str) -> dict[str, Any]:
        r = self.get(f"/v1/models/{model}/monitor")
        assert r.status_code == 200, r.text
        return r.json()


@pytest.fixture(scope="module")
def live(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    env = new_env(redis_url)
    predict_token = f"predict-{env.token}"
    env.extra.update(MNIST_PREDICT_TOKEN=predict_token, MNIST_LOG_SAMPLE="1", MNIST_DRIFT_SAMPLE="1")
    client = redis.Redis.from_url(redis_url)
    keys = Keys(env.prefix)
    server = start_server(env, tmp_path_factory.mktemp("monitor"))
    yield Live(
        server,
        Registry(client, keys),
        keys,
        {"Authorization": f"Bearer {predict_token}"},
        {"Authorization": f"Bearer {env.token}"},
    )
    server.process.stop()
    delete_prefix(client, env.prefix)
    client.close()


def model_name() -> str:
    return f"m{uuid.uuid4().hex[:8]}"


# --- request ids ------------------------------------------------------------------------------------
def test_a_valid_client_id_is_echoed_and_an_invalid_one_replaced(live: Live) -> None:
    model = model_name()
    live.publish(model, 1)
    mine = live.predict(model, IMAGES[:1], {"X-Request-Id": "order-17:a.b_c"})
    assert mine.status_code == 200, mine.text
    assert mine.headers["X-Request-Id"] == mine.json()["request_id"] == "order-17:a.b_c"
    for bad in ("has space", "x" * 65, "semi;colon", ""):
        r = live.predict(model, IMAGES[:1], {"X-Request-Id": bad})
        assert r.status_code == 200
        assert r.headers["X-Request-Id"] == r.json()["request_id"]
        assert len(r.json()["request_id"]) == 32 and r.json()["request_id"] != bad
    generated = {live.predict(model, IMAGES[:1]).headers["X-Request-Id"] for _ in range(3)}
    assert len(generated) == 3


def test_errors_and_npy_answers_carry_the_id_too(live: Live) -> None:
    model = model_name()
    live.publish(model, 2)
    missing = live.predict("nosuchmodel", IMAGES[:1], {"X-Request-Id": "lost-1"})
    assert missing.status_code == 404 and missing.headers["X-Request-Id"] == "lost-1"
    unauthorized = requests.post(live.url(f"/v1/models/{model}:predict"), data=b"", headers=RAW, timeout=30)
    assert unauthorized.status_code == 401 and len(unauthorized.headers["X-Request-Id"]) == 32
    npy = live.predict(model, IMAGES[:2], {"Accept": "application/x-npy", "X-Request-Id": "n-1"})
    assert npy.status_code == 200 and npy.headers["X-Request-Id"] == "n-1"
    # Routes other than predictions do not name one.
    assert "X-Request-Id" not in live.get(f"/v1/models/{model}").headers


def test_v2_takes_the_body_id_then_the_header(live: Live) -> None:
    model = model_name()
    live.publish(model, 3)
    tensor = {"name": "input", "shape": [1, 784], "datatype": "UINT8", "data": IMAGES[0].tolist()}

    def infer(body: dict[str, Any], headers: dict[str, str]) -> requests.Response:
        return requests.post(
            live.url(f"/v2/models/{model}/infer"),
            data=orjson.dumps(body),
            headers={**live.predict_auth, "Content-Type": "application/json", **headers},
            timeout=30,
        )

    body_id = infer({"id": "v2-body", "inputs": [tensor]}, {"X-Request-Id": "v2-header"})
    assert body_id.json()["id"] == body_id.headers["X-Request-Id"] == "v2-body"
    header_id = infer({"inputs": [tensor]}, {"X-Request-Id": "v2-header"})
    assert header_id.json()["id"] == header_id.headers["X-Request-Id"] == "v2-header"
    replaced = infer({"id": "not valid!", "inputs": [tensor]}, {})
    assert replaced.json()["id"] == replaced.headers["X-Request-Id"] and len(replaced.json()["id"]) == 32
    wrong = infer({"id": 5, "inputs": [tensor]}, {})
    assert wrong.status_code == 400 and len(wrong.headers["X-Request-Id"]) == 32


# --- the log, feedback, the monitor ------------------------------------------------------------------
def test_log_feedback_and_monitor_end_to_end(live: Live) -> None:
    model = model_name()
    version = live.publish(model, 4)
    ids = [f"e2e-{i}" for i in range(6)]
    for i, request_id in enumerate(ids):
        assert live.predict(model, IMAGES[i : i + 1], {"X-Request-Id": request_id}).status_code == 200
    batch = live.predict(model, IMAGES[6:9], {"X-Request-Id": "e2e-batch"})
    entries = live.logged(model, 9)
    assert {e["request_id"] for e in entries} == {*ids, "e2e-batch/0", "e2e-batch/1", "e2e-batch/2"}
    assert all(e["label"] == 4 and e["version"] == version and e["kind"] == "live" for e in entries)
    with_pixels = live.get(f"/v1/models/{model}/predictions", pixels="true", limit=1).json()["predictions"][0]
    assert len(with_pixels["pixels"]) == 784 and batch.status_code == 200

    truth = [4, 4, 4, 1, 2, 4]
    r = live.feedback(model, [*zip(ids, truth, strict=True), ("e2e-batch/2", 4), ("never-sent", 4)])
    assert r.status_code == 200, r.text
    assert r.json() == {"accepted": 7, "unknown": 1, "repeated": 0}
    again = live.feedback(model, [("e2e-0", 9)])
    assert again.json() == {"accepted": 0, "unknown": 0, "repeated": 1}

    report = live.monitor(model)
    stats = report["versions"][str(version)]
    assert stats["requests"] == 9 and stats["feedback"] == 7
    assert stats["online_accuracy"] == pytest.approx(5 / 7)
    assert stats["confusion"][4][4] == 5 and stats["confusion"][1][4] == 1 and stats["confusion"][2][4] == 1
    assert report["window"] == 1000  # fewer labels than the window holds: the window is the total
    assert stats["total"] == {key: stats[key] for key in ("feedback", "online_accuracy", "confusion")}
    assert stats["shadow"] is None and report["shadow"] is None
    assert set(stats["drift"]) == {"score", "features", "threshold", "images", "drifted"}
    assert stats["drift"]["images"] == 9 and not stats["drift"]["drifted"]  # too few to say
    assert set(stats["drift"]["features"]) == set(drift.FEATURES) and stats["drift"]["threshold"] == 0.25
    metrics = requests.get(live.url("/metrics"), timeout=30).text
    assert f'mnist_feedback_unknown_total{{model="{model}"}} 1.0' in metrics
    assert f'mnist_predictions_logged_total{{kind="live",model="{model}"}}' in metrics
    labels = f'{{model="{model}",version="{version}"}}'
    gauges = scrape_until(live, f"mnist_online_accuracy{labels}")
    assert sample(gauges, f"mnist_online_accuracy{labels}") == pytest.approx(5 / 7)
    assert sample(gauges, f"mnist_drift_score{labels}") == pytest.approx(stats["drift"]["score"])


def test_the_monitor_shows_the_window_of_the_last_labels_and_the_totals(live: Live) -> None:
    model = model_name()
    version = live.publish(model, 9)  # answers 9, always
    images = np.random.default_rng(9).integers(0, 256, (1000, mlp.INPUT_SIZE), dtype=np.uint8)
    for request_id in ("right", "wrong"):
        assert live.predict(model, images, {"X-Request-Id": request_id}).status_code == 200
    count = live.keys.logged_count(model)
    wait_for(lambda: int(live.registry.redis.get(count) or 0) >= 2000, 30, "2,000 logged predictions")
    # The first 1,000 right, then 1,000 wrong: the window (MNIST_FEEDBACK_WINDOW, 1,000) holds the last.
    for request_id, label in (("right", 9), ("wrong", 0)):
        r = live.feedback(model, [(f"{request_id}/{i}", label) for i in range(1000)])
        assert r.status_code == 200 and r.json()["accepted"] == 1000, r.text
    report = live.monitor(model)
    stats = report["versions"][str(version)]
    assert report["window"] == 1000 and stats["requests"] == 2000
    assert stats["feedback"] == 1000 and stats["online_accuracy"] <= 0.5
    assert stats["online_accuracy"] == 0.0 and stats["confusion"][0][9] == 1000
    total = stats["total"]
    assert total["feedback"] == 2000 and total["online_accuracy"] == pytest.approx(0.5, abs=1e-9)
    assert total["confusion"][9][9] == 1000 and total["confusion"][0][9] == 1000
    series = f'mnist_online_accuracy{{model="{model}",version="{version}"}}'
    assert sample(scrape_until(live, series), series) == 0.0  # the gauge follows the window


def scrape_until(live: Live, series: str) -> str:
    """Scrape /metrics until it shows `series` (the monitor's gauges are kept a few seconds)."""

    def scrape() -> str | None:
        text = requests.get(live.url("/metrics"), timeout=30).text
        return text if f"\n{series} " in text else None

    return wait_for(scrape, 15, series, interval=0.5)


def sample(text: str, series: str) -> float:
    """Return the value of one series in a Prometheus text exposition."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{series} not in /metrics")


def test_feedback_refusals(live: Live) -> None:
    model = model_name()
    live.publish(model, 5)
    assert live.feedback(model, [("a", 1)], auth=False).status_code == 401
    assert live.feedback("nosuchmodel", [("a", 1)]).status_code == 404
    for labels in ([], [("a", 10)], [("bad id", 1)], [("a", 1)] * 1001):
        r = live.feedback(model, labels)
        assert r.status_code == 400, r.text
        assert r.json()["code"] == 400 and r.json()["message"]
    url = live.url(f"/v1/models/{model}/feedback")
    for body in (b"[]", b'{"labels": [{"request_id": "a"}]}', b'{"labels": [], "x": 1}', b"not json"):
        r = requests.post(url, data=body, headers={**live.predict_auth, "Content-Type": "application/json"})
        assert r.status_code == 400, (body, r.text)
    text = requests.post(url, data=b"{}", headers={**live.predict_auth, "Content-Type": "text/plain"})
    assert text.status_code == 415


def test_log_reads_are_validated(live: Live) -> None:
    model = model_name()
    live.publish(model, 6)
    route = f"/v1/models/{model}/predictions"
    for params in (
        {"limit": 0},
        {"limit": 1001},
        {"since": -1},
        {"version": "x"},
        {"before": "x"},
    ):
        r = live.get(route, **params)
        assert r.status_code == 400, (params, r.text)
    assert live.get("/v1/models/nosuchmodel/predictions").status_code == 404
    assert live.get("/v1/models/nosuchmodel/monitor").status_code == 404
    assert requests.get(live.url(route), timeout=30).status_code == 401  # a predict token is set
    empty = live.get(route).json()
    assert empty == {"model": model, "predictions": [], "next": None}


# --- shadows -----------------------------------------------------------------------------------------
def test_a_shadow_is_run_on_live_traffic_and_its_agreement_counted(live: Live) -> None:
    model = model_name()
    served = live.publish(model, 7)
    agreeing = live.publish(model, 7)
    live.registry.set_alias(model, "production", served)
    route = live.url(f"/v1/models/{model}/shadow")
    assert requests.put(route, json={"version": agreeing}, timeout=30).status_code == 401
    assert requests.put(route, json={"version": 99}, headers=live.write_auth, timeout=30).status_code == 404
    bad = requests.put(route, json={"version": agreeing, "sample": 2}, headers=live.write_auth, timeout=30)
    assert bad.status_code == 400
    r = requests.put(route, json={"version": agreeing, "sample": 1}, headers=live.write_auth, timeout=30)
    assert r.status_code == 200 and r.json() == {"model": model, "version": agreeing, "sample": 1.0}
    assert live.monitor(model)["shadow"] == {"version": agreeing, "sample": 1.0}

    def shadowed() -> dict[str, Any] | None:
        # Both workers learn the shadow (event or poll); keep sending until each has run it.
        answer = live.predict(model, IMAGES[:2])
        assert answer.status_code == 200 and answer.json()["model_version"] == served  # never the shadow's
        stats = live.monitor(model)["versions"][str(agreeing)]["shadow"]
        return stats if stats and stats["compared"] >= 20 else None

    stats = wait_for(shadowed, 20, "the shadow's answers", interval=0.05)
    assert stats["agreement"] == 1.0
    series = f'mnist_shadow_agreement{{model="{model}",version="{agreeing}"}}'
    gauges = scrape_until(live, series)
    assert sample(gauges, series) == 1.0
    shadow_entries = live.logged(model, 1, version=agreeing)
    assert {e["kind"] for e in shadow_entries} == {"shadow"}
    assert live.monitor(model)["versions"][str(agreeing)]["requests"] == 0  # it served nothing

    gone = requests.delete(route, headers=live.write_auth, timeout=30)
    assert gone.status_code == 204
    assert requests.delete(route, headers=live.write_auth, timeout=30).status_code == 404
    assert live.monitor(model)["shadow"] is None

    def stopped() -> bool:
        before = live.monitor(model)["versions"][str(agreeing)]["shadow"]["compared"]
        for _ in range(4):
            live.predict(model, IMAGES[:1])
        time.sleep(0.3)  # the recorders' flush interval, and then some
        return live.monitor(model)["versions"][str(agreeing)]["shadow"]["compared"] == before

    wait_for(stopped, 20, "the shadow to stop")


def test_the_monitor_gauges_are_read_once_per_interval_and_survive_a_failing_read() -> None:
    calls: list[int] = []
    report = {"online_accuracy": 0.5, "drift": None, "shadow": {"compared": 4, "agreement": 0.75}}

    def read() -> list[tuple[str, str, dict[str, Any]]]:
        calls.append(1)
        if len(calls) > 1:
            raise redis.ConnectionError("gone")
        return [("m", "3", report)]

    collector = MonitorCollector(read)
    first = {f.name: f.samples for f in collector.collect()}
    again = {f.name: f.samples for f in collector.collect()}
    assert len(calls) == 1 and first == again  # kept between scrapes
    assert [s.value for s in first["mnist_online_accuracy"]] == [0.5]
    assert first["mnist_drift_score"] == []  # no reference: no sample
    assert [(s.labels, s.value) for s in first["mnist_shadow_agreement"]] == [
        ({"model": "m", "version": "3"}, 0.75)
    ]
    collector._read_at -= MONITOR_CACHE_SECONDS  # later: read again, and Redis is away
    assert all(f.samples == [] for f in collector.collect()) and len(calls) == 2


def test_the_python_client_closes_the_loop(live: Live) -> None:
    model = model_name()
    served, shadow = live.publish(model, 8), live.publish(model, 8)
    live.registry.set_alias(model, "production", served)
    token = live.write_auth["Authorization"].removeprefix("Bearer ")
    predict_token = live.predict_auth["Authorization"].removeprefix("Bearer ")
    client = Client(live.server.url, token=token, predict_token=predict_token)
    with client:
        result = client.predict(IMAGES[:7], model=model, batch_size=3)  # requests of 3, 3 and 1 images
        assert len(result.request_ids) == 7 and len(set(result.request_ids)) == 7
        assert result.request_ids[0].endswith("/0") and "/" not in result.request_ids[6]
        live.logged(model, 7)
        truth = [8, 8, 8, 8, 8, 1, 2]
        assert client.feedback(model, list(zip(result.request_ids, truth, strict=True))) == {
            "accepted": 7,
            "unknown": 0,
            "repeated": 0,
        }
        report = client.monitor(model)["versions"][str(served)]
        assert report["online_accuracy"] == pytest.approx(5 / 7) and report["requests"] == 7
        page = client.predictions(model, limit=2, pixels=True)
        assert len(page["predictions"]) == 2 and len(page["predictions"][0]["pixels"]) == 784
        assert client.predictions(model, before=page["next"], limit=1000)["next"] is None
        # The loop closes: the labelled live predictions become a dataset (shared/feedback_dataset.py).
        dataset = client.dataset_from_feedback(f"seen-{model}", model=model)
        assert dataset["train_size"] + dataset.get("test_size", 0) == 7, dataset
        assert client.set_shadow(model, shadow, 0.5) == {"model": model, "version": shadow, "sample": 0.5}
        client.delete_shadow(model)
        assert client.monitor(model)["shadow"] is None


def test_a_graceful_stop_writes_what_the_recorder_still_holds(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    env = new_env(redis_url)
    env.extra["MNIST_LOG_SAMPLE"] = "1"
    client = redis.Redis.from_url(redis_url)
    keys = Keys(env.prefix)
    try:
        params = mlp.init_params((mlp.INPUT_SIZE, 8, mlp.CLASSES), np.random.default_rng(0))
        Registry(client, keys).publish("mnist", serialization.model_to_bytes(params, {}), {})
        server = start_server(env, tmp_path_factory.mktemp("stop"), workers=1)
        url = f"{server.url}/v1/models/mnist:predict"
        answers = [requests.post(url, data=IMAGES[:1].tobytes(), headers=RAW, timeout=30) for _ in range(50)]
        assert all(a.status_code == 200 for a in answers)
        server.process.stop()  # SIGTERM at once: the last answers are still queued
        assert client.xlen(keys.prediction_log("mnist")) == 50
    finally:
        delete_prefix(client, env.prefix)
        client.close()
