"""HTTP metrics and the /metrics response, correct under several gunicorn worker processes.

The prediction service's own metrics (images, versions served, loads) are in
`services.serving.metrics`; /metrics renders both.

With `PROMETHEUS_MULTIPROC_DIR` set (gunicorn_conf.py and `mnist up` set it), each process
writes its samples to files there and `/metrics` merges them; without it (tests with
`app.test_client()`), the default in-process registry is used. The environment variable must
be set before this module is imported, which is why gunicorn's config sets it first.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from services.serving.metrics import child

log = logging.getLogger(__name__)

#: Seconds the monitor's gauges are kept between two reads of Redis (per process), failures too.
MONITOR_CACHE_SECONDS = 5.0
#: The monitor's gauges: (name, help, the report's value that each shows).
MONITOR_GAUGES: tuple[tuple[str, str, Callable[[dict[str, Any]], float | None]], ...] = (
    (
        "mnist_online_accuracy",
        "Share of the version's last MNIST_FEEDBACK_WINDOW feedback labels it predicted right (no sample"
        " before its first label)",
        lambda r: r["online_accuracy"],
    ),
    (
        "mnist_drift_score",
        "Largest PSI of the version's live images against its training set (none without a reference)",
        lambda r: r["drift"]["score"] if r["drift"] else None,
    ),
    (
        "mnist_shadow_agreement",
        "Share of the images a shadow version answered with the served label (none before it ran)",
        lambda r: r["shadow"]["agreement"] if r["shadow"] else None,
    ),
)

REQUESTS = Counter(
    "mnist_http_requests_total", "HTTP requests by route, method and status", ["route", "method", "status"]
)
LATENCY = Histogram(
    "mnist_http_request_duration_seconds",
    "HTTP request latency by route and method, in seconds",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


class JobsCollector(Collector):
    """Counts training jobs by state at scrape time, from Redis (one process answers, no files)."""

    def __init__(self, count_jobs) -> None:  # count_jobs: () -> dict[str, int]
        self.count_jobs = count_jobs

    def collect(self) -> Iterable[GaugeMetricFamily]:
        """Yield the mnist_jobs gauge; nothing when Redis does not answer."""
        try:
            counts = self.count_jobs()
        except Exception:  # a scrape must not fail because Redis is away
            return
        family = GaugeMetricFamily("mnist_jobs", "Training jobs by state", labels=["state"])
        for state, n in sorted(counts.items()):
            family.add_metric([state], n)
        yield family


class MonitorCollector(Collector):
    """The monitor's gauges per model and version, read from Redis at most every MONITOR_CACHE_SECONDS.

    A scrape then costs one read of the counters every few seconds, however often it comes, and a
    Redis that does not answer is asked again only after as long (the scrape shows no gauges).
    """

    def __init__(self, read: Callable[[], list[tuple[str, str, dict[str, Any]]]]) -> None:
        self.read = read
        self._lock = threading.Lock()
        self._rows: list[tuple[str, str, dict[str, Any]]] = []
        self._read_at = -MONITOR_CACHE_SECONDS

    def rows(self) -> list[tuple[str, str, dict[str, Any]]]:
        """Return the (model, version, report) rows, read again when the cached ones are old."""
        with self._lock:  # one scrape reads; the others wait for it and take its rows
            if time.monotonic() - self._read_at >= MONITOR_CACHE_SECONDS:
                try:
                    self._rows = self.read()
                except Exception as exc:  # a scrape must not fail because Redis is away
                    log.warning("metrics: the monitor's gauges cannot be read (%s)", exc)
                    self._rows = []
                self._read_at = time.monotonic()
            return self._rows

    def collect(self) -> Iterable[GaugeMetricFamily]:
        """Yield the three gauges, a sample per version that has a value."""
        rows = self.rows()
        for name, documentation, value in MONITOR_GAUGES:
            family = GaugeMetricFamily(name, documentation, labels=["model", "version"])
            for model, version, report in rows:
                shown = value(report)
                if shown is not None:
                    family.add_metric([model, version], shown)
            yield family


def multiprocess_dir() -> str | None:
    """Return the multiprocess directory when running under several processes."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def render(count_jobs, monitor: MonitorCollector | None = None) -> Response:
    """Return the /metrics response: this process's or all processes' samples, job counts, the monitor's."""
    if multiprocess_dir():
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)
        body = generate_latest(merged)
    else:
        body = generate_latest(REGISTRY)
    jobs = CollectorRegistry()
    jobs.register(JobsCollector(count_jobs))
    if monitor is not None:
        jobs.register(monitor)
    return Response(body + generate_latest(jobs), mimetype=CONTENT_TYPE_LATEST)


def install(app: Flask) -> None:
    """Time every request and count it by route template (not raw path: bounded label values)."""

    @app.before_request
    def _start() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def _record(response: Response) -> Response:
        route = request.url_rule.rule if request.url_rule is not None else "<unmatched>"
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        method = request.method
        child(REQUESTS, route, method, str(response.status_code)).inc()
        child(LATENCY, route, method).observe(elapsed)
        return response
