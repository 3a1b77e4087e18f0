"""The loop closed end to end: train, canary, watch, roll back by the rule, retrain on feedback, promote.

Through gunicorn (two processes), real Redis and a real RQ worker, as a user would: v1 trains on
a good recipe and goes to production; v2 trains on a deliberately bad one (one full-batch step of
a 4-unit network) and is canaried at 20 %; 2,000 labelled digits of mnist-sample are predicted one
request each (routing is per request), every answer logged (MNIST_LOG_SAMPLE=1), and their true
labels sent as feedback. The automatic rule rolls v2 back. A dataset built from the feedback
(merged with mnist-sample) trains v3, whose lineage names its digest; v3 is canaried at 50 % on
the 1,000 held-out digits and the rule promotes it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from tests.api_helpers import Live, live_stack, sample
from tests.live_fixtures import start_worker, wait_for

pytestmark = pytest.mark.slow

MODEL = "loop"
#: The rule of the test: decide after 200 labels each, allow 2 points of accuracy, drift up to 0.25.
RULE = {"min_feedback": 200, "max_accuracy_drop": 0.02, "max_drift": 0.25}
#: Seconds the rule may take to decide once the feedback is in (it runs every 0.5 s here).
DECIDE_TIMEOUT = 20.0
GOOD = {"hidden": [32], "optimizer": "adam", "epochs": 2}  # ~88 % on mnist-sample's test split
BAD = {"hidden": [4], "optimizer": "gd", "iterations": 1}  # ~15 %
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def live(redis_url: str, tmp_path: Path) -> Iterator[Live]:
    """gunicorn (2 processes) logging every answer and running the rule every 0.5 s, and one worker."""
    settings = {"MNIST_LOG_SAMPLE": "1", "MNIST_DRIFT_SAMPLE": "1", "MNIST_ROLLOUT_INTERVAL": "0.5"}
    with live_stack(redis_url, tmp_path, workers=2, **settings) as stack:
        worker = start_worker(stack.env, tmp_path)
        try:
            yield stack
        finally:
            worker.stop()


def train(live: Live, **spec: Any) -> int:
    """Train a version of MODEL through the API and the worker; return its number."""
    job = live.submit({"model": MODEL, **spec})
    view = live.wait(job["id"])
    assert view["status"] == "finished", view
    return int(view["result"]["version"])


def rollout(live: Live, **body: Any) -> dict[str, Any]:
    """POST a rollout decision by hand; return the alias's state."""
    r = live.post(f"/v1/models/{MODEL}/rollout", json=body, headers=live.auth)
    assert r.status_code == 200, r.text
    return r.json()


def monitor(live: Live) -> dict[str, Any]:
    """Return the monitor's report of each version."""
    r = live.get(f"/v1/models/{MODEL}/monitor")
    assert r.status_code == 200, r.text
    return r.json()["versions"]


def predict_and_label(live: Live, images: np.ndarray, labels: np.ndarray) -> dict[int, int]:
    """Predict each image in a request of its own, send every true label; return requests per version."""
    served: dict[int, int] = {}
    truth = []
    before = sum(v["requests"] for v in monitor(live).values())
    url = f"{live.url}/v1/models/{MODEL}:predict"
    for image, label in zip(images, labels, strict=True):
        r = live.http.post(url, data=orjson.dumps({"instances": [image.tolist()]}), headers=JSON, timeout=15)
        assert r.status_code == 200, r.text
        body = r.json()
        served[body["model_version"]] = served.get(body["model_version"], 0) + 1
        truth.append({"request_id": body["request_id"], "label": int(label)})
    wait_for(  # the recorders write the log off the request path
        lambda: sum(v["requests"] for v in monitor(live).values()) - before >= len(images),
        15,
        "the recorders to log every answer",
    )
    for start in range(0, len(truth), 1000):
        r = live.post(f"/v1/models/{MODEL}/feedback", json={"labels": truth[start : start + 1000]})
        assert r.status_code == 200, r.text
        assert r.json()["accepted"] == len(truth[start : start + 1000]), r.json()
    return served


