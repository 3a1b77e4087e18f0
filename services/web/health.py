"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

import redis
from flask import Response, current_app
from marshmallow import Schema, fields

from services.web import metrics
from services.web.blueprint import Blueprint
from services.web.context import services
from shared.monitor import every_version

#: Key of the monitor's gauges (metrics.MonitorCollector) in `app.extensions`.
MONITOR_EXTENSION = "mnist.monitor_metrics"

blp = Blueprint("health", __name__, description="Health checks and metrics")


class HealthSchema(Schema):
    status = fields.String(metadata={"description": "ok"})


class ReadySchema(Schema):
    ready = fields.Boolean()
    reason = fields.String(allow_none=True, metadata={"description": "why not ready, or what is degraded"})
    redis = fields.Boolean(metadata={"description": "Redis answered a PING"})
    models = fields.Dict(metadata={"description": "models held in memory and their last load errors"})


def redis_ok() -> bool:
    """Return True when Redis answers a PING within a fraction of a second (its own connection)."""
    try:
        return bool(services().probe.ping())
    except (redis.RedisError, OSError):
        return False


def readiness() -> dict[str, Any]:
    """Return readiness: ready when Redis answers or at least one model is loaded, and why not."""
    status = services().predictions.status()
    up = redis_ok()
    loaded = any(m.get("version") for m in status.values())
    problems = [f"{name}: {m['error']}" for name, m in status.items() if m.get("error")]
    reason = None
    if not up and not loaded:
        reason = "Redis does not answer and no model is loaded"
    elif not up:
        reason = "Redis does not answer: serving the models held in memory"
    elif problems:
        reason = "; ".join(problems)
    return {"ready": up or loaded, "reason": reason, "redis": up, "models": status}


@blp.route("/healthz")
@blp.response(200, HealthSchema)
def healthz() -> dict[str, str]:
    """Report that the process is alive (no dependency is checked)."""
    return {"status": "ok"}


@blp.route("/readyz")
@blp.response(200, ReadySchema)
@blp.alt_response(503, schema=ReadySchema, description="not ready, with the reason")
def readyz() -> Any:
    """Report whether the service can answer: Redis reachable or a model in memory."""
    body = readiness()
    return body, (200 if body["ready"] else 503)


@blp.route("/metrics")
@blp.response(200, description="Prometheus text exposition format")
def prometheus() -> Response:
    """Return the Prometheus metrics of every gunicorn worker of this server."""
    svc = services()
    monitor = current_app.extensions.get(MONITOR_EXTENSION)
    if monitor is None:  # one per app, made on first use: it keeps its rows between scrapes
        threshold = svc.settings.drift_threshold
        monitor = metrics.MonitorCollector(lambda: every_version(svc.registry, threshold))
        current_app.extensions[MONITOR_EXTENSION] = monitor
    # Job counts are the API's: a predictor reads the registry only (its Redis user may do no more).
    return metrics.render(dict if svc.settings.role == "predictor" else svc.jobs.counts, monitor)
