"""The recorder, the prediction log, feedback and the monitor against a real Redis (no HTTP).

Each test writes under its own key prefix (the `keys` fixture). The recorder is drained by hand
(`drain()`) where a test checks what one batch wrote, and runs its thread where a test checks
that it writes by itself.
"""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import pytest
import redis

from client.up import free_port
from services.serving.cache import ModelCache
from services.serving.metrics import DROPPED
from services.serving.recorder import Recorder, item_id, pause_after
from services.serving.service import PredictionService
from shared import drift, mlp, serialization
from shared import shadow as shadows
from shared.config import Settings
from shared.errors import InvalidInput, VersionNotFound
from shared.feedback import Feedback
from shared.keys import Keys
from shared.monitor import monitor, read_stats
from shared.prediction_log import PredictionLog
from shared.registry import Registry

RNG = np.random.default_rng(11)
IMAGES = RNG.integers(0, 256, (40, mlp.INPUT_SIZE), dtype=np.uint8)


def params(label: int) -> list[np.ndarray]:
    """Return a 784-8-10 network that answers `label` for every image."""
    p = mlp.init_params((mlp.INPUT_SIZE, 8, mlp.CLASSES), np.random.default_rng(label))
    p[-1][label] = 50.0
    return p


def publish(registry: Registry, label: int, profile: bool = True) -> int:
    """Publish a model answering `label`, with the profile of IMAGES as its training reference."""
    meta = {"profile": drift.profile(IMAGES, np.full(len(IMAGES), label))} if profile else {}
    return registry.publish("m", serialization.model_to_bytes(params(label), {}), meta)


def service(registry: Registry, **settings: object) -> PredictionService:
    """Return a prediction service on `registry`, threads not started."""
    base = dataclasses.replace(Settings(), **{"log_sample": 1.0, "drift_sample": 1.0, **settings})  # type: ignore[arg-type]
    return PredictionService(registry, base)


def dropped(reason: str) -> float:
    return DROPPED.labels(reason)._value.get()


def test_one_batch_logs_counts_and_profiles(
    registry: Registry, redis_client: redis.Redis, keys: Keys
) -> None:
    v1 = publish(registry, 3)
    svc = service(registry)
    one = svc.predict("m", IMAGES[:1], request_id="client-1")
    many = svc.predict("m", IMAGES[1:5])
    assert svc.recorder.pending() == 5
    assert svc.recorder.drain() == 5
    log = PredictionLog(redis_client, keys, 100).read("m", pixels=True)
    assert [e["request_id"] for e in log["predictions"]] == [
        *[f"{many.request_id}/{i}" for i in (3, 2, 1, 0)],
        "client-1",
    ]
    newest = log["predictions"][0]
    assert newest["pixels"] == IMAGES[4].tolist() and newest["label"] == 3 and newest["kind"] == "live"
    assert np.allclose(newest["probabilities"], many.probabilities[3])
    assert one.request_id == "client-1" and len(many.request_id) == 32
    stats = monitor(registry, "m", 0.25)["versions"][str(v1)]
    assert stats["requests"] == 5 and stats["feedback"] == 0 and stats["online_accuracy"] is None
    # Live images drawn like the reference: a small score, computed from the counters.
    assert stats["drift"]["score"] < stats["drift"]["threshold"] and not stats["drift"]["drifted"]


def test_sample_zero_counts_without_logging(
    registry: Registry, redis_client: redis.Redis, keys: Keys
) -> None:
    v1 = publish(registry, 1)
    svc = service(registry, log_sample=0.0)
    svc.predict("m", IMAGES[:7])
    svc.recorder.drain()
    assert redis_client.exists(keys.prediction_log("m")) == 0
    assert monitor(registry, "m", 0.25)["versions"][str(v1)]["requests"] == 7


def test_a_full_queue_drops_and_counts_without_blocking(registry: Registry) -> None:
    publish(registry, 2)
    svc = service(registry, recorder_queue=10)
    before = dropped("queue_full")
    svc.predict("m", IMAGES[:8])
    svc.predict("m", IMAGES[:8])  # 16 > 10: dropped, at once
    assert svc.recorder.pending() == 8
    assert dropped("queue_full") - before == 8
    # Dropped from the log, not from the counts: the version served 16 images.
    assert svc.recorder.drain() == 8
    assert read_stats(registry, "m", [1])[1]["requests"] == 16
    svc.predict("m", IMAGES[:12])  # larger than the whole queue: dropped with nothing queued
    assert svc.recorder.pending() == 0 and svc.recorder.drain() == 0
    assert read_stats(registry, "m", [1])[1]["requests"] == 28


