"""Training jobs on RQ: submit, look up, list and cancel, as the API and the tests need them.

A job's status is one of `JobState`; RQ's finer states fold into it (scheduled and deferred
are queued, RQ's own stop is canceled). A running job cancels cooperatively: a stop flag that
the training loop reads between steps, so it ends as `canceled` with nothing published.

Whoever can write to Redis can put a job on the queue, and RQ would import and call whatever
function it names. `refusal` says what a job of ours looks like (`TRAIN_FUNCTION` on one spec,
nothing else to call), and the worker runs nothing else (worker/runner.py).
"""

from __future__ import annotations

import contextlib
import enum
import re
import time
from datetime import UTC, datetime
from typing import Any, cast

import redis
from rq import Queue, Retry
from rq.exceptions import DeserializationError, InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.results import Result
from rq.serializers import JSONSerializer

from shared import datasets
from shared.config import Settings
from shared.dataset_store import DatasetStore
from shared.errors import JobNotFound, MnistError
from shared.keys import Keys
from shared.pipeline import plan

#: The job function, by import path (RQ's JSON serializer stores it as a string).
TRAIN_FUNCTION = "worker.tasks.train"
#: Seconds the stop flag of a job lives (long enough for a worker to read it).
STOP_FLAG_TTL = 3600
#: Seconds DELETE waits for a running job to acknowledge its stop before answering.
CANCEL_WAIT = 5.0
#: A job id as RQ accepts one (it raises ValueError on anything else; ours are 32 hex digits).
JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: Characters of a foreign job's function name quoted in a refusal (names come from anyone).
SHOWN_NAME_CHARS = 80
#: Fields of RQ's job hash that name more functions to import and call: a job of ours has none.
CALLBACK_FIELDS = ("success_callback_name", "failure_callback_name", "stopped_callback_name")


class JobState(enum.StrEnum):
    """Where a training job is; the `status` field of the API."""

    QUEUED = "queued"
    STARTED = "started"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def ended(self) -> bool:
        """Return True for the states a job never leaves."""
        return self in (JobState.FINISHED, JobState.FAILED, JobState.CANCELED)


class JobConflict(MnistError):
    """An operation that the job's state forbids (cancelling a finished job)."""

    status = 409


_RQ_TO_STATE = {
    JobStatus.QUEUED: JobState.QUEUED,
    JobStatus.SCHEDULED: JobState.QUEUED,
    JobStatus.DEFERRED: JobState.QUEUED,
    JobStatus.STARTED: JobState.STARTED,
    JobStatus.FINISHED: JobState.FINISHED,
    JobStatus.FAILED: JobState.FAILED,
    JobStatus.CANCELED: JobState.CANCELED,
    JobStatus.STOPPED: JobState.CANCELED,
}


