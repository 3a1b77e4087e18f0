"""Prometheus metrics of the prediction service: images classified, versions served, model loads, recording.

The HTTP metrics and the /metrics rendering are `services.web.metrics`'s; these are counted where
the work happens, with no Flask in sight. Under gunicorn, `PROMETHEUS_MULTIPROC_DIR` must be set
before prometheus_client is imported (services/gunicorn_conf.py sets it first).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

IMAGES = Counter("mnist_images_predicted_total", "Images classified, by model", ["model"])
MODEL_VERSION = Gauge(
    "mnist_model_version_served",
    "Version each process serves by default for a model (0 = none loaded)",
    ["model"],
    multiprocess_mode="liveall",
)
RELOADS = Counter(
    "mnist_model_reloads_total", "Model loads by outcome (ok, corrupt, error)", ["model", "outcome"]
)
RELOAD_SECONDS = Histogram(
    "mnist_model_reload_duration_seconds",
    "Time to fetch, verify, parse and warm up a model version, in seconds",
    ["model"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
LOGGED = Counter(
    "mnist_predictions_logged_total",
    "Entries written to the prediction log, by model and kind",
    ["model", "kind"],
)
DROPPED = Counter(
    "mnist_recorder_dropped_total",
    "Images not recorded (log, drift profile, shadow), by reason: queue_full (still counted in their"
    " version's requests) or redis (unreachable)",
    ["reason"],
)
SHADOWED = Counter(
    "mnist_shadow_images_total", "Images a shadow version answered off the request path, by model", ["model"]
)
FEEDBACK_UNKNOWN = Counter(
    "mnist_feedback_unknown_total",
    "Feedback labels naming a request id not in the log's index (never logged, or expired), by model",
    ["model"],
)

_children: dict[tuple[MetricWrapperBase, tuple[str, ...]], Any] = {}


def child(metric: MetricWrapperBase, *labels: str) -> Any:
    """Return `metric.labels(*labels)`, kept: labels() validates and locks on every call.

    Label values are bounded (route templates, methods, statuses, the names of models that
    answered), and so is this dict.
    """
    key = (metric, labels)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(*labels)
    return found
