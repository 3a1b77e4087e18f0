"""`mnist up`: the whole stack without Docker, from the Procfile (honcho).

It uses Redis at REDIS_URL when that answers; otherwise it starts a private `redis-server` on a
free port (and stops it afterwards); otherwise it says how to get Redis. It runs the Procfile's
`web` (gunicorn) and `worker` processes, prints the URLs and the token, and on Ctrl-C or
SIGTERM stops everything it started, leaving no process behind.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import redis
from honcho.environ import parse_procfile
from honcho.manager import Manager

from shared.config import Settings

ROOT = Path(__file__).resolve().parent.parent
PROCFILE = ROOT / "Procfile"
#: Seconds to wait for a private redis-server to answer.
REDIS_START_TIMEOUT = 10.0


class UpError(Exception):
    """The stack cannot start; the message says what to do."""


def free_port() -> int:
    """Return a TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_answers(url: str) -> bool:
    """Return True when a Redis at `url` answers PING within a second."""
    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


@contextmanager
def private_redis() -> Iterator[str]:
    """Run a throw-away redis-server on a free port; yield its URL; stop it afterwards."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise UpError(
            "no Redis answers at REDIS_URL and redis-server is not installed: install it"
            " (apt-get install redis-server, brew install redis) or set REDIS_URL to a running Redis"
        )
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="mnist-redis-")
    args = [binary, "--port", str(port), "--bind", "127.0.0.1"]
    args += ["--save", "", "--appendonly", "no", "--dir", workdir]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + REDIS_START_TIMEOUT
        while not redis_answers(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise UpError(f"could not start redis-server on port {port}")
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def processes(workers: int) -> list[tuple[str, str]]:
    """Return (name, command) of each process to run: the Procfile's web once, its worker N times."""
    procfile = parse_procfile(PROCFILE.read_text())
    commands = procfile.processes
    run = [("web", commands["web"])]
    run += [(f"worker.{i + 1}", commands["worker"]) for i in range(workers)]
    return run


def up(args: argparse.Namespace) -> int:
    """Run the stack in the foreground until Ctrl-C or SIGTERM."""
    # The server's own settings, read as its processes will read them: a bad value stops here,
    # in one line, rather than in a traceback of the web process among the others' output.
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        raise UpError(str(exc)) from None
    token = settings.api_token or secrets.token_hex(16)
    url = settings.redis_url
    with ExitStack() as stack:
        if not redis_answers(url):
            print(f"no Redis at {url}: starting a private redis-server", flush=True)
            url = stack.enter_context(private_redis())
        metrics_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="mnist-prometheus-"))
        bin_dir = str(Path(sys.executable).parent)
        env = {
            **os.environ,
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
            "REDIS_URL": url,
            "MNIST_API_TOKEN": token,
            "MNIST_BIND": f"{args.host}:{args.port}",
            "MNIST_BLAS_THREADS": str(settings.blas_threads_for(args.workers)),
            "PROMETHEUS_MULTIPROC_DIR": metrics_dir,
            "PYTHONUNBUFFERED": "1",
        }
        base = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '') else args.host}:{args.port}"
        print(
            f"mnist-service on {base}  (Redis {url}, {args.workers} training worker(s))\n"
            f"  API docs   {base}/docs\n"
            f"  dashboard  {base}/\n"
            f"  metrics    {base}/metrics\n"
            f"  token      {token}   (Authorization: Bearer <token> for writes)\n"
            "Ctrl-C stops everything.",
            flush=True,
        )
        manager = Manager()
        for name, command in processes(args.workers):
            manager.add_process(name, command, env=env, cwd=str(ROOT))
        manager.loop()
    return _exit_status(manager.returncode)


def _exit_status(code: int | None) -> int:
    # honcho reports the signal that stopped it as 130 (SIGINT) or 143 (SIGTERM): a clean stop.
    if code in (None, 0, 128 + signal.SIGINT, 128 + signal.SIGTERM, -signal.SIGTERM, -signal.SIGINT):
        return 0
    return int(code)


def command(args: argparse.Namespace) -> int:
    """Entry point of `mnist up`: errors become one line and exit status 1."""
    try:
        return up(args)
    except UpError as exc:
        print(f"mnist up: {exc}", file=sys.stderr)
        return 1
