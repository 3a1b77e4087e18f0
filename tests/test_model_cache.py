"""The model cache in-process, on a real Redis: defaults, pins, aliases, hot reload, refusals, outages."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import redis
from prometheus_client import REGISTRY
from redis.backoff import NoBackoff
from redis.retry import Retry

from services.serving.cache import LoadedModel, ModelCache
from shared import mlp, serialization
from shared.config import Settings
from shared.errors import AliasNotFound, InvalidInput, ModelNotFound, ServiceUnavailable, VersionNotFound
from shared.keys import Keys
from shared.registry import Registry
from tests.live_fixtures import free_port
from tests.redis_fixtures import delete_prefix

#: Hidden units of the test models: small, so publishing and loading take milliseconds.
HIDDEN = 16


def make_params(seed: int, label: int | None = None) -> list[np.ndarray]:
    """Return random 784-16-10 parameters; with `label`, a model that always answers it."""
    params = mlp.init_params((mlp.INPUT_SIZE, HIDDEN, mlp.CLASSES), np.random.default_rng(seed))
    if label is not None:
        params[-1][label] = 50.0  # a bias no hidden activation can outvote
    return params


def publish(registry: Registry, model: str, seed: int, label: int | None = None) -> int:
    """Publish a test model and return its version."""
    params = make_params(seed, label)
    return registry.publish(model, serialization.model_to_bytes(params, {"seed": seed}), {"seed": seed})


def wait_for(check: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> float:
    """Poll `check` until it is true; return the seconds it took, fail after `timeout`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(0.01)
    raise AssertionError(f"{what} not met within {timeout} s")


def metric(name: str, **labels: str) -> float:
    """Return a sample of the in-process Prometheus registry (0 when absent)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def settings() -> Settings:
    """Settings with a fast poll and a small pin cache."""
    return dataclasses.replace(Settings(), poll_interval=0.2, model_cache_size=2, default_model="absent")


@pytest.fixture
def cache(registry: Registry, settings: Settings) -> Iterator[ModelCache]:
    """A ModelCache on the test's registry; its threads are stopped afterwards."""
    c = ModelCache(registry, settings)
    yield c
    c.stop()


class NoRegistry:
    """Stands in for the registry where a test proves that no Redis call is made."""

    def __getattr__(self, name: str):
        raise AssertionError(f"the registry was used: {name}")


def test_first_use_loads_then_answers_from_memory(cache: ModelCache, registry: Registry) -> None:
    publish(registry, "digits", 1)
    v2 = publish(registry, "digits", 2)
    loaded = cache.get("digits")
    assert (loaded.model, loaded.version) == ("digits", v2)
    assert all(p.dtype == np.float32 and p.flags.c_contiguous for p in loaded.params)
    assert loaded.sha256 == registry.record("digits", v2).sha256
    assert metric("mnist_model_version_served", model="digits") == v2

    cache.registry = NoRegistry()  # type: ignore[assignment]
    for _ in range(100):
        assert cache.get("digits") is loaded


def test_predictions_match_the_pure_core(cache: ModelCache, registry: Registry) -> None:
    publish(registry, "digits", 3)
    x = mlp.scale_pixels(np.random.default_rng(0).integers(0, 256, (20, mlp.INPUT_SIZE), dtype=np.uint8))
    expected = mlp.predict_proba(make_params(3), x)
    np.testing.assert_allclose(cache.get("digits").predict_proba(x), expected, atol=1e-6)


def test_production_alias_wins_over_latest(cache: ModelCache, registry: Registry) -> None:
    v1 = publish(registry, "digits", 1)
    publish(registry, "digits", 2)
    registry.set_alias("digits", "production", v1)
    assert cache.get("digits").version == v1


def test_pinned_versions_load_once_and_the_oldest_leaves(cache: ModelCache, registry: Registry) -> None:
    versions = [publish(registry, "digits", seed) for seed in range(4)]
    first = cache.get("digits", version=versions[0])
    assert cache.get("digits", version=versions[0]) is first
    cache.get("digits", version=versions[1])
    cache.get("digits", version=versions[0])  # used again: v2 is now the least recent
    cache.get("digits", version=versions[2])  # the cache holds 2 pins: v2 goes
    assert cache.held("digits") == [versions[0], versions[2]]


