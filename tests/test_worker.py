"""The RQ training worker for real: `python -m worker` processes on a real Redis.

Every test has its own key prefix and queue (`stack_env`), submits jobs with `shared.jobs.Jobs`
and watches them through Redis only, as the API does. The workers run with one BLAS thread:
with two busy cores, OpenBLAS's spinning threads slow small matrix products down tenfold and
make the run times unpredictable; one thread per worker is also what docs/worker.md advises.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from shared import datasets, drift
from shared.config import Settings
from shared.errors import ModelNotFound
from shared.jobs import Jobs, JobState
from shared.keys import Keys
from shared.pipeline import load_spec, prepare
from shared.registry import Registry
from tests.live_fixtures import Process, StackEnv, start_worker, wait_for
from worker import blas
from worker.tasks import CHECKPOINT_SHARE, JobReporter

pytestmark = pytest.mark.slow


#: Trains for about 10 s on one idle core (two or three times longer on a loaded machine).
LONG = {"dataset": "mnist-sample", "hidden": [64], "optimizer": "sgd", "batch_size": 64, "epochs": 500}
#: Trains for about 4 s: long enough to watch, stop and resume.
MEDIUM = {**LONG, "epochs": 200}
#: Trains in about a second.
SHORT = {**LONG, "hidden": [16], "epochs": 10}
#: Would train for a minute or so: for the jobs that are cancelled or timed out long before.
ENDLESS = {**LONG, "hidden": [256], "epochs": 400}
#: Trains in a blink, in the test process itself.
TINY = {**LONG, "hidden": [8], "epochs": 2}
#: Seconds a job may take to end once it should (generous: the machine is shared).
END_TIMEOUT = 120.0


# --- helpers ------------------------------------------------------------------------------------
@dataclasses.dataclass
class Stack:
    """What a test works with: its Redis, jobs, registry and a way to start workers."""

    env: StackEnv
    conn: redis.Redis
    jobs: Jobs
    registry: Registry
    keys: Keys
    start: Callable[..., Process]
    workers: list[Process]

    def submit(self, spec: dict[str, Any], **settings: Any) -> Job:
        """Submit a spec (validated as the API does) with these settings changed."""
        jobs = Jobs(self.conn, dataclasses.replace(self.jobs.settings, **settings)) if settings else self.jobs
        return jobs.submit(load_spec(spec))

    def job(self, job_id: str) -> Job:
        return self.jobs.fetch(job_id)

    def state(self, job_id: str) -> JobState:
        return self.jobs.state(self.job(job_id))

    def wait_ended(self, job_id: str, timeout: float = END_TIMEOUT) -> dict[str, Any]:
        """Wait until the job has ended; return its API view."""
        wait_for(lambda: self.state(job_id).ended, timeout, f"job {job_id} to end", 0.1, self.logs)
        return self.jobs.describe(self.job(job_id))

    def wait_progress(self, job_id: str, fraction: float, checkpoint: bool = False) -> dict[str, Any]:
        """Wait until the job reports at least `fraction` done (and, if asked, has a checkpoint)."""

        def reached() -> dict[str, Any] | None:
            job = self.job(job_id)
            progress = job.meta.get("progress") or {}
            assert not self.jobs.state(job).ended, f"job ended early: {self.jobs.describe(job)}"
            if progress.get("fraction", 0) < fraction:
                return None
            if checkpoint and not self.conn.exists(self.keys.checkpoint(job_id)):
                return None
            return progress

        return wait_for(reached, END_TIMEOUT, f"job {job_id} to reach {fraction:.0%}", details=self.logs)

    def versions(self, model: str = "mnist") -> list[Any]:
        try:
            return self.registry.versions(model)
        except ModelNotFound:
            return []

    def logs(self) -> str:
        return "\n".join(f"--- {p.log_path.name}\n{p.log()[-3000:]}" for p in self.workers)


@pytest.fixture
def stack(stack_env: StackEnv, redis_client: redis.Redis, tmp_path: Path) -> Iterator[Stack]:
    """A test's Redis, jobs and registry; the workers it starts (`stack.start`) are stopped after."""
    settings = dataclasses.replace(
        Settings.from_env({}),
        redis_url=stack_env.redis_url,
        key_prefix=stack_env.prefix,
        queue=stack_env.queue,
    )
    keys = Keys(stack_env.prefix)
    workers: list[Process] = []

    def start(name: str | None = None, **more: str) -> Process:
        process = start_worker(stack_env, tmp_path, name, **{"OPENBLAS_NUM_THREADS": "1", **more})
        workers.append(process)
        return process

    yield Stack(
        stack_env,
        redis_client,
        Jobs(redis_client, settings),
        Registry(redis_client, keys),
        keys,
        start,
        workers,
    )
    for process in workers:
        process.stop()
    # RQ's worker registry: a SIGKILLed worker never unregisters itself.
    registered = f"rq:workers:{stack_env.queue}"
    for name in redis_client.smembers(registered):
        redis_client.srem("rq:workers", name)
        redis_client.delete(name)
    redis_client.delete(registered)


