"""Helpers of the tests of the front and the supervised stack: `mnist up` as users run it, nginx in
front of a test's gunicorn, and hostile clients (slow senders, idle event streams) on raw sockets.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from client import up
from shared.config import Settings
from tests.live_fixtures import ROOT, Process, StackEnv, descendants, free_port, wait_for

MNIST = Path(sys.executable).parent / "mnist"
#: nginx as `mnist up` finds it (None: not installed).
NGINX = up.find_nginx()
needs_nginx = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed: `make proxy` (apt-get install nginx, service left stopped)"
)
#: Seconds `mnist up` may take to answer /healthz.
UP_TIMEOUT = 60.0


def cmdline(pid: int) -> str:
    """Return the command line of `pid` ("" once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\x00", b" ").decode().strip()
    except OSError:
        return ""


def alive(pids: list[int]) -> list[int]:
    """Return the pids of `pids` that are still running (zombies count as dead)."""
    running = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(") ", 1)[1].startswith("Z"):
                    continue
            running.append(pid)
        except OSError:
            pass
    return running


# --- `mnist up` -------------------------------------------------------------------------------------
@dataclass
class UpStack:
    """A running `mnist up` (its output in a file), and what it started."""

    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path
    proxied: bool
    _seen: set[int] = field(default_factory=set)

    def log(self) -> str:
        """Return what `mnist up` printed so far."""
        return self.log_path.read_text(errors="replace")

    def tree(self) -> list[int]:
        """Return every process below `mnist up` now (and remember them for `stop`)."""
        pids = descendants(self.proc.pid)
        self._seen.update(pids)
        return pids

    def programs(self) -> dict[str, list[int]]:
        """Return the pids of the programs `mnist up` supervises, by kind: web, worker, proxy, redis."""
        kinds: dict[str, list[int]] = {"web": [], "worker": [], "proxy": [], "redis": []}
        children = set(_children(self.proc.pid))
        for pid in self.tree():
            line = cmdline(pid)
            if pid in children and "gunicorn" in line:
                kinds["web"].append(pid)
            elif line.endswith("-m worker") and pid in children:
                kinds["worker"].append(pid)
            elif line.startswith("nginx: master"):
                kinds["proxy"].append(pid)
            elif "redis-server" in line and pid in children:
                kinds["redis"].append(pid)
        return kinds

    def healthy(self) -> bool:
        """Return True when /healthz answers 200 through the front."""
        try:
            return requests.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40.0) -> str:
        """Stop `mnist up` with `sig`, kill what is left after `timeout` s; return its output."""
        self.tree()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        left = alive(sorted(self._seen | set(descendants(self.proc.pid))))
        for pid in [*left, self.proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(10)
        return self.log()


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def start_up(env: StackEnv, tmp: Path, workers: int = 1, *args: str, **more: str) -> UpStack:
    """Run `mnist up` on `env` (nginx in front if installed, else --no-proxy) until /healthz answers."""
    port = free_port()
    proxied = NGINX is not None and "--no-proxy" not in args
    argv = [str(MNIST), "up", "--port", str(port), "--workers", str(workers), *args]
    if not proxied and "--no-proxy" not in args:
        argv.append("--no-proxy")
    log_path = tmp / f"up-{port}.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            env=env.environ(**more),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )
    stack = UpStack(proc, f"http://127.0.0.1:{port}", log_path, proxied)
    deadline = time.monotonic() + UP_TIMEOUT
    while not stack.healthy():
        if proc.poll() is not None or time.monotonic() > deadline:
            output = stack.stop(signal.SIGKILL)
            pytest.fail(f"mnist up did not serve /healthz within {UP_TIMEOUT} s:\n{output}")
        time.sleep(0.2)
    return stack


# --- nginx in front of a test's gunicorn -------------------------------------------------------------
@dataclass
class Proxy:
    """nginx, rendered from the repository's template, in front of a test's gunicorn."""

    url: str
    port: int
    process: Process
    folder: Path

    def stop(self) -> None:
        """Stop nginx and delete its folder."""
        self.process.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


def start_proxy(upstream: str, tmp: Path, settings: Settings | None = None) -> Proxy:
    """Start nginx on a free port in front of `upstream` (host:port or unix:PATH); return once it answers."""
    assert NGINX is not None
    settings = settings or Settings()
    port = free_port()
    # Started by root (as tests here are), nginx's workers run as nobody: their temporary files
    # must be reachable through every parent folder, which pytest's tmp_path is not.
    folder = Path(tempfile.mkdtemp(prefix="test-nginx-"))
    folder.chmod(0o711)
    values = up.nginx_values(settings, f"127.0.0.1:{port}", upstream, str(folder))
    conf = up.write_nginx_conf(NGINX, folder, values)
    argv = [NGINX, "-e", "stderr", "-p", f"{folder}/", "-c", str(conf)]
    process = Process(argv, dict(os.environ), tmp / f"nginx-{port}.log")
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        assert process.alive(), process.log()
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
        return False

    wait_for(answers, 15, "nginx to listen", details=process.log)
    return Proxy(url, port, process, folder)


# --- hostile clients -----------------------------------------------------------------------------------
HEADER = "header"
BODY = "body"


@dataclass
class _Slow:
    sock: socket.socket
    kind: str
    sent: int = 0


class SlowClients:
    """`count` connections that each send a request one piece every `interval` s, never finishing it.

    Half send one more header line each time (the request never reaches its blank line), half
    send complete headers of a 784-byte prediction, then one body byte each time. No token. A
    connection the server closes is opened again at once (`reopened` counts them), as an
    attacker's script would, so `count` stay open.
    """

    def __init__(
        self, host: str, port: int, count: int, interval: float = 2.0, path: str = "/v1/models/mnist:predict"
    ) -> None:
        self.address = (host, port)
        self.count = count
        self.interval = interval
        self.path = path
        self.reopened = 0
        self.failed_connects = 0
        self._conns: list[_Slow] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slow-clients", daemon=True)

    def _open(self, kind: str) -> _Slow | None:
        try:
            sock = socket.create_connection(self.address, timeout=5)
        except OSError:
            self.failed_connects += 1
            return None
        sock.setblocking(False)
        if kind == HEADER:
            first = f"POST {self.path} HTTP/1.1\r\nHost: slow\r\n"
        else:
            first = (
                f"POST {self.path} HTTP/1.1\r\nHost: slow\r\nContent-Type: application/octet-stream\r\n"
                "Content-Length: 784\r\n\r\n"
            )
        try:
            sock.send(first.encode())
        except OSError:
            sock.close()
            return None
        return _Slow(sock, kind)

    def start(self) -> SlowClients:
        """Open every connection, then trickle in the background."""
        for i in range(self.count):
            conn = self._open(HEADER if i % 2 == 0 else BODY)
            if conn is not None:
                self._conns.append(conn)
        self._thread.start()
        return self

    @property
    def open(self) -> int:
        """Return how many connections are open now."""
        return len(self._conns)

    def _closed_by_server(self, sock: socket.socket) -> bool:
        try:
            sock.recv(4096)  # b"" (closed) or an answer (a 408, a 413): this request is over
        except BlockingIOError:
            return False  # nothing to read: still waiting for the rest of the request
        except OSError:
            pass
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            kept: list[_Slow] = []
            for conn in self._conns:
                piece = f"X-Slow-{conn.sent}: {conn.sent}\r\n".encode() if conn.kind == HEADER else b"\x00"
                try:
                    if self._closed_by_server(conn.sock):
                        raise ConnectionResetError
                    conn.sock.send(piece)
                    conn.sent += 1
                    kept.append(conn)
                except OSError:
                    conn.sock.close()
                    self.reopened += 1
                    again = self._open(conn.kind)
                    if again is not None:
                        kept.append(again)
            self._conns = kept

    def stop(self) -> None:
        """Stop trickling and close every connection."""
        self._stop.set()
        self._thread.join(10)
        for conn in self._conns:
            conn.sock.close()
        self._conns = []


class IdleStreams:
    """`count` event streams of one job, opened on raw sockets and never read past their status line."""

    def __init__(self, host: str, port: int, job_id: str, count: int) -> None:
        self.address = (host, port)
        self.request = (
            f"GET /v1/jobs/{job_id}/events HTTP/1.1\r\nHost: idle\r\nAccept: text/event-stream\r\n\r\n"
        )
        self.count = count
        self.statuses: dict[str, int] = {}
        self._socks: list[socket.socket] = []

    def open(self, timeout: float = 30.0) -> dict[str, int]:
        """Open every stream; return how many got each status (status line within `timeout` s)."""
        for _ in range(self.count):
            sock = socket.create_connection(self.address, timeout=5)
            sock.sendall(self.request.encode())
            self._socks.append(sock)
        deadline = time.monotonic() + timeout
        for sock in self._socks:
            status = "no answer"
            remaining = max(0.0, deadline - time.monotonic())  # past it: only what has arrived
            if select.select([sock], [], [], remaining)[0]:
                with contextlib.suppress(OSError):
                    line = sock.recv(64).split(b"\r\n", 1)[0].decode(errors="replace")
                    status = line.split(" ")[1] if line.startswith("HTTP/") else "closed"
            self.statuses[status] = self.statuses.get(status, 0) + 1
        return self.statuses

    def close(self) -> None:
        """Close every stream."""
        for sock in self._socks:
            sock.close()
        self._socks = []


def timed(call: Callable[[], requests.Response], n: int) -> tuple[list[float], list[str]]:
    """Call `call` `n` times in a row; return each one's seconds and the failures (status or error)."""
    seconds, failures = [], []
    for _ in range(n):
        started = time.monotonic()
        try:
            r = call()
            if r.status_code != 200:
                failures.append(str(r.status_code))
        except requests.RequestException as exc:
            failures.append(type(exc).__name__)
        seconds.append(time.monotonic() - started)
    return seconds, failures


def percentile(values: list[float], q: float) -> float:
    """Return the `q`-th percentile of `values` (nearest rank), in milliseconds."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return round(ordered[rank] * 1000, 1)