def decided(live: Live) -> dict[str, Any]:
    """Wait until the production alias runs no canary; return the newest decision."""
    state = wait_for(
        lambda: (s := live.get(f"/v1/models/{MODEL}/rollout").json())["canary"] is None and s,
        DECIDE_TIMEOUT,
        "the rule to decide",
        interval=0.2,
    )
    return state["decisions"][0]


def figures(reason: str) -> tuple[float, float]:
    """Return the canary's and the base's online accuracies as the rule's reason states them."""
    found = re.match(r"canary v\d+ online accuracy ([\d.]+) over \d+ labels, v\d+ ([\d.]+) over \d+", reason)
    assert found, reason
    return float(found[1]), float(found[2])


def test_train_canary_roll_back_retrain_on_feedback_promote(live: Live) -> None:
    data = sample()
    v1 = train(live, dataset="mnist-sample", **GOOD)
    assert live.put(f"/v1/models/{MODEL}/aliases/production", json={"version": v1}, headers=live.auth).ok
    v2 = train(live, dataset="mnist-sample", **BAD)
    rollout(live, action="canary", version=v2, weight=0.2, reason="try the new recipe")
    r = live.put(f"/v1/models/{MODEL}/rollout/rule", json=RULE, headers=live.auth)
    assert r.status_code == 200 and r.json()["now"]["reason"].startswith("waiting"), r.text

    served = predict_and_label(live, data.x_train[:2000], data.y_train[:2000])
    assert set(served) == {v1, v2} and sum(served.values()) == 2000
    assert 200 <= served[v2] <= 600, served  # about 20 %

    back = decided(live)
    assert (back["action"], back["version"], back["actor"]) == ("rollback", v2, "rule"), back
    assert "worse, more than the 0.02 allowed" in back["reason"]
    canary_accuracy, base_accuracy = figures(back["reason"])
    assert canary_accuracy < base_accuracy - 0.02
    seen = monitor(live)
    assert seen[str(v2)]["online_accuracy"] < seen[str(v1)]["online_accuracy"]
    assert seen[str(v1)]["total"]["feedback"] + seen[str(v2)]["total"]["feedback"] == 2000
    assert live.get(f"/v1/models/{MODEL}/aliases/production").json()["version"] == v1

    # Close the loop: the labelled traffic, merged with mnist-sample, trains v3.
    r = live.post(
        "/v1/datasets/seen/from-feedback", json={"model": MODEL, "merge": "mnist-sample"}, headers=live.auth
    )
    assert r.status_code == 201, r.text
    dataset = r.json()
    v3 = train(live, dataset="seen", hidden=[64], optimizer="adam", epochs=3)
    lineage = live.get(f"/v1/models/{MODEL}/versions/{v3}").json()["lineage"]
    assert lineage["dataset"]["name"] == "seen" and lineage["dataset"]["digest"] == dataset["digest"]

    rollout(live, action="canary", version=v3, weight=0.5, reason="retrained on feedback")
    served = predict_and_label(live, data.x_test, data.y_test)
    assert served.get(v3, 0) >= 300, served  # about half of 1,000

    promoted = decided(live)
    assert (promoted["action"], promoted["version"], promoted["actor"]) == ("promote", v3, "rule"), promoted
    assert "not worse by more than 0.02; drift score" in promoted["reason"]
    assert live.get(f"/v1/models/{MODEL}/aliases/production").json()["version"] == v3
    actions = [
        (d["action"], d["version"], d["actor"])
        for d in live.get(f"/v1/models/{MODEL}/rollout").json()["decisions"]
    ]
    assert actions[:4] == [
        ("promote", v3, "rule"),
        ("canary", v3, "api"),
        ("rollback", v2, "rule"),
        ("canary", v2, "api"),
    ]