def assert_published_once(stack: Stack, job_id: str) -> int:
    """Check that the model has exactly one version and that it is this job's; return it."""
    versions = stack.versions()
    assert len(versions) == 1, [v.metadata.get("job_id") for v in versions]
    record = versions[0]
    assert record.metadata["job_id"] == job_id
    assert stack.registry.published_by(job_id) == record.version
    return record.version


# --- what a job publishes -----------------------------------------------------------------------
def test_a_published_version_carries_its_training_sets_drift_profile(stack: Stack) -> None:
    stack.start()
    view = stack.wait_ended(stack.submit(TINY).id)
    assert view["status"] == "finished", view
    record = stack.registry.record("mnist", view["result"]["version"])
    data = datasets.load("mnist-sample")
    # The reference of drift: the whole training split with its true labels, as JSON ints.
    assert record.metadata["profile"] == drift.profile(data.x_train, data.y_train)
    assert drift.check(record.metadata["profile"]) == record.metadata["profile"]
    metrics = record.metadata["metrics"]
    assert drift.count(record.metadata["profile"]) == metrics["train_size"] + metrics["val_size"]
    assert len(json.dumps(record.metadata["profile"])) < 400  # 50 ints: a small part of the record


# --- a worker dies ------------------------------------------------------------------------------
def test_sigkilled_worker_job_resumes_on_the_other_worker_and_publishes_once(stack: Stack) -> None:
    workers = {name: stack.start(name) for name in (f"a-{stack.env.queue}", f"b-{stack.env.queue}")}
    job_id = stack.submit(LONG).id
    at_kill = stack.wait_progress(job_id, 0.45, checkpoint=True)
    first = stack.job(job_id).worker_name
    (other,) = set(workers) - {first}

    workers[first].kill_tree()  # the worker and its work horse, as a lost machine would
    killed = time.monotonic()
    wait_for(lambda: stack.job(job_id).worker_name == other, 90, f"{other} to take the job", 0.1, stack.logs)
    taken = time.monotonic() - killed
    wait_for(lambda: stack.job(job_id).meta.get("attempts") == 2, 30, "the second attempt", 0.1, stack.logs)
    resumed = time.monotonic() - killed
    print(
        f"\nSIGKILL at {at_kill['fraction']:.0%}: the other worker took the job {taken:.1f} s later"
        f" and trained again {resumed:.1f} s after the kill"
    )
    assert resumed < 60

    view = stack.wait_ended(job_id)
    assert view["status"] == "finished", view
    job = stack.job(job_id)
    assert job.worker_name == other
    assert view["attempts"] == 2
    total = view["progress"]["total_iterations"]
    assert 0 < view["resumed_from_iteration"] < total
    assert view["result"]["version"] == assert_published_once(stack, job_id)
    assert not stack.conn.exists(stack.keys.checkpoint(job_id))


