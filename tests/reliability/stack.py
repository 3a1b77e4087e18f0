"""Helpers of the reliability suite (PrivateRedis serves test_predict_v1.py's outage test too):
private Redis servers, gunicorn processes, a load generator.

Everything here drives real processes: a `redis-server` of the test's own (append-only file,
password), the gunicorn that `tests.live_fixtures.start_server` starts, and `python -m worker`.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import redis
import requests

from shared import mlp, serialization
from shared.keys import Keys
from shared.registry import Registry
from tests.live_fixtures import Server, free_port, wait_for

RAW = "application/octet-stream"
#: One digit-shaped image, the body of most load requests.
IMAGE = np.random.default_rng(3).integers(0, 256, (1, mlp.INPUT_SIZE), dtype=np.uint8)


def label_blob(seed: int, label: int | None = None, hidden: int = 16) -> bytes:
    """Return a small model file; with `label`, a model that answers that label for any image."""
    params = mlp.init_params((mlp.INPUT_SIZE, hidden, mlp.CLASSES), np.random.default_rng(seed))
    if label is not None:
        params[-1][label] = 50.0
    return serialization.model_to_bytes(params, {"seed": seed})


# --- Redis ----------------------------------------------------------------------------------------
@dataclass
class PrivateRedis:
    """A redis-server of one test on its own port; optionally append-only and password-protected."""

    workdir: Path
    port: int = field(default_factory=free_port)
    appendonly: bool = False
    password: str | None = None
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def client(self, **kw: Any) -> redis.Redis:
        return redis.Redis.from_url(self.url, **kw)

    def start(self) -> None:
        """Start the server (same port and folder every time) and wait until it answers."""
        args = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            str(self.workdir),
            "--appendonly",
            "yes" if self.appendonly else "no",
        ]
        if self.password:
            args += ["--requirepass", self.password]
        log = (self.workdir / f"redis-{self.port}.log").open("ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        client = self.client(socket_connect_timeout=0.2)
        try:
            # Once it answers, it has also replayed its append-only file (LOADING errors before).
            wait_for(lambda: _pings(client), 15, f"redis-server on port {self.port}")
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL the server (no shutdown, no final save) and reap it."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.BusyLoadingError, redis.TimeoutError):
        return False


@contextmanager
def private_redis(workdir: Path, **kw: Any) -> Iterator[PrivateRedis]:
    """Run a PrivateRedis for the duration of the block."""
    server = PrivateRedis(workdir, **kw)
    server.start()
    try:
        yield server
    finally:
        server.kill()


def registry_on(url: str, prefix: str) -> Registry:
    """Return a Registry on `url` under `prefix`."""
    return Registry(redis.Redis.from_url(url), Keys(prefix))


# --- processes ------------------------------------------------------------------------------------
def gunicorn_workers(server: Server) -> list[int]:
    """Return the pids of the gunicorn worker processes (the master's children)."""
    try:
        with open(f"/proc/{server.process.pid}/task/{server.process.pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def proc_status(pid: int) -> dict[str, int]:
    """Return VmRSS and VmHWM (KiB) of a process, from /proc/<pid>/status."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def serving(server: Server, model: str) -> list[int]:
    """Return the default version of `model` that each gunicorn worker reports in /metrics."""
    text = requests.get(f"{server.url}/metrics", timeout=30).text
    prefix = "mnist_model_version_served{"
    return sorted(
        int(float(line.rsplit(" ", 1)[1]))
        for line in text.splitlines()
        if line.startswith(prefix) and f'model="{model}"' in line
    )


def all_serving(server: Server, model: str, version: int, workers: int = 2) -> bool:
    """Return True once every gunicorn worker serves `version` of `model` by default.

    A worker loads a model at its first request (or at start for MNIST_DEFAULT_MODEL): each call
    sends a few un-pinned predictions on fresh connections, so that every worker gets one.
    """
    for _ in range(2 * workers):
        requests.post(
            f"{server.url}/v1/models/{model}:predict",
            data=IMAGE.tobytes(),
            headers={"Content-Type": RAW, "Connection": "close"},
            timeout=30,
        )
    return serving(server, model) == [version] * workers and len(gunicorn_workers(server)) == workers


# --- load -----------------------------------------------------------------------------------------
@dataclass
class Outcome:
    """One request of a load run."""

    started: float  # time.monotonic() when it was sent
    seconds: float  # latency
    status: int  # HTTP status, or 0 for a connection error
    version: int | None  # model_version of a 200
    error: str = ""


@dataclass
class LoadResult:
    """What a load run measured."""

    outcomes: list[Outcome]
    seconds: float
    concurrency: int

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status != 200]

    def percentile(self, q: float) -> float:
        """Return the q-th percentile latency of the successful requests, in ms."""
        ok = [o.seconds for o in self.outcomes if o.status == 200]
        return float(np.percentile(ok, q) * 1000) if ok else float("nan")

    @property
    def throughput(self) -> float:
        return len(self.outcomes) / self.seconds if self.seconds else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "requests": len(self.outcomes),
            "failures": len(self.failures),
            "concurrency": self.concurrency,
            "seconds": round(self.seconds, 2),
            "throughput_rps": round(self.throughput, 1),
            "p50_ms": round(self.percentile(50), 2),
            "p99_ms": round(self.percentile(99), 2),
            "max_ms": round(max((o.seconds for o in self.outcomes), default=0) * 1000, 1),
        }


class Load:
    """Threads that each POST predictions on their own requests.Session until told to stop.

    `total` bounds the requests in all (None: until `stop()`); `deadline` bounds the seconds.
    """

    def __init__(
        self,
        url: str,
        *,
        concurrency: int = 16,
        total: int | None = None,
        deadline: float = 300.0,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.url = url
        self.concurrency = concurrency
        self.total = total
        self.deadline = deadline
        self.body = IMAGE.tobytes() if body is None else body
        self.headers = {"Content-Type": RAW, **(headers or {})}
        self.timeout = timeout
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._sent = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started = 0.0
        self._ended = 0.0

    @property
    def done(self) -> int:
        """Return how many requests have been answered (or failed) so far."""
        return len(self.outcomes)

    @property
    def running(self) -> bool:
        """Return True while a client thread is still sending."""
        return any(t.is_alive() for t in self._threads)

    def _take(self) -> bool:
        with self._lock:
            if self._stop.is_set() or (self.total is not None and self._sent >= self.total):
                return False
            self._sent += 1
            return True

    def _client(self) -> None:
        end = self._started + self.deadline
        with requests.Session() as session:
            session.headers.update(self.headers)
            while time.monotonic() < end and self._take():
                started = time.monotonic()
                try:
                    r = session.post(self.url, data=self.body, timeout=self.timeout)
                    seconds = time.monotonic() - started
                    version = r.json().get("model_version") if r.status_code == 200 else None
                    outcome = Outcome(started, seconds, r.status_code, version, "" if r.ok else r.text[:200])
                except requests.RequestException as exc:
                    outcome = Outcome(
                        started, time.monotonic() - started, 0, None, f"{type(exc).__name__}: {exc}"[:300]
                    )
                with self._lock:
                    self.outcomes.append(outcome)

    def start(self) -> Load:
        self._started = time.monotonic()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(self.concurrency)]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> LoadResult:
        """Stop sending (requests in flight finish) and return the result."""
        self._stop.set()
        return self.join()

    def join(self, timeout: float | None = None) -> LoadResult:
        """Wait for the threads (after `total` requests, `deadline` or `stop()`) and return the result."""
        for t in self._threads:
            t.join(timeout)
        self._ended = time.monotonic()
        with self._lock:
            outcomes = sorted(self.outcomes, key=lambda o: o.started)
        return LoadResult(outcomes, self._ended - self._started, self.concurrency)


def median_ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 2) if values else float("nan")


# --- memory ---------------------------------------------------------------------------------------
def reset_peak(pid: int) -> None:
    """Reset a process's peak resident memory (VmHWM) to its current one (Linux's clear_refs)."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


class RssGuard:
    """A watchdog: SIGKILL any of `pids` whose resident memory passes `limit_mib` (polled every 20 ms).

    A scenario that tries to make a server swallow gigabytes runs inside one, so that a regression
    fails its test (the process is gone) instead of taking the memory of a shared machine.
    """

    def __init__(self, pids: list[int], limit_mib: int) -> None:
        self.pids = pids
        self.limit_kib = limit_mib * 1024
        self.killed: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="rss-guard", daemon=True)

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            for pid in self.pids:
                try:
                    rss = proc_status(pid).get("VmRSS", 0)
                except OSError:
                    continue  # gone
                if rss > self.limit_kib and pid not in self.killed:
                    os.kill(pid, signal.SIGKILL)
                    self.killed.append(pid)

    def __enter__(self) -> RssGuard:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
