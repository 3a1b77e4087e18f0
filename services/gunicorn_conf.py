"""gunicorn settings of the HTTP service: `gunicorn -c services/gunicorn_conf.py 'services.app:create_app()'`.

gthread workers: each process serves several requests at once (Server-Sent Events streams
hold a thread, not a process), and each process holds its own model cache and watcher thread.
The app is built after the fork (no preload), so watcher threads start in every worker.
"""

from __future__ import annotations

import os
import shutil
import tempfile

# One BLAS thread per worker process: requests run in parallel across processes and threads,
# and a one-image forward takes ~70 µs single-threaded against ~165 µs with OpenBLAS's threads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# Prometheus' multiprocess mode must be chosen before prometheus_client is imported anywhere.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="mnist-prometheus-")

#: Address to listen on.
bind = os.environ.get("MNIST_BIND", "0.0.0.0:8000")
#: Worker processes (gunicorn's WEB_CONCURRENCY convention).
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
#: Threads per worker process.
threads = int(os.environ.get("MNIST_THREADS", "8"))
#: Seconds a request may take before its worker is restarted.
timeout = int(os.environ.get("MNIST_REQUEST_TIMEOUT", "120"))
#: Seconds workers get to finish their requests on shutdown.
graceful_timeout = 20
#: Seconds an idle keep-alive connection stays open.
keepalive = 5
#: gunicorn's control socket lives at one fixed path per user: several servers on one host
#: (tests, `mnist up` beside a compose stack) would fight over it, and nothing here uses it.
control_socket_disable = True
accesslog = os.environ.get("MNIST_ACCESS_LOG") or None
errorlog = "-"
loglevel = os.environ.get("MNIST_LOG_LEVEL", "info").lower()


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
