"""The cost of nginx in front of gunicorn: the same requests straight to gunicorn and through nginx.

Starts a real gunicorn on a free port (bench/common.py) on a private key prefix of the local Redis
(or $REDIS_URL), publishes one model (784-512-10), puts nginx in front of it with the
repository's template (deploy/nginx.conf.template), as `mnist up` runs them: nginx reaches
gunicorn on a unix socket, the straight side on gunicorn's TCP port (the same processes listen on
both). It measures in interleaved rounds, each side in turn:

- one-image raw predictions at concurrency 8 (8 client processes, keep-alive): requests/s;
- one-image raw predictions one after another on one connection: latency p50 and p99;
- one 10,000-image raw batch per request (7.8 MB: nginx writes it to a temporary file before
  gunicorn gets it): images/s, the fastest of 3 calls per round.

Each ratio (through nginx / straight) is the median over rounds of the ratio within a round.
Everything the run wrote in Redis is deleted afterwards.

Usage: python bench/front.py [--rounds 5] [--seconds 1.5] [--sequential 300]
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    fastest_rate,
    paired,
    print_table,
    save_results,
    start_gunicorn,
    stop_gunicorn,
)
from client import up  # noqa: E402
from client.up import free_port  # noqa: E402
from shared import mlp, serialization  # noqa: E402
from shared.config import Settings  # noqa: E402
from shared.keys import Keys  # noqa: E402
from shared.registry import Registry  # noqa: E402

MODEL = "bench"
SIZES = (784, 512, 10)
BIG_BATCH = 10_000
CONCURRENCY = 8
PATH = f"/v1/models/{MODEL}:predict"
RAW = {"Content-Type": "application/octet-stream"}


def start_nginx(upstream: str) -> tuple[subprocess.Popen, int, Path]:
    """Start nginx from the template in front of `upstream`; return (process, port, its folder) once up."""
    binary = up.find_nginx()
    if binary is None:
        raise SystemExit("nginx is not installed: make proxy")
    port = free_port()
    # Its own folder in the system's temporary directory, as `mnist up` has: started by root,
    # nginx's workers run as nobody, and must reach their temporary files through every parent.
    folder = Path(tempfile.mkdtemp(prefix="bench-nginx-"))
    folder.chmod(0o711)
    values = up.nginx_values(Settings(), f"127.0.0.1:{port}", upstream, str(folder))
    conf = up.write_nginx_conf(binary, folder, values)
    log = (folder / "nginx.log").open("wb")
    argv = [binary, "-e", "stderr", "-p", f"{folder}/", "-c", str(conf)]
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return process, port, folder
        except OSError:
            time.sleep(0.1)
        finally:
            conn.close()
    process.kill()
    raise RuntimeError((folder / "nginx.log").read_text())


def _loop(job: tuple[int, bytes, float, float]) -> int:
    """Send one-image predictions on one keep-alive connection; return how many ended in [start, end]."""
    port, body, start, end = job
    conn = http.client.HTTPConnection("127.0.0.1", port)
    done = 0
    while (now := time.time()) < end:
        conn.request("POST", PATH, body=body, headers=RAW)
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"POST {PATH}: {response.status}")
        done += now >= start  # requests before `start` only warm the connection up
    conn.close()
    return done


def concurrent_rate(pool, port: int, body: bytes, secs: float) -> float:
    """Return requests/s of CONCURRENCY client processes sending one-image predictions for `secs` s."""
    start = time.time() + 0.5
    return sum(pool.map(_loop, [(port, body, start, start + secs)] * CONCURRENCY)) / secs


def sequential_latencies(port: int, body: bytes, n: int) -> list[float]:
    """Return the seconds of `n` one-image predictions sent one after another on one connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port)
    out = []
    for _ in range(n):
        started = time.perf_counter()
        conn.request("POST", PATH, body=body, headers=RAW)
        response = conn.getresponse()
        response.read()
        out.append(time.perf_counter() - started)
    conn.close()
    return out