def test_aliases_resolve_from_memory_and_unknowns_raise(cache: ModelCache, registry: Registry) -> None:
    v1 = publish(registry, "digits", 1)
    registry.set_alias("digits", "staging", v1)
    assert cache.get("digits", alias="staging").version == v1
    with pytest.raises(AliasNotFound):
        cache.get("digits", alias="canary")
    with pytest.raises(VersionNotFound):
        cache.get("digits", version=99)
    with pytest.raises(ModelNotFound):
        cache.get("nothing")
    with pytest.raises(InvalidInput):
        cache.get("Bad Name")
    with pytest.raises(InvalidInput):
        cache.get("digits", version=1, alias="staging")


def test_hot_reload_follows_publishes_and_alias_moves(cache: ModelCache, registry: Registry) -> None:
    v1 = publish(registry, "digits", 1)
    assert cache.get("digits").version == v1
    cache.start()
    cache.start()  # idempotent
    assert len([t for t in threading.enumerate() if t.name.startswith("model-") and t.daemon]) == 2
    reloads = metric("mnist_model_reloads_total", model="digits", outcome="ok")

    v2 = publish(registry, "digits", 2)
    took = wait_for(lambda: cache.get("digits").version == v2, what="v2 served")
    assert took < 5.0  # milliseconds, normally; the bound tolerates a stalled test process
    assert metric("mnist_model_reloads_total", model="digits", outcome="ok") == reloads + 1
    assert metric("mnist_model_version_served", model="digits") == v2

    registry.set_alias("digits", "production", v1)  # a rollback
    wait_for(lambda: cache.get("digits").version == v1, what="rollback to v1")
    registry.set_alias("digits", "staging", v1)
    assert cache.get("digits", alias="staging").version == v1
    registry.set_alias("digits", "staging", v2)
    wait_for(lambda: cache.get("digits", alias="staging").version == v2, what="staging moved to v2")


def test_requests_in_flight_keep_their_version(cache: ModelCache, registry: Registry) -> None:
    publish(registry, "digits", 1)
    held = cache.get("digits")
    publish(registry, "digits", 2)
    cache.refresh()  # what the watcher does on the event
    assert cache.get("digits").version == 2
    assert held.version == 1 and held.predict_proba(np.zeros((1, 784), np.float32)).shape == (1, 10)


def test_the_poll_catches_up_without_events(registry: Registry, settings: Settings) -> None:
    cache = ModelCache(registry, settings)
    publish(registry, "digits", 1)
    cache.get("digits")
    try:
        # A listener that never connects: only the poller can notice the publish.
        cache._listen = lambda: None  # type: ignore[method-assign]
        cache.start()
        v2 = publish(registry, "digits", 2)
        assert wait_for(lambda: cache.get("digits").version == v2, what="v2 by poll") < 5.0
    finally:
        cache.stop()


def test_a_corrupt_blob_is_refused_and_the_previous_version_serves(
    cache: ModelCache, registry: Registry, redis_client: redis.Redis, keys: Keys
) -> None:
    v1 = publish(registry, "digits", 1)
    registry.set_alias("digits", "production", v1)
    assert cache.get("digits").version == v1
    v2 = publish(registry, "digits", 2)
    redis_client.set(keys.blob("digits", v2), b"not the published bytes")
    corrupt = metric("mnist_model_reloads_total", model="digits", outcome="corrupt")

    registry.delete_alias("digits", "production")  # the default becomes v2, which is corrupt
    cache.refresh()
    assert cache.get("digits").version == v1
    error = cache.status()["digits"]["error"]
    assert f"v{v2} refused" in error and "sha256" in error and f"still serving v{v1}" in error
    assert metric("mnist_model_reloads_total", model="digits", outcome="corrupt") == corrupt + 1
    with pytest.raises(ServiceUnavailable, match="sha256"):
        cache.get("digits", version=v2)

    v3 = publish(registry, "digits", 3)
    cache.refresh()
    assert cache.get("digits").version == v3
    assert cache.status()["digits"]["error"] is None


def test_a_blob_that_is_not_a_model_is_refused(
    cache: ModelCache, registry: Registry, redis_client: redis.Redis
) -> None:
    registry.publish("junk", b"PK\x03\x04 but not a zip", {})  # checksum fine, content not a model
    with pytest.raises(ServiceUnavailable, match="refused"):
        cache.get("junk")
    assert "refused" in cache.status()["junk"]["error"]
    assert cache.status()["junk"]["version"] is None


