"""The RQ job: train one spec, report progress, checkpoint, publish exactly one version.

`train` is what the API enqueues (as ``"worker.tasks.train"``, JSON-serialized arguments). It
runs inside an RQ work horse; everything it needs comes from the environment (`Settings`) and
the job itself. This is the one place that catches broadly: it records a one-line error in
``job.meta["error"]`` for the API, logs the job id, and lets RQ mark the job failed.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis
from marshmallow import ValidationError
from rq.job import Job, get_current_job
from rq.timeouts import JobTimeoutException

from shared import pipeline, serialization
from shared.config import Settings
from shared.dataset_store import DatasetStore
from shared.errors import MnistError, ReplicationTimeout
from shared.jobs import Jobs
from shared.keys import Keys
from shared.redis_conn import write_durably
from shared.registry import Registry
from shared.training import Checkpoint, Progress, Trainer

log = logging.getLogger(__name__)

#: Seconds a checkpoint outlives its last write (a dead job's checkpoint must wait for a retry).
CHECKPOINT_TTL = 24 * 3600
#: Seconds between two reads of the stop flag (a GET per step would slow small batches).
STOP_POLL_INTERVAL = 0.25
#: Largest share of the run that checkpoints may take: when one takes long (a big model, a
#: distant Redis), the next waits longer than `checkpoint_interval` (a 163 MiB Adam checkpoint
#: takes seconds: every 5 s it would halve the training speed).
CHECKPOINT_SHARE = 0.02
#: Epoch entries of the learning curve kept in job.meta (the registry keeps them all).
CURVE_POINTS = 200
#: Set in the work horse when its worker shuts down (worker/runner.py): checkpoint and requeue.
SHUTDOWN = threading.Event()


class WorkerShutdown(Exception):
    """The worker is shutting down: the job was checkpointed and goes back to its queue."""


class JobReporter:
    """Writes a running job's progress to job.meta, checkpoints, and reads its stop flag, all throttled."""

    def __init__(self, job: Job, conn: redis.Redis, keys: Keys, settings: Settings, trainer: Trainer) -> None:
        self.job = job
        self.conn = conn
        self.keys = keys
        self.settings = settings
        self.trainer = trainer
        now = time.monotonic()
        self._next_progress = now
        self._next_checkpoint = now + settings.checkpoint_interval
        self._next_stop_poll = now  # read the flag before the first step: a job cancelled early never trains
        self.checkpoints = 0
        self.stopped = False

    def on_progress(self, p: Progress) -> None:
        """Write progress at most every `progress_interval` s; checkpoint every `checkpoint_interval` s.

        A slow checkpoint spaces out the next ones, so that they take at most CHECKPOINT_SHARE of the run.
        """
        now = time.monotonic()
        if now >= self._next_progress or p.iteration == p.total_iterations:
            self._next_progress = now + self.settings.progress_interval
            self.write_progress(p)
        if now >= self._next_checkpoint:
            self.save_checkpoint()
            done = time.monotonic()
            spacing = max(self.settings.checkpoint_interval, (done - now) / CHECKPOINT_SHARE)
            self._next_checkpoint = done + spacing

    def should_stop(self) -> bool:
        """Return True once a stop or a shutdown was requested (Redis read at most every 0.25 s)."""
        if SHUTDOWN.is_set():
            return True
        now = time.monotonic()
        if now >= self._next_stop_poll:
            self._next_stop_poll = now + STOP_POLL_INTERVAL
            self.stopped = bool(self.conn.exists(self.keys.stop(self.job.id)))
        return self.stopped

    def write_progress(self, p: Progress) -> None:
        """Write `p` and the learning curve so far into job.meta."""
        history = self.trainer.history
        self.job.meta["progress"] = {
            "fraction": round(p.fraction, 6),
            "epoch": p.epoch,
            "iteration": p.iteration,
            "total_iterations": p.total_iterations,
            "loss": p.loss,
            "train_accuracy": p.train_accuracy,
            "val_accuracy": p.val_accuracy,
            "val_loss": p.val_loss,
            "learning_rate": p.learning_rate,
        }
        self.job.meta["curve"] = thin(history, CURVE_POINTS)
        self.job.save_meta()

    def save_checkpoint(self) -> None:
        """Store the trainer's state under the job's checkpoint key."""
        # The live state, not a copy: training waits for this call, and a copy of a big model's
        # parameters and optimizer slots would double the job's memory at every checkpoint.
        blob = serialization.checkpoint_to_bytes(self.trainer.checkpoint(copy=False))
        key = self.keys.checkpoint(self.job.id)
        try:
            write_durably(
                self.conn,
                self.settings.min_replicas,
                self.settings.replica_timeout,
                f"job {self.job.id}'s checkpoint",
                lambda pipe: pipe.set(key, blob, ex=CHECKPOINT_TTL),
            )
        except ReplicationTimeout as exc:
            # The checkpoint is on the primary: training goes on (a checkpoint only saves progress;
            # the version's own publish waits, and fails, where durability matters).
            log.warning("job %s: %s", self.job.id, exc.message)
        self.checkpoints += 1


def thin(history: list[dict[str, Any]], points: int) -> list[dict[str, Any]]:
    """Return at most `points` entries of `history`, evenly spaced, always keeping the last."""
    if len(history) <= points:
        return history
    step = len(history) / points
    picked = [history[int(i * step)] for i in range(points - 1)]
    return [*picked, history[-1]]


