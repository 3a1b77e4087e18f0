"""The RQ worker that runs training jobs, tuned so that a dead worker's job resumes within 60 s.

RQ notices a dead worker when its job's heartbeat expires in the started-job registry and an
idle worker's maintenance pass moves the job back to its queue (its `Retry` allowing). Stock
RQ waits up to 60 s past the last heartbeat and runs maintenance every 10 minutes; here the
horse's heartbeat comes every `MONITORING_INTERVAL` s and expires `HEARTBEAT_GRACE` s later, and
idle workers clean up every `MAINTENANCE_INTERVAL` s: a job abandoned at time T is queued again
by about T + 30 s and resumes from its last checkpoint.

Shutting down (SIGTERM or Ctrl-C, as `docker stop`, honcho and Kubernetes send) does not wait
for a training run that may last minutes: the worker passes SIGTERM to its work horse, whose
training loop stops at the next step, saves a checkpoint and hands the job back to the queue
(`WorkerShutdown`), where the next worker resumes it. The worker exits within a second or so.

When Redis goes away (a restart, a failover), every Redis command of the worker and of its work
horse retries for about a minute (`REDIS_RETRY`) instead of failing: RQ itself survives an outage
only while idle, and a worker monitoring a running job would otherwise quit on the first
heartbeat that fails (and its job would fail with it). With a ``redis+sentinel://`` URL each
retry asks the Sentinels where the primary is (shared/redis_conn.py): after a failover the worker
and its horse go on against the promoted replica, without a restart.

Redis is a trust boundary: anyone who can write to it can queue a job, and RQ imports and calls
the function a job names. The worker runs only `shared.jobs.TRAIN_FUNCTION` on one spec: any
other job (`shared.jobs.refusal` says why) is failed before it is forked, imported or resolved,
with its reason in the job's ``meta["error"]`` and one log line, never retried, and the worker
takes the next job. A job that RQ cannot even read (a damaged hash) is dropped with a log line
instead of stopping the worker, as RQ would.

Each work horse trains with the BLAS threads that `python -m worker` set before NumPy loaded
(worker/blas.py, MNIST_BLAS_THREADS); the worker logs the count at start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from rq import Queue, Worker
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.utils import now

from shared.config import Settings
from shared.jobs import refusal
from shared.redis_conn import connect
from worker import blas, tasks

log = logging.getLogger(__name__)

#: Seconds between heartbeats of a running job.
MONITORING_INTERVAL = 5
#: Seconds a job's heartbeat outlives it: a job not heard of for this long is abandoned.
HEARTBEAT_GRACE = 10
#: Seconds between maintenance passes (requeueing abandoned jobs) of an idle worker.
MAINTENANCE_INTERVAL = 5
#: Seconds a worker's own registration lives without a heartbeat; an idle worker wakes every
#: WORKER_TTL − 15 s, which bounds how late a maintenance pass can come.
WORKER_TTL = 25
#: Retries of a Redis command while Redis is unreachable: pauses doubling from 0.1 s up to 2 s,
#: 35 of them, about a minute in all (then the command fails as before).
REDIS_RETRY = Retry(ExponentialBackoff(cap=2.0, base=0.05), 35)
#: Seconds a connection to Redis may take: a lost host (which answers nothing, not even a refusal)
#: would otherwise hold each try for the kernel's two minutes of SYN retries. Commands time out
#: after RQ's socket timeout (`WORKER_TTL` − 15 + 10 s: longer than its blocking dequeue).
REDIS_CONNECT_TIMEOUT = 5.0


class TrainingWorker(Worker):
    """An RQ `Worker` that runs training jobs only, and whose job heartbeats expire in seconds."""

    def execute_job(self, job: Job, queue: Queue) -> None:
        """Run `job` in a work horse if it is a training job of ours, else fail it unrun."""
        reason = refusal(job)
        if reason is None:
            super().execute_job(job, queue)
        else:
            self.refuse(job, queue, reason)

    def refuse(self, job: Job, queue: Queue, reason: str) -> None:
        """Fail `job` without running anything of it: no fork, no import, no callback, no retry."""
        self.log.error("Worker %s: job %s %s", self.name, job.id, reason)
        # RQ's bookkeeping of a job that raised, minus all that reads the job's payload or acts on
        # its requests: failing a job sends its "failed" webhooks, and a retry would bring it back.
        job.webhooks = []
        job.retries_left = 0
        job.meta = {"error": reason}  # a foreign meta may not even serialize: ours replaces it
        job.save_meta()
        self.connection.lrem(queue.intermediate_queue_key, 0, job.id)
        job.ended_at = now()
        self.handle_job_failure(job, queue, exc_string=reason)

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, Queue] | None:
        """Return the next job and its queue (None when idle); a job RQ cannot read is dropped."""
        while True:
            try:
                return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
            except redis.RedisError:
                raise
            except Exception as exc:
                # RQ tags an unreadable job's error with its id and queue, then lets it stop the
                # worker: a damaged hash in Redis would stop every worker that dequeues it.
                job_id, queue = getattr(exc, "job_id", None), getattr(exc, "queue", None)
                if not isinstance(job_id, str) or not isinstance(queue, Queue):
                    raise
                self.log.error(  # %r: the message may quote the hash's bytes, newlines included
                    "Worker %s: job %s refused: RQ cannot read it (%s: %.200r)",
                    self.name, job_id, type(exc).__name__, str(exc),
                )  # fmt: skip
                # Out of the intermediate list too, or each maintenance pass would trip on it.
                self.connection.lrem(queue.intermediate_queue_key, 0, job_id)

    def run_maintenance_tasks(self) -> None:
        """Run RQ's maintenance; an error other than Redis's is logged, and the worker goes on."""
        try:
            super().run_maintenance_tasks()
        except redis.RedisError:
            raise
        except Exception:
            # RQ's registry cleaning reads every job it lists: one it cannot read would otherwise
            # stop the worker at every pass.
            self.log.exception(
                "Worker %s: maintenance failed, next pass in %d s", self.name, self.maintenance_interval
            )
            self.last_cleaned_at = now()  # type: ignore[assignment]  # RQ's own hint says None only

    def get_heartbeat_ttl(self, job: Job) -> int:
        """Return how long the job's heartbeat stays valid (see the module docstring)."""
        return self.job_monitoring_interval + HEARTBEAT_GRACE

    def setup_work_horse_signals(self) -> None:
        """In the horse: SIGTERM asks the running job to checkpoint and requeue itself."""
        super().setup_work_horse_signals()
        signal.signal(signal.SIGTERM, lambda signum, frame: tasks.SHUTDOWN.set())

    def handle_warm_shutdown_request(self) -> None:
        """In the worker: on shutdown, tell the horse at once instead of waiting for its job."""
        super().handle_warm_shutdown_request()
        if self.horse_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.horse_pid, signal.SIGTERM)


