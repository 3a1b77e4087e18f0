"""Datasets: the built-in catalogue, and uploads kept in Redis that workers train on by name.

An upload's format comes from ``?format=`` (npz, csv, idx), else from an unambiguous
Content-Type (``text/csv``, ``application/x-npz``), else from the uploaded file's name
(multipart), else from its first bytes: a zip holding only ``.npy`` members is an NPZ, any other
zip or a tar (gzipped or not) is an IDX archive, and anything else is read as CSV (gzipped or not).
"""

from __future__ import annotations

import io
import threading
import zipfile
from typing import Any

from flask import request, url_for
from werkzeug.exceptions import RequestEntityTooLarge

from services.api.schemas import DatasetSchema, FromFeedbackSchema, UploadQuerySchema
from services.web.auth import read_access, write_access
from services.web.blueprint import LOCATION, VALIDATION_STATUS, Blueprint
from services.web.bodies import request_body
from services.web.context import services
from shared import datasets, feedback_dataset
from shared.errors import DatasetExists, DatasetNotFound, InvalidInput, PayloadTooLarge
from shared.formats import kinds
from shared.registry import check_name

blp = Blueprint("datasets", __name__, url_prefix="/v1/datasets", description="Built-in and uploaded datasets")

#: Upload formats implied by a Content-Type alone.
CONTENT_TYPES = {"text/csv": "csv", "application/csv": "csv", "application/x-npz": "npz"}
#: Upload formats (`datasets.parse_bytes`' kinds) by the file kinds that a name or bytes show.
UPLOAD_FORMATS = {kinds.NPZ: "npz", kinds.CSV: "csv", kinds.IDX_ARCHIVE: "idx"}
#: Uploads are read one at a time in each process. A compressed body may inflate to
#: MNIST_MAX_DATASET_BYTES (counted before it is decompressed), then be copied once or twice while
#: it is checked and stored: one at a time, a process needs that once, not once per request thread.
_ONE_UPLOAD_AT_A_TIME = threading.Lock()


def _check(name: str) -> str:
    return check_name(name, "dataset")


def _check_free(name: str) -> None:
    """Raise DatasetExists when `name` is built in or already stored."""
    if name in datasets.BUILTIN_NAMES:
        raise DatasetExists(f"{name!r} is a built-in dataset name: choose another")
    if services().datasets.exists(name):
        raise DatasetExists(f"a dataset named {name!r} is already uploaded: delete it first")


def _images(name: str) -> int:
    """Return how many images (train and test) dataset `name` holds, from its description alone."""
    for entry in datasets.catalogue():
        if entry["name"] == name:
            if not entry["available"]:
                raise DatasetNotFound(f"the built-in dataset {name!r} is {entry['how_to_get']}")
            return int(entry["train_size"]) + int(entry["test_size"])
    info = services().datasets.info(name)  # DatasetNotFound
    return int(info["train_size"]) + int(info["test_size"])


def _builtin(entry: dict[str, Any]) -> dict[str, Any]:
    return {**entry, "kind": "builtin", "digest": None}


def _uploaded(info: dict[str, Any]) -> dict[str, Any]:
    return {**info, "kind": "uploaded", "available": True, "default": False}


def _sniff(data: bytes, filename: str | None) -> str:
    """Return the format of an upload from its file name, else its bytes (see the module docstring)."""
    kind = kinds.of(filename or "", data, accept=UPLOAD_FORMATS)
    if kind == kinds.ZIP:
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                kind = kinds.of_zip(zf.namelist())
        except zipfile.BadZipFile:
            return "idx"  # the IDX reader names the problem
    return UPLOAD_FORMATS.get(kind or "", "csv")  # anything else: the CSV reader names the problem


def _kind(data: bytes, requested: str | None, filename: str | None) -> str:
    if requested:
        return requested
    if request.mimetype in CONTENT_TYPES:
        return CONTENT_TYPES[request.mimetype]
    return _sniff(data, filename)


def _read_upload(limit: int) -> tuple[bytes, str | None]:
    """Return the uploaded bytes and file name (a raw body, or a form's `file`); 413 above `limit`."""
    too_large = PayloadTooLarge(f"the upload is larger than {limit:,} bytes (MNIST_MAX_DATASET_BYTES)")
    if request.mimetype != "multipart/form-data":
        try:
            return request_body(limit=limit), None
        except PayloadTooLarge:
            raise too_large from None
    # One byte above the limit: werkzeug ends a body without Content-Length silently *at* its
    # maximum, so the extra byte is how an oversized chunked upload shows itself.
    request.max_content_length = limit + 1
    try:
        upload = request.files.get("file")
    except RequestEntityTooLarge:
        raise too_large from None
    if request.stream.tell() > limit:
        raise too_large
    if upload is None:
        raise InvalidInput("a multipart upload needs its dataset in a field named 'file'")
    return upload.read(), upload.filename


@blp.route("", methods=["GET"])
@read_access(blp)
@blp.response(200, DatasetSchema(many=True), description="built-ins first, then uploads by name")
def list_datasets() -> list[dict[str, Any]]:
    """List the built-in datasets (with availability) and the uploaded ones."""
    builtins = [_builtin(e) for e in datasets.catalogue()]
    return builtins + [_uploaded(i) for i in services().datasets.list()]


