"""`mnist demo` (what `make demo` runs): the whole service end to end, then nothing left running."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.live_fixtures import StackEnv, free_port

MNIST = Path(sys.executable).parent / "mnist"


@pytest.mark.slow
def test_demo_trains_over_http_predicts_the_held_out_digits_and_stops(stack_env: StackEnv) -> None:
    port = free_port()
    before = set(_pids())
    result = subprocess.run(
        [str(MNIST), "demo", "--port", str(port), "--epochs", "2", "--model", "demo"],
        env=stack_env.environ(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for step in ("1/4", "2/4", "3/4", "4/4"):
        assert step in out
    assert "published demo v1" in out
    accuracy = float(re.search(r"accuracy ([\d.]+) % on digits it never saw", out).group(1))
    assert accuracy > 80  # two epochs of the default recipe
    assert f"http://127.0.0.1:{port}/" in out and "Traceback" not in result.stderr
    # The stack it started is gone: no new gunicorn, worker or redis-server survives it.
    deadline = time.monotonic() + 10
    while (left := _stack_pids(stack_env.prefix) - before) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, left


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _stack_pids(prefix: str) -> set[int]:
    """Return the live gunicorn, worker and redis-server processes started with this key prefix.

    The prefix in the environment tells the demo's processes from those of anything else running
    on the machine (a benchmark's workers, say).
    """
    found = set()
    marker = f"MNIST_KEY_PREFIX={prefix}".encode()
    for pid in _pids():
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        kind = "services.wsgi" in cmd or cmd.endswith("-m worker ") or "redis-server" in cmd
        if kind and state != "Z" and marker in environ:
            found.add(pid)
    return found
