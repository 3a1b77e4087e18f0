"""Traffic splits: the pure rules (shared/splits.py) and the registry's splits on a real Redis."""

from __future__ import annotations

import math
import uuid
from collections import Counter

import pytest
import redis

from shared import splits
from shared.errors import InvalidInput, ModelNotFound, RolloutConflict, VersionInUse, VersionNotFound
from shared.registry import DECISIONS_MAXLEN, Registry
from tests.test_registry import blob_of, next_event


# --- the pure rules ----------------------------------------------------------------------------
def test_normalize_scales_weights_and_reads_json_keys() -> None:
    assert splits.normalize({"4": 9, "5": 1}) == {4: 0.9, 5: 0.1}
    assert splits.normalize({5: 0.25, 4: 0.25}) == {4: 0.5, 5: 0.5}
    assert list(splits.normalize({7: 1, 2: 1, 3: 2})) == [2, 3, 7]
    assert math.isclose(sum(splits.normalize({i: 1 / 3 for i in range(1, 11)}).values()), 1.0)


@pytest.mark.parametrize(
    ("weights", "why"),
    [
        ({}, "at least one version"),
        ([4, 5], "at least one version"),
        ({4: 0}, "must be > 0"),
        ({4: -1, 5: 2}, "must be > 0"),
        ({4: float("nan")}, "must be > 0"),
        ({4: float("inf")}, "must be > 0"),
        ({4: "0.5"}, "must be a number"),
        ({4: True}, "must be a number"),
        ({"four": 1}, "invalid version"),
        ({0: 1}, "invalid version"),
        ({"4": 1, 4: 1}, "named twice"),
        ({i: 1 for i in range(1, 12)}, "at most 10 versions"),
    ],
)
def test_normalize_refuses_what_is_not_a_split(weights: object, why: str) -> None:
    with pytest.raises(InvalidInput, match=why):
        splits.normalize(weights)  # type: ignore[arg-type]


def test_primary_is_the_heaviest_then_the_oldest() -> None:
    assert splits.primary({4: 0.8, 5: 0.2}) == 4
    assert splits.primary({4: 0.2, 5: 0.8}) == 5
    assert splits.primary({4: 0.5, 5: 0.5}) == 4


def binomial_tolerance(n: int, p: float, sigmas: float = 5.0) -> float:
    """Return `sigmas` standard deviations of a binomial count (n, p)."""
    return sigmas * math.sqrt(n * p * (1 - p))


def test_routing_keys_follow_the_weights_and_stick() -> None:
    router = splits.Router({4: 0.8, 5: 0.2})
    keys = [uuid.UUID(int=i).hex for i in range(10_000)]
    first = [router.pick("mnist", key) for key in keys]
    counts = Counter(first)
    assert set(counts) == {4, 5}
    assert abs(counts[5] - 2_000) <= binomial_tolerance(10_000, 0.2)
    # Sticky: the same key, the same version, every time and in a new router of the same split.
    again = splits.Router(splits.normalize({"5": 1, "4": 4}))
    assert [again.pick("mnist", key) for key in keys] == first
    # Another model hashes the keys elsewhere: its canary is not the same clients'.
    other = [router.pick("fashion", key) for key in keys]
    assert other != first


def test_routing_without_a_key_is_random_with_the_weights() -> None:
    router = splits.Router({1: 0.5, 2: 0.3, 3: 0.2})
    counts = Counter(router.pick("mnist", None) for _ in range(10_000))
    for version, weight in {1: 0.5, 2: 0.3, 3: 0.2}.items():
        assert abs(counts[version] - 10_000 * weight) <= binomial_tolerance(10_000, weight)


def test_router_returns_its_targets() -> None:
    router = splits.Router({4: 0.5, 5: 0.5}, ["four", "five"])
    assert {router.pick("m", str(i)) for i in range(200)} == {"four", "five"}
    with pytest.raises(ValueError):
        splits.Router({4: 0.5, 5: 0.5}, ["four"])


# --- the registry --------------------------------------------------------------------------------
def three_versions(registry: Registry) -> None:
    for tag in "abc":
        registry.publish("mnist", blob_of(tag), {})


def test_set_split_stores_weights_and_a_primary_alias(registry: Registry) -> None:
    three_versions(registry)
    assert registry.set_split("mnist", "production", {"1": 9, "2": 1}) == {1: 0.9, 2: 0.1}
    assert registry.routes("mnist") == ({"production": 1}, {"production": {1: 0.9, 2: 0.1}})
    assert registry.splits("mnist") == {"production": {1: 0.9, 2: 0.1}}
    # Readers of aliases alone find the primary: resolve, the default.
    assert registry.resolve("mnist") == 1
    assert registry.resolve("mnist", alias="production") == 1


def test_a_plain_alias_clears_the_split_and_one_version_is_plain(registry: Registry) -> None:
    three_versions(registry)
    registry.set_split("mnist", "production", {1: 0.5, 2: 0.5})
    registry.set_split("mnist", "staging", {2: 0.5, 3: 0.5})
    registry.set_alias("mnist", "production", 3)
    assert registry.routes("mnist") == ({"production": 3, "staging": 2}, {"staging": {2: 0.5, 3: 0.5}})
    assert registry.set_split("mnist", "staging", {"3": 0.7}) == {3: 1.0}
    assert registry.routes("mnist") == ({"production": 3, "staging": 3}, {})
    registry.set_split("mnist", "staging", {2: 0.5, 3: 0.5})
    registry.delete_alias("mnist", "staging")
    assert registry.routes("mnist") == ({"production": 3}, {})