def batch_rate(port: int, body: bytes) -> float:
    """Return images/s of one 10,000-image raw request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    started = time.perf_counter()
    conn.request("POST", PATH, body=body, headers=RAW)
    response = conn.getresponse()
    response.read()
    conn.close()
    if response.status != 200:
        raise RuntimeError(f"batch: {response.status}")
    return BIG_BATCH / (time.perf_counter() - started)


def main() -> None:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of every measure")
    parser.add_argument("--seconds", type=float, default=1.5, help="duration of each concurrent run")
    parser.add_argument("--sequential", type=int, default=300, help="sequential requests per round and side")
    args = parser.parse_args()

    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    client = redis.Redis.from_url(redis_url)
    registry = Registry(client, Keys(prefix))
    rng = np.random.default_rng(0)
    registry.publish(MODEL, serialization.model_to_bytes(mlp.init_params(SIZES, rng), {}), {"bench": True})
    images = rng.integers(0, 256, (BIG_BATCH, mlp.INPUT_SIZE), dtype=np.uint8)
    one, batch = images[:1].tobytes(), images.tobytes()

    tmp = Path(tempfile.mkdtemp(prefix="bench-front-"))
    tmp.chmod(0o711)  # gunicorn's socket in it: nginx's workers (nobody, when run by root) reach it
    pool = multiprocessing.get_context("fork").Pool(CONCURRENCY)  # forked before any thread exists
    sock = tmp / "gunicorn.sock"
    gunicorn, url = start_gunicorn(
        redis_url, prefix, uuid.uuid4().hex, tmp, model=MODEL, also_bind=(f"unix:{sock}",)
    )
    nginx = folder = None
    sides = {"straight": int(url.rsplit(":", 1)[1])}
    rounds: dict[str, list[float]] = {}
    latencies: dict[str, list[float]] = {side: [] for side in ("straight", "nginx")}
    try:
        nginx, sides["nginx"], folder = start_nginx(f"unix:{sock}")
        for port in sides.values():  # warm-up: every thread of both workers, the model loaded
            concurrent_rate(pool, port, one, 0.5)
            batch_rate(port, batch)
        for _ in range(args.rounds):
            for side, port in sides.items():
                rounds.setdefault(f"single_{side}", []).append(concurrent_rate(pool, port, one, args.seconds))
                rounds.setdefault(f"batch_{side}", []).append(
                    fastest_rate(lambda port=port: batch_rate(port, batch))
                )
                latencies[side] += sequential_latencies(port, one, args.sequential)
    finally:
        pool.terminate()
        if nginx is not None:
            nginx.terminate()
            nginx.wait(10)
        stop_gunicorn(gunicorn)
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)
        shutil.rmtree(tmp, ignore_errors=True)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    def ms(values: list[float], q: float) -> float:
        return round(float(np.percentile(values, q)) * 1000, 2)

    rows = []
    for measure, unit in (("single", "req/s"), ("batch", "img/s")):
        straight, proxied = rounds[f"{measure}_straight"], rounds[f"{measure}_nginx"]
        label = "one image, concurrency 8" if measure == "single" else "10,000 images per request"
        rows.append(
            {
                "measure": label,
                "straight to gunicorn": f"{statistics.median(straight):,.0f} {unit}",
                "through nginx": f"{statistics.median(proxied):,.0f} {unit}",
                "nginx / straight": f"{100 * paired(proxied, straight):.0f} %",
            }
        )
    for q in (50, 99):
        rows.append(
            {
                "measure": f"one image, one after another, p{q}",
                "straight to gunicorn": f"{ms(latencies['straight'], q)} ms",
                "through nginx": f"{ms(latencies['nginx'], q)} ms",
                "nginx / straight": f"{100 * ms(latencies['nginx'], q) / ms(latencies['straight'], q):.0f} %",
            }
        )
    print(f"\nserver: 2 gunicorn workers x 8 threads, nginx (worker_processes auto), {os.cpu_count()} CPUs\n")
    print_table(rows)
    path = save_results(
        "front",
        {
            "config": {"rounds": args.rounds, "seconds": args.seconds, "sequential": args.sequential},
            "rounds": rounds,
            "ratios": {m: paired(rounds[f"{m}_nginx"], rounds[f"{m}_straight"]) for m in ("single", "batch")},
            "latency_ms": {
                side: {"p50": ms(values, 50), "p99": ms(values, 99)} for side, values in latencies.items()
            },
        },
    )
    print(f"\nsaved {path}")


if __name__ == "__main__":
    main()
