"""Watching a model live: its prediction log, what each version did (monitor), its shadow version.

The log and the counters are written by the predictors' recorders (services/serving/recorder.py);
feedback labels arrive through the predictor's `POST /v1/models/<m>/feedback`.
"""

from __future__ import annotations

from typing import Any

from flask import Response
from marshmallow import RAISE, Schema, fields, validate

from services.web.auth import read_access, write_access
from services.web.blueprint import VALIDATION_STATUS, Blueprint, json_response
from services.web.context import services
from shared import shadow as shadows
from shared.errors import ShadowNotFound
from shared.monitor import CLASSES, monitor
from shared.prediction_log import MAX_LIMIT, PredictionLog
from shared.registry import check_name

blp = Blueprint(
    "monitor", __name__, url_prefix="/v1/models", description="Watching a model live: log, monitor, shadow"
)


# --- schemas (the routes' arguments; the answers are documented with them) ----------------------
class PredictionsQuerySchema(Schema):
    version = fields.Integer(validate=validate.Range(min=1), metadata={"description": "only this version's"})
    since = fields.Integer(
        validate=validate.Range(min=0), metadata={"description": "from this Unix time, in ms (included)"}
    )
    until = fields.Integer(
        validate=validate.Range(min=0), metadata={"description": "up to this Unix time, in ms (included)"}
    )
    before = fields.String(metadata={"description": "the `next` of a previous page: older entries only"})
    limit = fields.Integer(load_default=100, validate=validate.Range(1, MAX_LIMIT))
    pixels = fields.Boolean(load_default=False, metadata={"description": "include the 784 pixels (0–255)"})


class LoggedSchema(Schema):
    entry = fields.String(metadata={"description": "the stream entry id (its milliseconds are `time`)"})
    request_id = fields.String(metadata={"description": "the request's id (image i of a batch: <id>/<i>)"})
    time = fields.Integer(metadata={"description": "Unix time in ms"})
    version = fields.Integer()
    kind = fields.String(metadata={"description": "live (the answer served) or shadow (never returned)"})
    label = fields.Integer()
    probabilities = fields.List(fields.Float())
    pixels = fields.List(fields.Integer(), metadata={"description": "with ?pixels=true"})


class PredictionLogSchema(Schema):
    model = fields.String()
    predictions = fields.List(fields.Nested(LoggedSchema), metadata={"description": "newest first"})
    next = fields.String(allow_none=True, metadata={"description": "pass as ?before= for older entries"})


class ShadowBodySchema(Schema):
    class Meta:
        unknown = RAISE

    version = fields.Integer(required=True, strict=True, validate=validate.Range(min=1))
    sample = fields.Float(
        load_default=1.0,
        validate=validate.Range(0, 1),
        metadata={"description": "share of live images the shadow also answers (default 1: all)"},
    )


class ShadowSchema(Schema):
    model = fields.String()
    version = fields.Integer()
    sample = fields.Float()


class DriftSchema(Schema):
    score = fields.Float(metadata={"description": "the largest PSI of the features"})
    features = fields.Dict(keys=fields.String(), values=fields.Float(), metadata={"description": "PSI each"})
    threshold = fields.Float(metadata={"description": "MNIST_DRIFT_THRESHOLD"})
    drifted = fields.Boolean()


class ShadowStatsSchema(Schema):
    compared = fields.Integer()
    agreement = fields.Float(metadata={"description": "share of compared images given the served label"})


class FeedbackTotalSchema(Schema):
    feedback = fields.Integer(metadata={"description": "labels counted since the version first served"})
    online_accuracy = fields.Float(allow_none=True)
    confusion = fields.List(
        fields.List(fields.Integer()), metadata={"description": f"{CLASSES}×{CLASSES}, [true][predicted]"}
    )


class VersionMonitorSchema(Schema):
    requests = fields.Integer(metadata={"description": "images answered (live)"})
    feedback = fields.Integer(metadata={"description": "feedback labels in the window (the last W/2 to W)"})
    online_accuracy = fields.Float(allow_none=True, metadata={"description": "over the window's labels"})
    confusion = fields.List(
        fields.List(fields.Integer()),
        metadata={"description": f"the window's, {CLASSES}×{CLASSES}, [true][predicted]"},
    )
    total = fields.Nested(FeedbackTotalSchema, metadata={"description": "the same since it first served"})
    shadow = fields.Nested(ShadowStatsSchema, allow_none=True, metadata={"description": "as a shadow"})
    drift = fields.Nested(DriftSchema, allow_none=True, metadata={"description": "null: no reference yet"})


class MonitorSchema(Schema):
    model = fields.String()
    window = fields.Integer(metadata={"description": "MNIST_FEEDBACK_WINDOW: labels a window holds at most"})
    shadow = fields.Nested(ShadowSchema, allow_none=True)
    versions = fields.Dict(keys=fields.String(), values=fields.Nested(VersionMonitorSchema))


# --- routes ---------------------------------------------------------------------------------------
@blp.route("/<model>/predictions", methods=["GET"])
@read_access(blp)
@blp.arguments(PredictionsQuerySchema, location="query", error_status_code=VALIDATION_STATUS)
@blp.response(200, PredictionLogSchema)
@blp.alt_response(400, response="BAD_REQUEST")
@blp.alt_response(404, response="NOT_FOUND")
def predictions(query: dict[str, Any], model: str) -> Response:
    """Read the model's prediction log, newest first, by version and time (MNIST_LOG_SAMPLE of them)."""
    ctx = services()
    ctx.registry.require_model(check_name(model))
    log = PredictionLog(ctx.redis, ctx.keys, ctx.settings.log_maxlen)
    return json_response(log.read(model, **query))


@blp.route("/<model>/monitor", methods=["GET"])
@read_access(blp)
@blp.response(200, MonitorSchema)
@blp.alt_response(404, response="NOT_FOUND")
def get_monitor(model: str) -> Response:
    """Return each version's requests, rolling online accuracy and confusion, shadow agreement and drift."""
    ctx = services()
    report = monitor(ctx.registry, model, ctx.settings.drift_threshold)
    found = shadows.read(ctx.registry, model)
    shadow = found.to_dict() if found else None
    window = ctx.settings.feedback_window
    return json_response({"model": model, "window": window, "shadow": shadow, "versions": report["versions"]})


@blp.route("/<model>/shadow", methods=["PUT"])
@write_access(blp)
@blp.arguments(ShadowBodySchema, error_status_code=VALIDATION_STATUS)
@blp.response(200, ShadowSchema)
@blp.alt_response(400, response="BAD_REQUEST")
@blp.alt_response(404, response="NOT_FOUND", description="no such model or version")
@blp.alt_response(415, response="UNSUPPORTED_MEDIA_TYPE")
def set_shadow(body: dict[str, Any], model: str) -> dict[str, Any]:
    """Make a version the model's shadow: it answers a sample of live images off the request path."""
    shadow = shadows.set_shadow(services().registry, model, body["version"], body["sample"])
    return {"model": model, **shadow.to_dict()}


@blp.route("/<model>/shadow", methods=["DELETE"])
@write_access(blp)
@blp.response(204)
@blp.alt_response(404, response="NOT_FOUND", description="the model has no shadow")
def delete_shadow(model: str) -> None:
    """Stop shadowing: the model's shadow version answers nothing more."""
    if not shadows.clear_shadow(services().registry, model):
        raise ShadowNotFound(f"model {model!r} has no shadow version")
