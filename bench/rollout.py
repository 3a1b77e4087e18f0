"""What watching predictions costs: logging, routing and shadowing, side by side; the log's memory.

Two gunicorns (2 workers × 8 threads each, as bench/predict.py's), on private key prefixes of the
local Redis (or $REDIS_URL), each serving a 784-512-10 model:

- plain: MNIST_LOG_SAMPLE=0, the production alias one version, no shadow;
- watched: MNIST_LOG_SAMPLE=1 (every image logged), production a 90/10 split of two versions, a
  third version shadowing every live image (sample 1).

Both talk to a private redis-server of their own (deleted afterwards), so that its CPU time is
theirs alone. They are measured alternately, round by round (the order swapped every round), on
bench/predict.py's (a) 10,000-image raw uint8 batch (the fastest of 3 calls), the same batches
sustained (8 clients sending them for 2 × --seconds: a load that outlasts the recorder's queue),
and its (c) one-image JSON requests at concurrency 8. After each measure the benchmark waits until
the server's recorders are idle (every image predicted is counted in Redis, those dropped from the
log included: /metrics and the version counters agree), so that one server's work off the request
path is never billed to the other. Each ratio is the median over rounds of watched / plain within a
round. Target: the watched server at most 10 % slower (ratio ≥ 90 %). Since rates on a shared
2-core machine move with the neighbours' load, the benchmark also reports what each image costs in
CPU time, which that load moves much less: the gunicorn workers' and redis-server's CPU seconds
from the start of a measure until the recorders are idle again, divided by the images predicted
(for 10,000-image batches, over the sustained run: three calls leave a backlog of up to a queue's
worth per process, whose writing the idle wait bills to three requests). The watched recorders
write what MNIST_RECORDER_SHARE lets them (0.05 of their time by default) and drop the rest,
counted: the table says how many.

Then memory: bench/log_memory.py logs 1,000,000 predictions with a feedback label each into a
private Redis, and the largest growth of `used_memory` is checked against the documented bound
(MNIST_LOG_MAXLEN × the bytes per entry, index and label).

Usage: python bench/rollout.py [--rounds 5] [--seconds 1.5] [--predictions 1000000]
"""

from __future__ import annotations

import argparse
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
# Run as a script, bench/ comes first on sys.path, and bench/client.py would hide the package.
sys.path[0:1] = [str(ROOT)]

from bench import log_memory  # noqa: E402
from bench.common import fastest_rate, paired, print_table, save_results, start_gunicorn, stop_gunicorn  # noqa: E402
from bench.predict import BIG_BATCH, BLAS_SPIN_PAUSE, CONCURRENCY, SIZES, concurrent_rate, post, seconds  # noqa: E402
from shared import mlp, serialization, shadow  # noqa: E402
from shared.keys import Keys  # noqa: E402
from shared.registry import Registry  # noqa: E402
from tests.reliability.stack import private_redis  # noqa: E402

MODEL = "bench"
#: The most the watched server may be slower by, as a ratio of the plain one's rate.
TARGET = 0.9
#: The watched server's settings (the plain one runs with the defaults: nothing logged).
WATCHED = {"MNIST_LOG_SAMPLE": "1"}
#: Seconds the recorders may take to go idle after a measure (a drain, then its pause: up to 20 times
#: the drain at MNIST_RECORDER_SHARE 0.05).
IDLE_TIMEOUT = 60.0


def publish(registry: Registry, watched: bool) -> None:
    """Publish the model; when `watched`, a 90/10 production split and a shadow at sample 1."""
    blobs = [
        serialization.model_to_bytes(mlp.init_params(SIZES, np.random.default_rng(seed)), {"bench": True})
        for seed in range(3 if watched else 1)
    ]
    versions = [registry.publish(MODEL, blob, {"bench": True}) for blob in blobs]
    if not watched:
        registry.set_alias(MODEL, "production", versions[0])
        return
    registry.set_split(MODEL, "production", {versions[0]: 0.9, versions[1]: 0.1})
    shadow.set_shadow(registry, MODEL, versions[2], 1.0)


def metric(url: str, name: str, labels: str = "") -> float:
    """Return the sum of a counter's samples on the server's /metrics (every process; the labels
    starting with `labels`, e.g. 'reason="redis"', or all)."""
    lines = requests.get(f"{url}/metrics", timeout=10).text.splitlines()
    return sum(float(line.split()[-1]) for line in lines if line.startswith(f"{name}{{{labels}"))


