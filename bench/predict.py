"""Serving throughput of the predictor against in-process NumPy, side by side, in one run.

Starts a real gunicorn on a free port (the app of `services.app:create_app()` with
services/gunicorn_conf.py) on a private key prefix of the local Redis (or $REDIS_URL), publishes
one model (784-512-10, He init: the figures do not depend on the weights), and measures:

- in-process: images/s of `mlp.predict_proba` on a 10,000-image batch (the ceiling);
- (a) one 10,000-image raw uint8 batch per request (application/octet-stream), target ≥ 50 %;
- (b) one 1,000-image JSON batch per request, target ≥ 10 %;
- (c) single-image requests at concurrency 8 (8 client processes, keep-alive), JSON and raw,
  against GET /v2/health/live at the same concurrency on the same server, target ≥ 60 %;
- hot reload: for 20 publishes, seconds from `Registry.publish` returning to the first
  un-pinned prediction that answers the new version (p50, p99), and to the 5th answer in a row
  on fresh connections (so that every gunicorn worker is sampled).

The client shares the machine's cores with the server: ratios are what one box measures.
Each batch measure in a round is the fastest of 3 calls (bench/common.py). Rates are medians
over the interleaved rounds; each ratio is the median over rounds of the ratio within a round,
so that the machine's drift between rounds cancels out.
Everything the run wrote in Redis is deleted afterwards.

Usage: python bench/predict.py [--workers 2] [--threads 8] [--blas-threads 1] [--rounds 5] [--seconds 1.5]

`--latency` measures instead latency as a distribution (p50…p99.9) and the server's CPU per
request at 1, 8 and 32 clients, through `mnist up`'s nginx and gunicorn alone, optionally against
another checkout: `python bench/predict.py --latency [--old PATH] [--rounds 3]` (bench/latency.py).
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import orjson
import redis
import requests

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
from shared import mlp, serialization  # noqa: E402
from shared.keys import Keys  # noqa: E402
from shared.registry import Registry  # noqa: E402

MODEL = "bench"
SIZES = (784, 512, 10)
BIG_BATCH = 10_000
JSON_BATCH = 1_000
CONCURRENCY = 8
PUBLISHES = 20
TARGETS = {"raw": 0.5, "json": 0.1, "single": 0.6}
#: Seconds between two measures, so that one's BLAS threads have stopped spinning.
BLAS_SPIN_PAUSE = 0.3


def seconds(fn) -> float:
    """Return the wall time of one call of `fn`."""
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def post(session: requests.Session, url: str, body: bytes, content_type: str) -> dict:
    """POST and return the JSON answer, failing loudly on an error status."""
    response = session.post(url, data=body, headers={"Content-Type": content_type})
    response.raise_for_status()
    return orjson.loads(response.content)  # what a client that cares parses 10,000 predictions with


def _loop(job: tuple[str, int, str, str, bytes | None, str | None, float, float]) -> int:
    """Send one kind of request on one keep-alive connection; return how many ended in [start, end]."""
    host, port, method, path, body, content_type, start, end = job
    conn = http.client.HTTPConnection(host, port)
    headers = {"Content-Type": content_type} if content_type else {}
    done = 0
    while (now := time.time()) < end:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"{method} {path}: {response.status}")
        done += now >= start  # requests before `start` only warm the connection up
    conn.close()
    return done


def concurrent_rate(
    pool, url: str, method: str, path: str, body: bytes | None, ctype: str | None, secs: float
):
    """Return requests/s of CONCURRENCY client processes sending one request kind for `secs` seconds."""
    host, port = url.removeprefix("http://").split(":")
    start = time.time() + 0.5
    jobs = [(host, int(port), method, path, body, ctype, start, start + secs)] * CONCURRENCY
    return sum(pool.map(_loop, jobs)) / secs


def hot_reload(
    registry: Registry, url: str, blobs: list[bytes], pixels: bytes
) -> tuple[list[float], list[float]]:
    """Return (first new answer, 5 new answers in a row) latencies in seconds for each publish."""
    first, settled = [], []
    endpoint = f"{url}/v1/models/{MODEL}:predict"
    headers = {"Content-Type": "application/octet-stream", "Connection": "close"}
    for blob in blobs:
        version = registry.publish(MODEL, blob, {"bench": True})
        published = time.perf_counter()
        seen_first, streak = None, 0
        while streak < 5:
            answer = requests.post(endpoint, data=pixels, headers=headers, timeout=10).json()
            if answer["model_version"] == version:
                streak += 1
                if seen_first is None:
                    seen_first = time.perf_counter() - published
            else:
                streak = 0
            if time.perf_counter() - published > 10:
                raise RuntimeError(f"v{version} not served after 10 s")
        first.append(seen_first)
        settled.append(time.perf_counter() - published)
    return first, settled


def percentile(values: list[float], q: float) -> float:
    """Return the q-th percentile (0–100) of values."""
    return float(np.percentile(values, q))


def measure_batches(params, images: np.ndarray, url: str, rounds: int) -> dict[str, list[float]]:
    """Return images/s in-process, raw 10,000 and JSON 1,000 over HTTP, one value per interleaved round.

    A side's value in a round is the fastest of a few calls (`fastest_rate`).
    """
    session = requests.Session()
    endpoint = f"{url}/v1/models/{MODEL}:predict"
    scaled = mlp.scale_pixels(images)
    raw_body = images.tobytes()
    json_body = orjson.dumps({"instances": images[:JSON_BATCH]}, option=orjson.OPT_SERIALIZE_NUMPY)
    runs = {
        "in_process": (lambda: mlp.predict_proba(params, scaled), BIG_BATCH),
        "raw": (lambda: post(session, endpoint, raw_body, "application/octet-stream"), BIG_BATCH),
        "json": (lambda: post(session, endpoint, json_body, "application/json"), JSON_BATCH),
    }
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for fn, _ in runs.values():
        fn()  # warm-up
    # Interleaved, so that a neighbour's load on this shared machine hits every measure alike.
    for _ in range(rounds):
        for name, (fn, items) in runs.items():
            rates[name].append(fastest_rate(lambda fn=fn, items=items: items / seconds(fn)))
            # OpenBLAS's threads spin for about 0.1 s after a call (THREAD_TIMEOUT): without a
            # pause, the in-process run's threads would take the server's cores in the next one.
            time.sleep(BLAS_SPIN_PAUSE)
    return rates


def measure_concurrency(
    pool, images: np.ndarray, url: str, rounds: int, secs: float
) -> dict[str, list[float]]:
    """Return requests/s at concurrency 8 of /v2/health/live and of one-image predictions, per round."""
    path = f"/v1/models/{MODEL}:predict"
    single_json = orjson.dumps({"instances": images[:1]}, option=orjson.OPT_SERIALIZE_NUMPY)
    kinds = {
        "live": ("GET", "/v2/health/live", None, None),
        "single_json": ("POST", path, single_json, "application/json"),
        "single_raw": ("POST", path, images[:1].tobytes(), "application/octet-stream"),
    }
    rates: dict[str, list[float]] = {name: [] for name in kinds}
    for method, route, body, ctype in kinds.values():  # warm-up: every thread of both workers
        concurrent_rate(pool, url, method, route, body, ctype, 0.5)
    for _ in range(rounds):
        for name, (method, route, body, ctype) in kinds.items():
            rates[name].append(concurrent_rate(pool, url, method, route, body, ctype, secs))
    return rates


def report(
    args: argparse.Namespace, batch_rounds: dict, concurrent_rounds: dict, first: list, settled: list
) -> None:
    """Print the Markdown table and save the results."""
    batches = {name: statistics.median(values) for name, values in batch_rounds.items()}
    concurrent = {name: statistics.median(values) for name, values in concurrent_rounds.items()}
    inproc, live = batches["in_process"], concurrent["live"]
    ratios = {
        "raw": paired(batch_rounds["raw"], batch_rounds["in_process"]),
        "json": paired(batch_rounds["json"], batch_rounds["in_process"]),
        "single": paired(concurrent_rounds["single_json"], concurrent_rounds["live"]),
        "single_raw": paired(concurrent_rounds["single_raw"], concurrent_rounds["live"]),
    }

    def row(measure: str, rate: str, ratio: float | None = None, target: str = "") -> dict[str, str]:
        shown = "" if ratio is None else f"{100 * ratio:.0f} %"
        return {"measure": measure, "rate": rate, "ratio": shown, "target": target}

    def ms(values: list[float]) -> str:
        return f"{percentile(values, 50) * 1000:.0f} / {percentile(values, 99) * 1000:.0f} ms"

    rows = [
        row("in-process mlp.predict_proba, 10,000 batch", f"{inproc:,.0f} img/s", 1.0),
        row(
            "(a) HTTP raw uint8, 10,000 per request", f"{batches['raw']:,.0f} img/s", ratios["raw"], "≥ 50 %"
        ),
        row("(b) HTTP JSON, 1,000 per request", f"{batches['json']:,.0f} img/s", ratios["json"], "≥ 10 %"),
        row("GET /v2/health/live, concurrency 8", f"{live:,.0f} req/s", 1.0),
        row(
            "(c) one image JSON, concurrency 8",
            f"{concurrent['single_json']:,.0f} req/s",
            ratios["single"],
            "≥ 60 %",
        ),
        row(
            "(c') one image raw, concurrency 8",
            f"{concurrent['single_raw']:,.0f} req/s",
            ratios["single_raw"],
        ),
        row("hot reload, first new answer p50 / p99", ms(first), None, "< 500 ms"),
        row("hot reload, 5 new answers in a row p50 / p99", ms(settled)),
    ]
    workers = f"{args.workers} gunicorn workers x {args.threads} threads"
    print(f"\nserver: {workers}, OPENBLAS_NUM_THREADS={args.blas_threads}, {os.cpu_count()} CPUs\n")
    print_table(rows)
    config = {"workers": args.workers, "threads": args.threads, "blas_threads": args.blas_threads}
    path = save_results(
        "predict",
        {
            "config": {**config, "model": list(SIZES), "cpus": os.cpu_count()},
            "images_per_s": batches,
            "requests_per_s": concurrent,
            "rounds": {**batch_rounds, **concurrent_rounds},
            "ratios": ratios,
            "targets": TARGETS,
            "met": {name: ratios[name] >= target for name, target in TARGETS.items()},
            "hot_reload_first_s": {"p50": percentile(first, 50), "p99": percentile(first, 99), "all": first},
            "hot_reload_settled_s": {"p50": percentile(settled, 50), "p99": percentile(settled, 99)},
        },
    )
    print(f"\nsaved {path}")


def main() -> None:
    """Run the benchmark and print its table (bench/latency.py's with --latency)."""
    if "--latency" in sys.argv[1:]:
        from bench import latency

        latency.main([arg for arg in sys.argv[1:] if arg != "--latency"])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=8, help="threads per worker")
    parser.add_argument("--blas-threads", type=int, default=1, help="OPENBLAS_NUM_THREADS of each worker")
    parser.add_argument("--seconds", type=float, default=1.5, help="duration of each concurrent run")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of every measure")
    args = parser.parse_args()

    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    client = redis.Redis.from_url(redis_url)
    registry = Registry(client, Keys(prefix))
    rng = np.random.default_rng(0)
    params = mlp.init_params(SIZES, rng)
    registry.publish(MODEL, serialization.model_to_bytes(params, {"bench": True}), {"bench": True})
    images = rng.integers(0, 256, (BIG_BATCH, mlp.INPUT_SIZE), dtype=np.uint8)
    blobs = [
        serialization.model_to_bytes(mlp.init_params(SIZES, np.random.default_rng(i + 1)), {})
        for i in range(PUBLISHES)
    ]

    tmp = Path(tempfile.mkdtemp(prefix="bench-predict-"))
    pool = multiprocessing.get_context("fork").Pool(CONCURRENCY)  # forked before any thread exists
    process, url = start_gunicorn(
        redis_url, prefix, uuid.uuid4().hex, tmp,
        model=MODEL, workers=args.workers, threads=args.threads, blas_threads=args.blas_threads,
    )  # fmt: skip
    try:
        batches = measure_batches(params, images, url, args.rounds)
        concurrent = measure_concurrency(pool, images, url, args.rounds, args.seconds)
        first, settled = hot_reload(registry, url, blobs, images[:1].tobytes())
    finally:
        pool.terminate()
        stop_gunicorn(process)
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)
        shutil.rmtree(tmp, ignore_errors=True)
    report(args, batches, concurrent, first, settled)


if __name__ == "__main__":
    main()