def test_set_split_checks_everything_before_writing(registry: Registry) -> None:
    with pytest.raises(ModelNotFound):
        registry.set_split("mnist", "production", {1: 0.5, 2: 0.5})
    three_versions(registry)
    registry.set_split("mnist", "production", {1: 0.9, 2: 0.1})
    with pytest.raises(VersionNotFound, match="no version 9"):
        registry.set_split("mnist", "production", {1: 0.5, 9: 0.5})
    with pytest.raises(InvalidInput):
        registry.set_split("mnist", "production", {1: 0.5, 2: 0})
    with pytest.raises(InvalidInput):
        registry.set_split("mnist", "1", {1: 0.5, 2: 0.5})
    assert registry.splits("mnist") == {"production": {1: 0.9, 2: 0.1}}  # nothing half-written
    assert registry.decisions("mnist") == []


def test_versions_in_a_split_are_kept(registry: Registry) -> None:
    three_versions(registry)
    registry.set_split("mnist", "production", {1: 0.5, 2: 0.5})
    with pytest.raises(VersionInUse):
        registry.delete_version("mnist", 2)
    strict = Registry(registry.redis, registry.keys, retention=0)
    strict.publish("mnist", blob_of("d"), {})  # retention 0: every unaliased version but the latest goes
    assert [r.version for r in registry.versions("mnist")] == [1, 2, 4]


def test_a_split_is_announced_as_an_alias_event(registry: Registry) -> None:
    three_versions(registry)
    registry.set_alias("mnist", "production", 1)
    pubsub = registry.subscribe()
    try:
        registry.set_split("mnist", "production", {1: 0.8, 2: 0.2})
        event = next_event(pubsub)
        assert event == {
            "event": "alias",
            "model": "mnist",
            "alias": "production",
            "version": 1,
            "previous": 1,
            "split": {"1": 0.8, "2": 0.2},
        }
        registry.set_alias("mnist", "production", 1)  # the same version, but the split goes
        assert next_event(pubsub)["version"] == 1
        assert registry.splits("mnist") == {}
    finally:
        pubsub.close()


def test_decisions_are_written_with_the_move_newest_first(registry: Registry) -> None:
    three_versions(registry)
    registry.set_alias("mnist", "production", 1)
    canary = {"action": "canary", "version": 2, "reason": "new recipe", "actor": "api"}
    registry.set_split("mnist", "production", {1: 0.8, 2: 0.2}, decision=canary)
    rollback = {"action": "rollback", "version": 2, "actor": "rule"}
    registry.set_alias("mnist", "production", 1, decision=rollback)
    found = registry.decisions("mnist")
    assert [(d["action"], d["version"], d["actor"], d["split"]) for d in found] == [
        ("rollback", 2, "rule", {"1": 1.0}),
        ("canary", 2, "api", {"1": 0.8, "2": 0.2}),
    ]
    assert found[1]["reason"] == "new recipe" and found[0]["reason"] == ""
    assert all(d["alias"] == "production" and d["time"].endswith("+00:00") for d in found)
    assert registry.decisions("mnist", count=1) == found[:1]
    # A refused move records nothing.
    with pytest.raises(VersionNotFound):
        registry.set_alias("mnist", "production", 9, decision=canary)
    assert len(registry.decisions("mnist")) == 2


def test_the_decisions_stream_is_bounded(registry: Registry, redis_client: redis.Redis) -> None:
    three_versions(registry)
    decision = {"action": "split", "version": 1, "actor": "api"}
    pipe_size = DECISIONS_MAXLEN + 500
    for i in range(pipe_size):
        registry.set_alias("mnist", "production", 1 + i % 2, decision=decision)
    # MAXLEN ~ trims whole nodes: about the bound, never the whole history.
    assert DECISIONS_MAXLEN <= redis_client.xlen(registry.keys.decisions("mnist")) < pipe_size


def test_a_move_expecting_a_state_is_refused_once_it_changed(registry: Registry) -> None:
    three_versions(registry)
    with pytest.raises(RolloutConflict):  # expected set, but it is not
        registry.set_alias("mnist", "production", 1, expect={2: 1.0})
    registry.set_alias("mnist", "production", 1, expect={})
    registry.set_split("mnist", "production", {1: 0.8, 2: 0.2}, expect={1: 1.0})
    decision = {"action": "promote", "version": 2, "actor": "api"}
    with pytest.raises(RolloutConflict):  # read as a split of other weights
        registry.set_split("mnist", "production", {2: 1.0}, decision=decision, expect={1: 0.5, 2: 0.5})
    with pytest.raises(RolloutConflict):  # read before the split
        registry.set_split("mnist", "production", {1: 0.5, 3: 0.5}, decision=decision, expect={1: 1.0})
    assert registry.splits("mnist") == {"production": {1: 0.8, 2: 0.2}} and registry.decisions("mnist") == []
    registry.set_split("mnist", "production", {2: 1.0}, decision=decision, expect={1: 0.8, 2: 0.2})
    assert registry.routes("mnist") == ({"production": 2}, {})
    assert [d["action"] for d in registry.decisions("mnist")] == ["promote"]
