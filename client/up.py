"""`mnist up`: the whole stack without Docker, supervised as compose would run it.

It uses Redis at REDIS_URL when that answers; otherwise it starts a private `redis-server` on a
free port with a generated password (and stops it afterwards); otherwise it says how to get Redis.
It runs the Procfile's `web` (gunicorn, on a private unix socket) and `worker` processes, and nginx
in front of gunicorn on the port users reach (deploy/nginx.conf.template, rendered into a private
folder), prints the URLs and the token, and restarts any process that dies (client/supervise.py).
Ctrl-C or SIGTERM stops everything it started, leaving no process behind.

Without nginx it refuses to start and says how to install it; `--no-proxy` runs gunicorn on the
port itself, as before nginx, and says that slow or idle clients can then hold all its threads.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import redis
from honcho.environ import parse_procfile

from client.supervise import Program, Supervisor
from shared.config import Settings
from shared.redis_conn import connect, is_sentinel, redact

ROOT = Path(__file__).resolve().parent.parent
PROCFILE = ROOT / "Procfile"
#: nginx's configuration, with ${MNIST_*} placeholders (docker-compose.yml mounts the same file).
NGINX_TEMPLATE = ROOT / "deploy" / "nginx.conf.template"
#: Where nginx is looked for when it is not on PATH (Debian installs it in /usr/sbin).
NGINX_PATHS = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/bin/nginx", "/opt/homebrew/bin/nginx")
#: Seconds to wait for a private redis-server to answer.
REDIS_START_TIMEOUT = 10.0
#: Open files the stack may hold (nginx: two per proxied request, one per idle client).
OPEN_FILES = 65536
#: Placeholders of the nginx template: `${NAME}` where NAME starts with MNIST_.
_PLACEHOLDER = re.compile(r"\$\{(MNIST_[A-Z0-9_]+)\}")


class UpError(Exception):
    """The stack cannot start; the message says what to do."""


def free_port() -> int:
    """Return a TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_free(host: str, port: int) -> bool:
    """Return True when `host`:`port` can be listened on right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.create_server((host, port), family=family):
            return True
    except OSError:
        return False


def redis_answers(url: str) -> bool:
    """Return True when a Redis at `url` answers PING within a second."""
    client = connect(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def find_nginx() -> str | None:
    """Return the path of an nginx binary (PATH first, then `NGINX_PATHS`), or None."""
    found = shutil.which("nginx")
    if found:
        return found
    return next((p for p in NGINX_PATHS if os.access(p, os.X_OK)), None)


def render_nginx(template: str, values: Mapping[str, str]) -> str:
    """Return `template` with each `${MNIST_…}` placeholder replaced; ValueError for one without a value."""
    missing = sorted({name for name in _PLACEHOLDER.findall(template) if name not in values})
    if missing:
        raise ValueError(f"no value for {', '.join(missing)}")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def nginx_values(settings: Settings, listen: str, upstream: str, folder: str) -> dict[str, str]:
    """Return the template's values: where nginx listens, gunicorn's address, its folder, the app's limits."""
    return {
        "MNIST_PROXY_LISTEN": listen,
        "MNIST_PROXY_UPSTREAM": upstream,
        "MNIST_PROXY_DIR": folder,
        # More upstream servers: none here (one gunicorn); the pattern may match no file.
        "MNIST_PROXY_SERVERS": f"{folder}/servers/*.conf",
        "MNIST_MAX_BODY_BYTES": str(settings.max_body_bytes),
        "MNIST_MAX_DATASET_BYTES": str(settings.max_dataset_bytes),
        "MNIST_REQUEST_TIMEOUT": str(settings.request_timeout),
    }


def listen_address(host: str, port: int) -> str:
    """Return nginx's `listen` address of `host`:`port` (IPv6 hosts in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def write_nginx_conf(binary: str, folder: Path, values: Mapping[str, str]) -> Path:
    """Render the template into `folder`/nginx.conf and have nginx check it; UpError if it refuses."""
    conf = folder / "nginx.conf"
    conf.write_text(render_nginx(NGINX_TEMPLATE.read_text(), values))
    result = subprocess.run(
        [binary, "-t", "-q", "-e", "stderr", "-p", f"{folder}/", "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if result.returncode != 0:
        raise UpError(f"nginx refused its configuration ({conf}):\n{result.stderr.strip()}")
    return conf


def raise_open_files_limit(wanted: int = OPEN_FILES) -> None:
    """Raise this process's soft limit of open files towards `wanted` (its children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def processes(workers: int) -> list[tuple[str, str]]:
    """Return (name, command) of each process to run: the Procfile's web once, its worker N times."""
    procfile = parse_procfile(PROCFILE.read_text())
    commands = procfile.processes
    run = [("web", commands["web"])]
    run += [(f"worker.{i + 1}", commands["worker"]) for i in range(workers)]
    return run


def shell(command: str) -> tuple[str, ...]:
    """Return the argv that runs a Procfile `command` (the shell replaced by it: signals reach it)."""
    return ("/bin/sh", "-c", f"exec {command}")


