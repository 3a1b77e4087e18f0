"""v1 predictions: ``POST /v1/models/<m>:predict``, ``…/versions/<v>:predict``, ``…/labels/<alias>:predict``.

Bodies are read with orjson and NumPy, never through marshmallow: a batch of 10,000 images is
7.8 million numbers. The schemas below only document the routes in OpenAPI. The answer is JSON,
or with `Accept: application/x-npy` the probabilities as a float32 (N, 10) .npy file, the model
and version in the Mnist-Model and Mnist-Model-Version headers.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson
from flask import Response, request
from marshmallow import Schema, fields, validate

from services.predictor import decode
from services.serving.service import Prediction
from services.web.auth import PREDICT_SECURITY, check_predict_token
from services.web.blueprint import Blueprint, documented_only
from services.web.bodies import request_body
from services.web.context import services
from services.web.errors import error_docs
from services.web.request_ids import echo, request_id
from services.web.routing import routing_key
from shared import mlp
from shared.errors import InvalidInput, UnsupportedMediaType

blp = Blueprint(
    "predict_v1", __name__, description="Predictions: JSON, raw uint8 or .npy batches of 28×28 digits"
)

#: Fields a JSON prediction body may hold.
JSON_FIELDS = ("instances", "pixel_range", "top_k")
#: Content types read as .npy files.
NPY_TYPES = ("application/x-npy", "application/npy")
#: Media types of the answer, the default first (for `Accept: */*` or no Accept header).
ANSWER_TYPES = ("application/json", *NPY_TYPES)
#: Headers of an .npy answer: the model and the version that answered.
MODEL_HEADER, VERSION_HEADER = "Mnist-Model", "Mnist-Model-Version"


class PredictRequestSchema(Schema):
    instances = fields.List(
        fields.List(fields.Float()),
        required=True,
        metadata={"description": "images: lists of 784 pixel values, row-major (or 28 lists of 28)"},
    )
    pixel_range = fields.String(
        validate=validate.OneOf(decode.PIXEL_RANGES),
        metadata={"description": "uint8 (default): pixels are 0–255; unit: already divided by 255 (0–1)"},
    )
    top_k = fields.Integer(
        validate=validate.Range(1, mlp.CLASSES),
        metadata={"description": "also return the k most probable labels of each image"},
    )


class TopKSchema(Schema):
    label = fields.Integer()
    probability = fields.Float()


class PredictionSchema(Schema):
    label = fields.Integer(metadata={"description": "the most probable digit"})
    probabilities = fields.List(fields.Float(), metadata={"description": "P(digit) for digits 0–9"})
    top_k = fields.List(
        fields.Nested(TopKSchema),
        metadata={"description": "with top_k: the k best labels, most probable first"},
    )


class PredictResponseSchema(Schema):
    model = fields.String()
    model_version = fields.Integer(metadata={"description": "the version that answered"})
    request_id = fields.String(
        metadata={"description": "the id of X-Request-Id; feedback names it (image i: <id>/<i>)"}
    )
    predictions = fields.List(fields.Nested(PredictionSchema))


REQUEST_BODY = {
    "required": True,
    "description": "N images, as JSON, raw bytes (N×784 uint8, row-major) or a .npy file",
    "content": {
        "application/json": {"schema": PredictRequestSchema},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "application/x-npy": {
            "schema": {
                "type": "string",
                "format": "binary",
                "description": "np.save output: uint8, int or float; shape (N, 784) or (N, 28, 28)",
            }
        },
    },
}
QUERY = [
    {
        "in": "query",
        "name": "top_k",
        "schema": {"type": "integer", "minimum": 1, "maximum": mlp.CLASSES},
        "description": "k best labels per image (raw and .npy bodies; a JSON body's field wins)",
    },
    {
        "in": "query",
        "name": "pixel_range",
        "schema": {"type": "string", "enum": list(decode.PIXEL_RANGES)},
        "description": "how to read float pixels of .npy bodies (raw bodies are always uint8)",
    },
]


#: Error answers of the predict routes, documented with the service's one error shape.
ERRORS = {
    400: "invalid body or options",
    401: "predict token missing (when MNIST_PREDICT_TOKEN is set)",
    403: "predict token wrong",
    404: "unknown model, version or alias",
    413: "body above MNIST_MAX_BODY_BYTES, batch above MNIST_MAX_BATCH, or JSON holding more values",
    415: "content type not JSON, octet-stream or x-npy",
    503: "the version is not in memory and cannot be loaded",
}


#: The answer: JSON, or the probabilities as .npy with `Accept: application/x-npy`.
ANSWER_DOC = {
    "200": {
        "description": "the predictions: JSON by default, .npy probabilities with Accept: application/x-npy",
        "content": {
            "application/json": {"schema": PredictResponseSchema},
            "application/x-npy": {
                "schema": {
                    "type": "string",
                    "format": "binary",
                    "description": "probabilities, float32 (N, 10); headers Mnist-Model, Mnist-Model-Version",
                }
            },
        },
    }
}


# Every answer of these routes, errors included, names its request id.
blp.after_request(echo)


#: The predict routes' OpenAPI description, without flask-smorest's wrappers on the hottest routes
#: (the views return finished Responses).
_documented = documented_only(
    blp.response(200, PredictResponseSchema),
    blp.doc(
        requestBody=REQUEST_BODY,
        parameters=QUERY,
        security=PREDICT_SECURITY,
        responses={**error_docs(ERRORS), **ANSWER_DOC},
    ),
)


@blp.route("/v1/models/<model>:predict", methods=["POST"])
@_documented
def predict(model: str) -> Response:
    """Classify images with the model's production version, else its latest."""
    return _predict(model)