def make_worker(settings: Settings, conn: redis.Redis, name: str | None = None) -> TrainingWorker:
    """Return a training worker on `settings.queue` using the JSON serializer."""
    queue = Queue(settings.queue, connection=conn, serializer=JSONSerializer)
    return TrainingWorker(
        [queue],
        connection=conn,
        name=name,
        serializer=JSONSerializer,
        job_monitoring_interval=MONITORING_INTERVAL,
        maintenance_interval=MAINTENANCE_INTERVAL,
        worker_ttl=WORKER_TTL,
    )


def main() -> None:
    """Run one worker until SIGTERM/SIGINT (warm shutdown: the current job finishes)."""
    settings = Settings.from_env()
    # logging knows level names in upper case only; gunicorn takes them in lower case.
    level = settings.log_level.upper()
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(message)s")
    # What the work horses inherit: `python -m worker` set it before NumPy loaded.
    log.info(
        "BLAS: %s thread(s) per job (%s=%s, OPENBLAS_NUM_THREADS=%s)",
        blas.in_use() or "?",
        Settings.variable("blas_threads"),
        settings.blas_threads or "automatic",
        os.environ.get("OPENBLAS_NUM_THREADS", "unset"),
    )
    conn = connect(settings.redis_url, retry=REDIS_RETRY, socket_connect_timeout=REDIS_CONNECT_TIMEOUT)
    worker = make_worker(settings, conn, name=settings.worker_name)
    worker.work(logging_level=level)