def train(spec: dict[str, Any]) -> dict[str, Any]:
    """Train `spec` (a TrainingSpecSchema dict) and publish it; return {model, version, metrics}."""
    job = get_current_job()
    if job is None:
        raise RuntimeError("worker.tasks.train runs inside an RQ job")
    settings = Settings.from_env()
    conn = job.connection
    keys = Keys(settings.key_prefix)
    registry = Registry(
        conn,
        keys,
        retention=settings.retention,
        min_replicas=settings.min_replicas,
        replica_timeout=settings.replica_timeout,
    )
    try:
        return _train(job, spec, conn, keys, settings, registry)
    except ReplicationTimeout as exc:
        # The version is on the primary, not yet on enough replicas: a retry (from the checkpoint,
        # or straight to the version this job published) waits for them again.
        log.error("job %s: %s", job.id, exc.message)
        _fail(job, exc.message, retry=True)
        raise
    except (MnistError, ValidationError, ValueError) as exc:
        # Deterministic failures: retrying would fail the same way, so do not.
        message = exc.message if isinstance(exc, MnistError) else _validation_message(exc)
        _fail(job, message, retry=False)
        conn.delete(keys.checkpoint(job.id))
        raise
    except JobTimeoutException:
        # RQ's limit is per attempt: a retry would resume from the checkpoint with a fresh limit,
        # so a job could outlive MNIST_JOB_TIMEOUT by chaining attempts. A timeout is final.
        limit = f"its time limit of {job.timeout} s (MNIST_JOB_TIMEOUT)"
        _fail(job, f"the job ran longer than {limit}", retry=False)
        conn.delete(keys.checkpoint(job.id))
        raise
    except WorkerShutdown:
        # Hand the job back without spending one of its retries on a clean shutdown.
        job.retries_left = (job.retries_left or 0) + 1
        raise
    except Exception as exc:
        log.exception("job %s: training failed", job.id)
        _fail(job, f"{type(exc).__name__}: {exc}", retry=True)
        raise


def _train(
    job: Job, spec: dict[str, Any], conn: redis.Redis, keys: Keys, settings: Settings, registry: Registry
) -> dict[str, Any]:
    spec = pipeline.load_spec(spec)
    done = registry.published_by(job.id)
    if done is not None:
        # A retry after the first attempt published (e.g. its worker died right after, or its
        # replicas were late): publish nothing, but make sure the version is durable.
        registry.confirm_published(job.id, done)
        record = registry.record(spec["model"], done)
        return _result(job, spec["model"], done, record.metadata.get("metrics", {}))
    checkpoint = _load_checkpoint(conn, keys, job)
    run = pipeline.prepare(
        spec,
        uploaded=DatasetStore(conn, keys).get,
        checkpoint=checkpoint,
        memory_budget=settings.max_job_memory_mb * 2**20,
        allow_paths=False,
    )
    job.meta.update(
        {
            "attempts": int(job.meta.get("attempts", 0)) + 1,
            "resumed_from_iteration": checkpoint.iteration if checkpoint else None,
            "dataset": run.dataset.info(),
            "config": run.config.to_dict(),
        }
    )
    job.save_meta()
    reporter = JobReporter(job, conn, keys, settings, run.trainer)
    log.info("job %s: training %s on %s (%s)", job.id, spec["model"], run.dataset.name, run.config.to_dict())
    result = run.trainer.run(on_progress=reporter.on_progress, should_stop=reporter.should_stop)
    if not result.completed and SHUTDOWN.is_set():
        reporter.save_checkpoint()
        job.meta["interrupted_at_iteration"] = result.iterations
        job.save_meta()
        log.info("job %s: worker shutting down, checkpointed at iteration %d", job.id, result.iterations)
        raise WorkerShutdown(f"worker shut down at iteration {result.iterations}; the job resumes from there")
    if not result.completed:
        conn.delete(keys.checkpoint(job.id), keys.stop(job.id))
        job.meta["canceled"] = True
        job.save_meta()
        Jobs(conn, settings).record_stopped(job.id)
        log.info("job %s: stopped on request at iteration %d", job.id, result.iterations)
        return {"canceled": True, "model": spec["model"], "version": None, "metrics": result.metrics()}
    metrics = pipeline.evaluate(run, result)
    meta = pipeline.model_meta(run, result, metrics, job_id=job.id, checkpoints=reporter.checkpoints)
    blob = serialization.model_to_bytes(result.params, meta)
    version = registry.publish(spec["model"], blob, meta, job_id=job.id)
    conn.delete(keys.checkpoint(job.id))
    log.info(
        "job %s: published %s v%d (test accuracy %s)",
        job.id,
        spec["model"],
        version,
        metrics["test_accuracy"],
    )
    return _result(job, spec["model"], version, metrics)


def _result(job: Job, model: str, version: int, metrics: dict[str, Any]) -> dict[str, Any]:
    job.meta["result"] = {"model": model, "version": version}
    job.save_meta()
    return {"model": model, "version": version, "metrics": metrics}


def _load_checkpoint(conn: redis.Redis, keys: Keys, job: Job) -> Checkpoint | None:
    blob = conn.get(keys.checkpoint(job.id))
    if not isinstance(blob, bytes):
        return None
    try:
        return serialization.checkpoint_from_bytes(blob)
    except Exception:  # a damaged checkpoint costs progress, never the job
        log.warning("job %s: unreadable checkpoint ignored, starting over", job.id)
        return None


def _fail(job: Job, message: str, *, retry: bool) -> None:
    job.meta["error"] = message
    job.save_meta()
    if not retry:
        job.retries_left = 0  # RQ reads this in-memory value when it handles the failure


def _validation_message(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "invalid spec: " + "; ".join(f"{k}: {v}" for k, v in exc.normalized_messages().items())
    return str(exc)
