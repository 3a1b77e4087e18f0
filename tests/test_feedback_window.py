"""The rolling feedback window: the last MNIST_FEEDBACK_WINDOW labels of each version, on a real Redis.

Predictions are logged by the real recorder (drained by hand), labelled through `Feedback.add`,
and read back through `shared.monitor`, as the monitor route reads them.
"""

from __future__ import annotations

import numpy as np
import pytest
import redis

from services.serving.service import PredictionService
from shared import mlp
from shared.feedback import Feedback, window_generation
from shared.keys import Keys
from shared.monitor import monitor, read_windows
from shared.registry import Registry
from tests.test_recorder import publish, service

IMAGES = np.random.default_rng(12).integers(0, 256, (1000, mlp.INPUT_SIZE), dtype=np.uint8)
LOG = 10_000  # MNIST_LOG_MAXLEN of these tests: every id stays known


def logged(svc: PredictionService, count: int, request_id: str, version: int | None = None) -> list[str]:
    """Predict `count` images (one request), write them to the log; return their request ids."""
    svc.predict("m", IMAGES[:count], version=version, request_id=request_id)
    svc.recorder.drain()
    return [f"{request_id}/{i}" for i in range(count)] if count > 1 else [request_id]


def window_size(labels: int, window: int) -> int:
    """Return how many of `labels` labels a window of `window` holds (lazy rotation, W/2 a generation)."""
    half = window_generation(window)
    return labels if labels <= 2 * half else half + (labels - 1) % half + 1


def test_after_w_plus_k_labels_the_window_holds_only_the_recent_ones(
    registry: Registry, redis_client: redis.Redis, keys: Keys
) -> None:
    version = publish(registry, 7)  # answers 7, always
    svc = service(registry, log_maxlen=LOG)
    right, wrong = logged(svc, 1000, "right"), logged(svc, 1000, "wrong")
    feedback = Feedback(redis_client, keys, LOG, window=1000)
    assert feedback.add("m", [(i, 7) for i in right]).accepted == 1000
    # 250 wrong after 1,000 right: the window is the last 750 (two generations: 500 right, 250 wrong).
    assert feedback.add("m", [(i, 3) for i in wrong[:250]]).accepted == 250
    report = monitor(registry, "m", 0.25)["versions"][str(version)]
    assert report["feedback"] == 750 and report["online_accuracy"] == pytest.approx(500 / 750)
    assert report["total"]["feedback"] == 1250 and report["total"]["online_accuracy"] == pytest.approx(0.8)

    assert feedback.add("m", [(i, 3) for i in wrong[250:]]).accepted == 750
    report = monitor(registry, "m", 0.25)["versions"][str(version)]
    assert report["feedback"] == 1000 and report["online_accuracy"] == 0.0  # the last 1,000: all wrong
    assert report["confusion"][3][7] == 1000 and report["confusion"][7][7] == 0
    assert sum(map(sum, report["confusion"])) == 1000
    total = report["total"]
    assert total["feedback"] == 2000 and total["online_accuracy"] == pytest.approx(0.5)
    assert total["confusion"][7][7] == 1000 and total["confusion"][3][7] == 1000
    # Bounded: two hashes of at most feedback, correct and the 100 cells, whatever the traffic.
    for name in (keys.window_current("m", version), keys.window_previous("m", version)):
        assert redis_client.hget(name, "feedback") == b"500" and redis_client.hlen(name) <= 102
    found = list(redis_client.scan_iter(match=f"{keys.prefix}*window*"))
    assert len(found) == 2


