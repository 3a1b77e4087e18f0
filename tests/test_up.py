"""The front and the supervised stack, quickly: nginx's template, nginx in front of a real gunicorn
(a request through it, slow clients that hold no gunicorn thread, its own errors in the service's
JSON shape), the supervisor on small programs, and `mnist up` restarting what dies.

The long versions (500 slow clients and 200 event streams, a worker SIGKILLed while training) are
in tests/reliability/test_front.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import re
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
import redis
import requests

from client import up
from client.supervise import Program, Supervisor
from shared.config import Settings
from tests.live_fixtures import StackEnv, free_port, start_server, wait_for
from tests.reliability.test_faults import forget_workers
from tests.up_helpers import (
    NGINX,
    SlowClients,
    alive,
    needs_nginx,
    start_proxy,
    start_up,
)

TEMPLATE = up.NGINX_TEMPLATE.read_text()


# --- the template -------------------------------------------------------------------------------------
def test_the_template_has_only_the_placeholders_up_and_compose_fill() -> None:
    values = up.nginx_values(Settings(), "127.0.0.1:8000", "unix:/run/x.sock", "/tmp/x")
    assert set(re.findall(r"\$\{(\w+)\}", TEMPLATE)) == set(values)
    rendered = up.render_nginx(TEMPLATE, values)
    assert "${" not in rendered
    assert f"client_max_body_size {Settings().max_body_bytes};" in rendered
    assert f"client_max_body_size {Settings().max_dataset_bytes};" in rendered
    assert "$remote_addr" in rendered and "$http_host" in rendered  # nginx's own variables stay


def test_render_refuses_a_placeholder_without_a_value() -> None:
    with pytest.raises(ValueError, match="MNIST_PROXY_DIR"):
        up.render_nginx(
            "pid ${MNIST_PROXY_DIR}/nginx.pid; listen ${MNIST_PROXY_LISTEN};", {"MNIST_PROXY_LISTEN": "1"}
        )


def test_redact_hides_only_the_password() -> None:
    assert up.redact("redis://:s3cret@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert up.redact("redis://user:s3cret@redis:6379/0") == "redis://user:***@redis:6379/0"
    assert up.redact("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


@needs_nginx
def test_nginx_accepts_the_rendered_configuration(tmp_path: Path) -> None:
    assert NGINX is not None
    tmp_path.chmod(0o711)
    values = up.nginx_values(Settings(), f"127.0.0.1:{free_port()}", "unix:/nonexistent.sock", str(tmp_path))
    assert up.write_nginx_conf(NGINX, tmp_path, values).is_file()
    with pytest.raises(up.UpError, match="nginx refused its configuration"):
        up.write_nginx_conf(NGINX, tmp_path, {**values, "MNIST_MAX_BODY_BYTES": "lots"})


# --- nginx in front of gunicorn ---------------------------------------------------------------------------
def _status_line(port: int, request: bytes, timeout: float = 10.0) -> tuple[str, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        return head.split(b"\r\n", 1)[0].decode(), body


@needs_nginx
@pytest.mark.slow
def test_slow_clients_hold_nginx_connections_not_gunicorn_threads(
    stack_env: StackEnv, tmp_path: Path
) -> None:
    """gunicorn with ONE thread: 20 slow clients through nginx leave it free; one sent to it directly not."""
    server = start_server(stack_env, tmp_path, workers=1, MNIST_THREADS="1")
    proxy = start_proxy(server.url.removeprefix("http://"), tmp_path)
    slow = None
    try:
        r = requests.get(f"{proxy.url}/healthz", timeout=10)
        assert r.status_code == 200 and r.headers["Server"] == "nginx" and r.json() == {"status": "ok"}

        slow = SlowClients("127.0.0.1", proxy.port, 20, interval=0.5).start()
        time.sleep(1.5)  # every one of them has sent more, none has finished
        assert slow.open == 20
        for _ in range(5):
            assert requests.get(f"{proxy.url}/healthz", timeout=5).status_code == 200
        slow.stop()

        # The control: one slow client straight to gunicorn takes its only thread.
        port = int(server.url.rsplit(":", 1)[1])
        slow = SlowClients("127.0.0.1", port, 1, interval=0.5).start()
        time.sleep(0.5)
        with pytest.raises(requests.Timeout):
            requests.get(f"{server.url}/healthz", timeout=2)
    finally:
        if slow is not None:
            slow.stop()
        proxy.stop()
        server.process.stop()


@needs_nginx
@pytest.mark.slow
def test_nginx_streams_events_unbuffered_and_answers_its_own_errors_in_json(
    stack_env: StackEnv, tmp_path: Path
) -> None:
    server = start_server(stack_env, tmp_path, workers=1)
    small = dataclasses.replace(Settings(), max_body_bytes=1000, max_dataset_bytes=5000)
    proxy = start_proxy(server.url.removeprefix("http://"), tmp_path, small)
    dead = start_proxy(f"127.0.0.1:{free_port()}", tmp_path)  # nothing listens behind it
    try:
        # Server-Sent Events pass at once (a buffering proxy would hold them back).
        job = requests.post(
            f"{proxy.url}/v1/jobs",
            json={"dataset": "mnist-sample", "epochs": 1},
            headers=stack_env.auth,
            timeout=10,
        ).json()
        with requests.get(f"{proxy.url}/v1/jobs/{job['id']}/events", stream=True, timeout=5) as stream:
            assert stream.status_code == 200
            lines = stream.iter_lines(decode_unicode=True)
            assert next(lines).startswith("retry:")
            assert next(x for x in lines if x).startswith("event: progress")
        # Canceled, the job's stream ends at once (gunicorn would otherwise wait for its next write).
        requests.delete(f"{proxy.url}/v1/jobs/{job['id']}", headers=stack_env.auth, timeout=10)

        big = b"POST /v1/models/m:predict HTTP/1.1\r\nHost: t\r\nContent-Length: 1001\r\n\r\n"
        status, body = _status_line(proxy.port, big)
        assert status.split(" ")[1] == "413"
        assert b'"code": 413' in body and b"MNIST_MAX_BODY_BYTES" in body
        upload = b"POST /v1/datasets/d HTTP/1.1\r\nHost: t\r\nContent-Length: 5001\r\n\r\n"
        status, body = _status_line(proxy.port, upload)
        assert status.split(" ")[1] == "413" and b"MNIST_MAX_DATASET_BYTES" in body

        r = requests.get(f"{dead.url}/healthz", timeout=10)
        assert r.status_code == 503 and r.headers["Retry-After"] == "2"
        assert r.json()["code"] == 503 and r.headers["Content-Type"] == "application/json"
    finally:
        dead.stop()
        proxy.stop()
        server.process.stop()


# --- the supervisor ----------------------------------------------------------------------------------------
def _program(name: str, script: str, tmp: Path) -> Program:
    return Program(name, ("/bin/sh", "-c", script), {"PATH": "/usr/bin:/bin"}, str(tmp))


def test_the_supervisor_restarts_with_backoff_and_one_line_each_time(tmp_path: Path) -> None:
    out = io.StringIO()
    sup = Supervisor(out, restart_delay=0.1)
    counter = tmp_path / "starts"
    sup.add(_program("flaky", f"echo started >> {counter}; echo hello; exit 3", tmp_path))
    sup.add(_program("steady", "exec sleep 60", tmp_path))
    steady = sup.pid("steady")

    runner = threading.Thread(target=sup.run)
    runner.start()
    try:
        wait_for(lambda: counter.exists() and len(counter.read_text().split()) >= 4, 10, "four starts")
    finally:
        sup.request_stop()
        runner.join(30)
    text = out.getvalue()
    restarts = re.findall(
        r"flaky \(pid \d+\) exited with status 3 after [\d.]+ s: restarting in ([\d.]+) s", text
    )
    assert [float(d) for d in restarts[:3]] == [0.1, 0.2, 0.4]  # doubling
    assert "flaky     | hello" in text
    assert steady is not None and alive([steady]) == []  # stopped with the rest
    assert "steady" not in " ".join(re.findall(r"supervise \| (.*)", text))  # it never exited by itself


def test_a_program_that_dies_takes_what_it_started_with_it(tmp_path: Path) -> None:
    """As in a container: the leader SIGKILLed, its orphans (an RQ work horse, say) are killed too."""
    out = io.StringIO()
    sup = Supervisor(out)
    pids = tmp_path / "pids"
    sup.add(_program("parent", f"sleep 300 & echo $! > {pids}; exec sleep 300", tmp_path))
    wait_for(lambda: pids.exists() and pids.read_text().strip(), 10, "the child to start")
    child = int(pids.read_text())
    leader = sup.pid("parent")
    assert leader is not None
    runner = threading.Thread(target=sup.run)
    runner.start()
    try:
        os.kill(leader, signal.SIGKILL)
        wait_for(lambda: alive([child]) == [], 10, "the orphan to be killed")
        wait_for(lambda: sup.pid("parent") not in (None, leader), 10, "the restart")
    finally:
        sup.request_stop()
        runner.join(30)
    assert "parent (pid" in out.getvalue() and "was killed by SIGKILL" in out.getvalue()
    assert alive([leader, child]) == []


def test_stop_kills_what_ignores_sigterm_after_the_timeout(tmp_path: Path) -> None:
    sup = Supervisor(io.StringIO(), stop_timeout=0.5)
    sup.add(_program("stubborn", "trap '' TERM; while :; do sleep 0.1; done", tmp_path))
    pid = sup.pid("stubborn")
    assert pid is not None
    time.sleep(0.2)  # the trap is set
    started = time.monotonic()
    sup.stop()
    assert time.monotonic() - started < 5
    assert alive([pid]) == []


# --- `mnist up` ---------------------------------------------------------------------------------------------
def _args(**kw: object) -> argparse.Namespace:
    return argparse.Namespace(
        **{"port": free_port(), "host": "127.0.0.1", "workers": 0, "no_proxy": False, **kw}
    )


def test_mnist_up_without_nginx_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(up, "find_nginx", lambda: None)
    assert up.command(_args()) == 1
    err = capsys.readouterr().err
    assert err.startswith("mnist up: nginx is not installed")
    assert "make proxy" in err and "--no-proxy" in err


def test_mnist_up_refuses_a_port_in_use(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert up.command(_args(port=port, no_proxy=True)) == 1
    assert f"127.0.0.1:{port} is in use" in capsys.readouterr().err


@pytest.mark.slow
def test_mnist_up_restarts_a_process_that_dies(stack_env: StackEnv, tmp_path: Path) -> None:
    stack = start_up(stack_env, tmp_path, 1)
    try:
        before = stack.programs()
        kinds = ["worker", "web", "proxy"] if stack.proxied else ["worker", "web"]
        for kind in kinds:
            (old,) = before[kind]
            os.kill(old, signal.SIGKILL)

            def back(kind: str = kind, old: int = old) -> bool:
                now = stack.programs()[kind]
                return len(now) == 1 and now[0] != old and stack.healthy()

            wait_for(back, 30, f"{kind} to be restarted", 0.2, details=stack.log)
            assert re.search(rf"supervise +\| \S+ \(pid {old}\) was killed by SIGKILL", stack.log())
        # The restarted worker registered with RQ again.
        client = redis.Redis.from_url(stack_env.redis_url)
        try:
            wait_for(lambda: client.scard(f"rq:workers:{stack_env.queue}") >= 1, 30, "the worker to register")
        finally:
            client.close()
        tree = stack.tree()
    finally:
        out = stack.stop()
        with redis.Redis.from_url(stack_env.redis_url) as client:
            forget_workers(client, stack_env.queue)  # the killed one never unregistered
    assert stack.proc.returncode == 0, out
    wait_for(lambda: alive(tree) == [], 10, "every process to be gone", details=lambda: str(alive(tree)))
