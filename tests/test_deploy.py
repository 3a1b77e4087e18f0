"""Deployment: the compose file against the Compose specification, the Procfile as its source of
truth, and `mnist up` starting and stopping the whole stack (nginx in front, a password on its
private Redis) without leaving a process behind."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import requests
from honcho.environ import parse_procfile

from client import up
from shared.config import Settings
from shared.redis_conn import parse_sentinel_url
from tests.live_fixtures import ROOT, descendants, free_port
from tests.up_helpers import NGINX

COMPOSE = ROOT / "docker-compose.yml"
PROCFILE = ROOT / "Procfile"
MNIST = Path(sys.executable).parent / "mnist"


def load_compose() -> dict:
    """Return docker-compose.yml parsed (ruamel.yaml, which check-jsonschema already brings)."""
    from ruamel.yaml import YAML

    return YAML(typ="safe").load(COMPOSE.read_text())


def check_compose_schema(path: Path) -> None:
    """Assert that the compose file at `path` passes the Compose specification's JSON schema."""
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "check-jsonschema"),
            "--builtin-schema",
            "vendor.compose-spec",
            str(path),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_file_passes_the_compose_specification_schema() -> None:
    check_compose_schema(COMPOSE)


def test_compose_runs_the_procfile_commands() -> None:
    procfile = parse_procfile(PROCFILE.read_text()).processes
    services = load_compose()["services"]
    ours = {name: s for name, s in services.items() if s.get("image", "").startswith("mnist-service")}
    assert set(ours) == {"api", "worker", "predictor"}
    assert ours["api"]["command"] == procfile["web"]
    assert ours["predictor"]["command"] == procfile["web"]
    assert ours["worker"]["command"] == procfile["worker"]
    assert set(procfile) == {"web", "worker"}


def test_compose_builds_the_image_once() -> None:
    services = load_compose()["services"]
    built = [name for name, s in services.items() if "build" in s]
    assert built == ["api"]
    assert {s["image"] for name, s in services.items() if name in ("api", "worker", "predictor")} == {
        "mnist-service:latest"
    }


def test_compose_puts_nginx_in_front_and_keeps_gunicorn_on_its_network() -> None:
    services = load_compose()["services"]
    proxy, env = services["proxy"], services["proxy"]["environment"]
    assert proxy["image"].startswith("nginx:") and proxy["command"] == ["nginx"]
    assert "./deploy/nginx.conf.template:/etc/nginx/templates/nginx.conf.template:ro" in proxy["volumes"]
    assert env["NGINX_ENVSUBST_OUTPUT_DIR"] == "/etc/nginx"
    assert env["MNIST_PROXY_UPSTREAM"] == "api:8000" and proxy["ports"] == ["${MNIST_PORT:-8000}:8000"]
    # Every placeholder of the template has a value in the proxy's environment.
    placeholders = set(re.findall(r"\$\{(MNIST_\w+)\}", up.NGINX_TEMPLATE.read_text()))
    assert placeholders <= set(env)
    assert all(name.startswith(env["NGINX_ENVSUBST_FILTER"]) for name in placeholders)
    # gunicorn is reached through the proxy only; nothing but the proxy publishes a port to all.
    assert "ports" not in services["api"] and services["api"]["expose"] == ["8000"]
    assert proxy["depends_on"]["api"]["condition"] == "service_healthy"
    # The proxy lets through what the app accepts: the same limits, defaulting to Settings'.
    defaults = Settings()
    for name, field in [
        ("MNIST_MAX_BODY_BYTES", "max_body_bytes"),
        ("MNIST_MAX_DATASET_BYTES", "max_dataset_bytes"),
        ("MNIST_REQUEST_TIMEOUT", "request_timeout"),
    ]:
        expected = f"${{{name}:-{getattr(defaults, field)}}}"
        assert env[name] == expected
        for app in ("api", "worker", "predictor"):
            assert services[app]["environment"][name] == expected


def test_compose_puts_the_predictors_behind_their_own_nginx() -> None:
    services = load_compose()["services"]
    lb, front = services["predictor-proxy"], services["proxy"]
    assert lb["profiles"] == services["predictor"]["profiles"] == ["predictor"]
    assert lb["volumes"] == front["volumes"] and lb["command"] == ["nginx"]
    # The name compose's DNS resolves to every replica: one upstream server each.
    assert lb["environment"]["MNIST_PROXY_UPSTREAM"] == "predictor:8000"
    assert lb["depends_on"]["predictor"]["condition"] == "service_healthy"
    assert lb["ports"] == ["${MNIST_PREDICT_PORT:-8001}:8000"]
    placeholders = set(re.findall(r"\$\{(MNIST_\w+)\}", up.NGINX_TEMPLATE.read_text()))
    assert placeholders <= set(lb["environment"])


