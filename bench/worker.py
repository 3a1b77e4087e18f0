"""Training throughput inside an RQ worker against `mnist train` in-process, side by side.

A job's training loop should run as fast in the worker as on the command line: the progress
writes to job.meta (every 0.5 s), the checkpoints to Redis (every 5 s), the stop-flag reads and
the forked work horse must not slow it. For each case the same spec runs both ways, alternating
(in-process, worker, worker, in-process, …) so that machine noise hits both sides:

- in-process: ``mnist train <flags> --json`` in a fresh process, its reported samples_per_second;
- worker: the spec submitted with `shared.jobs.Jobs` to a real ``python -m worker`` (default
  MNIST_CHECKPOINT_INTERVAL 5 s and MNIST_PROGRESS_INTERVAL 0.5 s), the samples_per_second of
  the job's own result metrics.

Both figures count the training loop only (data loading and the final evaluation are outside),
and both sides check that they ran the same config. The figures are the ratio of the medians
and, steadier on a shared machine, the median ratio of the adjacent pairs of runs.

The worker runs on a private key prefix and queue of the Redis at REDIS_URL (default local), and
everything it wrote is deleted afterwards.

Usage: python bench/worker.py [--repeats 7] [--epochs 80] [--iterations 150] [--cases sgd,gd]
                              [--blas-threads default,1]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import print_table, save_results  # noqa: E402
from shared.config import Settings  # noqa: E402
from shared.jobs import Jobs, JobState  # noqa: E402
from shared.pipeline import load_spec  # noqa: E402

#: Seconds the worker may take to register, and a job to finish, before the benchmark gives up.
START_TIMEOUT = 60.0
JOB_TIMEOUT = 600.0
#: Seconds between two looks at a running job's status.
POLL_INTERVAL = 0.5
#: Flags of `mnist train` for each spec field used here.
FLAGS = {
    "dataset": "--dataset",
    "hidden": "--hidden",
    "optimizer": "--optimizer",
    "learning_rate": "--learning-rate",
    "batch_size": "--batch-size",
    "epochs": "--epochs",
    "iterations": "--iterations",
}


def cases(epochs: int, iterations: int) -> dict[str, dict[str, Any]]:
    """Return the benchmarked specs by name: mini-batch SGD and full-batch gradient descent."""
    return {
        "sgd": {"dataset": "mnist-sample", "hidden": [256], "optimizer": "sgd", "learning_rate": 0.1,
                "batch_size": 64, "epochs": epochs},
        "gd": {"dataset": "mnist-sample", "hidden": [256], "optimizer": "gd", "learning_rate": 0.5,
               "batch_size": 0, "iterations": iterations},
    }  # fmt: skip


def in_process(spec: dict[str, Any], environ: dict[str, str]) -> tuple[float, dict[str, Any]]:
    """Run `mnist train` on `spec`; return its samples/s and config."""
    cmd = [str(Path(sys.executable).parent / "mnist"), "train", "--json", "--out", os.devnull]
    for name, flag in FLAGS.items():
        if name in spec:
            value = spec[name]
            cmd += [flag, ",".join(map(str, value)) if isinstance(value, list) else str(value)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT, env=environ)
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    return float(summary["samples_per_second"]), summary["config"]


def in_worker(jobs: Jobs, spec: dict[str, Any], job_ids: list[str]) -> tuple[float, dict[str, Any]]:
    """Submit `spec` to the worker and wait; return its samples/s and config (its id goes to `job_ids`)."""
    job = jobs.submit(load_spec(spec))
    job_ids.append(job.id)
    deadline = time.monotonic() + JOB_TIMEOUT
    # One cheap read every POLL_INTERVAL: with two cores and two BLAS threads, a busier watcher
    # would take CPU from the worker that the in-process side never has to share.
    while jobs.conn.hget(job.key, "status") not in (b"finished", b"failed", b"canceled", b"stopped"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job.id} did not finish within {JOB_TIMEOUT} s")
        time.sleep(POLL_INTERVAL)
    job = jobs.fetch(job.id)
    view = jobs.describe(job)
    if view["status"] != JobState.FINISHED.value:
        raise RuntimeError(f"job {job.id} ended {view['status']}: {view['error']}")
    return float(view["result"]["metrics"]["samples_per_second"]), job.meta["config"]


def start_worker(environ: dict[str, str], log: Path, name: str, conn: redis.Redis) -> subprocess.Popen:
    """Start `python -m worker`; return once it is registered in RQ."""
    out = log.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker"], env={**environ, "MNIST_WORKER_NAME": name},
        stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
    )  # fmt: skip
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited:\n{log.read_text(errors='replace')}")
        if conn.exists(f"rq:worker:{name}"):
            return proc
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"the worker did not register within {START_TIMEOUT} s")


def cleanup(conn: redis.Redis, prefix: str, queue: str, job_ids: list[str]) -> None:
    """Delete our keys, the queue, its registries and the jobs' RQ keys."""
    doomed = list(conn.scan_iter(match=f"{prefix}*", count=1000))
    for registry in ("wip", "finished", "failed", "deferred", "scheduled", "canceled"):
        doomed.append(f"rq:{registry}:{queue}")
    for job_id in job_ids:
        doomed += [f"rq:job:{job_id}", f"rq:results:{job_id}", f"rq:executions:{job_id}"]
        doomed += list(conn.scan_iter(match=f"rq:execution:{job_id}*", count=1000))
    doomed += [f"rq:queue:{queue}", f"rq:clean_registries:{queue}", f"rq:intermediate:{queue}"]
    conn.delete(*doomed)
    conn.srem("rq:queues", f"rq:queue:{queue}")


