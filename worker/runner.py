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
heartbeat that fails (and its job would fail with it).

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

from shared.config import Settings
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


class TrainingWorker(Worker):
    """An RQ `Worker` whose job heartbeats expire in seconds rather than a minute."""

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
    conn = redis.Redis.from_url(settings.redis_url, retry=REDIS_RETRY)
    worker = make_worker(settings, conn, name=settings.worker_name)
    worker.work(logging_level=level)