def test_the_sentinel_override_gives_every_process_the_sentinels() -> None:
    from ruamel.yaml import YAML

    path = ROOT / "deploy" / "compose.sentinel.yml"
    check_compose_schema(path)
    services = YAML(typ="safe").load(path.read_text())["services"]
    sentinels = sorted(name for name in services if name.startswith("sentinel-"))
    assert sentinels == ["sentinel-1", "sentinel-2", "sentinel-3"]
    assert "--replicaof" in services["redis-replica"]["command"]
    for app in ("api", "worker", "predictor"):
        env = services[app]["environment"]
        url = env["REDIS_URL"].replace(
            "${REDIS_PASSWORD:?set REDIS_PASSWORD in .env (see .env.example)}", "pw"
        )
        target = parse_sentinel_url(url)
        assert [host for host, _ in target["sentinels"]] == sentinels and target["password"] == "pw"
        assert env["MNIST_MIN_REPLICAS"] == "1"
    assert set(services) - {"redis", "redis-replica", *sentinels} <= set(load_compose()["services"])


@pytest.mark.skipif(shutil.which("envsubst") is None, reason="no envsubst (Debian's gettext-base)")
def test_the_nginx_image_renders_the_template_as_mnist_up_does() -> None:
    """The official image runs envsubst with the MNIST_* variables: the same text as `mnist up`'s."""
    values = up.nginx_values(Settings(), "8000", "api:8000", "/tmp")
    names = " ".join(f"${{{name}}}" for name in values)
    template = up.NGINX_TEMPLATE.read_text()
    rendered = subprocess.run(
        ["envsubst", names], input=template, capture_output=True, text=True, env=values, check=True
    ).stdout
    assert rendered == up.render_nginx(template, values)


def test_compose_redis_needs_a_password_that_every_service_sends() -> None:
    services = load_compose()["services"]
    required = "${REDIS_PASSWORD:?"
    command = services["redis"]["command"]
    assert command[command.index("--requirepass") + 1].startswith(required)
    assert services["redis"]["environment"]["REDISCLI_AUTH"].startswith(required)
    assert "PONG" in " ".join(services["redis"]["healthcheck"]["test"])  # an auth error is not healthy
    for name in ("api", "worker", "predictor"):
        assert services[name]["environment"]["REDIS_URL"].startswith(f"redis://:{required}")
    dashboard = services["dashboard"]
    assert dashboard["environment"]["RQ_DASHBOARD_REDIS_URL"].startswith(f"redis://:{required}")
    assert dashboard["image"].startswith("cjlapao/rq-dashboard:")
    assert all(port.startswith("127.0.0.1:") for port in dashboard["ports"])


def test_secrets_stay_out_of_git_and_the_image_and_the_example_names_them() -> None:
    for ignore in (".gitignore", ".dockerignore"):
        assert ".env" in (ROOT / ignore).read_text().split(), ignore
    example = (ROOT / ".env.example").read_text()
    required = set(re.findall(r"\$\{(\w+):\?", COMPOSE.read_text()))
    assert required == {"MNIST_API_TOKEN", "REDIS_PASSWORD"}
    for name in required:
        assert re.search(rf"^{name}=.+", example, re.MULTILINE), name
    assert "Compose v2" in (ROOT / "README.md").read_text()


def test_compose_keeps_redis_private_persistent_and_healthy() -> None:
    services = load_compose()["services"]
    redis = services["redis"]
    assert "ports" not in redis
    assert "--appendonly" in redis["command"] and "yes" in redis["command"]
    assert any(v.startswith("redis-data:") for v in redis["volumes"])
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
        assert "MNIST_API_TOKEN" in services[name]["environment"]
        assert services[name]["environment"]["MNIST_API_TOKEN"].startswith("${MNIST_API_TOKEN:?")
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])
    assert services["predictor"]["environment"]["MNIST_ROLE"] == "predictor"