def test_a_redis_outage_drops_batches_and_predictions_go_on(registry: Registry, keys: Keys) -> None:
    publish(registry, 4)
    svc = service(registry)
    svc.predict("m", IMAGES[:1])  # loads the model while Redis answers
    gone = redis.Redis(port=free_port(), socket_timeout=0.2, socket_connect_timeout=0.2)
    recorder = Recorder(gone, keys, svc.settings, svc.cache)
    svc.recorder = recorder
    before = dropped("redis")
    answer = svc.predict("m", IMAGES[:3])
    assert answer.labels.tolist() == [4, 4, 4]
    assert recorder.drain() == 3  # no exception: counted and dropped
    assert dropped("redis") - before == 3


def test_a_limited_drain_takes_the_oldest_images_first_and_slices_a_large_answer(
    registry: Registry, redis_client: redis.Redis, keys: Keys
) -> None:
    publish(registry, 5)
    svc = service(registry)
    for i in range(5):
        svc.predict("m", IMAGES[i : i + 1])
    big = svc.predict("m", IMAGES[:10], request_id="big")  # one answer of 10 images
    assert svc.recorder.drain(2) == 2 and svc.recorder.pending() == 13
    assert svc.recorder.drain(7) == 7 and svc.recorder.pending() == 6  # 3 single ones, 4 of the 10
    assert svc.recorder.drain(4) == 4 and svc.recorder.pending() == 2
    assert svc.recorder.drain() == 2 and svc.recorder.pending() == 0
    assert redis_client.xlen(keys.prediction_log("m")) == 15
    # Each slice's images were logged with their index in the whole answer, their own
    # probabilities and pixels, once each.
    logged = PredictionLog(redis_client, keys, 100).read("m", limit=100, pixels=True)["predictions"]
    sliced = {e["request_id"]: e for e in logged if e["request_id"].startswith("big/")}
    assert sorted(sliced) == sorted(f"big/{i}" for i in range(10))
    for i in range(10):
        entry = sliced[f"big/{i}"]
        assert entry["pixels"] == IMAGES[i].tolist()
        np.testing.assert_allclose(entry["probabilities"], big.probabilities[i], rtol=1e-6)


def wait_logged(redis_client: redis.Redis, keys: Keys, count: int, timeout: float = 10.0) -> int:
    """Wait (at most `timeout` s) until model m's log holds `count` entries; return how many it holds."""
    deadline = time.monotonic() + timeout
    while (held := redis_client.xlen(keys.prediction_log("m"))) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    return held


def test_the_thread_writes_by_itself(registry: Registry, redis_client: redis.Redis, keys: Keys) -> None:
    publish(registry, 5)
    svc = service(registry)
    svc.recorder.start()
    try:
        svc.predict("m", IMAGES[:3])
        assert wait_logged(redis_client, keys, 3) == 3
    finally:
        svc.recorder.stop()


def test_record_never_waits_for_the_writer(registry: Registry) -> None:
    publish(registry, 6)
    svc = service(registry)
    answer = svc.predict("m", IMAGES[:1])
    with svc.recorder._lock:  # the writer is busy swapping the queue: record() waits only for this lock
        pass
    done = threading.Event()
    threading.Thread(target=lambda: (svc.recorder.record(answer, IMAGES[:1]), done.set())).start()
    assert done.wait(5)


def test_feedback_accuracy_confusion_unknown_and_repeated(
    registry: Registry, redis_client: redis.Redis, keys: Keys
) -> None:
    v1 = publish(registry, 7)
    svc = service(registry)
    answers = [svc.predict("m", IMAGES[i : i + 1]) for i in range(4)]
    batch = svc.predict("m", IMAGES[4:6])
    svc.recorder.drain()
    feedback = Feedback(redis_client, keys, 100)
    ids = [a.request_id for a in answers]
    counted = feedback.add(
        "m",
        [(ids[0], 7), (ids[1], 7), (ids[2], 1), (f"{batch.request_id}/1", 2), ("never-logged", 3)],
    )
    assert (counted.accepted, counted.unknown, counted.repeated) == (4, 1, 0)
    # A second label for a request already labelled counts nothing, whatever it says.
    again = feedback.add("m", [(ids[0], 0), (ids[3], 7)])
    assert (again.accepted, again.unknown, again.repeated) == (1, 0, 1)
    stats = monitor(registry, "m", 0.25)["versions"][str(v1)]
    assert stats["feedback"] == 5 and stats["online_accuracy"] == pytest.approx(3 / 5)
    assert stats["confusion"][7][7] == 3 and stats["confusion"][1][7] == 1 and stats["confusion"][2][7] == 1
    assert sum(map(sum, stats["confusion"])) == 5
    assert redis_client.hget(keys.feedback_labels("m"), ids[0]) == b"7"


