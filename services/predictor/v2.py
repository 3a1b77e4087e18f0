"""The V2 inference protocol (KServe / Triton REST) with Triton's binary tensor data extension.

Standard V2 clients (``tritonclient.http``, KServe's) work unchanged. One model input,
``input`` [-1, 784] (or [-1, 28, 28]): UINT8 holds raw pixels 0–255; FP32/FP64 hold pixels
0–255 as floats too, unless the input's or the request's parameters say
``"pixel_range": "unit"`` (already divided by 255). Two outputs: ``probabilities`` FP32
[-1, 10] and ``label`` INT64 [-1].

Binary data: with the ``Inference-Header-Content-Length`` header the body is that many bytes of
JSON followed by the raw little-endian tensors of the inputs whose parameters give
``binary_data_size``. Outputs asked for with ``binary_data`` (or the request parameter
``binary_data_output``) come back the same way. Errors carry V2's ``error`` key beside the
service's usual ``code``/``status``/``message``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson
from flask import Response, request
from marshmallow import Schema, fields

from services.predictor import decode
from services.serving.service import Prediction
from services.web.auth import PREDICT_SECURITY, check_predict_token, read_access
from services.web.blueprint import Blueprint, documented_only, json_response
from services.web.bodies import request_body
from services.web.context import services
from services.web.errors import error_docs
from services.web.health import readiness
from services.web.request_ids import echo, request_id
from services.web.routing import routing_key
from shared import __version__ as VERSION
from shared import mlp
from shared.errors import InvalidInput, ServiceUnavailable

blp = Blueprint("predict_v2", __name__, description="V2 inference protocol (KServe / Triton), binary tensors")

#: Server name reported by GET /v2.
SERVER_NAME = "mnist-service"
#: Protocol extensions implemented (Triton's names).
EXTENSIONS = ["binary_tensor_data"]
#: Platform reported in model metadata.
PLATFORM = "numpy"
#: The model's one input.
INPUT_NAME = "input"
#: Input datatypes accepted, as little-endian NumPy types for binary data.
INPUT_TYPES: dict[str, np.dtype] = {
    "UINT8": np.dtype("<u1"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
#: Outputs by name: (datatype, little-endian NumPy type).
OUTPUT_TYPES: dict[str, tuple[str, np.dtype]] = {
    "probabilities": ("FP32", np.dtype("<f4")),
    "label": ("INT64", np.dtype("<i8")),
}
#: Fields of an inference request.
REQUEST_FIELDS = ("id", "parameters", "inputs", "outputs")
#: Header that splits a binary body into its JSON part and its tensors.
HEADER_LENGTH = "Inference-Header-Content-Length"
#: The same header's key in the WSGI environ.
HEADER_ENVIRON = "HTTP_" + HEADER_LENGTH.upper().replace("-", "_")

INPUTS_METADATA = [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, mlp.INPUT_SIZE]}]
OUTPUTS_METADATA = [
    {"name": "probabilities", "datatype": "FP32", "shape": [-1, mlp.CLASSES]},
    {"name": "label", "datatype": "INT64", "shape": [-1]},
]


# --- OpenAPI documentation only (bodies are read and written with orjson) -----------------------
class TensorSchema(Schema):
    name = fields.String(required=True)
    shape = fields.List(fields.Integer(), required=True)
    datatype = fields.String(required=True, metadata={"description": "UINT8, FP32 or FP64 (inputs)"})
    parameters = fields.Dict(metadata={"description": "binary_data_size, pixel_range (uint8 | unit)"})
    data = fields.List(fields.Raw(), metadata={"description": "row-major values, flat or nested"})


class RequestedOutputSchema(Schema):
    name = fields.String(required=True, metadata={"description": "probabilities or label"})
    parameters = fields.Dict(metadata={"description": "binary_data: bool"})


class InferRequestSchema(Schema):
    id = fields.String()
    parameters = fields.Dict(metadata={"description": "binary_data_output: bool, pixel_range"})
    inputs = fields.List(fields.Nested(TensorSchema), required=True)
    outputs = fields.List(fields.Nested(RequestedOutputSchema))


class InferResponseSchema(Schema):
    model_name = fields.String()
    model_version = fields.String()
    id = fields.String()
    outputs = fields.List(fields.Nested(TensorSchema))


class ServerMetadataSchema(Schema):
    name = fields.String()
    version = fields.String()
    extensions = fields.List(fields.String())


class ModelMetadataSchema(Schema):
    name = fields.String()
    versions = fields.List(fields.String())
    platform = fields.String()
    inputs = fields.List(fields.Dict())
    outputs = fields.List(fields.Dict())


class V2ReadySchema(Schema):
    ready = fields.Boolean()
    error = fields.String(metadata={"description": "why not ready"})


INFER_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": InferRequestSchema},
        "application/octet-stream": {
            "schema": {"type": "string", "format": "binary"},
            "description": f"binary tensor data: a JSON request of {HEADER_LENGTH} bytes, then the tensors",
        },
    },
}


# --- routes ---------------------------------------------------------------------------------------
@blp.route("/v2", methods=["GET"])
@blp.response(200, ServerMetadataSchema)
def server_metadata() -> Response:
    """Return the server's name, version and protocol extensions."""
    return json_response({"name": SERVER_NAME, "version": VERSION, "extensions": EXTENSIONS})


