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

The second measure (`pair`) is what `mnist up --workers 2` does when two jobs come at once: two
real workers, each with the BLAS threads `mnist up` gives it (`Settings.blas_threads_for(2)`: the
cores divided by the workers), train the same spec (fashion-mnist if installed, else
mnist-sample; hidden 256, SGD, batch 64) one job alone, then two jobs at once, alternating round
by round. Its figure is the median over the rounds of the slower of the pair's samples/s over
the lone job's, measured in the same round (target: at least 0.80). The same is measured with
OpenBLAS's own default (one thread per core in each worker, as before MNIST_BLAS_THREADS).

The workers run on a private key prefix and queue of the Redis at REDIS_URL (default local), and
everything they wrote is deleted afterwards.

Usage: python bench/worker.py [--measures cli,pair] [--repeats 7] [--epochs 80] [--iterations 150]
                              [--cases sgd,gd] [--blas-threads default,1]
                              [--pair-rounds 3] [--pair-samples 270000] [--pair-blas automatic,default]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
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
from shared import datasets  # noqa: E402
from shared.config import Settings  # noqa: E402
from shared.jobs import Jobs, JobState  # noqa: E402
from shared.pipeline import load_spec  # noqa: E402

#: Seconds the worker may take to register, and a job to finish, before the benchmark gives up.
START_TIMEOUT = 60.0
JOB_TIMEOUT = 600.0
#: Seconds between two looks at a running job's status.
POLL_INTERVAL = 0.5
#: Workers of the pair measure, as `mnist up --workers 2` starts them.
PAIR_WORKERS = 2
#: Ratio of the pair measure's target: each of two jobs at once at 80 % of one job alone.
PAIR_TARGET = 0.80
#: Cores the machine's other processes may keep busy during a round that counts as quiet.
QUIET_CORES = 0.25
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
    view, config = run_jobs(jobs, [spec], job_ids)[0]
    return float(view["result"]["metrics"]["samples_per_second"]), config