def test_sigterm_checkpoints_requeues_and_another_worker_resumes(stack: Stack) -> None:
    first = stack.start()
    job_id = stack.submit(MEDIUM).id
    stack.wait_progress(job_id, 0.3, checkpoint=True)
    retries_left = stack.job(job_id).retries_left

    asked = time.monotonic()
    first.popen.send_signal(signal.SIGTERM)
    first.popen.wait(30)
    exited = time.monotonic() - asked
    print(f"\nworker exited {exited:.2f} s after SIGTERM")
    assert exited < 20, first.log()  # 1–2 s normally

    job = stack.job(job_id)
    assert job.get_status() == JobStatus.QUEUED, stack.jobs.describe(job)
    assert job.id in stack.jobs.queue.job_ids
    assert job.retries_left == retries_left  # a clean shutdown spends no retry
    assert "error" not in job.meta
    assert "enqueued for retry" in first.log()  # RQ's requeue (what the failure tests look for)
    interrupted = job.meta["interrupted_at_iteration"]
    assert interrupted > 0

    stack.start()
    view = stack.wait_ended(job_id)
    assert view["status"] == "finished", view
    assert view["attempts"] == 2
    assert view["resumed_from_iteration"] == interrupted  # the checkpoint taken on the way out
    assert view["result"]["version"] == assert_published_once(stack, job_id)


# --- cancel -------------------------------------------------------------------------------------
def test_cancel_a_queued_job_and_a_worker_never_runs_it(stack: Stack) -> None:
    doomed = stack.submit(ENDLESS).id
    assert stack.jobs.state(stack.jobs.cancel(doomed)) is JobState.CANCELED
    marker = stack.submit(SHORT).id  # queued behind it: once the marker ran, the worker saw both

    worker = stack.start()
    assert stack.wait_ended(marker)["status"] == "finished"
    view = stack.jobs.describe(stack.job(doomed))
    assert view["status"] == "canceled"
    assert view["attempts"] == 0 and view["started_at"] is None and view["progress"] is None
    assert doomed not in worker.log()
    assert stack.registry.published_by(doomed) is None
    assert_published_once(stack, marker)


def test_cancel_a_running_job_stops_it_without_publishing(stack: Stack) -> None:
    stack.start()
    job_id = stack.submit(ENDLESS).id
    stack.wait_progress(job_id, 0.01, checkpoint=True)

    asked = time.monotonic()
    stack.jobs.cancel(job_id)
    view = stack.wait_ended(job_id, timeout=30)
    took = time.monotonic() - asked
    print(f"\nrunning job canceled in {took:.2f} s")
    assert view["status"] == "canceled", view
    assert took < 20  # 1–2 s normally
    assert view["result"] is None and view["error"] is None
    assert view["progress"]["fraction"] < 1
    assert stack.versions() == [] and stack.registry.published_by(job_id) is None
    assert not stack.conn.exists(stack.keys.checkpoint(job_id))
    assert not stack.conn.exists(stack.keys.stop(job_id))
    # RQ files it as finished (the function returned); the counts behind /metrics say canceled.
    counts = stack.jobs.counts()
    assert counts["canceled"] == 1 and counts["finished"] == 0, counts


# --- jobs that cannot succeed -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("dataset", "worker_env", "message"),
    [
        pytest.param("no-such-dataset", {}, "unknown dataset 'no-such-dataset'", id="unknown-dataset"),
        pytest.param("/etc/passwd", {}, "unknown dataset '/etc/passwd'", id="path"),
        pytest.param("mnist-sample", {"MNIST_MAX_JOB_MEMORY_MB": "1"}, "above the 1 MiB budget", id="memory"),
    ],
)
def test_a_job_that_cannot_succeed_fails_once_with_a_clear_message(
    stack: Stack, dataset: str, worker_env: dict[str, str], message: str
) -> None:
    worker = stack.start(**worker_env)
    job_id = stack.submit({**SHORT, "dataset": dataset}).id
    view = stack.wait_ended(job_id)
    assert view["status"] == "failed", view
    error = view["error"]
    print(f"\n{dataset}: {error}")
    assert message in error and "\n" not in error and "Traceback" not in error
    assert "path" not in error  # the worker reads no file a spec names
    job = stack.job(job_id)
    assert job.retries_left == 0 and view["attempts"] <= 1  # not retried
    assert job_id in stack.jobs.queue.failed_job_registry.get_job_ids()
    assert stack.jobs.queue.count == 0
    assert stack.versions() == [] and stack.registry.models() == []
    log = worker.log()
    assert log.count("exception raised while executing") == 1 and "enqueued for retry" not in log, log


