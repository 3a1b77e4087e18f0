"""Traffic splits served: the cache and the prediction service route by key, from memory, hot-reloaded."""

from __future__ import annotations

import dataclasses
import uuid
from collections import Counter
from collections.abc import Iterator

import numpy as np
import pytest

from services.serving.cache import ModelCache
from services.serving.service import PredictionService
from shared.config import Settings
from shared.errors import AliasNotFound
from shared.registry import Registry
from tests.test_model_cache import NoRegistry, publish, wait_for
from tests.test_splits import binomial_tolerance

#: One image: what it shows does not matter, the test models answer a fixed label.
IMAGE = np.zeros((1, 784), dtype=np.uint8)


@pytest.fixture
def service(registry: Registry) -> Iterator[PredictionService]:
    """A PredictionService on the test's registry, polling fast; its threads are stopped afterwards."""
    settings = dataclasses.replace(Settings(), poll_interval=0.2, model_cache_size=2, default_model="absent")
    svc = PredictionService(registry, settings)
    yield svc
    svc.stop()


def two_versions(registry: Registry) -> tuple[int, int]:
    """Publish two versions of "digits" that answer 4 and 5, production on the first."""
    base, canary = publish(registry, "digits", 1, label=4), publish(registry, "digits", 2, label=5)
    registry.set_alias("digits", "production", base)
    return base, canary


def test_a_split_default_routes_sticky_keys_by_weight_from_memory(
    service: PredictionService, registry: Registry
) -> None:
    base, canary = two_versions(registry)
    registry.set_split("digits", "production", {base: 0.8, canary: 0.2})
    assert service.model("digits").version == base  # metadata and evaluation see the primary
    assert service.cache.held("digits") == [base, canary]  # both loaded before serving

    service.cache.registry = NoRegistry()  # type: ignore[assignment]  # no Redis on the request path
    keys = [uuid.uuid4().hex for _ in range(10_000)]
    answers = [service.predict("digits", IMAGE, routing_key=k) for k in keys]
    counts = Counter(a.version for a in answers)
    assert abs(counts[canary] - 2_000) <= binomial_tolerance(10_000, 0.2)
    # The answer names the version that computed it: its label is that version's.
    assert all(int(a.labels[0]) == (4 if a.version == base else 5) for a in answers)
    # Sticky: the same key goes to the same version again.
    assert [service.predict("digits", IMAGE, routing_key=k).version for k in keys[:500]] == [
        a.version for a in answers[:500]
    ]
    # No key: random, with the weights.
    unkeyed = Counter(service.predict("digits", IMAGE).version for _ in range(2_000))
    assert abs(unkeyed[canary] - 400) <= binomial_tolerance(2_000, 0.2)
    # A pinned version of the split is the one held, not loaded again.
    assert service.predict("digits", IMAGE, version=canary).version == canary


def test_a_split_alias_routes_its_label_route(service: PredictionService, registry: Registry) -> None:
    base, canary = two_versions(registry)
    registry.set_split("digits", "staging", {base: 0.5, canary: 0.5})
    seen = {service.predict("digits", IMAGE, alias="staging", routing_key=str(i)).version for i in range(100)}
    assert seen == {base, canary}
    assert service.predict("digits", IMAGE).version == base  # production is not split
    with pytest.raises(AliasNotFound):
        service.predict("digits", IMAGE, alias="nope")


def test_splits_hot_reload_without_a_restart(service: PredictionService, registry: Registry) -> None:
    base, canary = two_versions(registry)
    assert service.predict("digits", IMAGE).version == base
    registry.set_split("digits", "staging", {base: 0.5, canary: 0.5})
    service.predict("digits", IMAGE, alias="staging")  # followed from now on
    service.start()
    keys = [str(i) for i in range(400)]

    def served(alias: str | None = None) -> set[int]:
        return {service.predict("digits", IMAGE, alias=alias, routing_key=k).version for k in keys}

    registry.set_split("digits", "production", {base: 0.5, canary: 0.5})
    wait_for(lambda: served() == {base, canary}, what="the split serving")
    assert service.status()["digits"]["split"] == {str(base): 0.5, str(canary): 0.5}
    registry.set_split("digits", "production", {base: 0.01, canary: 0.99})
    wait_for(lambda: sum(service.predict("digits", IMAGE, routing_key=k).version == base for k in keys) < 40)
    registry.set_alias("digits", "production", canary)  # promote: the split goes
    wait_for(lambda: served() == {canary}, what="the promotion")
    assert "split" not in service.status()["digits"]
    registry.set_split("digits", "production", {base: 0.5, canary: 0.5})
    wait_for(lambda: served() == {base, canary}, what="a split again")
    registry.set_alias("digits", "production", base)  # the primary alone: a roll-back
    wait_for(lambda: served() == {base}, what="the roll-back")
    registry.set_alias("digits", "staging", canary)
    wait_for(lambda: served("staging") == {canary}, what="the staging alias")


def test_the_poll_finds_a_split_that_no_event_announced(registry: Registry) -> None:
    base, canary = two_versions(registry)
    settings = dataclasses.replace(Settings(), poll_interval=3600, default_model="absent")
    cache = ModelCache(registry, settings)
    assert cache.route("digits").version == base
    # Written without the script (no event): as a predictor that was disconnected would miss it.
    registry.redis.hset(registry.keys.splits("digits"), "production", f'{{"{base}": 0.5, "{canary}": 0.5}}')
    cache.refresh()
    assert {cache.route("digits", routing_key=str(i)).version for i in range(100)} == {base, canary}