class Jobs:
    """Training jobs of one deployment (one key prefix, one queue)."""

    def __init__(self, conn: redis.Redis, settings: Settings) -> None:
        self.conn = conn
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.queue = Queue(settings.queue, connection=conn, serializer=JSONSerializer)

    def dataset_size(self, name: str) -> int | None:
        """Return the training-set size of a built-in or uploaded dataset, or None if unknown."""
        known = datasets.BUILTIN_TRAIN_SIZES.get(name)
        if known is not None:
            return known
        try:
            return int(DatasetStore(self.conn, self.keys).info(name)["train_size"])
        except MnistError:
            return None

    def submit(self, spec: dict[str, Any]) -> Job:
        """Enqueue a validated spec; return the RQ job (retried up to `job_retries` times if its worker dies).

        The spec is planned first (`shared.pipeline.plan`): InvalidInput when it cannot run, or
        would exceed the memory budget of a job on a dataset whose size is known here.
        """
        plan(spec, self.dataset_size(spec["dataset"]), self.settings.max_job_memory_mb * 2**20)
        job = self.queue.enqueue(
            TRAIN_FUNCTION,
            spec,
            job_timeout=self.settings.job_timeout,
            result_ttl=self.settings.result_ttl,
            failure_ttl=self.settings.result_ttl,
            retry=Retry(max=self.settings.job_retries) if self.settings.job_retries else None,
            meta={"spec": spec, "submitted_at": _now()},
        )
        self.conn.zadd(self.keys.jobs(), {job.id: time.time()})
        return job

    def fetch(self, job_id: str) -> Job:
        """Return the job `job_id`; JobNotFound if RQ does not know it."""
        if not JOB_ID.fullmatch(job_id):  # RQ would raise ValueError (a 500), or read "a:b" as "a"
            raise JobNotFound(f"no job {job_id!r}")
        try:
            job = Job.fetch(job_id, connection=self.conn, serializer=JSONSerializer)
        except NoSuchJobError:
            raise JobNotFound(f"no job {job_id!r}") from None
        if job.origin != self.queue.name:
            # Another deployment's (or another RQ app's) job in the same Redis is not ours to show.
            raise JobNotFound(f"no job {job_id!r}")
        return job

    def state(self, job: Job) -> JobState:
        """Return the job's `JobState`."""
        if job.meta.get("canceled"):
            return JobState.CANCELED
        status = job.get_status(refresh=False)
        return _RQ_TO_STATE.get(status, JobState.QUEUED) if status else JobState.QUEUED

    def describe(self, job: Job) -> dict[str, Any]:
        """Return the API view of a job: status, progress, result or error, timing."""
        state = self.state(job)
        meta = job.meta
        result = None
        if state is JobState.FINISHED:
            value = job.return_value()
            if isinstance(value, dict):
                result = {k: value.get(k) for k in ("model", "version", "metrics")}
        error = meta.get("error")
        if state is JobState.FAILED and not error:
            error = _last_line(_rq_error(job)) or "the job failed"
        return {
            "id": job.id,
            "status": state.value,
            "spec": meta.get("spec") or _spec_argument(job),
            "progress": meta.get("progress"),
            "curve": meta.get("curve", []),
            "result": result,
            "error": error if state is JobState.FAILED else None,
            "attempts": meta.get("attempts", 0),
            "resumed_from_iteration": meta.get("resumed_from_iteration"),
            "dataset": meta.get("dataset"),
            "created_at": _iso(job.enqueued_at) or meta.get("submitted_at"),
            "started_at": _iso(job.started_at),
            "ended_at": _iso(job.ended_at),
        }

    def recent(self, limit: int = 50, status: JobState | None = None) -> list[dict[str, Any]]:
        """Return the newest jobs first (at most `limit`), optionally only those in `status`."""
        found: list[dict[str, Any]] = []
        start = 0
        batch = max(limit, 50)
        while len(found) < limit:
            ids: list[bytes] = self.conn.zrevrange(self.keys.jobs(), start, start + batch - 1)  # type: ignore[assignment]
            if not ids:
                break
            start += batch
            jobs = Job.fetch_many([i.decode() for i in ids], connection=self.conn, serializer=JSONSerializer)
            gone = [i for i, j in zip(ids, jobs, strict=False) if j is None]
            if gone:
                self.conn.zrem(self.keys.jobs(), *gone)  # expired from RQ: forget them here too
                start -= len(gone)
            for job in jobs:
                if job is None:
                    continue
                view = self.describe(job)
                if status is None or view["status"] == status.value:
                    found.append(view)
                    if len(found) == limit:
                        break
        return found

    def counts(self) -> dict[str, int]:
        """Return how many jobs RQ holds in each state for this queue.

        A job stopped on request while running is in RQ's finished registry (its function
        returned); it counts as canceled, as `state()` reports it.
        """
        q = self.queue
        finished = q.finished_job_registry
        stopped = self._stopped_among(finished.key)
        return {
            JobState.QUEUED.value: q.count + q.scheduled_job_registry.count + q.deferred_job_registry.count,
            JobState.STARTED.value: q.started_job_registry.count,
            JobState.FINISHED.value: finished.count - stopped,
            JobState.FAILED.value: q.failed_job_registry.count,
            JobState.CANCELED.value: q.canceled_job_registry.count + stopped,
        }

    def record_stopped(self, job_id: str) -> None:
        """Note that the running job `job_id` stopped on request (see `counts`)."""
        self.conn.zadd(self.keys.stopped_jobs(), {job_id: time.time() + self.settings.result_ttl})

    def _stopped_among(self, finished_key: str) -> int:
        """Return how many jobs stopped on request are in RQ's finished registry `finished_key`."""
        key = self.keys.stopped_jobs()
        self.conn.zremrangebyscore(key, "-inf", time.time())  # records RQ has forgotten too
        ids = cast(list[bytes], self.conn.zrange(key, 0, -1))
        if not ids:
            return 0
        pipe = self.conn.pipeline(transaction=False)
        for job_id in ids:
            pipe.zscore(finished_key, job_id)
        return sum(score is not None for score in pipe.execute())

    def cancel(self, job_id: str, wait: float = CANCEL_WAIT) -> Job:
        """Cancel a queued job at once, or ask a running one to stop and wait up to `wait` s for it."""
        job = self.fetch(job_id)
        state = self.state(job)
        if state.ended:
            raise JobConflict(f"job {job_id} already {state.value}")
        # The flag first: a worker that dequeues the job right now sees it before its first step.
        self.conn.set(self.keys.stop(job.id), b"1", ex=STOP_FLAG_TTL)
        if state is JobState.QUEUED:
            with contextlib.suppress(InvalidJobOperation):  # it started meanwhile: the flag stops it
                job.cancel()
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            job = self.fetch(job_id)
            if self.state(job).ended:
                break
            time.sleep(0.05)
        return job


