"""shared/jobs.py on a real Redis: submit, fetch, state, describe, recent, counts and cancel.

Jobs run in-process here (RQ's `SimpleWorker(...).work(burst=True)`, as RQ's own tests do);
tests/test_worker.py runs them through real `python -m worker` processes.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import warnings
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from rq import SimpleWorker
from rq.job import JobStatus
from rq.serializers import JSONSerializer
from rq.timeouts import TimerDeathPenalty

from shared import datasets
from shared.config import Settings
from shared.errors import InvalidInput, JobNotFound
from shared.jobs import STOP_FLAG_TTL, TRAIN_FUNCTION, JobConflict, Jobs, JobState
from shared.pipeline import load_spec
from shared.registry import Registry
from tests.live_fixtures import StackEnv

#: A job that trains in well under a second.
TINY = {"dataset": "mnist-sample", "hidden": [8], "optimizer": "gd", "batch_size": 0, "iterations": 3}


def make_settings(env: StackEnv, **changes: Any) -> Settings:
    """Return settings on the test's Redis, key prefix and queue."""
    base = Settings.from_env({})
    return dataclasses.replace(
        base, redis_url=env.redis_url, key_prefix=env.prefix, queue=env.queue, **changes
    )


@pytest.fixture
def jobs(redis_client: redis.Redis, stack_env: StackEnv) -> Jobs:
    """Return `Jobs` on the test's prefix and queue (both deleted afterwards by stack_env)."""
    return Jobs(redis_client, make_settings(stack_env))


class InProcessWorker(SimpleWorker):
    """RQ's in-process worker, timing jobs out with a thread: SIGALRM is pytest-timeout's."""

    death_penalty_class = TimerDeathPenalty


