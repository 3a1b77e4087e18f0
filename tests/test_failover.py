"""A Sentinel failover across separate hosts, without load: the short version of
tests/reliability/test_hosts.py that `make test` runs (well under a minute).

Three hosts (network namespaces on one bridge, tests/reliability/hosts.py): the primary and a
Sentinel; the replica and a Sentinel; a third Sentinel. The test process is the client, on the
bridge. The primary's host is cut off and its processes killed, as a lost machine: the replica
is promoted, the client follows it without being recreated, the version published (and
acknowledged by the replica) right before is still there, and the next publish gets the next
number: no version lost, none twice.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from shared.errors import ReplicationTimeout
from shared.keys import Keys
from shared.redis_conn import connect
from shared.registry import Registry
from tests.live_fixtures import wait_for
from tests.reliability.hosts import Network, network
from tests.reliability.stack import label_blob
from tests.sentinel_fixtures import Node, RedisGroup, sentinel_binary

#: Seconds the whole failover may take, from the cut to the first write on the new primary.
FAILOVER_LIMIT = 30.0


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[tuple[Network, RedisGroup]]:
    """Three hosts with a primary, a replica and three Sentinels; all torn down afterwards."""
    sentinel_binary()
    with network(tmp_path) as net:
        group = RedisGroup(password=uuid.uuid4().hex)
        try:
            one, two, three = (net.add(name) for name in ("redis1", "redis2", "sentinel3"))
            primary = group.start_server(Node("primary", one.address, 6379, one.workdir, one.prefix))
            replica = Node("replica", two.address, 6379, two.workdir, two.prefix)
            group.start_server(replica, replica_of=primary)
            for host in (one, two, three):
                node = Node(f"sentinel-{host.name}", host.address, 26379, host.workdir, host.prefix)
                group.start_sentinel(node, primary)
            group.wait_until_watched(replicas=1)
            yield net, group
        finally:
            group.stop()


def test_a_lost_primary_host_loses_no_acknowledged_version(hosts: tuple[Network, RedisGroup]) -> None:
    net, group = hosts
    primary, replica = group.servers
    client = connect(
        group.url(),
        socket_timeout=1,
        socket_connect_timeout=1,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 40),
    )
    # As the web processes' clients: a timeout is not retried, it fails the command (a 503).
    web = connect(group.url(), socket_timeout=1, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    assert web.ping()
    keys = Keys(f"failover-{uuid.uuid4().hex[:6]}:")
    # WAIT must end before the socket's timeout (1 s here; 20 s in a worker).
    durable = Registry(client, keys, min_replicas=1, replica_timeout=500)
    before = durable.publish("m", label_blob(1), {}, job_id="job-before")

    cut = time.monotonic()
    net.hosts["redis1"].cut()
    net.hosts["redis1"].kill()
    new_primary = (replica.host, replica.port)
    wait_for(lambda: group.primary_address() == new_primary, FAILOVER_LIMIT, "the replica promoted")
    promoted = time.monotonic() - cut
    # The same client: its next command asks the Sentinels and reaches the new primary.
    after = Registry(client, keys).publish("m", label_blob(2), {}, job_id="job-after")
    writable = time.monotonic() - cut
    print(f"\nprimary host lost: replica promoted after {promoted:.1f} s, first write after {writable:.1f} s")

    # Its connection to the lost host timed out once at most, and was dropped: the next asks the Sentinels.
    with contextlib.suppress(redis.TimeoutError, redis.ConnectionError):
        web.ping()
    assert web.ping() and web.info("replication")["role"] == "master"
    assert client.connection_pool.get_master_address() == new_primary  # type: ignore[attr-defined]
    assert durable.published_by("job-before") == before  # acknowledged before the loss: kept
    assert [r.version for r in durable.versions("m")] == [before, after] and after == before + 1
    assert Registry(client, keys).publish("m", label_blob(3), {}, job_id="job-after") == after  # once per job
    # No replica is left: a publish that needs one says so.
    with pytest.raises(ReplicationTimeout, match="MNIST_MIN_REPLICAS"):
        durable.publish("m", label_blob(4), {}, job_id="job-3")
    assert writable < FAILOVER_LIMIT
    client.delete(*client.keys(f"{keys.prefix}*"))