def run_jobs(
    jobs: Jobs, specs: list[dict[str, Any]], job_ids: list[str]
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Submit every spec at once and wait for all; return each job's view and config."""
    submitted = [jobs.submit(load_spec(spec)) for spec in specs]
    job_ids.extend(job.id for job in submitted)
    deadline = time.monotonic() + JOB_TIMEOUT
    ended = (b"finished", b"failed", b"canceled", b"stopped")
    # One cheap read every POLL_INTERVAL: with two cores and two BLAS threads, a busier watcher
    # would take CPU from the worker that the in-process side never has to share.
    while any(jobs.conn.hget(job.key, "status") not in ended for job in submitted):
        if time.monotonic() > deadline:
            raise RuntimeError(f"jobs {[j.id for j in submitted]} did not finish within {JOB_TIMEOUT} s")
        time.sleep(POLL_INTERVAL)
    found = []
    for job in submitted:
        job = jobs.fetch(job.id)
        view = jobs.describe(job)
        if view["status"] != JobState.FINISHED.value:
            raise RuntimeError(f"job {job.id} ended {view['status']}: {view['error']}")
        found.append((view, job.meta["config"]))
    return found


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


def stop_worker(worker: subprocess.Popen) -> None:
    """Stop a worker (SIGTERM), or kill it after 15 s."""
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(15)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


def blas_value(threads: str) -> str:
    """Return the thread count a --blas-threads value stands for ("default": OpenBLAS's, one per core)."""
    return str(os.cpu_count() or 1) if threads == "default" else threads


def pair_spec(samples: int) -> dict[str, Any]:
    """Return the pair measure's spec: about `samples` training samples of SGD, hidden 256, batch 64."""
    available = {e["name"] for e in datasets.catalogue() if e["available"]}
    name = "fashion-mnist" if "fashion-mnist" in available else "mnist-sample"
    epochs = max(1, math.ceil(samples / datasets.BUILTIN_TRAIN_SIZES[name]))
    return {"dataset": name, "hidden": [256], "optimizer": "sgd", "learning_rate": 0.1, "batch_size": 64,
            "epochs": epochs}  # fmt: skip


def overlap(views: list[dict[str, Any]]) -> float:
    """Return the share of the longer job's run (load, train, evaluate) during which both jobs ran."""
    spans = [(_seconds(v["started_at"]), _seconds(v["ended_at"])) for v in views]
    both = min(end for _, end in spans) - max(start for start, _ in spans)
    return max(0.0, both) / max(end - start for start, end in spans)


def _seconds(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


class OthersMeter:
    """How many cores the machine's other processes kept busy between `start()` and `stop()`.

    The machine's busy time (/proc/stat) less this process's and the workers' (their horses are
    reaped by then, so their CPU time is in the workers' `cutime`): on a shared machine it says
    how quiet the measure was. Linux only; None elsewhere.
    """

    def __init__(self, workers: list[subprocess.Popen]) -> None:
        self.pids = [w.pid for w in workers]
        self.started: tuple[float, float, float] | None = None

    def _sample(self) -> tuple[float, float, float]:
        with open("/proc/stat") as f:
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
        ours = sum(os.times()[:4]) * os.sysconf("SC_CLK_TCK")
        for pid in self.pids:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
            ours += sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
        return time.monotonic(), float(user + nice + system + irq + softirq + steal), ours

    def start(self) -> None:
        try:
            self.started = self._sample()
        except OSError:
            self.started = None

    def stop(self) -> float | None:
        """Return the cores the other processes kept busy on average since `start()`."""
        if self.started is None:
            return None
        try:
            now = self._sample()
        except OSError:
            return None
        seconds = now[0] - self.started[0]
        others = (now[1] - self.started[1]) - (now[2] - self.started[2])
        return max(0.0, others / os.sysconf("SC_CLK_TCK") / seconds) if seconds > 0 else None


def measure_pair(
    label: str, spec: dict[str, Any], rounds: int, jobs: Jobs, job_ids: list[str], meter: OthersMeter
) -> dict[str, Any]:
    """Run one job alone, then two at once (alternating the order each round); return the table row."""
    alone: list[float] = []
    pairs: list[tuple[float, float]] = []
    overlaps: list[float] = []
    others: list[float] = []
    for i in range(rounds):
        meter.start()
        for side in ("alone", "pair") if i % 2 == 0 else ("pair", "alone"):
            if side == "alone":
                alone.append(in_worker(jobs, spec, job_ids)[0])
                continue
            views = [view for view, _ in run_jobs(jobs, [spec, spec], job_ids)]
            rates = sorted(float(v["result"]["metrics"]["samples_per_second"]) for v in views)
            pairs.append((rates[0], rates[1]))
            overlaps.append(overlap(views))
        busy = meter.stop()
        if busy is not None:
            others.append(busy)
    # Each pair against the lone job of its own round: the machine's drift between rounds cancels.
    slower = [low / one for (low, _), one in zip(pairs, alone, strict=True)]
    # Two jobs need both cores: a neighbour's load takes from the pair what the lone job never
    # missed. The rounds the neighbours left quiet say what the workers do themselves.
    quiet = [x for x, busy in zip(slower, others, strict=False) if busy < QUIET_CORES]
    return {
        "measure": "two jobs at once, two workers",
        "spec": _describe(spec),
        "blas_threads": label,
        "one_job_samples_per_s": round(statistics.median(alone)),
        "each_of_two_samples_per_s": round(statistics.median([r for pair in pairs for r in pair])),
        "slower_of_two_over_one": round(statistics.median(slower), 3),
        "target": PAIR_TARGET,
        "rounds_slower_over_one": " ".join(f"{x:.2f}" for x in slower),
        "quiet_rounds_median": round(statistics.median(quiet), 3) if quiet else "-",
        "runs_one": " ".join(str(round(x)) for x in alone),
        "runs_two": " ".join(f"{round(a)}/{round(b)}" for a, b in pairs),
        "overlap_min": round(min(overlaps), 2),
        "rounds_other_cores_busy": " ".join(f"{x:.2f}" for x in others) or "?",
    }


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
    environ = {**environ, "OPENBLAS_NUM_THREADS": blas_value(threads)}
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
    """Measure and print the tables; save them under bench/results/worker.json."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--measures", default="cli,pair", help="comma-separated: cli, pair")
    parser.add_argument("--repeats", type=int, default=7, help="runs of each side per case")
    parser.add_argument("--epochs", type=int, default=80, help="epochs of the sgd case")
    parser.add_argument("--iterations", type=int, default=150, help="steps of the full-batch gd case")
    parser.add_argument("--cases", default="sgd,gd", help="comma-separated: sgd, gd")
    parser.add_argument(
        "--blas-threads",
        default="default",
        help="comma-separated BLAS threads of both sides, e.g. default,1 (default: OpenBLAS's, one per core)",
    )
    parser.add_argument("--pair-rounds", type=int, default=3, help="rounds of the pair measure")
    parser.add_argument(
        "--pair-samples",
        type=int,
        default=270_000,
        help="training samples of each pair job (rounded up to epochs)",
    )
    parser.add_argument(
        "--pair-blas",
        default="automatic,default",
        help="comma-separated BLAS threads per worker of the pair measure: automatic (what `mnist up"
        " --workers 2` gives), default (OpenBLAS's, one per core) or a number",
    )
    args = parser.parse_args()
    measures = set(args.measures.split(","))
    specs = cases(args.epochs, args.iterations)
    chosen = {name: specs[name] for name in args.cases.split(",")} if "cli" in measures else {}

    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average at start: {load} (run on a quiet machine: `uptime` below 1)", file=sys.stderr)
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
    pair_rows: list[dict[str, Any]] = []
    job_ids: list[str] = []
    logs = Path(os.environ.get("TMPDIR", "/tmp"))
    try:
        for threads in args.blas_threads.split(",") if chosen else []:
            env = {**environ, "MNIST_BLAS_THREADS": blas_value(threads)}
            worker = start_worker(
                env, logs / f"bench-worker-{tag}-{threads}.log", f"bench-{tag}-{threads}", conn
            )
            try:
                for name, spec in chosen.items():
                    rows.append(measure(name, spec, threads, args.repeats, environ, jobs, job_ids))
                    print_table(rows[-1:], header=len(rows) == 1)
            finally:
                stop_worker(worker)
        for choice in args.pair_blas.split(",") if "pair" in measures else []:
            if choice == "automatic":
                # What `mnist up --workers 2` passes to each of its workers (client/up.py).
                threads = str(dataclasses.replace(settings, blas_threads=0).blas_threads_for(PAIR_WORKERS))
                label = f"{threads} (automatic: {os.cpu_count()} cores / {PAIR_WORKERS} workers)"
            else:
                threads = blas_value(choice)
                label = f"{threads} (OpenBLAS's default: one per core)" if choice == "default" else threads
            env = {**environ, "MNIST_BLAS_THREADS": threads}
            workers = [
                start_worker(
                    env, logs / f"bench-pair-{tag}-{choice}-{i}.log", f"bench-{tag}-{choice}-{i}", conn
                )
                for i in range(PAIR_WORKERS)
            ]
            try:
                spec = pair_spec(args.pair_samples)
                meter = OthersMeter(workers)
                pair_rows.append(measure_pair(label, spec, args.pair_rounds, jobs, job_ids, meter))
                print_table(pair_rows[-1:], header=len(pair_rows) == 1)
            finally:
                for worker in workers:
                    stop_worker(worker)
    finally:
        cleanup(conn, settings.key_prefix, settings.queue, job_ids)
        conn.close()
    save_results(
        "worker",
        {
            "load_average_at_start": load,
            "repeats": args.repeats,
            "checkpoint_interval_s": settings.checkpoint_interval,
            "progress_interval_s": settings.progress_interval,
            "rows": rows,
            "pair_rounds": args.pair_rounds,
            "pair_rows": pair_rows,
        },
    )
    return 0


def _describe(spec: dict[str, Any]) -> str:
    length = f"{spec['epochs']} epochs" if "epochs" in spec else f"{spec['iterations']} steps"
    batch = "full batch" if spec["batch_size"] == 0 else f"batch {spec['batch_size']}"
    return f"{spec['dataset']}, hidden {spec['hidden']}, {spec['optimizer']}, {batch}, {length}"


if __name__ == "__main__":
    sys.exit(main())
