"""shared/redis_conn.py against real servers: a plain Redis, and a primary, a replica and three
Sentinels of the test's own on loopback ports (a failover by SIGKILL, the client following it)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from shared.errors import ReplicationTimeout
from shared.keys import Keys
from shared.redis_conn import connect, is_sentinel, parse_sentinel_url, redact, write_durably
from shared.registry import Registry
from tests.live_fixtures import free_port, wait_for
from tests.reliability.stack import label_blob
from tests.sentinel_fixtures import Node, RedisGroup, sentinel_binary

#: What a client of a failing-over primary retries with: about 10 s in all.
FAILOVER_RETRY = Retry(ExponentialBackoff(cap=1.0, base=0.05), 20)


def test_parses_a_sentinel_url() -> None:
    url = "redis+sentinel://app:p%40ss@s1:26380,s2,[::1]:26381/mymaster/3?sentinel_password=sp"
    assert parse_sentinel_url(url) == {
        "sentinels": [("s1", 26380), ("s2", 26379), ("::1", 26381)],
        "service": "mymaster",
        "db": 3,
        "username": "app",
        "password": "p@ss",
        "sentinel_password": "sp",
        "ssl": False,
    }
    bare = parse_sentinel_url("rediss+sentinel://s1/mymaster")
    assert (bare["db"], bare["password"], bare["ssl"]) == (0, None, True)
    assert is_sentinel(url) and not is_sentinel("redis://h:6379/0") and not is_sentinel("unix:///tmp/r.sock")


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+sentinel://:pw@/mymaster/0", "no Sentinel host"),
        ("redis+sentinel://s1:26379", "no master name"),
        ("redis+sentinel://s1:26379/mymaster/x", "the database must be a number"),
        ("redis+sentinel://s1:port/mymaster", "bad Sentinel address"),
        ("redis+sentinel://s1/mymaster?ssl=1", "unknown option ssl"),
    ],
)
def test_refuses_a_bad_sentinel_url_and_hides_its_password(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says) as caught:
        parse_sentinel_url(url)
    assert "pw" not in str(caught.value)


def test_redact_hides_every_password() -> None:
    assert redact("redis://:s3cret@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert redact("redis+sentinel://u:s3cret@a:1,b:2/m/0?sentinel_password=x") == (
        "redis+sentinel://u:***@a:1,b:2/m/0?sentinel_password=***"
    )
    assert redact("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_a_plain_url_connects_as_redis_py_does(redis_url: str) -> None:
    key = f"test-conn:{uuid.uuid4().hex}"
    for client in (connect(redis_url), connect(redis_url, blocking=True, max_connections=2, timeout=1)):
        try:
            client.set(key, b"1", ex=10)
            assert client.get(key) == b"1"
        finally:
            client.delete(key)
            client.close()
    # Nothing to wait for without replicas: the write alone.
    plain = connect(redis_url)
    assert write_durably(plain, 0, 100, "a test write", lambda pipe: pipe.set(key, b"2", ex=10)) == [True]
    plain.delete(key)
    # WAIT would outlast the socket's timeout (and a retry would send the writes again): refused.
    short = connect(redis_url, socket_timeout=1)
    with pytest.raises(ValueError, match=r"MNIST_REPLICA_TIMEOUT \(1000 ms\) must be shorter"):
        write_durably(short, 1, 1000, "a test write", lambda pipe: pipe.set(key, b"3", ex=10))
    assert short.get(key) is None


@pytest.fixture
def group(tmp_path: Path) -> Iterator[RedisGroup]:
    """A primary, one replica and three Sentinels on loopback, killed afterwards."""
    sentinel_binary()
    group = RedisGroup(password=uuid.uuid4().hex)
    try:
        primary = group.start_server(Node("primary", "127.0.0.1", free_port(), tmp_path / "primary"))
        group.start_server(
            Node("replica", "127.0.0.1", free_port(), tmp_path / "replica"), replica_of=primary
        )
        for i in range(3):
            group.start_sentinel(Node(f"sentinel{i}", "127.0.0.1", free_port(), tmp_path / f"s{i}"), primary)
        group.wait_until_watched(replicas=1)
        yield group
    finally:
        group.stop()


def test_a_sentinel_url_reaches_the_primary_and_a_publish_waits_for_the_replica(group: RedisGroup) -> None:
    primary, replica = group.servers
    for client in (connect(group.url()), connect(group.url(), blocking=True, max_connections=2, timeout=1)):
        assert client.info("replication")["role"] == "master"
        assert client.connection_pool.get_master_address() == ("127.0.0.1", primary.port)  # type: ignore[attr-defined]
        client.close()
    keys = Keys(f"test-conn:{uuid.uuid4().hex[:8]}:")
    registry = Registry(connect(group.url()), keys, min_replicas=1, replica_timeout=2000)
    version = registry.publish("m", label_blob(1), {"n": 1}, job_id="job-1")
    # Acknowledged: the replica holds it already, no waiting here.
    assert replica.client(group.password).get(keys.published("job-1")) == b"1"
    assert registry.publish("m", label_blob(2), {"n": 2}, job_id="job-1") == version  # once per job
    registry.confirm_published("job-1", version)


def test_a_publish_that_no_replica_acknowledges_fails_clearly(group: RedisGroup) -> None:
    group.servers[1].kill()
    registry = Registry(connect(group.url()), Keys("test-conn-lost:"), min_replicas=1, replica_timeout=200)
    with pytest.raises(
        ReplicationTimeout, match=r"0 of the 1 replica\(s\).*within 200 ms \(MNIST_REPLICA_TIMEOUT\)"
    ):
        registry.publish("m", label_blob(1), {}, job_id="job-x")
    with pytest.raises(ReplicationTimeout, match="checkpoint"):
        write_durably(registry.redis, 1, 100, "a checkpoint", lambda pipe: pipe.set("test-conn-lost:c", b"1"))


def test_alias_moves_and_rollout_decisions_wait_for_the_replica(group: RedisGroup) -> None:
    primary, replica = group.servers
    keys = Keys(f"test-conn:{uuid.uuid4().hex[:8]}:")
    registry = Registry(connect(group.url()), keys, min_replicas=1, replica_timeout=2000)
    for n in (1, 2):
        registry.publish("m", label_blob(n), {"n": n}, job_id=f"job-{n}")
    on_replica = replica.client(group.password)
    registry.set_alias("m", "production", 1)
    # Acknowledged: the replica holds the move already, no waiting here.
    assert on_replica.hget(keys.aliases("m"), "production") == b"1"
    decision = {"action": "canary", "version": 2, "reason": "test", "actor": "api"}
    registry.set_split("m", "production", {1: 0.8, 2: 0.2}, decision=decision)
    assert on_replica.hget(keys.splits("m"), "production") is not None
    assert on_replica.xlen(keys.decisions("m")) == 1
    registry.delete_alias("m", "production")
    assert on_replica.hget(keys.aliases("m"), "production") is None

    replica.kill()
    late = Registry(connect(group.url()), keys, min_replicas=1, replica_timeout=200)
    with pytest.raises(ReplicationTimeout, match=r"alias m/production: 0 of the 1 replica"):
        late.set_alias("m", "production", 2)
    # Made on the primary, not yet durable: what the 503 says.
    assert late.aliases("m") == {"production": 2}


def test_a_client_follows_a_failover_without_a_restart(group: RedisGroup) -> None:
    primary, replica = group.servers
    client = connect(group.url(), socket_timeout=1, socket_connect_timeout=1, retry=FAILOVER_RETRY)
    keys = Keys(f"test-conn:{uuid.uuid4().hex[:8]}:")
    registry = Registry(client, keys, min_replicas=1, replica_timeout=500)  # below the socket's 1 s
    before = registry.publish("m", label_blob(1), {}, job_id="before")
    killed = time.monotonic()
    primary.kill()
    # The same client object: its next command asks the Sentinels and reaches the promoted replica.
    wait_for(lambda: group.primary_address() == ("127.0.0.1", replica.port), 30, "a promoted replica")
    promoted = time.monotonic() - killed
    assert client.info("replication")["role"] == "master"
    assert client.connection_pool.get_master_address() == ("127.0.0.1", replica.port)  # type: ignore[attr-defined]
    assert registry.published_by("before") == before  # acknowledged by the replica: not lost
    after = Registry(client, keys).publish("m", label_blob(2), {}, job_id="after")
    assert after == before + 1 and registry.latest("m") == after
    assert promoted < 30
    with pytest.raises(redis.ConnectionError):
        primary.client(group.password, timeout=0.2).ping()  # the old primary really is gone
