"""The real stack for tests: gunicorn serving the app and `python -m worker` RQ workers.

Each test gets its own key prefix, RQ queue and API token (`stack_env`), so tests never see each
other's models or jobs; everything they wrote (our keys and RQ's) is deleted afterwards.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest
import redis
import requests

from client.up import free_port
from tests.redis_fixtures import delete_prefix

T = TypeVar("T")


def wait_for(
    check: Callable[[], T | None],
    timeout: float,
    what: str,
    interval: float = 0.05,
    details: Callable[[], str] = str,
) -> T:
    """Call `check` until it returns something truthy and return that; fail after `timeout` s.

    `details` adds to the failure what helps to read it (a worker's log, say).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}\n{details()}")
        time.sleep(interval)


ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
#: Seconds a server or worker may take to come up.
START_TIMEOUT = 30.0


@dataclass
class StackEnv:
    """Environment of one test's stack: what the server and the workers share."""

    redis_url: str
    prefix: str
    queue: str
    token: str
    extra: dict[str, str] = field(default_factory=dict)

    def environ(self, **more: str) -> dict[str, str]:
        """Return os.environ plus this stack's settings (and `more`)."""
        env = dict(os.environ)
        env.update(
            {
                "REDIS_URL": self.redis_url,
                "MNIST_KEY_PREFIX": self.prefix,
                "MNIST_QUEUE": self.queue,
                "MNIST_API_TOKEN": self.token,
                "MNIST_CHECKPOINT_INTERVAL": "1",
                "MNIST_POLL_INTERVAL": "1",
                "PYTHONPATH": str(ROOT),
                **self.extra,
                **more,
            }
        )
        return env

    @property
    def auth(self) -> dict[str, str]:
        """Return the Authorization header of this stack's token."""
        return {"Authorization": f"Bearer {self.token}"}


def new_env(redis_url: str, **extra: str) -> StackEnv:
    """Return a StackEnv with its own prefix, queue and token (and `extra` settings)."""
    tag = uuid.uuid4().hex[:8]
    return StackEnv(
        redis_url=redis_url, prefix=f"test-{tag}:", queue=f"training-{tag}", token=f"tok-{tag}", extra=extra
    )


def cleanup_rq(client: redis.Redis, queue: str) -> None:
    """Delete an RQ queue, its registries and its jobs."""
    job_ids: set[bytes] = set(client.lrange(f"rq:queue:{queue}", 0, -1))
    for registry in ("wip", "finished", "failed", "deferred", "scheduled", "canceled"):
        key = f"rq:{registry}:{queue}"
        kind = client.type(key)
        if kind == b"zset":
            job_ids.update(m.split(b":")[0] for m in client.zrange(key, 0, -1))
        client.delete(key)
    for job_id in job_ids:
        jid = job_id.decode()
        client.delete(f"rq:job:{jid}", f"rq:results:{jid}", f"rq:executions:{jid}")
        delete_prefix(client, f"rq:execution:{jid}")
    client.delete(f"rq:queue:{queue}", f"rq:clean_registries:{queue}", f"rq:intermediate:{queue}")
    client.srem("rq:queues", f"rq:queue:{queue}")


@pytest.fixture
def stack_env(redis_url: str, redis_client: redis.Redis) -> Iterator[StackEnv]:
    """Return a fresh StackEnv; afterwards delete its keys and its RQ queue."""
    env = new_env(redis_url)
    yield env
    delete_prefix(redis_client, env.prefix)
    cleanup_rq(redis_client, env.queue)


def descendants(pid: int) -> list[int]:
    """Return the pids of every process below `pid` (children first), read from /proc."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                children = [int(c) for c in f.read().split()]
        except OSError:
            continue
        for child in children:
            found.append(child)
            found.extend(descendants(child))
    return found


class Process:
    """A child process started by a test, stopped (and reaped) at the end."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log_path = log
        self._log = log.open("wb")
        self.popen = subprocess.Popen(args, env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        """Return what the process printed so far."""
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def kill_tree(self, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to the process and everything it started (an RQ horse has its own group)."""
        for pid in [*descendants(self.pid), self.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        """Send `sig`, wait up to `timeout` s, then SIGKILL the whole tree."""
        if self.alive():
            orphans = descendants(self.pid)
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill_tree()
                self.popen.wait(5)
            for pid in orphans:  # anything it left behind does not outlive the test
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self._log.close()


@dataclass
class Server:
    """A gunicorn serving the app on `url`."""

    url: str
    process: Process
    env: StackEnv


def start_server(env: StackEnv, tmp: Path, workers: int = 2, **more: str) -> Server:
    """Start gunicorn with the app on a free port; return once /healthz answers."""
    port = free_port()
    args = [
        str(BIN / "gunicorn"),
        "--config", str(ROOT / "services" / "gunicorn_conf.py"),
        "--bind", f"127.0.0.1:{port}",
        "--workers", str(workers),
        "services.app:create_app()",
    ]  # fmt: skip
    prom = tmp / f"prometheus-{port}"
    prom.mkdir()
    process = Process(
        args, env.environ(PROMETHEUS_MULTIPROC_DIR=str(prom), **more), tmp / f"gunicorn-{port}.log"
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if not process.alive():
            raise RuntimeError(f"gunicorn exited:\n{process.log()}")
        try:
            if requests.get(f"{url}/healthz", timeout=1).status_code == 200:
                return Server(url, process, env)
        except (requests.ConnectionError, requests.Timeout):
            pass  # not listening yet, or listening while its workers still boot
        time.sleep(0.1)
    process.stop()
    raise RuntimeError(f"gunicorn did not answer within {START_TIMEOUT} s:\n{process.log()}")


def start_worker(env: StackEnv, tmp: Path, name: str | None = None, **more: str) -> Process:
    """Start `python -m worker` on the stack's queue; return once it is registered in RQ."""
    name = name or f"w-{uuid.uuid4().hex[:6]}"
    process = Process(
        [sys.executable, "-m", "worker"],
        env.environ(MNIST_WORKER_NAME=name, **more),
        tmp / f"worker-{name}.log",
    )
    client = redis.Redis.from_url(env.redis_url)
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while time.monotonic() < deadline:
            if not process.alive():
                raise RuntimeError(f"worker exited:\n{process.log()}")
            if client.exists(f"rq:worker:{name}"):
                return process
            time.sleep(0.1)
    finally:
        client.close()
    process.stop()
    raise RuntimeError(f"worker did not register within {START_TIMEOUT} s:\n{process.log()}")


@pytest.fixture
def server(stack_env: StackEnv, tmp_path: Path) -> Iterator[Server]:
    """A real gunicorn (2 workers) on this test's stack."""
    s = start_server(stack_env, tmp_path)
    yield s
    s.process.stop()


@pytest.fixture
def worker(stack_env: StackEnv, tmp_path: Path) -> Iterator[Process]:
    """A real `python -m worker` on this test's queue."""
    p = start_worker(stack_env, tmp_path)
    yield p
    p.stop()