def test_redis_away_serves_memory_and_reports_it(cache: ModelCache, registry: Registry, keys: Keys) -> None:
    v1 = publish(registry, "digits", 1)
    registry.set_alias("digits", "staging", v1)
    loaded = cache.get("digits")
    cache.get("digits", alias="staging")

    # No retries: redis-py's default (10, with backoff) makes each refused command take seconds.
    dead = redis.Redis(port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    cache.registry = Registry(dead, keys)
    assert cache.get("digits") is loaded
    assert cache.get("digits", version=v1) is loaded
    assert cache.get("digits", alias="staging") is loaded  # the alias map held in memory
    with pytest.raises(ServiceUnavailable):
        cache.get("other")
    with pytest.raises(ServiceUnavailable):
        cache.get("digits", version=v1 + 1)

    cache.start()
    wait_for(lambda: bool(cache.status()["digits"]["error"]), what="outage reported")
    assert "registry unreachable" in cache.status()["digits"]["error"]
    assert cache.get("digits") is loaded

    cache.registry = registry  # Redis is back
    wait_for(lambda: cache.status()["digits"]["error"] is None, what="outage cleared")


def predicted_label(loaded: LoadedModel) -> int:
    """Return the label a model answers for a blank image (a label model answers its label)."""
    return int(loaded.predict_proba(np.zeros((1, mlp.INPUT_SIZE), np.float32)).argmax())


@pytest.mark.parametrize("follow", ["events", "poll"])
def test_a_version_number_handed_out_again_serves_the_new_weights(
    registry: Registry, settings: Settings, redis_client: redis.Redis, keys: Keys, follow: str
) -> None:
    cache = ModelCache(registry, settings)
    try:
        publish(registry, "digits", 1, label=1)
        v2 = publish(registry, "digits", 2, label=2)
        assert cache.get("digits").version == v2  # the default
        old = cache.get("digits", version=1)  # pinned
        assert predicted_label(old) == 1
        if follow == "poll":
            cache._listen = lambda: None  # type: ignore[method-assign]
        cache.start()

        # Redis loses its data: the counter starts again, and v1 now names other weights.
        delete_prefix(redis_client, keys.prefix)
        time.sleep(settings.poll_interval * 2)  # polls that find nothing: what is held serves on
        assert cache.get("digits", version=1) is old and cache.get("digits").version == v2
        # Two publishes: the default moves to the new v2, and v1 is served from the pinned entries.
        assert [publish(registry, "digits", 7, label=7), publish(registry, "digits", 8, label=8)] == [1, 2]
        new_sha = registry.checksum("digits", 1)

        wait_for(lambda: predicted_label(cache.get("digits")) == 8, what="the new v2 as the default")
        # Now v1 no longer answers through the default (which may have been the new v1 a moment).
        took = wait_for(lambda: cache.get("digits", version=1).sha256 == new_sha, what="the new v1 pinned")
        assert predicted_label(cache.get("digits", version=1)) == 7
        assert took < 5.0  # an event: milliseconds; a poll: within MNIST_POLL_INTERVAL (0.2 s here)
    finally:
        cache.stop()


def test_a_pinned_version_the_registry_no_longer_knows_serves_on(
    cache: ModelCache, registry: Registry, redis_client: redis.Redis, keys: Keys
) -> None:
    publish(registry, "digits", 1, label=1)
    publish(registry, "digits", 2, label=2)
    pinned = cache.get("digits", version=1)
    delete_prefix(redis_client, keys.prefix)
    cache.refresh()
    assert cache.get("digits", version=1) is pinned  # unknown is not "other bytes": kept
    publish(registry, "digits", 3, label=3)  # v1 again, other bytes
    cache.refresh()
    assert predicted_label(cache.get("digits", version=1)) == 3


def test_status_describes_what_is_held(cache: ModelCache, registry: Registry) -> None:
    v1 = publish(registry, "digits", 1)
    v2 = publish(registry, "digits", 2)
    cache.get("digits")
    cache.get("digits", version=v1)
    entry = cache.status()["digits"]
    assert entry["version"] == v2 and entry["pinned"] == [v1] and entry["error"] is None
    assert entry["sha256"] == registry.record("digits", v2).sha256 and entry["loaded_at"].endswith("+00:00")
    assert isinstance(cache.get("digits"), LoadedModel)