@pytest.mark.parametrize(
    "labels",
    [[], [("x", 10)], [("x", -1)], [("x", True)], [("bad id!", 1)], [("a" * 65, 1)], [("x", 1)] * 1001],
)
def test_feedback_refuses_bad_labels(
    registry: Registry, redis_client: redis.Redis, keys: Keys, labels: list
) -> None:
    with pytest.raises(InvalidInput):
        Feedback(redis_client, keys, 100).add("m", labels)


def test_the_index_and_feedback_stay_bounded_and_old_ids_expire(
    registry: Registry, redis_client: redis.Redis, keys: Keys
) -> None:
    publish(registry, 8)
    maxlen = 10
    svc = service(registry, log_maxlen=maxlen)
    feedback = Feedback(redis_client, keys, maxlen)
    first = svc.predict("m", IMAGES[:1])
    svc.recorder.drain()
    assert feedback.add("m", [(first.request_id, 8)]).accepted == 1
    for i in range(30):
        answer = svc.predict("m", IMAGES[i : i + 1])
        svc.recorder.drain()
        feedback.add("m", [(answer.request_id, 8)])
        indexed = sum(redis_client.hlen(keys.prediction_index("m", g)) for g in range(10))
        assert indexed <= maxlen
        assert redis_client.hlen(keys.feedback_labels("m")) <= maxlen
    late = feedback.add("m", [(first.request_id, 8)])
    assert (late.accepted, late.unknown, late.repeated) == (0, 1, 0)  # expired
    # The stream is trimmed too (MAXLEN ~: Redis trims whole nodes, so a little above maxlen).
    assert redis_client.xlen(keys.prediction_log("m")) <= 31


def test_reading_the_log_by_version_time_and_pages(
    registry: Registry, redis_client: redis.Redis, keys: Keys
) -> None:
    v1, v2 = publish(registry, 1), publish(registry, 2)
    svc = service(registry)
    for i in range(6):
        svc.predict("m", IMAGES[i : i + 1], version=v1 if i % 2 else v2, request_id=f"r{i}")
        svc.recorder.drain()
        time.sleep(0.003)  # distinct milliseconds
    log = PredictionLog(redis_client, keys, 100)
    everything = log.read("m")
    assert [e["request_id"] for e in everything["predictions"]] == ["r5", "r4", "r3", "r2", "r1", "r0"]
    assert everything["next"] is None and "pixels" not in everything["predictions"][0]
    assert [e["request_id"] for e in log.read("m", version=v1)["predictions"]] == ["r5", "r3", "r1"]
    times = [e["time"] for e in everything["predictions"]]
    window = log.read("m", since=times[4], until=times[1])
    assert [e["request_id"] for e in window["predictions"]] == ["r4", "r3", "r2", "r1"]
    page = log.read("m", limit=2)
    assert [e["request_id"] for e in page["predictions"]] == ["r5", "r4"] and page["next"]
    following = log.read("m", limit=2, before=page["next"])
    assert [e["request_id"] for e in following["predictions"]] == ["r3", "r2"]
    for bad in ({"limit": 0}, {"limit": 1001}, {"before": "nonsense"}):
        with pytest.raises(InvalidInput):
            log.read("m", **bad)  # type: ignore[arg-type]


