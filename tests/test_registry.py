"""The model registry against a real Redis: versions, aliases, retention, integrity, events, races."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import threading
import time
from datetime import UTC, datetime
from typing import Any

import pytest
import redis

from shared.errors import (
    AliasNotFound,
    CorruptModel,
    InvalidInput,
    ModelNotFound,
    VersionInUse,
    VersionNotFound,
)
from shared.keys import Keys
from shared.registry import Registry, parse_event
from tests.redis_fixtures import delete_prefix


def blob_of(tag: str, size: int = 1024) -> bytes:
    """Return `size` deterministic bytes derived from `tag`."""
    seed = hashlib.sha256(tag.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def next_event(pubsub: redis.client.PubSub, timeout: float = 2.0) -> dict[str, Any]:
    """Return the next registry event, failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        event = parse_event(pubsub.get_message(timeout=0.1))
        if event is not None:
            return event
    raise AssertionError("no event arrived")


# --- publishing and reading --------------------------------------------------------------------
def test_publish_read_latest_resolve(registry: Registry) -> None:
    assert registry.models() == []
    assert registry.latest("mnist") is None
    v1 = registry.publish("mnist", blob_of("a"), {"accuracy": 0.9, "hidden": [10]})
    v2 = registry.publish("mnist", blob_of("b", 5000), {"accuracy": 0.95})
    assert (v1, v2) == (1, 2)
    assert registry.models() == ["mnist"]
    assert registry.latest("mnist") == 2
    assert registry.resolve("mnist") == 2
    assert registry.resolve("mnist", version=1) == 1

    blob, record = registry.get_blob("mnist", 1)
    assert blob == blob_of("a")
    assert record == registry.record("mnist", 1)
    assert record.to_dict() == {
        "model": "mnist",
        "version": 1,
        "sha256": hashlib.sha256(blob).hexdigest(),
        "size": 1024,
        "created_at": record.created_at,
        "metadata": {"accuracy": 0.9, "hidden": [10]},
    }
    created = datetime.fromisoformat(record.created_at)
    assert created.utcoffset() == UTC.utcoffset(None)
    assert abs((datetime.now(UTC) - created).total_seconds()) < 60
    assert [r.version for r in registry.versions("mnist")] == [1, 2]
    assert registry.versions("mnist")[1].size == 5000


def test_versions_increment_per_model(registry: Registry) -> None:
    assert [registry.publish("a", blob_of(str(i)), {}) for i in range(3)] == [1, 2, 3]
    assert registry.publish("b", blob_of("b"), {}) == 1
    assert registry.models() == ["a", "b"]


def test_float_metadata_survives_exactly(registry: Registry) -> None:
    metadata = {"loss": 0.1234567890123456789, "curve": [1e-12, 3.141592653589793], "s": "é"}
    registry.publish("m", blob_of("m"), metadata)
    assert registry.record("m", 1).metadata == metadata


def test_unknown_model_version_alias(registry: Registry) -> None:
    with pytest.raises(ModelNotFound):
        registry.resolve("ghost")
    for call in (registry.record, registry.get_blob):
        with pytest.raises(ModelNotFound):
            call("ghost", 1)
    with pytest.raises(ModelNotFound):
        registry.versions("ghost")
    with pytest.raises(ModelNotFound):
        registry.aliases("ghost")
    with pytest.raises(ModelNotFound):
        registry.set_alias("ghost", "production", 1)

    registry.publish("m", blob_of("m"), {})
    with pytest.raises(VersionNotFound):
        registry.record("m", 7)
    with pytest.raises(VersionNotFound):
        registry.get_blob("m", 7)
    with pytest.raises(VersionNotFound):
        registry.resolve("m", version=7)
    with pytest.raises(AliasNotFound):
        registry.resolve("m", alias="staging")
    with pytest.raises(AliasNotFound):
        registry.delete_alias("m", "staging")
    with pytest.raises(InvalidInput):
        registry.resolve("m", version=1, alias="production")


# --- aliases -----------------------------------------------------------------------------------
def test_alias_set_move_rollback_delete(registry: Registry) -> None:
    for tag in "abc":
        registry.publish("m", blob_of(tag), {})
    assert registry.aliases("m") == {}
    assert registry.resolve("m") == 3  # no production alias: latest

    registry.set_alias("m", "production", 1)
    registry.set_alias("m", "staging", 3)
    assert registry.aliases("m") == {"production": 1, "staging": 3}
    assert registry.resolve("m") == 1
    assert registry.resolve("m", alias="staging") == 3

    registry.set_alias("m", "production", 2)  # promote
    assert registry.resolve("m") == 2
    registry.set_alias("m", "production", 1)  # rollback
    assert registry.resolve("m") == 1

    with pytest.raises(VersionNotFound):
        registry.set_alias("m", "production", 9)
    assert registry.resolve("m") == 1

    registry.delete_alias("m", "production")
    assert registry.aliases("m") == {"staging": 3}
    assert registry.resolve("m") == 3


