"""Helpers shared by the benchmarks: a gunicorn to measure, a plain-text table, a results file per run."""

from __future__ import annotations

import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from client.up import free_port

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
#: Calls of one measure per round; the fastest counts (see fastest_rate).
CALLS_PER_ROUND = 3


def fastest_rate(measure: Callable[[], float]) -> float:
    """Return the highest of CALLS_PER_ROUND rates that `measure()` returns.

    A neighbour's burst on this shared machine slows a 0.05–0.3 s call by up to half, and never
    speeds one up: the fastest of a few calls is the steadiest estimate of either side.
    """
    return max(measure() for _ in range(CALLS_PER_ROUND))


def paired(values: list[float], references: list[float]) -> float:
    """Return the median over rounds of value / reference, each pair measured side by side.

    The machine's speed drifts between rounds (a neighbour's load): a ratio taken within one
    round cancels it, where a ratio of two medians from different rounds would not.
    """
    return statistics.median(v / r for v, r in zip(values, references, strict=True))


def start_gunicorn(
    redis_url: str,
    prefix: str,
    token: str,
    tmp: Path,
    *,
    model: str,
    workers: int = 2,
    threads: int = 8,
    blas_threads: int = 1,
    also_bind: tuple[str, ...] = (),
    settings: dict[str, str] | None = None,
) -> tuple[subprocess.Popen, str]:
    """Start the service's gunicorn on a free port; return (process, base URL) once /healthz answers.

    `tmp` holds the Prometheus files and gunicorn.log; `model` is the default model of /v1/jobs;
    `also_bind` lists more addresses it listens on (a unix socket: "unix:PATH"); `settings` more
    environment variables (MNIST_LOG_SAMPLE…).
    """
    port = free_port()
    env = dict(os.environ)
    env.update(
        {
            "REDIS_URL": redis_url,
            "MNIST_KEY_PREFIX": prefix,
            "MNIST_API_TOKEN": token,
            "MNIST_DEFAULT_MODEL": model,
            "PROMETHEUS_MULTIPROC_DIR": str(tmp),
            "WEB_CONCURRENCY": str(workers),
            "MNIST_THREADS": str(threads),
            "OPENBLAS_NUM_THREADS": str(blas_threads),
            "OMP_NUM_THREADS": str(blas_threads),
            "MNIST_LOG_LEVEL": "warning",
            "PYTHONPATH": str(ROOT),
            **(settings or {}),
        }
    )
    cmd = [
        str(Path(sys.executable).parent / "gunicorn"),
        "--config", str(ROOT / "services" / "gunicorn_conf.py"),
        "--bind", f"127.0.0.1:{port}",
        *(arg for address in also_bind for arg in ("--bind", address)),
        "services.app:create_app()",
    ]  # fmt: skip
    log = (tmp / "gunicorn.log").open("wb")
    process = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError((tmp / "gunicorn.log").read_text())
        try:
            if requests.get(f"{url}/healthz", timeout=2).ok:
                return process, url
        except requests.RequestException:  # not listening yet, or a worker still importing
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError("gunicorn did not start within 30 s")


def stop_gunicorn(process: subprocess.Popen) -> None:
    """Stop gunicorn gracefully (SIGTERM), or kill it after 20 s."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()


def print_table(rows: list[dict[str, Any]], header: bool = True) -> None:
    """Print rows of a dict list as a Markdown table (header line only when `header`)."""
    if not rows:
        return
    keys = list(rows[0])
    if header:
        print("| " + " | ".join(keys) + " |")
        print("|" + "|".join("---" for _ in keys) + "|")
    for row in rows:
        print("| " + " | ".join(str(row[k]) for k in keys) + " |", flush=True)


def save_results(name: str, payload: dict[str, Any]) -> Path:
    """Write `payload` with the machine's description to bench/results/<name>.json."""
    RESULTS.mkdir(exist_ok=True)
    payload = {
        "benchmark": name,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()},
        **payload,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