@blp.route("/v2/health/live", methods=["GET"])
@blp.response(200, V2ReadySchema, description="live")
def live() -> Response:
    """Report that the server can answer (200)."""
    return json_response({"live": True})


@blp.route("/v2/health/ready", methods=["GET"])
@blp.response(200, V2ReadySchema, description="ready")
@blp.alt_response(400, schema=V2ReadySchema, description="not ready (V2: a 4xx means false)")
def ready() -> Response:
    """Report readiness: Redis reachable or a model in memory (as /readyz, with V2's status codes)."""
    state = readiness()
    if state["ready"]:
        return json_response({"ready": True})
    return json_response({"ready": False, "error": state["reason"]}, 400)


@blp.route("/v2/models/<model>", methods=["GET"])
@read_access(blp)
@blp.response(200, ModelMetadataSchema)
@blp.alt_response(404, description="unknown model")
def model_metadata(model: str) -> Response:
    """Return the model's versions, inputs and outputs."""
    return json_response(_metadata(model, None))


@blp.route("/v2/models/<model>/versions/<int:version>", methods=["GET"])
@read_access(blp)
@blp.response(200, ModelMetadataSchema)
@blp.alt_response(404, description="unknown model or version")
def version_metadata(model: str, version: int) -> Response:
    """Return one version's inputs and outputs."""
    return json_response(_metadata(model, version))


@blp.route("/v2/models/<model>/ready", methods=["GET"])
@read_access(blp)
@blp.response(200, V2ReadySchema)
@blp.alt_response(400, schema=V2ReadySchema, description="the version cannot be loaded")
@blp.alt_response(404, description="unknown model")
def model_ready(model: str) -> Response:
    """Report whether the model's default version is loaded (loading it if needed)."""
    return _model_ready(model, None)


@blp.route("/v2/models/<model>/versions/<int:version>/ready", methods=["GET"])
@read_access(blp)
@blp.response(200, V2ReadySchema)
@blp.alt_response(400, schema=V2ReadySchema, description="the version cannot be loaded")
@blp.alt_response(404, description="unknown model or version")
def version_ready(model: str, version: int) -> Response:
    """Report whether one version is loaded (loading it if needed)."""
    return _model_ready(model, version)


#: The infer routes' OpenAPI description, without flask-smorest's wrappers (see v1's).
_documented_infer = documented_only(
    blp.response(200, InferResponseSchema),
    blp.doc(
        requestBody=INFER_BODY,
        security=PREDICT_SECURITY,
        responses=error_docs(
            {
                400: "invalid request or tensor",
                401: "predict token missing (when MNIST_PREDICT_TOKEN is set)",
                403: "predict token wrong",
                404: "unknown model or version",
                413: "body or batch too large",
                503: "the version is not in memory and cannot be loaded",
            }
        ),
    ),
)