def test_delete_version_refused_while_aliased(registry: Registry) -> None:
    for tag in "abc":
        registry.publish("m", blob_of(tag), {})
    registry.set_alias("m", "production", 2)
    with pytest.raises(VersionInUse):
        registry.delete_version("m", 2)
    assert registry.get_blob("m", 2)[0] == blob_of("b")

    registry.delete_version("m", 1)
    with pytest.raises(VersionNotFound):
        registry.get_blob("m", 1)
    with pytest.raises(VersionNotFound):
        registry.delete_version("m", 1)
    registry.delete_alias("m", "production")
    registry.delete_version("m", 2)
    assert [r.version for r in registry.versions("m")] == [3]


def test_deleting_latest_and_every_version(registry: Registry, keys: Keys) -> None:
    registry.publish("m", blob_of("a"), {})
    registry.publish("m", blob_of("b"), {})
    registry.delete_version("m", 2)
    assert registry.latest("m") == 1
    registry.delete_version("m", 1)
    assert registry.latest("m") is None
    assert registry.models() == []
    with pytest.raises(ModelNotFound):
        registry.resolve("m")
    assert registry.redis.exists(keys.blob("m", 1), keys.record("m", 2)) == 0
    assert registry.publish("m", blob_of("c"), {}) == 3  # numbers are never reused


def test_a_deleted_version_takes_its_counters_along(redis_client: redis.Redis, keys: Keys) -> None:
    registry = Registry(redis_client, keys, retention=1)
    counters = (keys.version_stats, keys.window_current, keys.window_previous)
    for tag in "abc":
        version = registry.publish("m", blob_of(tag), {})
        for key in counters:
            redis_client.hincrby(key("m", version), "feedback", 1)
    # Retention dropped v1 and v2 as v2 and v3 came: their counters went with them, v3's stay.
    assert [r.version for r in registry.versions("m")] == [3]
    assert redis_client.exists(*(key("m", v) for key in counters for v in (1, 2))) == 0
    assert redis_client.exists(*(key("m", 3) for key in counters)) == 3
    registry.publish("m", blob_of("d"), {})  # v4 is latest: retention drops v3
    assert redis_client.exists(*(key("m", 3) for key in counters)) == 0
    registry.retention = 5
    registry.publish("m", blob_of("e"), {})
    for key in counters:
        redis_client.hincrby(key("m", 4), "feedback", 1)
    registry.delete_version("m", 4)
    assert redis_client.exists(*(key("m", 4) for key in counters)) == 0


# --- retention ---------------------------------------------------------------------------------
def test_retention_keeps_last_unaliased_and_aliased(redis_client: redis.Redis, keys: Keys) -> None:
    registry = Registry(redis_client, keys, retention=3)
    for tag in "abc":
        registry.publish("m", blob_of(tag), {})
    registry.set_alias("m", "production", 2)
    for tag in "def":
        registry.publish("m", blob_of(tag), {})
    assert [r.version for r in registry.versions("m")] == [2, 4, 5, 6]
    assert redis_client.exists(keys.blob("m", 1), keys.record("m", 1), keys.blob("m", 3)) == 0
    assert registry.apply_retention("m") == []

    registry.delete_alias("m", "production")
    assert registry.apply_retention("m") == [2]
    assert registry.latest("m") == 6


def test_retention_zero_never_deletes_latest(redis_client: redis.Redis, keys: Keys) -> None:
    registry = Registry(redis_client, keys, retention=0)
    for tag in "abc":
        registry.publish("m", blob_of(tag), {})
    assert [r.version for r in registry.versions("m")] == [3]
    assert registry.resolve("m") == 3


# --- integrity ---------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["replace", "flip", "truncate", "remove"])
def test_corrupted_blob_raises(
    registry: Registry, redis_client: redis.Redis, keys: Keys, damage: str
) -> None:
    original = blob_of("good", 4096)
    registry.publish("m", original, {})
    key = keys.blob("m", 1)
    if damage == "replace":
        redis_client.set(key, b"not the model")
    elif damage == "flip":
        redis_client.setrange(key, 100, bytes([original[100] ^ 1]))
    elif damage == "truncate":
        redis_client.set(key, original[:-1])
    else:
        redis_client.delete(key)
    with pytest.raises(CorruptModel):
        registry.get_blob("m", 1)


def test_unreadable_record_raises(registry: Registry, redis_client: redis.Redis, keys: Keys) -> None:
    registry.publish("m", blob_of("m"), {})
    redis_client.set(keys.record("m", 1), b"{not json")
    with pytest.raises(CorruptModel):
        registry.record("m", 1)