def _start_up(env: dict[str, str], port: int, *more: str) -> subprocess.Popen:
    # nginx in front where it is installed (`make proxy`), else without it.
    proxy = [] if NGINX else ["--no-proxy"]
    return subprocess.Popen(
        [str(MNIST), "up", "--port", str(port), "--workers", "2", *proxy, *more],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _kill_everything(proc: subprocess.Popen, known: list[int]) -> None:
    """SIGKILL `mnist up` and everything it started (each of its programs runs in its own session)."""
    for pid in {*known, *descendants(proc.pid), proc.pid}:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(10)


def _wait_ready(proc: subprocess.Popen, url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        try:
            if requests.get(f"{url}/healthz", timeout=5).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise AssertionError("mnist up did not serve /healthz in time")


def _argv0(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\x00")[0].decode()
    except OSError:
        return ""


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\x00", b" ").decode().strip()
    except OSError:
        return ""


def _alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ", 1)[1].startswith("Z"):
                    continue  # a zombie is dead, only not reaped yet
            alive.append(pid)
        except OSError:
            pass
    return alive


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_mnist_up_serves_and_leaves_no_process_behind(sig: int, stack_env, tmp_path: Path) -> None:
    port = free_port()
    env = stack_env.environ()
    proc = _start_up(env, port)
    url = f"http://127.0.0.1:{port}"
    tree: list[int] = []
    try:
        _wait_ready(proc, url)
        # The web process answers and the two training workers registered with RQ.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            tree = descendants(proc.pid)
            if len([p for p in tree if _cmdline(p).endswith("-m worker")]) >= 2:
                break
            time.sleep(0.2)
        tree = descendants(proc.pid)
        assert len(tree) >= 5  # gunicorn master + 2 workers, 2 RQ workers (and nginx)
        if NGINX:  # clients reach nginx; gunicorn listens on a private socket only
            assert requests.get(f"{url}/healthz", timeout=5).headers["Server"] == "nginx"
            assert any(_cmdline(p).startswith("nginx: master") for p in tree)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            _kill_everything(proc, tree)
    assert proc.returncode == 0, out
    deadline = time.monotonic() + 10
    while _alive(tree) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _alive(tree) == [], f"left behind: {_alive(tree)}\n{out}"
    assert "token" in out and url in out
    if NGINX:
        assert "Listening at: unix:" in out and "nginx in front of gunicorn" in out


@pytest.mark.slow
def test_mnist_up_starts_a_private_redis_with_a_password_when_none_answers(stack_env, tmp_path: Path) -> None:
    """Also `--no-proxy`: gunicorn on the port itself, and a banner that says it is unprotected."""
    port = free_port()
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    env = stack_env.environ(REDIS_URL=dead)
    proc = _start_up(env, port, "--no-proxy")
    redis_pids: list[int] = []
    try:
        _wait_ready(proc, f"http://127.0.0.1:{port}")
        r = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
        assert r.json()["redis"] is True and "nginx" not in r.headers.get("Server", "")
        tree = descendants(proc.pid)
        redis_pids = [p for p in tree if "redis-server" in _argv0(p)]
        assert redis_pids, "no private redis-server among the children"
        # It wants a password; the URL that carries it sits in a file only its owner reads.
        (redis_port,) = {int(_cmdline(p).rsplit(":", 1)[1]) for p in redis_pids}
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=redis_port, socket_timeout=5).ping()
        url_file = Path(os.readlink(f"/proc/{redis_pids[0]}/cwd")).parent / "redis.url"
        assert url_file.stat().st_mode & 0o777 == 0o600
        private_url = url_file.read_text().strip()
        assert redis.Redis.from_url(private_url, socket_timeout=5).ping()
        assert all("--requirepass" not in _cmdline(p) for p in redis_pids)  # its title, not its arguments
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            _kill_everything(proc, redis_pids)
    assert "starting a private redis-server" in out
    assert "redis://:***@127.0.0.1:" in out and redis.connection.parse_url(private_url)["password"] not in out
    assert "WARNING    --no-proxy" in out
    time.sleep(0.5)
    assert _alive(redis_pids) == []


def test_mnist_up_explains_how_to_get_redis(stack_env, tmp_path: Path) -> None:
    env = stack_env.environ(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", PATH="/nonexistent")
    result = subprocess.run(
        [sys.executable, "-m", "client.cli", "up", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 1
    assert "redis-server is not installed" in result.stderr
    assert "Traceback" not in result.stderr