def wait_idle(url: str, client: redis.Redis, keys: Keys) -> None:
    """Wait until the recorders hold nothing: every image predicted is counted in Redis (those the
    full queue dropped included), or lost with a batch Redis did not take."""
    deadline = time.monotonic() + IDLE_TIMEOUT
    while time.monotonic() < deadline:
        predicted = metric(url, "mnist_images_predicted_total")
        pipe = client.pipeline(transaction=False)
        for version in (1, 2, 3):
            pipe.hget(keys.version_stats(MODEL, version), "requests")
        counted = sum(int(n or 0) for n in pipe.execute())
        if counted + metric(url, "mnist_recorder_dropped_total", 'reason="redis"') >= predicted:
            return
        time.sleep(0.2)
    raise RuntimeError(f"the recorders were still writing after {IDLE_TIMEOUT} s")


def cpu_seconds(master: int, client: redis.Redis) -> float:
    """Return the CPU seconds the gunicorn workers under `master` and the Redis server have used."""
    with open(f"/proc/{master}/task/{master}/children") as f:
        workers = [int(p) for p in f.read().split()]
    ticks = 0
    for pid in workers:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    info = client.info("cpu")
    return ticks / os.sysconf("SC_CLK_TCK") + info["used_cpu_user"] + info["used_cpu_sys"]


def measure(
    pool,
    urls: dict[str, str],
    masters: dict[str, int],
    clients: dict[str, tuple[redis.Redis, Keys]],
    images: np.ndarray,
    args,
) -> dict[str, list[float]]:
    """Return, per round, each server's raw 10,000-image rate (img/s: fastest call, and sustained),
    one-image rate (req/s), and CPU seconds per image of each (`cpu_raw_plain`…)."""
    session = requests.Session()
    raw = images.tobytes()
    single = orjson.dumps({"instances": images[:1]}, option=orjson.OPT_SERIALIZE_NUMPY)
    path = f"/v1/models/{MODEL}:predict"

    def batch_rate(url: str) -> float:
        return BIG_BATCH / seconds(lambda: post(session, url + path, raw, "application/octet-stream"))

    for name, url in urls.items():  # warm-up: every thread of both workers, the shadow loaded
        post(session, url + path, raw, "application/octet-stream")
        concurrent_rate(pool, url, "POST", path, single, "application/json", 0.5)
        wait_idle(url, *clients[name])
    rates: dict[str, list[float]] = {
        f"{figure}{kind}_{name}": []
        for figure in ("", "cpu_")
        for kind in ("raw", "sustained", "single")
        for name in urls
    }

    def run(name: str, kind: str, fn) -> None:
        client = clients[name][0]
        cpu, predicted = (
            cpu_seconds(masters[name], client),
            metric(urls[name], "mnist_images_predicted_total"),
        )
        rates[f"{kind}_{name}"].append(fn())
        wait_idle(urls[name], *clients[name])
        images = metric(urls[name], "mnist_images_predicted_total") - predicted
        rates[f"cpu_{kind}_{name}"].append((cpu_seconds(masters[name], client) - cpu) / images)
        time.sleep(BLAS_SPIN_PAUSE)

    for round_ in range(args.rounds):
        order = list(urls) if round_ % 2 == 0 else list(reversed(urls))
        for name in order:
            run(name, "raw", lambda name=name: fastest_rate(lambda: batch_rate(urls[name])))
            run(
                name,
                "sustained",
                lambda name=name: (
                    BIG_BATCH
                    * concurrent_rate(
                        pool, urls[name], "POST", path, raw, "application/octet-stream", 2 * args.seconds
                    )
                ),
            )
            run(
                name,
                "single",
                lambda name=name: concurrent_rate(
                    pool, urls[name], "POST", path, single, "application/json", args.seconds
                ),
            )
    return rates