# --- idempotent publish ------------------------------------------------------------------------
def test_publish_once_per_job(registry: Registry) -> None:
    assert registry.published_by("job-1") is None
    first = registry.publish("m", blob_of("a"), {"run": 1}, job_id="job-1")
    again = registry.publish("m", blob_of("retry"), {"run": 2}, job_id="job-1")
    assert first == again == 1
    assert registry.published_by("job-1") == 1
    assert [r.version for r in registry.versions("m")] == [1]
    assert registry.get_blob("m", 1)[1].metadata == {"run": 1}
    assert registry.publish("m", blob_of("b"), {}, job_id="job-2") == 2


def test_publish_once_per_job_under_races(registry: Registry) -> None:
    results: list[int] = []
    barrier = threading.Barrier(8)

    def retry() -> None:
        barrier.wait()
        results.append(registry.publish("m", blob_of("x", 100_000), {}, job_id="crashy"))

    threads = [threading.Thread(target=retry) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [1] * 8
    assert registry.latest("m") == 1


# --- validation --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name", ["", "Mnist", "../etc", "a/b", "a:b", "-x", ".x", "a..b", "a b", "x" * 65, None, 3]
)
def test_invalid_model_names(registry: Registry, name: Any) -> None:
    with pytest.raises(InvalidInput):
        registry.publish(name, blob_of("a"), {})
    with pytest.raises(InvalidInput):
        registry.resolve(name)


@pytest.mark.parametrize("alias", ["123", "", "Prod", "a/b", "a:b", "../x"])
def test_invalid_aliases(registry: Registry, alias: str) -> None:
    registry.publish("m", blob_of("a"), {})
    with pytest.raises(InvalidInput):
        registry.set_alias("m", alias, 1)


@pytest.mark.parametrize("version", [0, -1, True, "1", 1.0])
def test_invalid_versions(registry: Registry, version: Any) -> None:
    registry.publish("m", blob_of("a"), {})
    with pytest.raises(InvalidInput):
        registry.get_blob("m", version)


def test_invalid_publish_arguments(registry: Registry) -> None:
    with pytest.raises(InvalidInput):
        registry.publish("m", b"", {})
    with pytest.raises(InvalidInput):
        registry.publish("m", blob_of("a"), {"bad": object()})
    with pytest.raises(InvalidInput):
        registry.publish("m", blob_of("a"), {}, job_id="")
    assert registry.models() == []


def test_text_client_refused(redis_url: str, keys: Keys) -> None:
    with pytest.raises(ValueError, match="decode_responses"):
        Registry(redis.Redis.from_url(redis_url, decode_responses=True), keys)


# --- events ------------------------------------------------------------------------------------
def test_events(redis_client: redis.Redis, keys: Keys) -> None:
    registry = Registry(redis_client, keys, retention=1)
    pubsub = registry.subscribe()
    try:
        registry.publish("m", blob_of("a"), {})
        assert next_event(pubsub) == {"event": "published", "model": "m", "version": 1}
        registry.set_alias("m", "production", 1)
        assert next_event(pubsub) == {
            "event": "alias",
            "model": "m",
            "alias": "production",
            "version": 1,
            "previous": None,
        }
        registry.publish("m", blob_of("b"), {})
        registry.set_alias("m", "production", 2)
        registry.delete_alias("m", "production")
        registry.publish("m", blob_of("c"), {})  # retention 1 now drops v1 and v2
        assert [next_event(pubsub) for _ in range(6)] == [
            {"event": "published", "model": "m", "version": 2},
            {"event": "alias", "model": "m", "alias": "production", "version": 2, "previous": 1},
            {"event": "alias", "model": "m", "alias": "production", "version": None, "previous": 2},
            {"event": "published", "model": "m", "version": 3},
            {"event": "deleted", "model": "m", "version": 1},
            {"event": "deleted", "model": "m", "version": 2},
        ]
    finally:
        pubsub.close()


# --- concurrency -------------------------------------------------------------------------------
PER_PUBLISHER = 6
BLOB_SIZE = 256 * 1024


def publish_many(registry: Registry, model: str, tag: str) -> list[int]:
    """Publish PER_PUBLISHER versions whose metadata carries their own digest."""
    versions = []
    for i in range(PER_PUBLISHER):
        blob = blob_of(f"{tag}-{i}", BLOB_SIZE)
        digest = hashlib.sha256(blob).hexdigest()
        versions.append(registry.publish(model, blob, {"digest": digest, "by": tag}))
    return versions


def publish_from_process(url: str, prefix: str, model: str, tag: str, barrier: Any, out: Any) -> None:
    """Run `publish_many` in a spawned process and put its versions on `out`."""
    registry = Registry(redis.Redis.from_url(url), Keys(prefix), retention=10_000)
    barrier.wait(timeout=30)
    out.put((tag, publish_many(registry, model, tag)))


