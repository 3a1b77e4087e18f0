"""Separate hosts on this machine: network namespaces joined by veth pairs to one bridge.

`Network` makes a bridge in the root namespace (with an address, so that the test process itself
reaches every host) and one namespace per host, each with its own loopback and one interface,
``eth0``, whose peer is plugged into the bridge. Names carry a per-run suffix, so two runs never
meet. A host runs commands under ``ip netns exec``; `Host.cut` takes its link down (its peers see
silence, as with a pulled cable or a dead machine: no reset, no refusal), `Host.heal` brings it
back, `Host.kill` kills every process in the namespace. `Network.close` kills every process of
every host and removes the namespaces, the veth pairs and the bridge, whatever happened before.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

#: Seconds an `ip` command may take.
IP_TIMEOUT = 10.0


def can_make_hosts() -> str | None:
    """Return why this machine cannot make namespaced hosts (not root, no `ip`), or None if it can."""
    if shutil.which("ip") is None:
        return "no `ip` command (Debian's iproute2)"
    if os.geteuid() != 0:
        return "making network namespaces needs root"
    return None


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run `ip ARGS`; a failure (with check) fails the test with ip's message."""
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT)
    if check and result.returncode != 0:
        pytest.fail(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


@dataclass
class Host:
    """One namespace: its name, address, the veth end in the root namespace, its processes."""

    name: str
    namespace: str
    address: str
    veth: str
    workdir: Path
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def prefix(self) -> list[str]:
        """The command prefix that runs a program on this host."""
        return ["ip", "netns", "exec", self.namespace]

    def run(
        self, argv: Sequence[str], env: Mapping[str, str] | None = None, log: str = ""
    ) -> subprocess.Popen:
        """Start `argv` on this host in a session of its own, its output in the host's folder (`log`)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        out = (self.workdir / (log or f"{Path(argv[0]).name}.log")).open("ab")
        environ = dict(env) if env is not None else None
        process = subprocess.Popen(
            [*self.prefix, *argv], env=environ, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.processes.append(process)
        return process

    def cut(self) -> None:
        """Take the host's link down: nothing goes in or out, and nobody is told."""
        ip("link", "set", self.veth, "down")

    def heal(self) -> None:
        """Bring the host's link back up."""
        ip("link", "set", self.veth, "up")

    def pids(self) -> list[int]:
        """Return the pids of every process in the host's namespace."""
        result = ip("netns", "pids", self.namespace, check=False)
        return [int(p) for p in result.stdout.split()]

    def kill(self) -> None:
        """SIGKILL every process on the host (the ones it started and whatever they started)."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)


@dataclass
class Network:
    """A bridge and the hosts plugged into it, on a /24 of 10.0.0.0/8 picked per run."""

    workdir: Path
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    hosts: dict[str, Host] = field(default_factory=dict)
    subnet: str = ""

    @property
    def bridge(self) -> str:
        return f"mbr{self.tag}"

    def open(self) -> None:
        """Make the bridge, with the subnet's first address for the test process."""
        taken = ip("-4", "addr").stdout
        while True:
            self.subnet = f"10.{random.randint(64, 250)}.{random.randint(0, 255)}"
            if f"inet {self.subnet}." not in taken:
                break
        ip("link", "add", "name", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.subnet}.1/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")

    def add(self, name: str) -> Host:
        """Make host `name`: a namespace with loopback and eth0 (the next address) on the bridge."""
        index = len(self.hosts) + 10
        host = Host(
            name=name,
            namespace=f"mh{self.tag}-{name}",
            address=f"{self.subnet}.{index}",
            veth=f"mv{self.tag}{index}",
            workdir=self.workdir / name,
        )
        self.hosts[name] = host
        ip("netns", "add", host.namespace)
        ip("link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.namespace)
        ip("link", "set", host.veth, "master", self.bridge, "up")
        ip("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", "eth0")
        ip("-n", host.namespace, "link", "set", "eth0", "up")
        ip("-n", host.namespace, "link", "set", "lo", "up")
        return host

    def close(self) -> None:
        """Kill every host's processes, then remove the namespaces, the veth pairs and the bridge."""
        for host in self.hosts.values():
            host.kill()
        for host in self.hosts.values():
            ip("netns", "del", host.namespace, check=False)
            ip("link", "del", host.veth, check=False)  # gone with its peer's namespace, usually
        ip("link", "del", self.bridge, check=False)


@contextlib.contextmanager
def network(workdir: Path) -> Iterator[Network]:
    """A Network for the block, torn down after it (also when the block fails)."""
    why = can_make_hosts()
    if why:
        pytest.skip(f"separate hosts: {why}")
    net = Network(workdir)
    try:
        net.open()
        yield net
    finally:
        net.close()