def test_a_job_over_its_time_limit_fails_and_is_not_retried(stack: Stack) -> None:
    worker = stack.start()
    job_id = stack.submit(ENDLESS, job_timeout=3).id
    view = stack.wait_ended(job_id)
    assert view["status"] == "failed", view
    print(f"\ntimeout: {view['error']}")
    assert view["error"] == "the job ran longer than its time limit of 3 s (MNIST_JOB_TIMEOUT)"
    assert view["attempts"] == 1 and stack.job(job_id).retries_left == 0
    assert view["progress"]["fraction"] < 1
    assert stack.versions() == []
    assert not stack.conn.exists(stack.keys.checkpoint(job_id))
    log = worker.log()
    assert log.count("exception raised while executing") == 1 and "enqueued for retry" not in log, log


# --- progress and concurrency -------------------------------------------------------------------
def test_progress_is_written_while_running_and_throttled(stack: Stack) -> None:
    stack.start()
    job_id = stack.submit(MEDIUM).id
    wait_for(lambda: stack.state(job_id) is not JobState.QUEUED, 60, "the job to start")
    seen: list[tuple[float, dict[str, Any]]] = []
    while not stack.state(job_id).ended:  # sample far faster than the writes come
        progress = stack.job(job_id).meta.get("progress")
        if progress and (not seen or progress != seen[-1][1]):
            seen.append((time.monotonic(), progress))
        time.sleep(0.01)
    view = stack.jobs.describe(stack.job(job_id))
    assert view["status"] == "finished", view

    fractions = [p["fraction"] for _, p in seen]
    assert fractions == sorted(fractions) and len(set(fractions)) == len(fractions)
    assert (
        view["progress"]["fraction"] == 1.0
        and view["progress"]["iteration"] == view["progress"]["total_iterations"]
    )
    assert {"epoch", "iteration", "loss", "train_accuracy", "val_accuracy"} <= set(seen[-1][1])
    # Writes come at most every 0.5 s (settings.progress_interval), plus the final one.
    writes = [t for t, p in seen if p["fraction"] < 1]
    span = writes[-1] - writes[0]
    gaps = [b - a for a, b in zip(writes, writes[1:], strict=False)]
    print(
        f"\n{len(writes)} progress writes seen over {span:.1f} s, median gap {statistics.median(gaps):.2f} s"
    )
    assert len(writes) >= 3
    assert len(writes) - 1 <= span / 0.5 + 2
    assert statistics.median(gaps) >= 0.3  # seen by a poller: a stall shortens a gap
    assert len(view["curve"]) == view["progress"]["epoch"]  # one entry per finished epoch


def test_two_jobs_finishing_together_get_two_versions(stack: Stack) -> None:
    stack.start()
    stack.start()
    ids = [stack.submit(SHORT).id for _ in range(2)]
    views = [stack.wait_ended(job_id) for job_id in ids]
    assert [v["status"] for v in views] == ["finished", "finished"], views
    assert len({stack.job(job_id).worker_name for job_id in ids}) == 2  # ran side by side
    assert sorted(v["result"]["version"] for v in views) == [1, 2]
    records = stack.versions()
    assert sorted(r.version for r in records) == [1, 2]
    assert {r.metadata["job_id"]: r.version for r in records} == {
        job_id: v["result"]["version"] for job_id, v in zip(ids, views, strict=True)
    }


# --- the reporter, in-process -------------------------------------------------------------------
def test_slow_checkpoints_are_spaced_out_to_a_small_share_of_the_run(stack: Stack) -> None:
    job = stack.submit(TINY)
    settings = dataclasses.replace(stack.jobs.settings, checkpoint_interval=0.0, progress_interval=0.0)
    run = prepare(load_spec(TINY))

    class SlowCheckpoints(JobReporter):
        def save_checkpoint(self) -> None:
            time.sleep(0.02)  # what a big model's checkpoint looks like, scaled down
            super().save_checkpoint()

    reporter = SlowCheckpoints(job, stack.conn, stack.keys, settings, run.trainer)
    started = time.monotonic()
    result = run.trainer.run(on_progress=reporter.on_progress, should_stop=reporter.should_stop)
    seconds = time.monotonic() - started
    assert result.completed
    # Every step would checkpoint with a zero interval; each costs >= 20 ms, so the next waits >= 1 s.
    assert 1 <= reporter.checkpoints <= seconds / (0.02 / CHECKPOINT_SHARE) + 1, (
        reporter.checkpoints,
        seconds,
    )
    assert stack.conn.exists(stack.keys.checkpoint(job.id))
    assert (
        Job.fetch(job.id, connection=stack.conn, serializer=JSONSerializer).meta["progress"]["fraction"]
        == 1.0
    )