@pytest.mark.slow
def test_concurrent_publishers_and_readers(redis_url: str, keys: Keys) -> None:
    n_threads, n_procs, n_readers = 4, 3, 3
    model = "race"
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(n_threads + n_procs, timeout=30)
    out = ctx.Queue()
    stop = threading.Event()
    problems: list[str] = []
    reads = [0] * n_readers
    published: dict[str, list[int]] = {}

    def client() -> Registry:
        return Registry(redis.Redis.from_url(redis_url), keys, retention=10_000)

    def publisher(tag: str) -> None:
        registry = client()
        barrier.wait()
        published[tag] = publish_many(registry, model, tag)

    def reader(index: int) -> None:
        registry = client()
        seen = 0
        while not stop.is_set():
            try:
                latest = registry.latest(model)
                if latest is None:
                    continue
                if latest < seen:
                    problems.append(f"latest went back from {seen} to {latest}")
                seen = latest
                version = registry.resolve(model) if index % 2 else latest
                blob, record = registry.get_blob(model, version)
                if hashlib.sha256(blob).hexdigest() != record.metadata["digest"]:
                    problems.append(f"v{version}: blob differs from what was published")
                if index == 0:  # one reader also walks every listed version
                    for listed in registry.versions(model):
                        registry.get_blob(model, listed.version)
                reads[index] += 1
            except Exception as exc:  # noqa: BLE001 - any failure is a finding
                problems.append(f"reader {index}: {exc!r}")

    procs = [
        ctx.Process(
            target=publish_from_process,
            args=(redis_url, keys.prefix, model, f"proc{i}", barrier, out),
            daemon=True,
        )
        for i in range(n_procs)
    ]
    readers = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(n_readers)]
    writers = [
        threading.Thread(target=publisher, args=(f"thread{i}",), daemon=True) for i in range(n_threads)
    ]
    try:
        for p in procs:
            p.start()
        for t in readers + writers:
            t.start()
        for t in writers:
            t.join(timeout=30)
        for _ in procs:
            tag, versions = out.get(timeout=30)
            published[tag] = versions
        for p in procs:
            p.join(timeout=10)
            assert p.exitcode == 0
        time.sleep(0.05)  # let the readers see the final state
    finally:
        stop.set()
        for t in readers:
            t.join(timeout=10)
        for p in procs:
            if p.is_alive():
                p.terminate()

    total = (n_threads + n_procs) * PER_PUBLISHER
    every = sorted(v for versions in published.values() for v in versions)
    assert len(published) == n_threads + n_procs
    assert every == list(range(1, total + 1))  # distinct and contiguous
    for versions in published.values():
        assert versions == sorted(versions)  # each publisher's own versions increase
    assert problems == [], problems[:5]
    assert all(count > 0 for count in reads), reads
    final = client()
    assert final.latest(model) == total
    records = final.versions(model)
    assert [r.version for r in records] == list(range(1, total + 1))
    assert all(final.get_blob(model, r.version)[1] == r for r in records)


def test_delete_prefix_removes_only_that_prefix(keys: Keys, redis_client: redis.Redis) -> None:
    other = Keys(keys.prefix.replace("test-", "test-other-"))
    try:
        redis_client.mset({keys.models(): b"1", keys.latest("m"): b"1", other.models(): b"1"})
        assert delete_prefix(redis_client, keys.prefix) == 2
        assert redis_client.exists(other.models()) == 1
    finally:
        delete_prefix(redis_client, other.prefix)


def test_checksums_read_the_head_of_each_record(
    registry: Registry, redis_client: redis.Redis, keys: Keys
) -> None:
    # Metadata that holds a "sha256" of its own comes after the record's: the head is the record's.
    v1 = registry.publish("m", b"one", {"sha256": "0" * 64})
    v2 = registry.publish("m", b"two", {})
    assert registry.checksums("m", [v1, v2, 99]) == {
        v1: hashlib.sha256(b"one").hexdigest(),
        v2: hashlib.sha256(b"two").hexdigest(),
    }
    assert registry.checksum("m", v1) == registry.record("m", v1).sha256
    with pytest.raises(VersionNotFound):
        registry.checksum("m", 99)
    with pytest.raises(ModelNotFound):
        registry.checksum("other", 1)
    # A record laid out otherwise (written by another version of the code) is read whole.
    raw = redis_client.get(keys.record("m", v2))
    record = json.loads(raw)
    reordered = {"metadata": record.pop("metadata"), **record}
    redis_client.set(keys.record("m", v2), json.dumps(reordered))
    assert registry.checksums("m", [v2]) == {v2: hashlib.sha256(b"two").hexdigest()}