@blp.route("/<name>", methods=["GET"])
@read_access(blp)
@blp.response(200, DatasetSchema)
@blp.alt_response(400, response="BAD_REQUEST", description="not a valid dataset name")
@blp.alt_response(404, response="NOT_FOUND")
def get_dataset(name: str) -> dict[str, Any]:
    """Describe one dataset, built-in or uploaded."""
    _check(name)
    for entry in datasets.catalogue():
        if entry["name"] == name:
            return _builtin(entry)
    return _uploaded(services().datasets.info(name))


@blp.route("/<name>", methods=["POST"])
@write_access(blp)
@blp.arguments(UploadQuerySchema, location="query", error_status_code=VALIDATION_STATUS)
@blp.response(
    201, DatasetSchema, description="stored; jobs train on it by name", headers={"Location": LOCATION}
)
@blp.alt_response(400, response="BAD_REQUEST", description="not a valid dataset file, with the reason")
@blp.alt_response(409, response="CONFLICT", description="a built-in or already uploaded name")
@blp.alt_response(
    413,
    response="REQUEST_ENTITY_TOO_LARGE",
    description="above MNIST_MAX_DATASET_BYTES, as sent or once inflated",
)
@blp.doc(
    requestBody={
        "required": True,
        "description": "the dataset file as the raw body, or as the `file` field of a form",
        "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "text/csv": {"schema": {"type": "string"}},
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}
            },
        },
    }
)
def upload(query: dict[str, Any], name: str) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Upload an NPZ, a CSV, or a zip/tar of IDX files as dataset `name`."""
    _check(name)
    store = services().datasets
    _check_free(name)
    # Only now is the body read: a refused upload is not read at all.
    data, filename = _read_upload(services().settings.max_dataset_bytes)
    if not data:
        raise InvalidInput("the body is empty: send the dataset file")
    kind = _kind(data, query.get("format"), filename)
    with _ONE_UPLOAD_AT_A_TIME:
        parsed = datasets.parse_bytes(name, data, kind, services().settings.max_dataset_bytes)
        info = store.put(parsed, replace=False)
        del parsed  # freed before the next upload is read
    return _uploaded(info), 201, {"Location": url_for("datasets.get_dataset", name=name)}


@blp.route("/<name>/from-feedback", methods=["POST"])
@write_access(blp)
@blp.arguments(FromFeedbackSchema, error_status_code=VALIDATION_STATUS, description="the log to read")
@blp.response(
    201, DatasetSchema, description="stored; jobs train on it by name", headers={"Location": LOCATION}
)
@blp.alt_response(400, response="BAD_REQUEST", description="no logged live prediction has a feedback label")
@blp.alt_response(404, response="NOT_FOUND", description="an unknown model, or merge dataset")
@blp.alt_response(409, response="CONFLICT", description="a built-in or already stored name")
@blp.alt_response(413, response="REQUEST_ENTITY_TOO_LARGE", description="above MNIST_MAX_DATASET_BYTES")
@blp.alt_response(415, response="UNSUPPORTED_MEDIA_TYPE")
def from_feedback(body: dict[str, Any], name: str) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Store dataset `name`: the model's logged live images with their feedback labels, merged if asked."""
    _check(name)
    _check_free(name)
    ctx = services()
    model, version, merge = body["model"], body["version"], body["merge"]
    # The limit of an upload, counted as it inflates (a byte per pixel and per label), before a
    # byte of the log is read: the merged dataset's images first, the log's fill the rest.
    room = ctx.settings.max_dataset_bytes // feedback_dataset.IMAGE_BYTES - (_images(merge) if merge else 0)
    if room <= 0:
        raise PayloadTooLarge(f"{merge!r} alone fills MNIST_MAX_DATASET_BYTES: merge a smaller dataset")
    with _ONE_UPLOAD_AT_A_TIME:
        found = feedback_dataset.read(ctx.redis, ctx.keys, model, version=version, max_images=room)
        if not len(found.labels):
            ctx.registry.require_model(model)
            which = f"{model} v{version}" if version is not None else model
            raise InvalidInput(
                f"no logged live prediction of {which} has a feedback label (read {found.scanned:,} log"
                " entries): log predictions (MNIST_LOG_SAMPLE) and POST their true labels first"
            )
        merged = datasets.load(merge, uploaded=ctx.datasets.get, allow_paths=False) if merge else None
        data, origin = feedback_dataset.build(name, found, model=model, version=version, merge=merged)
        del found, merged
        info = ctx.datasets.put(data, replace=False, extra={"origin": origin})
        del data  # freed before the next upload is read
    return _uploaded(info), 201, {"Location": url_for("datasets.get_dataset", name=name)}


@blp.route("/<name>", methods=["DELETE"])
@write_access(blp)
@blp.response(204)
@blp.alt_response(404, response="NOT_FOUND")
@blp.alt_response(409, response="CONFLICT", description="built-in datasets cannot be deleted")
def delete_dataset(name: str) -> None:
    """Delete an uploaded dataset (jobs already running keep their copy)."""
    _check(name)
    if name in datasets.BUILTIN_NAMES:
        raise DatasetExists(f"{name!r} is a built-in dataset: it cannot be deleted")
    services().datasets.delete(name)