def test_a_shadow_answers_a_sample_and_its_agreement_is_counted(
    registry: Registry, redis_client: redis.Redis, keys: Keys
) -> None:
    v1, v2, v3 = publish(registry, 3), publish(registry, 3), publish(registry, 4)
    registry.set_alias("m", "production", v1)
    svc = service(registry)
    shadows.set_shadow(registry, "m", v2, 1.0)
    svc.cache.shadow("m")  # followed from now on
    svc.cache.refresh()  # what the poll does: reads the shadow and loads it
    assert svc.cache.shadow("m") == shadows.Shadow(v2, 1.0)
    svc.predict("m", IMAGES[:10])
    svc.recorder.drain()
    report = monitor(registry, "m", 0.25)["versions"]
    assert report[str(v2)]["shadow"] == {"compared": 10, "agreement": 1.0}
    assert report[str(v2)]["requests"] == 0 and report[str(v1)]["shadow"] is None
    kinds = [e["kind"] for e in PredictionLog(redis_client, keys, 100).read("m", version=v2)["predictions"]]
    assert kinds == ["shadow"] * 10
    # A shadow that disagrees, on half the images (on average), then none once cleared.
    shadows.set_shadow(registry, "m", v3, 0.5)
    svc.cache.refresh()
    svc.predict("m", IMAGES[:40])
    svc.recorder.drain()
    shadowed = monitor(registry, "m", 0.25)["versions"][str(v3)]["shadow"]
    assert 0 < shadowed["compared"] < 40 and shadowed["agreement"] == 0.0
    assert shadows.clear_shadow(registry, "m") and not shadows.clear_shadow(registry, "m")
    svc.cache.refresh()
    assert svc.cache.shadow("m") is None


def test_drift_is_none_without_a_reference_and_high_when_traffic_shifts(registry: Registry) -> None:
    bare = publish(registry, 2, profile=False)
    svc = service(registry)
    svc.predict("m", IMAGES[:5], version=bare)
    referenced = publish(registry, 2)
    white = np.full((drift.MIN_IMAGES, mlp.INPUT_SIZE), 255, np.uint8)  # enough to count as drifted
    svc.predict("m", white, version=referenced)
    svc.recorder.drain()
    report = monitor(registry, "m", 0.25)["versions"]
    assert report[str(bare)]["drift"] is None
    assert report[str(referenced)]["drift"]["drifted"] and report[str(referenced)]["drift"]["score"] > 0.25


def test_item_ids() -> None:
    assert item_id("abc", 0, 1) == "abc" and item_id("abc", 3, 5) == "abc/3"


def test_the_cache_follows_shadows_only_of_models_asked_about(registry: Registry) -> None:
    v1 = publish(registry, 1)
    cache = ModelCache(registry, Settings())
    shadows.set_shadow(registry, "m", v1, 0.25)
    cache.refresh()
    assert cache._shadows == {}  # not followed yet: nothing asked about "m"
    # The first question reads the setting at once: a fresh process shadows its first requests.
    assert cache.shadow("m") == shadows.Shadow(v1, 0.25)
    assert v1 in cache.held("m")  # loaded and warmed before the recorder runs it
    shadows.clear_shadow(registry, "m")
    cache.refresh()  # followed from then on
    assert cache.shadow("m") is None


def test_setting_a_shadow_checks_the_version(registry: Registry) -> None:
    publish(registry, 1)
    with pytest.raises(VersionNotFound):
        shadows.set_shadow(registry, "m", 99, 0.5)
    with pytest.raises(InvalidInput):
        shadows.set_shadow(registry, "m", 1, 1.5)


def test_the_drift_profile_counts_a_sample_and_requests_count_all(registry: Registry) -> None:
    v1 = publish(registry, 3)
    svc = service(registry, drift_sample=0.5, log_sample=0.0)
    for _ in range(10):
        svc.predict("m", IMAGES)
    svc.recorder.drain()
    stats = read_stats(registry, "m", [v1])[v1]
    assert stats["requests"] == 400
    assert 120 < drift.count(drift.from_counters(stats)) < 280  # about half, whatever the draw


@pytest.mark.parametrize(
    ("elapsed", "share", "pause"), [(0.2, 1.0, 0.0), (0.2, 0.5, 0.2), (0.2, 0.05, 3.8), (0.1, 0.0, 9.9)]
)
def test_the_thread_pauses_to_keep_its_share_of_the_time(elapsed: float, share: float, pause: float) -> None:
    assert pause_after(elapsed, share) == pytest.approx(pause)


def test_a_stop_during_the_pause_still_writes_what_is_queued(
    registry: Registry, redis_client: redis.Redis, keys: Keys
) -> None:
    publish(registry, 5)
    svc = service(registry, recorder_share=0.01)  # each drain is followed by 99 times its length
    svc.recorder.start()
    try:
        svc.predict("m", IMAGES[:3])
        wait_logged(redis_client, keys, 3)
        svc.predict("m", IMAGES[:2])  # queued while the thread pauses (or about to)
    finally:
        svc.recorder.stop()
    assert redis_client.xlen(keys.prediction_log("m")) == 5