def measure(
    name: str,
    spec: dict[str, Any],
    threads: str,
    repeats: int,
    environ: dict[str, str],
    jobs: Jobs,
    job_ids: list[str],
) -> dict[str, Any]:
    """Run `spec` `repeats` times each way, alternating; return the table row."""
    if threads != "default":
        environ = {**environ, "OPENBLAS_NUM_THREADS": threads}
    cli: list[float] = []
    worker: list[float] = []
    configs: list[dict[str, Any]] = []
    for i in range(repeats):
        # Alternate which side goes first so that a drift in machine load hits both.
        for side in ("cli", "worker") if i % 2 == 0 else ("worker", "cli"):
            if side == "cli":
                sps, config = in_process(spec, environ)
                cli.append(sps)
            else:
                sps, config = in_worker(jobs, spec, job_ids)
                worker.append(sps)
            if config.get("iterations") is not None:
                config.pop("epochs", None)  # ignored when iterations are set (its default may differ)
            configs.append(config)
    if any(c != configs[0] for c in configs):
        raise RuntimeError(f"{name}: the two sides ran different configs: {configs}")
    pairs = [w / c for w, c in zip(worker, cli, strict=True)]
    return {
        "case": name,
        "spec": _describe(spec),
        "blas_threads": threads,
        "mnist_train_samples_per_s": round(statistics.median(cli)),
        "worker_samples_per_s": round(statistics.median(worker)),
        "ratio_of_medians": round(statistics.median(worker) / statistics.median(cli), 3),
        "median_paired_ratio": round(statistics.median(pairs), 3),
        "runs_cli": " ".join(str(round(x)) for x in cli),
        "runs_worker": " ".join(str(round(x)) for x in worker),
    }


def main() -> int:
    """Measure and print the table; save it under bench/results/worker.json."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=7, help="runs of each side per case")
    parser.add_argument("--epochs", type=int, default=80, help="epochs of the sgd case")
    parser.add_argument("--iterations", type=int, default=150, help="steps of the full-batch gd case")
    parser.add_argument("--cases", default="sgd,gd", help="comma-separated: sgd, gd")
    parser.add_argument(
        "--blas-threads",
        default="default",
        help="comma-separated OPENBLAS_NUM_THREADS values, e.g. default,1",
    )
    args = parser.parse_args()
    specs = cases(args.epochs, args.iterations)
    chosen = {name: specs[name] for name in args.cases.split(",")}

    tag = uuid.uuid4().hex[:8]
    # The shipped cadence, whatever the environment says.
    settings = dataclasses.replace(
        Settings.from_env(),
        key_prefix=f"bench-{tag}:",
        queue=f"bench-{tag}",
        checkpoint_interval=Settings.checkpoint_interval,
        progress_interval=Settings.progress_interval,
    )
    environ = {
        **os.environ,
        "REDIS_URL": settings.redis_url,
        "MNIST_KEY_PREFIX": settings.key_prefix,
        "MNIST_QUEUE": settings.queue,
        "MNIST_CHECKPOINT_INTERVAL": str(settings.checkpoint_interval),
        "MNIST_PROGRESS_INTERVAL": str(settings.progress_interval),
        "MNIST_LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(ROOT),
    }
    conn = redis.Redis.from_url(settings.redis_url)
    jobs = Jobs(conn, settings)
    rows: list[dict[str, Any]] = []
    job_ids: list[str] = []
    try:
        for threads in args.blas_threads.split(","):
            env = environ if threads == "default" else {**environ, "OPENBLAS_NUM_THREADS": threads}
            log = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-worker-{tag}-{threads}.log"
            worker = start_worker(env, log, f"bench-{tag}-{threads}", conn)
            try:
                for name, spec in chosen.items():
                    rows.append(measure(name, spec, threads, args.repeats, environ, jobs, job_ids))
                    print_table(rows[-1:], header=len(rows) == 1)
            finally:
                worker.send_signal(signal.SIGTERM)
                try:
                    worker.wait(15)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait()
    finally:
        cleanup(conn, settings.key_prefix, settings.queue, job_ids)
        conn.close()
    save_results(
        "worker",
        {
            "repeats": args.repeats,
            "checkpoint_interval_s": settings.checkpoint_interval,
            "progress_interval_s": settings.progress_interval,
            "rows": rows,
        },
    )
    return 0


def _describe(spec: dict[str, Any]) -> str:
    length = f"{spec['epochs']} epochs" if "epochs" in spec else f"{spec['iterations']} steps"
    batch = "full batch" if spec["batch_size"] == 0 else f"batch {spec['batch_size']}"
    return f"{spec['dataset']}, hidden {spec['hidden']}, {spec['optimizer']}, {batch}, {length}"


if __name__ == "__main__":
    sys.exit(main())
