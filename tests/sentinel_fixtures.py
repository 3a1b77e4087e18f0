"""A throwaway Redis primary, replica and Sentinels: real `redis-server` and `redis-sentinel` processes.

Each server runs in a folder of the test's own, on an address the test picks (loopback ports here,
a network namespace's address in tests/reliability/hosts.py), with `prefix` in front of its
command (``ip netns exec NAME``) when it runs on another "host". Every wait is bounded and
`RedisGroup.stop` kills every process it started.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from tests.live_fixtures import wait_for

#: The master name the Sentinels monitor.
SERVICE = "mymaster"
#: Milliseconds without an answer before a Sentinel calls the primary down; low for the tests.
DOWN_AFTER_MS = 1000
#: Milliseconds a failover may take before the Sentinels try another.
FAILOVER_TIMEOUT_MS = 2000
#: Seconds a server may take to answer after it starts.
START_TIMEOUT = 15.0


def sentinel_binary() -> str:
    """Return Debian's redis-sentinel (`make sentinel`), or skip the test that needs it."""
    found = shutil.which("redis-sentinel") or shutil.which("redis-sentinel", path="/usr/bin:/usr/sbin")
    if found is None:
        pytest.skip("redis-sentinel is not installed: `make sentinel` (Debian's redis-sentinel package)")
    return found


@dataclass
class Node:
    """One redis-server or Sentinel process: its address, folder and command prefix."""

    name: str
    host: str
    port: int
    workdir: Path
    prefix: Sequence[str] = ()
    process: subprocess.Popen | None = None

    def client(self, password: str | None = None, timeout: float = 1.0) -> redis.Redis:
        """Return a client of this one process."""
        return redis.Redis(
            host=self.host,
            port=self.port,
            password=password,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )

    def launch(self, argv: list[str]) -> None:
        """Start `argv` under the node's prefix, its output in the node's log file."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = (self.workdir / f"{self.name}.log").open("ab")
        self.process = subprocess.Popen([*self.prefix, *argv], stdout=log, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        """SIGKILL the process (no shutdown, no final save) and reap it."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def log(self) -> str:
        """Return the end of the node's log (for failure messages)."""
        path = self.workdir / f"{self.name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


@dataclass
class RedisGroup:
    """A primary, its replicas and the Sentinels that watch them, all with one password."""

    password: str
    servers: list[Node] = field(default_factory=list)
    sentinels: list[Node] = field(default_factory=list)

    def url(self, db: int = 0) -> str:
        """Return the ``redis+sentinel://`` URL of the group."""
        hosts = ",".join(f"{s.host}:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://:{self.password}@{hosts}/{SERVICE}/{db}"

    def start_server(self, node: Node, replica_of: Node | None = None) -> Node:
        """Start `node` as a redis-server (a replica of `replica_of` when given) and wait for it."""
        argv = ["redis-server", "--port", str(node.port), "--bind", node.host, "--dir", str(node.workdir)]
        argv += ["--save", "", "--appendonly", "no", "--requirepass", self.password]
        argv += ["--masterauth", self.password, "--protected-mode", "no"]
        if replica_of is not None:
            argv += ["--replicaof", replica_of.host, str(replica_of.port)]
        node.launch(argv)
        self.servers.append(node)
        client = node.client(self.password, timeout=0.3)
        try:
            wait_for(lambda: _answers(client), START_TIMEOUT, f"redis-server {node.name}", details=node.log)
            if replica_of is not None:
                wait_for(
                    lambda: client.info("replication").get("master_link_status") == "up",
                    START_TIMEOUT,
                    f"replica {node.name} in sync",
                    details=node.log,
                )
        finally:
            client.close()
        return node

    def start_sentinel(self, node: Node, primary: Node, quorum: int = 2) -> Node:
        """Start `node` as a Sentinel of `primary` and wait until it knows the primary's replicas."""
        node.workdir.mkdir(parents=True, exist_ok=True)
        conf = node.workdir / f"{node.name}.conf"  # a Sentinel rewrites its file: one each
        conf.write_text(
            f"port {node.port}\nbind {node.host}\nprotected-mode no\ndir {node.workdir}\n"
            f"sentinel monitor {SERVICE} {primary.host} {primary.port} {quorum}\n"
            f"sentinel auth-pass {SERVICE} {self.password}\n"
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
        )
        node.launch([sentinel_binary(), str(conf)])
        self.sentinels.append(node)
        client = node.client(timeout=0.3)
        try:
            wait_for(lambda: _answers(client), START_TIMEOUT, f"Sentinel {node.name}", details=node.log)
        finally:
            client.close()
        return node

    def wait_until_watched(self, replicas: int) -> None:
        """Wait until every Sentinel sees the others and `replicas` replicas (a failover needs both)."""
        for node in self.sentinels:
            client = node.client(timeout=0.5)
            try:

                def ready(c: redis.Redis = client) -> bool:
                    state = c.sentinel_master(SERVICE)
                    others = int(state.get("num-other-sentinels", 0))
                    return others >= len(self.sentinels) - 1 and int(state.get("num-slaves", 0)) >= replicas

                wait_for(ready, START_TIMEOUT, f"Sentinel {node.name} to see its peers", details=node.log)
            finally:
                client.close()

    def primary_address(self) -> tuple[str, int] | None:
        """Return the primary's address as a majority of the live Sentinels name it, or None."""
        named: list[tuple[str, int]] = []
        for node in self.sentinels:
            if node.process is None or node.process.poll() is not None:
                continue
            client = node.client(timeout=0.5)
            try:
                host, port = client.sentinel_get_master_addr_by_name(SERVICE)
                named.append((host.decode() if isinstance(host, bytes) else str(host), int(port)))
            except (redis.RedisError, OSError, TypeError):
                continue
            finally:
                client.close()
        for address in named:
            if named.count(address) * 2 > len(self.sentinels):
                return address
        return None

    def stop(self) -> None:
        """Kill every process of the group."""
        for node in [*self.sentinels, *self.servers]:
            node.kill()


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.BusyLoadingError, redis.TimeoutError):
        return False
