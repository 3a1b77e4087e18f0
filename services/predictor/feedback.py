"""Feedback: ``POST /v1/models/<m>/feedback`` with the true labels of logged requests.

It takes the predict token, as predictions do: whoever sent a request may say what it was. Each
request id counts once (shared/feedback.py); ids the log no longer (or never) held are counted as
unknown, in the answer and in `mnist_feedback_unknown_total`.
"""

from __future__ import annotations

from typing import Any

from flask import Response
from marshmallow import Schema, fields, validate

from services.serving.metrics import FEEDBACK_UNKNOWN, child
from services.web.auth import PREDICT_SECURITY, check_predict_token
from services.web.blueprint import Blueprint, json_response
from services.web.bodies import json_object
from services.web.context import services
from services.web.errors import error_docs
from shared.errors import InvalidInput
from shared.feedback import MAX_LABELS, Feedback
from shared.registry import check_name

blp = Blueprint("feedback", __name__, description="Feedback: the true labels of logged predictions")


class FeedbackLabelSchema(Schema):
    request_id = fields.String(
        required=True, metadata={"description": "a logged request's id (image i of a batch: <id>/<i>)"}
    )
    label = fields.Integer(required=True, validate=validate.Range(0, 9), metadata={"description": "true"})


class FeedbackBodySchema(Schema):
    labels = fields.List(
        fields.Nested(FeedbackLabelSchema), required=True, validate=validate.Length(1, MAX_LABELS)
    )


class FeedbackAnswerSchema(Schema):
    accepted = fields.Integer(metadata={"description": "labels counted against the version that answered"})
    # `unknown` would hide marshmallow's own Schema.unknown: the field is named through data_key.
    unknown_ids = fields.Integer(
        data_key="unknown", metadata={"description": "ids not in the log (never logged, or expired)"}
    )
    repeated = fields.Integer(metadata={"description": "ids labelled before: the first label counts, once"})


ERRORS = {
    400: "not a list of 1–1000 {request_id, label 0–9}",
    401: "predict token missing (when MNIST_PREDICT_TOKEN is set)",
    403: "predict token wrong",
    404: "unknown model",
    413: "body too large",
    415: "not JSON",
}


def read_labels(body: Any) -> list[tuple[str, int]]:
    """Return the (request id, label) pairs of a feedback body; InvalidInput for any other shape.

    The count is checked before any label is looked at.
    """
    labels = body.get("labels") if isinstance(body, dict) else None
    if not isinstance(labels, list) or set(body) != {"labels"}:
        raise InvalidInput('the body is {"labels": [{"request_id": "…", "label": 3}, …]}')
    if not 1 <= len(labels) <= MAX_LABELS:
        raise InvalidInput(f"send from 1 to {MAX_LABELS} labels per call, got {len(labels)}")
    pairs = []
    for i, item in enumerate(labels):
        if not isinstance(item, dict) or set(item) != {"request_id", "label"}:
            raise InvalidInput(f'labels[{i}] must be {{"request_id": "…", "label": 0–9}}')
        pairs.append((item["request_id"], item["label"]))
    return pairs


@blp.route("/v1/models/<model>/feedback", methods=["POST"])
@blp.doc(
    requestBody={"required": True, "content": {"application/json": {"schema": FeedbackBodySchema}}},
    security=PREDICT_SECURITY,
    responses=error_docs(ERRORS),
)
@blp.response(200, FeedbackAnswerSchema)
def feedback(model: str) -> Response:
    """Give the true labels of logged requests: per-version online accuracy and confusion."""
    ctx = services()
    check_predict_token(ctx.settings)
    check_name(model)
    pairs = read_labels(json_object())
    ctx.registry.require_model(model)
    feedback = Feedback(ctx.redis, ctx.keys, ctx.settings.log_maxlen, window=ctx.settings.feedback_window)
    counted = feedback.add(model, pairs)
    if counted.unknown:
        child(FEEDBACK_UNKNOWN, model).inc(counted.unknown)
    payload = {"accepted": counted.accepted, "unknown": counted.unknown, "repeated": counted.repeated}
    return json_response(payload)