def test_a_stop_flag_set_before_the_first_step_stops_it(stack: Stack) -> None:
    job = stack.submit(TINY)
    stack.conn.set(stack.keys.stop(job.id), b"1")
    run = prepare(load_spec(TINY))
    reporter = JobReporter(job, stack.conn, stack.keys, stack.jobs.settings, run.trainer)
    result = run.trainer.run(on_progress=reporter.on_progress, should_stop=reporter.should_stop)
    assert not result.completed and result.iterations == 0


# --- BLAS threads -------------------------------------------------------------------------------
def test_blas_threads_automatic_explicit_and_per_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    automatic = Settings.from_env({})
    assert automatic.blas_threads == 0 and automatic.blas_threads_for() == 1  # alone: one per worker
    cores = len(os.sched_getaffinity(0))
    assert automatic.blas_threads_for(2) == max(1, cores // 2)  # what `mnist up --workers 2` passes
    assert automatic.blas_threads_for(cores * 4) == 1
    explicit = Settings.from_env({"MNIST_BLAS_THREADS": "3"})
    assert explicit.blas_threads_for() == explicit.blas_threads_for(8) == 3
    with pytest.raises(ValueError, match="MNIST_BLAS_THREADS=-1"):
        Settings.from_env({"MNIST_BLAS_THREADS": "-1"}).blas_threads_for()
    # Automatic fills in what is unset (or empty); MNIST_BLAS_THREADS overrides every variable.
    environ = {"OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": ""}
    assert blas.limit(automatic, environ) == 1
    assert environ == {"OPENBLAS_NUM_THREADS": "2", **{v: "1" for v in blas.VARIABLES[1:]}}
    assert blas.limit(explicit, environ) == 3 and set(environ.values()) == {"3"}


@pytest.mark.parametrize(("setting", "expected"), [("", 1), ("2", 2)], ids=["automatic", "two"])
def test_a_worker_process_trains_with_the_blas_threads_it_is_given(
    stack: Stack, setting: str, expected: int
) -> None:
    # As compose, the Procfile or `mnist up` start it: no BLAS variable of the caller's shell.
    unset = {variable: "" for variable in blas.VARIABLES}
    process = stack.start(f"blas-{expected}", MNIST_BLAS_THREADS=setting, **unset)
    # The count the loaded OpenBLAS reports (it caps it at the cores it finds): what the work
    # horses, forked from this process, train with.
    threads = min(expected, len(os.sched_getaffinity(0)))
    wait_for(lambda: "BLAS:" in process.log(), 30, "the worker's BLAS line", 0.1, stack.logs)
    assert f"BLAS: {threads} thread(s) per job" in process.log(), process.log()

    # OpenBLAS starts its threads when it loads: the worker runs those, plus RQ's pub/sub thread
    # once it has subscribed (a moment after it registered).
    def count() -> int:
        status = Path(f"/proc/{process.pid}/status").read_text()
        return int(status.split("Threads:")[1].split()[0])

    wait_for(lambda: count() == threads + 1, 10, f"{threads + 1} threads in the worker", 0.1, stack.logs)


def test_a_worker_takes_its_name_and_log_level_from_settings(stack: Stack) -> None:
    # Lower case, as gunicorn takes it: the same MNIST_LOG_LEVEL serves both kinds of process.
    process = stack.start("settings-named", MNIST_LOG_LEVEL="debug")  # returns once RQ knows the name
    wait_for(lambda: "registering birth" in process.log(), 10, "the worker's debug log", 0.1, stack.logs)
    assert stack.conn.exists("rq:worker:settings-named")