def refusal(job: Job) -> str | None:
    """Return why `job` is not a training job as `Jobs.submit` writes it, or None if it is one.

    Reads only the job's stored JSON: nothing is imported or resolved. Ours call `TRAIN_FUNCTION`
    on one spec (a JSON object), on no instance, with no callbacks and no webhooks.
    """
    try:
        name, instance, args, kwargs = job.func_name, job.instance, job.args, job.kwargs
        stored = job.to_dict(include_meta=False, include_result=False)
    except (DeserializationError, ValueError, TypeError):
        return f"refused: its payload is not the JSON of a job (only {TRAIN_FUNCTION} runs here)"
    if name != TRAIN_FUNCTION:
        shown = repr(name)
        if len(shown) > SHOWN_NAME_CHARS:
            shown = shown[: SHOWN_NAME_CHARS - 3] + "..."
        return f"refused: function {shown} is not {TRAIN_FUNCTION}, the only one that runs here"
    if instance is not None:
        return f"refused: {TRAIN_FUNCTION} is a function, not a method of an instance"
    if kwargs != {} or not isinstance(args, (list, tuple)) or len(args) != 1 or not isinstance(args[0], dict):
        return f"refused: {TRAIN_FUNCTION} takes one spec (a JSON object) and nothing else"
    callbacks = [f.removesuffix("_name") for f in CALLBACK_FIELDS if stored.get(f)]
    if callbacks:
        return f"refused: it asks for a {' and a '.join(callbacks)}, which this service never sets"
    if stored.get("webhooks"):
        return "refused: it asks for webhooks, which this service never sets"
    return None


def _spec_argument(job: Job) -> dict[str, Any] | None:
    """Return the spec a job was called with, or None (a foreign job's payload may not even be JSON)."""
    try:
        args = job.args
    except DeserializationError:
        return None
    return args[0] if isinstance(args, (list, tuple)) and args and isinstance(args[0], dict) else None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.isoformat(timespec="seconds")


def _rq_error(job: Job) -> str | None:
    """Return the traceback RQ recorded for the job's last failed run (job.exc_info is deprecated)."""
    latest = job.latest_result()
    if latest is not None and latest.type == Result.Type.FAILED:
        return latest.exc_string
    return None


def _last_line(text: str | None) -> str | None:
    if not text:
        return None
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else None