@blp.route("/v1/models/<model>/versions/<int:version>:predict", methods=["POST"])
@_documented
def predict_version(model: str, version: int) -> Response:
    """Classify images with one version of the model."""
    return _predict(model, version=version)


@blp.route("/v1/models/<model>/labels/<alias>:predict", methods=["POST"])
@_documented
def predict_alias(model: str, alias: str) -> Response:
    """Classify images with the version an alias names (e.g. production, staging)."""
    return _predict(model, alias=alias)


def _predict(model: str, version: int | None = None, alias: str | None = None) -> Response:
    svc = services()
    check_predict_token(svc.settings)
    pixels, top_k = read_body(svc.settings.max_batch, svc.settings.max_body_bytes)
    npy_answer = wants_npy()
    if npy_answer and top_k is not None:
        raise InvalidInput("top_k applies to JSON answers: an .npy answer holds every probability")
    answer = svc.predictions.predict(
        model, pixels, version=version, alias=alias, routing_key=routing_key(), request_id=request_id()
    )
    if npy_answer:
        return render_npy(answer)
    return Response(render(answer, top_k), content_type="application/json")


def wants_npy() -> bool:
    """Return True if the request's Accept header prefers an .npy answer to JSON."""
    accept = request.environ.get("HTTP_ACCEPT", "")
    # Most clients send no Accept or */*: the header is parsed only when it names npy.
    return "npy" in accept and request.accept_mimetypes.best_match(ANSWER_TYPES) in NPY_TYPES


def read_body(max_batch: int, max_body_bytes: int) -> tuple[np.ndarray, int | None]:
    """Return the request's images as scaled rows, and top_k; 4xx errors for anything else."""
    body = request_body(limit=max_body_bytes)
    # The raw headers, not request.mimetype or request.args: only the media type matters, its
    # options need no parse, and most requests have no query string.
    environ = request.environ
    mimetype = environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower()
    query = request.args if environ.get("QUERY_STRING") else {}
    if not mimetype or mimetype == "application/json" or mimetype.endswith("+json"):
        fast = decode.fast_instances(body, max_batch)
        data = fast if fast is not None else decode.load_json(body, limits=decode.json_limits(max_batch))
        unknown = sorted(set(data) - set(JSON_FIELDS))
        if unknown:
            raise InvalidInput(f"unknown fields {unknown}: a prediction body has {list(JSON_FIELDS)}")
        if "instances" not in data:
            raise InvalidInput('the body needs "instances": a list of images of 784 pixel values')
        prange = decode.pixel_range(data.get("pixel_range", query.get("pixel_range")))
        top_k = check_top_k(data["top_k"]) if "top_k" in data else _query_top_k(query)
        if fast is not None:  # its batch is checked
            return decode.scale(fast["instances"], prange, "instances", finite=True), top_k
        return decode.from_numbers(data["instances"], body, prange, max_batch), top_k
    if mimetype == "application/octet-stream":
        if decode.pixel_range(query.get("pixel_range")) != "uint8":
            raise InvalidInput("raw bodies are uint8 pixels (0–255): pixel_range 'unit' does not apply")
        return decode.from_raw(body, max_batch), _query_top_k(query)
    if mimetype in NPY_TYPES:
        prange = decode.pixel_range(query.get("pixel_range"))
        return decode.from_npy(body, prange, max_batch), _query_top_k(query)
    raise UnsupportedMediaType(
        f"cannot read {mimetype!r}: send application/json, application/octet-stream or application/x-npy"
    )


def check_top_k(value: Any) -> int:
    """Return `value` if it is a whole number of labels 1–10, else raise InvalidInput."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= mlp.CLASSES:
        raise InvalidInput(f"top_k must be an integer from 1 to {mlp.CLASSES}, got {decode.shown(value)}")
    return value


def _query_top_k(query: Mapping[str, str]) -> int | None:
    raw = query.get("top_k")
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        shown = decode.shown(raw)
        raise InvalidInput(f"top_k must be an integer from 1 to {mlp.CLASSES}, got {shown}") from None
    return check_top_k(value)


def render_npy(answer: Prediction) -> Response:
    """Return the probabilities (N, 10) as a float32 .npy file; the model and version in headers."""
    buf = io.BytesIO()
    np.save(buf, answer.probabilities.astype(np.float32, copy=False), allow_pickle=False)
    response = Response(buf.getvalue(), mimetype="application/x-npy")
    response.headers[MODEL_HEADER] = answer.model
    response.headers[VERSION_HEADER] = str(answer.version)
    return response


def render(answer: Prediction, top_k: int | None) -> bytes:
    """Return the JSON response: a label and 10 probabilities per image (and the top k when asked)."""
    probs = answer.probabilities
    labels = answer.labels.tolist()
    if top_k is None:
        # orjson writes each float32 row straight from the array, at its shortest exact repr.
        predictions = [{"label": lab, "probabilities": row} for lab, row in zip(labels, probs, strict=True)]
    else:
        order = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
        best = np.take_along_axis(probs, order, axis=1)
        predictions = [
            {
                "label": lab,
                "probabilities": row,
                "top_k": [{"label": k, "probability": p} for k, p in zip(ks, ps, strict=True)],
            }
            for lab, row, ks, ps in zip(labels, probs, order.tolist(), best, strict=True)
        ]
    payload = {
        "model": answer.model,
        "model_version": answer.version,
        "request_id": answer.request_id,
        "predictions": predictions,
    }
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