@pytest.fixture
def run_jobs(
    stack_env: StackEnv, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    """Return a function that runs the queue's jobs in this process until it is empty."""
    for name, value in stack_env.environ().items():
        if name.startswith("MNIST_") or name == "REDIS_URL":
            monkeypatch.setenv(name, value)  # worker.tasks.train reads Settings.from_env()
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def run() -> None:
        worker = InProcessWorker(
            [stack_env.queue],
            connection=redis_client,
            serializer=JSONSerializer,
            name=f"simple-{stack_env.queue}",
        )
        worker.work(burst=True, logging_level="WARNING")

    yield run
    for signum, handler in saved.items():  # RQ installs its own; give pytest's back
        signal.signal(signum, handler)


def spec(**changes: Any) -> dict[str, Any]:
    """Return a validated spec: TINY with `changes`."""
    return load_spec({**TINY, **changes})


# --- submit -------------------------------------------------------------------------------------
def test_submit_enqueues_a_json_job_with_retries_timeout_and_listing(
    jobs: Jobs, redis_client: redis.Redis
) -> None:
    s = spec()
    job = jobs.submit(s)
    assert job.func_name == TRAIN_FUNCTION
    assert jobs.queue.job_ids == [job.id]
    assert job.timeout == jobs.settings.job_timeout
    assert job.retries_left == jobs.settings.job_retries
    assert job.meta["spec"] == s and job.meta["submitted_at"]
    assert redis_client.zscore(jobs.keys.jobs(), job.id) is not None
    # The JSON serializer, never pickle: the stored call reads back as plain JSON.
    raw = redis_client.hget(f"rq:job:{job.id}", "data")
    assert json.loads(zlib.decompress(raw))[0] == TRAIN_FUNCTION
    fetched = jobs.fetch(job.id)
    assert list(fetched.args) == [s]  # JSON turns the tuple into a list
    assert jobs.state(fetched) is JobState.QUEUED


def test_submit_without_retries_sets_none(redis_client: redis.Redis, stack_env: StackEnv) -> None:
    job = Jobs(redis_client, make_settings(stack_env, job_retries=0)).submit(spec())
    assert job.retries_left is None


def test_submit_refuses_a_job_above_the_memory_budget(redis_client: redis.Redis, stack_env: StackEnv) -> None:
    small = Jobs(redis_client, make_settings(stack_env, max_job_memory_mb=1))
    with pytest.raises(InvalidInput, match=r"MiB on mnist-sample, above the 1 MiB budget") as info:
        small.submit(spec())
    assert info.value.errors == {"batch_size": ["too large for the memory budget"]}
    assert small.queue.count == 0
    assert redis_client.zcard(small.keys.jobs()) == 0


def test_submit_lets_the_worker_check_a_dataset_of_unknown_size(
    redis_client: redis.Redis, stack_env: StackEnv
) -> None:
    small = Jobs(redis_client, make_settings(stack_env, max_job_memory_mb=1))
    job = small.submit(spec(dataset="no-such-dataset"))
    assert small.queue.job_ids == [job.id]


def test_dataset_size_of_builtin_uploaded_and_unknown(jobs: Jobs, redis_client: redis.Redis) -> None:
    assert jobs.dataset_size("mnist-sample") == datasets.BUILTIN_TRAIN_SIZES["mnist-sample"]
    redis_client.hset(jobs.keys.datasets(), "mine", json.dumps({"name": "mine", "train_size": 123}))
    assert jobs.dataset_size("mine") == 123
    assert jobs.dataset_size("no-such-dataset") is None


# --- fetch, state, describe ---------------------------------------------------------------------
@pytest.mark.parametrize("job_id", ["no-such-job", "", "x" * 65])
def test_fetch_unknown_raises_job_not_found(jobs: Jobs, job_id: str) -> None:
    with pytest.raises(JobNotFound):
        jobs.fetch(job_id)


@pytest.mark.parametrize(
    ("status", "state"),
    [
        (JobStatus.QUEUED, JobState.QUEUED),
        (JobStatus.SCHEDULED, JobState.QUEUED),
        (JobStatus.DEFERRED, JobState.QUEUED),
        (JobStatus.STARTED, JobState.STARTED),
        (JobStatus.FINISHED, JobState.FINISHED),
        (JobStatus.FAILED, JobState.FAILED),
        (JobStatus.CANCELED, JobState.CANCELED),
        (JobStatus.STOPPED, JobState.CANCELED),
    ],
)
def test_state_folds_rq_statuses(jobs: Jobs, status: JobStatus, state: JobState) -> None:
    job = jobs.submit(spec())
    job.set_status(status)
    assert jobs.state(jobs.fetch(job.id)) is state
    assert state.ended == (state in (JobState.FINISHED, JobState.FAILED, JobState.CANCELED))


def test_state_is_canceled_once_the_job_says_so(jobs: Jobs) -> None:
    job = jobs.submit(spec())
    job.set_status(JobStatus.FINISHED)
    job.meta["canceled"] = True
    job.save_meta()
    assert jobs.state(jobs.fetch(job.id)) is JobState.CANCELED


def test_describe_a_queued_job(jobs: Jobs) -> None:
    s = spec()
    view = jobs.describe(jobs.fetch(jobs.submit(s).id))
    assert view["status"] == "queued"
    assert view["spec"] == s
    assert view["progress"] is None and view["result"] is None and view["error"] is None
    assert view["attempts"] == 0 and view["resumed_from_iteration"] is None
    assert view["created_at"] and view["started_at"] is None and view["ended_at"] is None


def test_describe_finished_and_failed_jobs_run_in_process(
    jobs: Jobs, run_jobs: Any, redis_client: redis.Redis
) -> None:
    good = jobs.submit(spec())
    bad = jobs.submit(spec(dataset="no-such-dataset"))
    run_jobs()

    view = jobs.describe(jobs.fetch(good.id))
    assert view["status"] == "finished", view
    assert view["result"]["model"] == "mnist" and view["result"]["version"] == 1
    assert view["result"]["metrics"]["iterations"] == TINY["iterations"]
    assert view["progress"]["fraction"] == 1.0 and view["attempts"] == 1
    assert view["started_at"] and view["ended_at"] and view["error"] is None
    registry = Registry(redis_client, jobs.keys)
    assert registry.published_by(good.id) == 1

    failed = jobs.fetch(bad.id)
    view = jobs.describe(failed)
    assert view["status"] == "failed" and view["result"] is None
    assert view["error"].startswith("unknown dataset 'no-such-dataset'") and "\n" not in view["error"]
    assert failed.retries_left == 0  # deterministic: not retried
    assert jobs.counts() == {"queued": 0, "started": 0, "finished": 1, "failed": 1, "canceled": 0}


def test_describe_an_abandoned_job_with_no_retries_left(
    redis_client: redis.Redis, stack_env: StackEnv
) -> None:
    jobs = Jobs(redis_client, make_settings(stack_env, job_retries=0))
    job = jobs.submit(spec())
    # What RQ's maintenance does when a worker died mid-job and its heartbeat expired.
    jobs.queue.remove(job.id)
    job.set_status(JobStatus.STARTED)
    redis_client.zadd(f"rq:wip:{jobs.queue.name}", {f"{job.id}:dead-execution": 1})
    jobs.queue.started_job_registry.cleanup()
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # not RQ's deprecated job.exc_info
        view = jobs.describe(jobs.fetch(job.id))
    assert view["status"] == "failed"
    assert "AbandonedJobError" in view["error"] and "\n" not in view["error"]


# --- recent, counts -----------------------------------------------------------------------------
def test_recent_lists_newest_first_filters_and_forgets_expired_jobs(
    jobs: Jobs, redis_client: redis.Redis
) -> None:
    ids = [jobs.submit(spec(seed=i)).id for i in range(4)]
    for i, job_id in enumerate(ids):  # submission times one second apart, oldest first
        redis_client.zadd(jobs.keys.jobs(), {job_id: 1000 + i})
    assert [v["id"] for v in jobs.recent()] == ids[::-1]
    assert [v["id"] for v in jobs.recent(limit=2)] == ids[:1:-1]
    jobs.fetch(ids[1]).set_status(JobStatus.FAILED)
    assert [v["id"] for v in jobs.recent(status=JobState.FAILED)] == [ids[1]]
    jobs.fetch(ids[2]).delete()  # expired from RQ
    assert [v["id"] for v in jobs.recent()] == [ids[3], ids[1], ids[0]]
    assert redis_client.zscore(jobs.keys.jobs(), ids[2]) is None


def test_counts_of_an_empty_and_a_busy_queue(jobs: Jobs) -> None:
    assert jobs.counts() == {"queued": 0, "started": 0, "finished": 0, "failed": 0, "canceled": 0}
    jobs.submit(spec())
    jobs.submit(spec())
    assert jobs.counts()["queued"] == 2


def test_counts_a_job_stopped_while_running_as_canceled(jobs: Jobs, redis_client: redis.Redis) -> None:
    stopped, done = jobs.submit(spec()), jobs.submit(spec(seed=1))
    finished = jobs.queue.finished_job_registry
    for job in (stopped, done):  # what RQ does when the function returns, stopped or not
        jobs.queue.remove(job.id)
        finished.add(job, ttl=60)
    jobs.record_stopped(stopped.id)
    assert jobs.counts() == {"queued": 0, "started": 0, "finished": 1, "failed": 0, "canceled": 1}
    # Once RQ forgets the job, so does the record (scored by its expiry).
    finished.remove(stopped)
    redis_client.zadd(jobs.keys.stopped_jobs(), {stopped.id: 1})
    assert jobs.counts() == {"queued": 0, "started": 0, "finished": 1, "failed": 0, "canceled": 0}
    assert redis_client.zcard(jobs.keys.stopped_jobs()) == 0


# --- cancel -------------------------------------------------------------------------------------
def test_cancel_a_queued_job_at_once(jobs: Jobs, redis_client: redis.Redis) -> None:
    job = jobs.submit(spec())
    canceled = jobs.cancel(job.id, wait=5.0)
    assert jobs.state(canceled) is JobState.CANCELED
    assert jobs.describe(canceled)["status"] == "canceled"
    assert jobs.queue.count == 0
    assert jobs.counts()["canceled"] == 1
    # The flag is set too, in case a worker had dequeued the job meanwhile; it expires on its own.
    assert 0 < redis_client.ttl(jobs.keys.stop(job.id)) <= STOP_FLAG_TTL
    with pytest.raises(JobConflict, match="already canceled"):
        jobs.cancel(job.id)


def test_cancel_an_ended_job_conflicts(jobs: Jobs) -> None:
    job = jobs.submit(spec())
    job.set_status(JobStatus.FINISHED)
    with pytest.raises(JobConflict, match="already finished") as info:
        jobs.cancel(job.id)
    assert info.value.status == 409


def test_cancel_an_unknown_job(jobs: Jobs) -> None:
    with pytest.raises(JobNotFound):
        jobs.cancel("no-such-job")


def test_a_canceled_job_never_runs(jobs: Jobs, run_jobs: Any, redis_client: redis.Redis) -> None:
    doomed = jobs.submit(spec())
    jobs.cancel(doomed.id)
    kept = jobs.submit(spec(seed=1))
    run_jobs()
    assert jobs.state(jobs.fetch(kept.id)) is JobState.FINISHED
    view = jobs.describe(jobs.fetch(doomed.id))
    assert view["status"] == "canceled" and view["attempts"] == 0 and view["started_at"] is None
    registry = Registry(redis_client, jobs.keys)
    assert registry.published_by(doomed.id) is None
    assert [r.metadata["job_id"] for r in registry.versions("mnist")] == [kept.id]
