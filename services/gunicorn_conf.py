"""gunicorn settings of the HTTP service: `gunicorn -c services/gunicorn_conf.py 'services.app:create_app()'`.

gthread workers: each process serves several requests at once (Server-Sent Events streams
hold a thread, not a process), and each process holds its own model cache and watcher thread.
By default (MNIST_WEB_WORKER=inline, services/inline_worker.py), a whole, small, un-pinned
prediction is answered on the event loop's own thread, without gthread's two thread hand-offs
per request; MNIST_WEB_WORKER=gthread is gunicorn's own worker unchanged.
The app is built after the fork (no preload), so watcher threads start in every worker.
"""

from __future__ import annotations

import gc
import os
import shutil
import tempfile

# Standard library only: nothing here may load NumPy or prometheus_client before the two
# variables below are set.
from shared.config import Settings

# One BLAS thread per worker process: requests run in parallel across processes and threads,
# and a one-image forward takes ~70 µs single-threaded against ~165 µs with OpenBLAS's threads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# Prometheus' multiprocess mode must be chosen before prometheus_client is imported anywhere.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="mnist-prometheus-")

_settings = Settings.from_env()

#: Address to listen on (MNIST_BIND).
bind = _settings.bind
#: Worker processes (WEB_CONCURRENCY, gunicorn's convention).
workers = _settings.web_workers
#: gunicorn's gthread, or the same serving whole small predictions inline (MNIST_WEB_WORKER).
WORKERS = {"gthread": "gthread", "inline": "services.inline_worker.InlineThreadWorker"}
if _settings.web_worker not in WORKERS:
    raise ValueError(f"MNIST_WEB_WORKER={_settings.web_worker!r}: expected one of {sorted(WORKERS)}")
worker_class = WORKERS[_settings.web_worker]
#: Threads per worker process (MNIST_THREADS).
threads = _settings.web_threads
#: Seconds a request may take before its worker is restarted (MNIST_REQUEST_TIMEOUT).
timeout = _settings.request_timeout
#: Seconds workers get to finish their requests on shutdown.
graceful_timeout = 20
#: Seconds an idle keep-alive connection stays open.
keepalive = 5
#: gunicorn's control socket lives at one fixed path per user: several servers on one host
#: (tests, `mnist up` beside a compose stack) would fight over it, and nothing here uses it.
control_socket_disable = True
#: File of the access log, "-" for stdout, None for none (MNIST_ACCESS_LOG).
accesslog = _settings.access_log
errorlog = "-"
#: gunicorn's log level, in lower case (MNIST_LOG_LEVEL).
loglevel = _settings.log_level.lower()


def on_starting(server) -> None:
    """Start with an empty metrics directory: samples of a previous run must not count."""
    path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    if os.path.isdir(path):
        for entry in os.listdir(path):
            full = os.path.join(path, entry)
            shutil.rmtree(full) if os.path.isdir(full) else os.remove(full)
    else:
        os.makedirs(path)


def child_exit(server, worker) -> None:
    """Drop a dead worker's live gauges from the merged metrics."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker) -> None:
    """Freeze what the worker built at start-up out of the garbage collector's reach.

    The app, its imports and the models loaded at start are tens of thousands of objects, all of
    them long-lived; each full collection walked them again, 19–32 ms during which the process
    answered nothing (the p99.9 of a one-image prediction was 25–35 ms instead of 2–3 ms; with
    them frozen, a full collection takes 0.4 ms: docs/benchmarks.md, issue 17).
    """
    gc.collect()
    gc.freeze()


def worker_exit(server, worker) -> None:
    """Write what the worker's recorder still queues before the worker exits (a graceful stop)."""
    app = getattr(worker, "wsgi", None)
    services = getattr(app, "extensions", {}).get("mnist")
    if services is not None:
        services.predictions.recorder.stop()