@blp.route("/v2/models/<model>/infer", methods=["POST"])
@_documented_infer
def infer(model: str) -> Response:
    """Run inference with the model's production version, else its latest."""
    return _infer(model, None)


@blp.route("/v2/models/<model>/versions/<int:version>/infer", methods=["POST"])
@_documented_infer
def infer_version(model: str, version: int) -> Response:
    """Run inference with one version of the model."""
    return _infer(model, version)


#: The routes whose answers, errors included, name their request id.
INFER_ENDPOINTS = frozenset({f"{blp.name}.infer", f"{blp.name}.infer_version"})


@blp.after_request
def _request_id(response: Response) -> Response:
    """Name the request's id in X-Request-Id on the infer routes' answers."""
    return echo(response) if request.endpoint in INFER_ENDPOINTS else response


@blp.after_app_request
def _error_key(response: Response) -> Response:
    """Give every /v2 error V2's ``error`` key, beside the service's usual fields."""
    if response.status_code < 400:  # first: the path is a proxy lookup, on every request
        return response
    path = request.path
    if not (path == "/v2" or path.startswith("/v2/")):
        return response
    if response.mimetype != "application/json":
        return response
    try:
        payload = orjson.loads(response.get_data())
    except orjson.JSONDecodeError:
        return response
    if isinstance(payload, dict) and "error" not in payload and "message" in payload:
        response.set_data(orjson.dumps({"error": payload["message"], **payload}))
    return response


# --- helpers --------------------------------------------------------------------------------------
def _metadata(model: str, version: int | None) -> dict[str, Any]:
    return {
        "name": model,
        "versions": [str(v) for v in services().predictions.versions(model, version)],
        "platform": PLATFORM,
        "inputs": INPUTS_METADATA,
        "outputs": OUTPUTS_METADATA,
    }


def _model_ready(model: str, version: int | None) -> Response:
    try:
        loaded = services().predictions.model(model, version=version)
    except ServiceUnavailable as exc:
        return json_response({"name": model, "ready": False, "error": exc.message}, 400)
    return json_response({"name": model, "version": str(loaded.version), "ready": True})


def _infer(model: str, version: int | None) -> Response:
    svc = services()
    check_predict_token(svc.settings)
    header, binary = _split(request_body(limit=svc.settings.max_body_bytes))
    max_batch = svc.settings.max_batch
    body = decode.fast_inference_request(header, max_batch) or decode.load_json(
        header, "inference request", decode.json_limits(max_batch)
    )
    unknown = sorted(set(body) - set(REQUEST_FIELDS))
    if unknown:
        raise InvalidInput(f"unknown fields {unknown}: an inference request has {list(REQUEST_FIELDS)}")
    given = body.get("id")
    if given is not None and not isinstance(given, str):
        raise InvalidInput("id must be a string")
    params = _parameters(body.get("parameters"), "the request's parameters")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InvalidInput(f'"inputs" must hold exactly one tensor, named {INPUT_NAME!r}')
    pixels, used = _read_input(inputs[0], header, binary, params, svc.settings.max_batch)
    if used != len(binary):
        raise InvalidInput(f"the body carries {len(binary)} bytes of binary data; the inputs declare {used}")
    outputs = _requested_outputs(body.get("outputs"), params)
    answer = svc.predictions.predict(
        model, pixels, version=version, routing_key=routing_key(), request_id=request_id(given)
    )
    return _respond(answer, outputs)


def _split(body: bytes) -> tuple[bytes, memoryview]:
    """Return the JSON part and the binary part of a request body."""
    raw = request.environ.get(HEADER_ENVIRON)  # the environ itself: no headers object per request
    if raw is None:
        return body, memoryview(b"")
    try:
        length = int(raw)
    except ValueError:
        length = -1
    if not 0 < length <= len(body):
        raise InvalidInput(f"{HEADER_LENGTH} is {raw!r}: expected 1 to {len(body)} (the JSON part's bytes)")
    return body[:length], memoryview(body)[length:]