def start_private_redis(supervisor: Supervisor, folder: Path) -> str:
    """Start a password-protected redis-server on a free port under `supervisor`; return its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise UpError(
            "no Redis answers at REDIS_URL and redis-server is not installed: install it"
            " (apt-get install redis-server, brew install redis) or set REDIS_URL to a running Redis"
        )
    port = free_port()
    password = secrets.token_hex(16)
    folder.mkdir(mode=0o700)
    # Append-only in its folder: a redis-server that crashed and is restarted keeps the registry.
    # The password is in its arguments, which redis-server replaces by its title once started.
    argv: tuple[str, ...] = (binary, "--port", str(port), "--bind", "127.0.0.1", "--requirepass", password)
    argv += ("--save", "", "--appendonly", "yes", "--dir", str(folder), "--loglevel", "warning")
    supervisor.add(Program("redis", argv, dict(os.environ), str(folder), stage=0))
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    deadline = time.monotonic() + REDIS_START_TIMEOUT
    while not redis_answers(url):
        if supervisor.stopping:
            return url
        if supervisor.pid("redis") is None or time.monotonic() > deadline:
            raise UpError(f"could not start redis-server on port {port}")
        time.sleep(0.05)
    return url


@contextmanager
def _stopped_by_signals(supervisor: Supervisor) -> Iterator[None]:
    # Ctrl-C and SIGTERM ask the supervisor to stop (a second one kills at once); the programs run
    # in sessions of their own, so a terminal's Ctrl-C reaches only this process.
    previous = {sig: signal.signal(sig, supervisor.request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def up(args: argparse.Namespace) -> int:
    """Run the stack in the foreground until Ctrl-C or SIGTERM."""
    # The server's own settings, read as its processes will read them: a bad value stops here,
    # in one line, rather than in a traceback of the web process among the others' output.
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        raise UpError(str(exc)) from None
    nginx = None if args.no_proxy else find_nginx()
    if nginx is None and not args.no_proxy:
        raise UpError(
            "nginx is not installed: `mnist up` runs it in front of gunicorn, so that slow or idle"
            " clients cannot hold gunicorn's threads. Install it (`make proxy`, which leaves no system"
            " nginx running; or apt-get install nginx, brew install nginx), or run `mnist up --no-proxy`"
            " (gunicorn then faces clients directly, unprotected)"
        )
    if not port_free(args.host, args.port):
        raise UpError(f"{args.host}:{args.port} is in use: choose another port with --port")
    token = settings.api_token or secrets.token_hex(16)
    raise_open_files_limit()
    supervisor = Supervisor()
    with _stopped_by_signals(supervisor), tempfile.TemporaryDirectory(prefix="mnist-up-") as tmp:
        folder = Path(tmp)
        # nginx's workers run as `nobody` when started by root: they must reach gunicorn's socket.
        folder.chmod(0o711)
        try:
            url = settings.redis_url
            if not redis_answers(url) and is_sentinel(url):
                # A private server would split the registry from the deployment the URL names.
                raise UpError(f"no primary answers through the Sentinels of {redact(url)}: are they running?")
            if not redis_answers(url):
                print(f"no Redis at {redact(url)}: starting a private redis-server", flush=True)
                url = start_private_redis(supervisor, folder / "redis")
                # Readable by its owner only from the start: the folder lets others reach known names.
                with os.fdopen(os.open(folder / "redis.url", os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
                    f.write(url + "\n")
            metrics_dir = folder / "prometheus"
            metrics_dir.mkdir()
            bin_dir = str(Path(sys.executable).parent)
            socket_path = folder / "gunicorn.sock"
            env = {
                **os.environ,
                "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
                "REDIS_URL": url,
                "MNIST_API_TOKEN": token,
                "MNIST_BIND": f"unix:{socket_path}" if nginx else f"{args.host}:{args.port}",
                "MNIST_BLAS_THREADS": str(settings.blas_threads_for(args.workers)),
                "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
                "PYTHONUNBUFFERED": "1",
            }
            conf = None
            if nginx:
                listen = listen_address(args.host, args.port)
                conf = write_nginx_conf(nginx, folder, nginx_values(settings, listen, env["MNIST_BIND"], tmp))
            for name, command in processes(args.workers):
                if not supervisor.stopping:
                    supervisor.add(Program(name, shell(command), env, str(ROOT)))
            if nginx and conf and not supervisor.stopping:
                argv = (nginx, "-e", "stderr", "-p", f"{tmp}/", "-c", str(conf))
                supervisor.add(Program("proxy", argv, env, tmp))
            _banner(args, url, token, folder, proxied=nginx is not None)
            supervisor.run()
        finally:
            supervisor.stop()
    return 0


def _banner(args: argparse.Namespace, redis_url: str, token: str, folder: Path, proxied: bool) -> None:
    base = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '', '::') else args.host}:{args.port}"
    where = f" (full URL in {folder / 'redis.url'})" if (folder / "redis.url").exists() else ""
    front = (
        "  proxy      nginx in front of gunicorn (gunicorn listens on a private socket only)\n"
        if proxied
        else "  WARNING    --no-proxy: gunicorn faces clients directly; slow or idle clients can hold"
        " all its threads (docs/deploy.md)\n"
    )
    print(
        f"mnist-service on {base}  ({args.workers} training worker(s))\n"
        f"  API docs   {base}/docs\n"
        f"  dashboard  {base}/\n"
        f"  metrics    {base}/metrics\n"
        f"  token      {token}   (Authorization: Bearer <token> for writes)\n"
        f"  Redis      {redact(redis_url)}{where}\n"
        f"{front}"
        "A process that dies is restarted. Ctrl-C stops everything.",
        flush=True,
    )


def command(args: argparse.Namespace) -> int:
    """Entry point of `mnist up`: errors become one line and exit status 1."""
    try:
        return up(args)
    except UpError as exc:
        print(f"mnist up: {exc}", file=sys.stderr)
        return 1