def main() -> None:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternated rounds of every measure")
    parser.add_argument("--seconds", type=float, default=1.5, help="duration of each concurrent run")
    parser.add_argument("--predictions", type=int, default=1_000_000, help="logged for the memory figure")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-rollout-"))
    try:
        with private_redis(tmp) as db:
            overhead = servers_side_by_side(db.url, args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rates, dropped, predicted = overhead
    report(args, rates, dropped, predicted)


def servers_side_by_side(redis_url: str, args, tmp: Path) -> tuple[dict[str, list[float]], float, float]:
    """Run both servers on `redis_url`, measure them; return the rounds, images dropped and predicted."""
    client = redis.Redis.from_url(redis_url)
    prefixes = {name: f"bench-{name}-{uuid.uuid4().hex[:8]}:" for name in ("plain", "watched")}
    clients = {name: (client, Keys(prefix)) for name, prefix in prefixes.items()}
    images = np.random.default_rng(0).integers(0, 256, (BIG_BATCH, mlp.INPUT_SIZE), dtype=np.uint8)
    pool = multiprocessing.get_context("fork").Pool(CONCURRENCY)  # forked before any thread exists
    servers = {}
    try:
        for name, prefix in prefixes.items():
            publish(Registry(client, Keys(prefix)), watched=name == "watched")
            (tmp / name).mkdir()
            settings = WATCHED if name == "watched" else {}
            servers[name] = start_gunicorn(
                redis_url, prefix, uuid.uuid4().hex, tmp / name, model=MODEL, settings=settings
            )
        urls = {name: url for name, (_, url) in servers.items()}
        masters = {name: process.pid for name, (process, _) in servers.items()}
        rates = measure(pool, urls, masters, clients, images, args)
        dropped = metric(servers["watched"][1], "mnist_recorder_dropped_total")
        predicted = metric(servers["watched"][1], "mnist_images_predicted_total")
    finally:
        pool.terminate()
        for process, _ in servers.values():
            stop_gunicorn(process)
        client.close()
    return rates, dropped, predicted


def report(args, rates: dict[str, list[float]], dropped: float, predicted: float) -> None:
    """Measure the memory figure, print the table and save the results."""
    kinds = ("raw", "sustained", "single")
    ratios = {kind: paired(rates[f"{kind}_watched"], rates[f"{kind}_plain"]) for kind in kinds}
    cpu = {kind: paired(rates[f"cpu_{kind}_watched"], rates[f"cpu_{kind}_plain"]) for kind in kinds}
    memory = log_memory.measure(args.predictions)
    limit = log_memory.bound(int(memory["log_maxlen"]))

    def median(key: str) -> float:
        return statistics.median(rates[key])

    rows = [
        {
            "measure": "(a) raw uint8, 10,000 per request",
            "plain": f"{median('raw_plain'):,.0f} img/s",
            "watched": f"{median('raw_watched'):,.0f} img/s",
            "ratio": f"{100 * ratios['raw']:.0f} %",
            "target": "≥ 90 %",
        },
        {
            "measure": "(a) sustained: 8 clients sending 10,000 per request",
            "plain": f"{median('sustained_plain'):,.0f} img/s",
            "watched": f"{median('sustained_watched'):,.0f} img/s",
            "ratio": f"{100 * ratios['sustained']:.0f} %",
            "target": "≥ 90 %",
        },
        {
            "measure": "(c) one image JSON, concurrency 8",
            "plain": f"{median('single_plain'):,.0f} req/s",
            "watched": f"{median('single_watched'):,.0f} req/s",
            "ratio": f"{100 * ratios['single']:.0f} %",
            "target": "≥ 90 %",
        },
        {
            "measure": "CPU per image (gunicorn + Redis), 10,000 per request, sustained",
            "plain": f"{1e6 * median('cpu_sustained_plain'):,.1f} µs",
            "watched": f"{1e6 * median('cpu_sustained_watched'):,.1f} µs",
            "ratio": f"{100 * cpu['sustained']:.0f} %",
            "target": "≤ 110 %",
        },
        {
            "measure": "CPU per image (gunicorn + Redis), one image per request",
            "plain": f"{1e6 * median('cpu_single_plain'):,.0f} µs",
            "watched": f"{1e6 * median('cpu_single_watched'):,.0f} µs",
            "ratio": f"{100 * cpu['single']:.0f} %",
            "target": "≤ 110 %",
        },
        {
            "measure": f"Redis used_memory, {args.predictions:,} logged with feedback (largest growth)",
            "plain": "",
            "watched": f"{memory['grown'] / 2**20:.1f} MiB",
            "ratio": f"{100 * memory['grown'] / limit:.0f} % of the bound",
            "target": f"≤ {limit / 2**20:.1f} MiB",
        },
    ]
    load = os.getloadavg()[0]
    cpus = os.cpu_count()
    print(f"\n2 servers × 2 gunicorn workers × 8 threads, {cpus} CPUs (load {load:.1f}); watched: {WATCHED},")
    print(
        f"a 90/10 split, a shadow at sample 1; the watched recorders dropped {dropped:,.0f} of"
        f" {predicted:,.0f} images predicted\n"
    )
    print_table(rows)
    path = save_results(
        "rollout",
        {
            "rounds": rates,
            "ratios": ratios,
            "cpu_ratios": cpu,
            "target": TARGET,
            "met": {kind: ratio >= TARGET for kind, ratio in ratios.items()},
            "recorder_dropped": dropped,
            "predicted": predicted,
            "memory_bytes": memory,
            "memory_bound_bytes": limit,
            "memory_met": memory["grown"] <= limit,
        },
    )
    print(f"\nsaved {path}")


if __name__ == "__main__":
    main()