def _parameters(value: object, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object")
    return value


def _read_input(
    tensor: dict[str, Any], header: bytes, binary: memoryview, params: dict[str, Any], max_batch: int
) -> tuple[np.ndarray, int]:
    """Return the input's scaled rows and how many binary bytes it used."""
    if tensor.get("name") != INPUT_NAME:
        raise InvalidInput(f"unknown input {tensor.get('name')!r}: the model's input is {INPUT_NAME!r}")
    datatype = tensor.get("datatype")
    if datatype not in INPUT_TYPES:
        raise InvalidInput(f"input datatype {datatype!r} is not one of {sorted(INPUT_TYPES)}")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise InvalidInput("the input's shape must be a list of integers, e.g. [N, 784]")
    shape_t = tuple(shape)
    decode.check_shape(shape_t, "the input tensor")
    decode.check_batch(shape_t[0], max_batch)
    local = _parameters(tensor.get("parameters"), "the input's parameters")
    prange = decode.pixel_range(local.get("pixel_range", params.get("pixel_range")))
    if datatype == "UINT8" and prange != "uint8":
        raise InvalidInput("UINT8 inputs are pixels 0–255: pixel_range 'unit' applies to FP32/FP64")
    size = local.get("binary_data_size")
    if size is None:
        if "data" not in tensor:
            raise InvalidInput('the input has neither "data" nor parameters.binary_data_size')
        return decode.from_list(tensor["data"], header, shape_t, datatype == "UINT8", prange), 0
    if "data" in tensor:
        raise InvalidInput('the input has both "data" and parameters.binary_data_size')
    dtype = INPUT_TYPES[datatype]
    expected = math.prod(shape_t) * dtype.itemsize
    if isinstance(size, bool) or not isinstance(size, int) or size != expected:
        raise InvalidInput(f"binary_data_size is {size!r}: shape {shape} of {datatype} is {expected} bytes")
    if size > len(binary):
        raise InvalidInput(
            f"binary_data_size is {size} but the body carries {len(binary)} bytes after the JSON"
        )
    return decode.from_buffer(binary[:size], dtype, shape_t, prange), size


def _requested_outputs(outputs: object, params: dict[str, Any]) -> list[tuple[str, bool]]:
    """Return (name, binary) of each output to send, in order."""
    default = params.get("binary_data_output", False)
    if not isinstance(default, bool):
        raise InvalidInput("parameters.binary_data_output must be true or false")
    if outputs is None:
        return [(name, default) for name in OUTPUT_TYPES]
    if not isinstance(outputs, list) or not outputs:
        raise InvalidInput('"outputs" must be a non-empty list of {"name": …}')
    chosen: list[tuple[str, bool]] = []
    for output in outputs:
        name = output.get("name") if isinstance(output, dict) else None
        if name not in OUTPUT_TYPES:
            raise InvalidInput(f"unknown output {name!r}: the model's outputs are {list(OUTPUT_TYPES)}")
        if any(name == seen for seen, _ in chosen):
            raise InvalidInput(f"output {name!r} is asked for twice")
        local = _parameters(output.get("parameters"), f"output {name!r}'s parameters")
        if "classification" in local:
            raise InvalidInput("the classification extension is not supported: read the label output")
        binary = local.get("binary_data", default)
        if not isinstance(binary, bool):
            raise InvalidInput(f"output {name!r}: binary_data must be true or false")
        chosen.append((name, binary))
    return chosen


def _respond(answer: Prediction, outputs: list[tuple[str, bool]]) -> Response:
    """Return the inference response: JSON, or JSON then raw tensors when any output is binary."""
    tensors = {"probabilities": answer.probabilities, "label": answer.labels}
    described: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, binary in outputs:
        datatype, dtype = OUTPUT_TYPES[name]
        array = np.ascontiguousarray(tensors[name], dtype=dtype)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            blob = array.tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = array.ravel()
        described.append(entry)
    payload: dict[str, Any] = {
        "model_name": answer.model,
        "model_version": str(answer.version),
        "id": answer.request_id,
        "outputs": described,
    }
    header = orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return Response(header, content_type="application/json")
    response = Response(b"".join([header, *blobs]), mimetype="application/octet-stream")
    response.headers[HEADER_LENGTH] = str(len(header))
    return response
