"""The model registry: models, versions with their lineage, weights, imports, aliases and splits."""

from __future__ import annotations

import threading
from typing import Any

from flask import Response, request, url_for

from services.api.schemas import (
    AliasBodySchema,
    AliasSchema,
    ImportQuerySchema,
    ModelSchema,
    ModelSummarySchema,
    VersionSchema,
)
from services.web.auth import read_access, write_access
from services.web.blueprint import LOCATION, VALIDATION_STATUS, Blueprint
from services.web.bodies import request_body
from services.web.context import services
from shared import datasets, model_import, splits
from shared.errors import InvalidInput, ModelNotFound, UnsupportedMediaType
from shared.registry import VersionRecord, check_name

blp = Blueprint("models", __name__, url_prefix="/v1/models", description="The model registry")

#: Input and output layer widths of every network (784 pixels in, 10 classes out).
INPUTS, OUTPUTS = 784, 10
#: Content types of an imported model file.
MODEL_FILE_TYPES = ("application/octet-stream", "application/x-npz")
#: Imports are checked one at a time in each process: a file may inflate to MNIST_MAX_BODY_BYTES.
_ONE_IMPORT_AT_A_TIME = threading.Lock()


def _by_version(aliases: dict[str, int]) -> dict[int, list[str]]:
    named: dict[int, list[str]] = {}
    for alias, version in aliases.items():
        named.setdefault(version, []).append(alias)
    return named


def _dataset(meta: dict[str, Any]) -> dict[str, Any] | None:
    """Return a version's dataset lineage as the API shows it: no path of the worker's host."""
    ref = meta.get("dataset")
    if not isinstance(ref, dict) or not isinstance(ref.get("source"), str):
        return ref
    return {**ref, "source": datasets.without_paths(ref["source"])}


def _summary(record: VersionRecord, aliases: list[str]) -> dict[str, Any]:
    meta = record.metadata
    return {
        "version": record.version,
        "created_at": record.created_at,
        "sha256": record.sha256,
        "size": record.size,
        "aliases": sorted(aliases),
        "job_id": meta.get("job_id"),
        "dataset": _dataset(meta),
        "metrics": meta.get("metrics") or {},
    }


def _detail(record: VersionRecord, aliases: list[str]) -> dict[str, Any]:
    meta = record.metadata
    config = meta.get("config") or {}
    hidden = config.get("hidden")
    architecture: dict[str, Any] = {"sizes": [INPUTS, *hidden, OUTPUTS]} if isinstance(hidden, list) else {}
    if architecture:
        architecture.update(hidden_activation="relu", output_activation="softmax", dtype=config.get("dtype"))
    elif isinstance(meta.get("architecture"), dict):  # an import: the file's own network, as written
        architecture = meta["architecture"]
    found = meta.get("lineage")
    lineage: dict[str, Any] = found if isinstance(found, dict) else {}
    return {
        **_summary(record, aliases),
        "model": record.model,
        "architecture": architecture,
        "history": meta.get("history") or [],
        "lineage": {
            "source": lineage.get("source") or ("job" if meta.get("job_id") else None),
            "sha256": lineage.get("sha256"),
            "job_id": meta.get("job_id"),
            "dataset": _dataset(meta),
            "recipe": meta.get("recipe"),
            "config": config,
            "spec": meta.get("spec"),
        },
        "weights_url": url_for("models.weights", model=record.model, version=record.version),
    }


@blp.route("", methods=["GET"])
@read_access(blp)
@blp.response(200, ModelSummarySchema(many=True))
def list_models() -> list[dict[str, Any]]:
    """List the models with their latest version, aliases, splits and number of versions."""
    ctx = services()
    registry = ctx.registry
    found = []
    for name in registry.models():
        try:
            aliases, split = registry.routes(name)
        except ModelNotFound:
            continue  # its last version was deleted since the listing
        # A count, not the records: one unreadable record must not take the whole listing down.
        count = ctx.redis.zcard(ctx.keys.versions(name))
        found.append(
            {
                "name": name,
                "latest": registry.latest(name),
                "versions": count,
                "aliases": aliases,
                "splits": {alias: splits.to_json(weights) for alias, weights in split.items()},
            }
        )
    return found


@blp.route("/<model>", methods=["GET"])
@read_access(blp)
@blp.response(200, ModelSchema)
@blp.alt_response(400, response="BAD_REQUEST", description="not a valid model name")
@blp.alt_response(404, response="NOT_FOUND")
def get_model(model: str) -> dict[str, Any]:
    """Return a model: its versions (oldest first) with metrics, and its aliases."""
    registry = services().registry
    records = registry.versions(model)
    aliases, split = registry.routes(model)
    named = _by_version(aliases)
    for alias, weights in split.items():  # a split's alias names every version it routes to
        for version in weights:
            if aliases.get(alias) != version:
                named.setdefault(version, []).append(alias)
    return {
        "name": model,
        "latest": registry.latest(model),
        "aliases": aliases,
        "splits": {alias: splits.to_json(weights) for alias, weights in split.items()},
        "versions": [_summary(r, named.get(r.version, [])) for r in records],
    }


@blp.route("/<model>/versions/<int:version>", methods=["GET"])
@read_access(blp)
@blp.response(200, VersionSchema)
@blp.alt_response(400, response="BAD_REQUEST")
@blp.alt_response(404, response="NOT_FOUND")
@blp.alt_response(503, response="SERVICE_UNAVAILABLE", description="the stored record is unreadable")
def get_version(model: str, version: int) -> dict[str, Any]:
    """Return one version: metrics, learning curve and lineage (job, dataset digest, recipe)."""
    registry = services().registry
    record = registry.record(model, version)
    return _detail(record, _by_version(registry.aliases(model)).get(version, []))