@pytest.mark.parametrize("window", [4, 5, 1, 2])
def test_the_window_rotates_at_each_half_and_holds_the_last_labels(
    registry: Registry, redis_client: redis.Redis, keys: Keys, window: int
) -> None:
    version = publish(registry, 7)
    svc = service(registry, log_maxlen=LOG)
    ids = logged(svc, 23, "one-by-one")
    feedback = Feedback(redis_client, keys, LOG, window=window)
    truth = [(3 * i) % 10 for i in range(len(ids))]  # a label sequence whose counts tell where it starts
    for n, (request_id, label) in enumerate(zip(ids, truth, strict=True), start=1):
        assert feedback.add("m", [(request_id, label)]).accepted == 1
        held = window_size(n, window)
        report = monitor(registry, "m", 0.25)["versions"][str(version)]
        assert report["feedback"] == held, n
        expected = np.bincount(truth[n - held : n], minlength=10)
        assert [row[7] for row in report["confusion"]] == expected.tolist(), n
        assert report["online_accuracy"] == pytest.approx(expected[7] / held)
        assert report["total"]["feedback"] == n
    # W/2 a generation (rounded down, at least 1): never more than W labels (2 when W = 1).
    largest = max(window_size(n, window) for n in range(1, 100))
    assert largest == 2 * window_generation(window) <= max(window, 2)


def test_a_call_crossing_several_rotations_equals_one_label_at_a_time(
    registry: Registry, redis_client: redis.Redis, keys: Keys
) -> None:
    version = publish(registry, 7)
    svc = service(registry, log_maxlen=LOG)
    ids = logged(svc, 37, "batch")
    truth = [(7 * i) % 10 for i in range(len(ids))]
    Feedback(redis_client, keys, LOG, window=6).add("m", list(zip(ids, truth, strict=True)))
    report = monitor(registry, "m", 0.25)["versions"][str(version)]
    held = window_size(37, 6)  # 3 + (36 % 3) + 1 = 4
    assert report["feedback"] == held == 4
    assert [row[7] for row in report["confusion"]] == np.bincount(truth[-held:], minlength=10).tolist()


def test_a_repeated_label_counts_once_in_the_window_too(
    registry: Registry, redis_client: redis.Redis, keys: Keys
) -> None:
    version = publish(registry, 7)
    svc = service(registry, log_maxlen=LOG)
    ids = logged(svc, 6, "again")
    feedback = Feedback(redis_client, keys, LOG, window=4)
    first = feedback.add("m", [(ids[0], 7), (ids[0], 7), (ids[1], 7)])  # a duplicate within one call
    assert (first.accepted, first.repeated) == (2, 1)
    # Replayed, with another label, once the window has rotated: nothing moves.
    feedback.add("m", [(ids[2], 1), (ids[3], 1), (ids[4], 1)])
    before = monitor(registry, "m", 0.25)["versions"][str(version)]
    replayed = feedback.add("m", [(ids[0], 2), (ids[1], 7), (ids[4], 1)])
    assert (replayed.accepted, replayed.unknown, replayed.repeated) == (0, 0, 3)
    assert monitor(registry, "m", 0.25)["versions"][str(version)] == before
    assert before["feedback"] == 3 and before["total"]["feedback"] == 5  # the last 3: ids 2, 3, 4


def test_each_version_has_its_own_window(registry: Registry, redis_client: redis.Redis, keys: Keys) -> None:
    sevens, threes = publish(registry, 7), publish(registry, 3)
    svc = service(registry, log_maxlen=LOG)
    a, b = logged(svc, 10, "a", version=sevens), logged(svc, 3, "b", version=threes)
    # One call mixing both: v(sevens) rotates (10 labels, W = 4), v(threes) holds its 3.
    Feedback(redis_client, keys, LOG, window=4).add("m", [*[(i, 7) for i in a], *[(i, 1) for i in b]])
    windows = read_windows(registry, "m", [sevens, threes])
    assert windows[sevens]["feedback"] == 4 and windows[sevens]["correct"] == 4
    assert windows[threes] == {"feedback": 3, "confusion:1:3": 3}
    report = monitor(registry, "m", 0.25)["versions"]
    assert report[str(threes)]["online_accuracy"] == 0.0 and report[str(sevens)]["total"]["feedback"] == 10
    assert read_windows(registry, "m", [99]) == {99: {}}  # a version without feedback