@blp.route("/<model>/versions", methods=["POST"])
@write_access(blp)
@blp.arguments(ImportQuerySchema, location="query", error_status_code=VALIDATION_STATUS)
@blp.response(
    201, VersionSchema, description="published, lineage source import", headers={"Location": LOCATION}
)
@blp.alt_response(400, response="BAD_REQUEST", description="not a model file, with the reason")
@blp.alt_response(404, response="NOT_FOUND", description="(with ?alias=) the model vanished meanwhile")
@blp.alt_response(
    413, response="REQUEST_ENTITY_TOO_LARGE", description="above MNIST_MAX_BODY_BYTES, sent or inflated"
)
@blp.alt_response(415, response="UNSUPPORTED_MEDIA_TYPE")
@blp.doc(
    requestBody={
        "required": True,
        "description": "the model file (.npz: W1, b1, …, Wk, bk and meta; see docs/api.md)",
        "content": {t: {"schema": {"type": "string", "format": "binary"}} for t in MODEL_FILE_TYPES},
    }
)
def import_version(query: dict[str, Any], model: str) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Publish a model file trained elsewhere as the model's next version (and point ?alias= at it)."""
    check_name(model)
    alias = query.get("alias")
    if alias is not None:
        check_name(alias, "alias")
    if request.mimetype not in MODEL_FILE_TYPES:
        raise UnsupportedMediaType(f"send the model file as {' or '.join(MODEL_FILE_TYPES)}")
    svc = services()
    # Only now is the body read: a refused import is not read at all.
    data = request_body(svc.settings.max_body_bytes)
    if not data:
        raise InvalidInput("the body is empty: send the model file (.npz)")
    with _ONE_IMPORT_AT_A_TIME:
        params, meta = model_import.read_model_file(data, svc.settings.max_body_bytes)
        blob, metadata = model_import.imported(params, meta, data)
        del params
    version = svc.registry.publish(model, blob, metadata)
    if alias is not None:
        svc.registry.set_alias(model, alias, version)
    record = svc.registry.record(model, version)
    location = url_for("models.get_version", model=model, version=version)
    return _detail(record, [alias] if alias else []), 201, {"Location": location}


@blp.route("/<model>/versions/<int:version>/weights", methods=["GET"])
@read_access(blp)
@blp.response(
    200,
    {"type": "string", "format": "binary"},
    content_type="application/octet-stream",
    description="the model file (.npz); its ETag is its sha256",
    headers={"ETag": {"description": "sha256 of the file", "schema": {"type": "string"}}},
)
@blp.alt_response(304, description="unchanged (If-None-Match)")
@blp.alt_response(404, response="NOT_FOUND")
@blp.alt_response(503, response="SERVICE_UNAVAILABLE", description="the stored blob failed its checksum")
def weights(model: str, version: int) -> Response:
    """Download a version's model file, checked against its sha256 first."""
    blob, record = services().registry.get_blob(model, version)
    response = Response(blob, mimetype="application/octet-stream")
    response.headers["Content-Disposition"] = f'attachment; filename="{model}-v{version}.npz"'
    response.set_etag(record.sha256)
    response.make_conditional(request)  # 304 when If-None-Match names this sha256
    return response


@blp.route("/<model>/versions/<int:version>", methods=["DELETE"])
@write_access(blp)
@blp.response(204)
@blp.alt_response(404, response="NOT_FOUND")
@blp.alt_response(409, response="CONFLICT", description="an alias points at the version")
def delete_version(model: str, version: int) -> None:
    """Delete a version (refused while an alias points at it)."""
    services().registry.delete_version(model, version)


@blp.route("/<model>/aliases/<alias>", methods=["PUT"])
@write_access(blp)
@blp.arguments(AliasBodySchema, error_status_code=VALIDATION_STATUS)
@blp.response(200, AliasSchema)
@blp.alt_response(400, response="BAD_REQUEST")
@blp.alt_response(404, response="NOT_FOUND", description="no such model or version")
@blp.alt_response(415, response="UNSUPPORTED_MEDIA_TYPE")
def set_alias(body: dict[str, Any], model: str, alias: str) -> dict[str, Any]:
    """Point an alias at a version, or split it over versions with weights (`versions`)."""
    registry = services().registry
    check_name(alias, "alias")
    previous = registry.aliases(model).get(alias)
    if "version" in body:
        registry.set_alias(model, alias, body["version"])
        return {
            "model": model,
            "alias": alias,
            "version": body["version"],
            "previous": previous,
            "split": None,
        }
    decision = {"action": "split", "reason": body.get("reason"), "actor": "api"}
    split = registry.set_split(model, alias, body["versions"], decision=decision)
    shown = splits.to_json(split) if len(split) > 1 else None
    return {
        "model": model,
        "alias": alias,
        "version": splits.primary(split),
        "previous": previous,
        "split": shown,
    }


@blp.route("/<model>/aliases/<alias>", methods=["GET"])
@read_access(blp)
@blp.response(200, AliasSchema)
@blp.alt_response(404, response="NOT_FOUND")
def get_alias(model: str, alias: str) -> dict[str, Any]:
    """Return the version an alias points at (a split: its primary, and the split)."""
    registry = services().registry
    check_name(alias, "alias")
    version = registry.resolve(model, alias=alias)
    split = registry.splits(model).get(alias)
    return {
        "model": model,
        "alias": alias,
        "version": version,
        "split": splits.to_json(split) if split else None,
    }


@blp.route("/<model>/aliases/<alias>", methods=["DELETE"])
@write_access(blp)
@blp.response(204)
@blp.alt_response(404, response="NOT_FOUND")
def delete_alias(model: str, alias: str) -> None:
    """Remove an alias; the version it named stays."""
    services().registry.delete_alias(model, alias)
