"""One JSON shape for every error: ``{"code", "status", "message", "errors"?}`` (flask-smorest's).

Domain errors (shared/errors.py) carry their HTTP status; HTTP errors keep theirs; anything
unexpected is logged with its traceback and answered as a bare 500, never a traceback.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import redis
from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from shared.errors import MnistError

log = logging.getLogger(__name__)


def error_response(code: int, message: str, errors: Any = None, headers: dict | None = None) -> Response:
    """Return the JSON error response of status `code`."""
    payload: dict[str, Any] = {"code": code, "status": HTTPStatus(code).phrase, "message": message}
    if errors:
        payload["errors"] = errors
    response = jsonify(payload)
    response.status_code = code
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def error_docs(errors: dict[int, str]) -> dict[str, Any]:
    """Return OpenAPI responses for `errors` (code -> why), all in the Error schema."""
    content = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    return {str(code): {"description": why, "content": content} for code, why in errors.items()}


def _http(error: HTTPException) -> Response:
    data = getattr(error, "data", None) or {}
    errors = data.get("errors") or data.get("messages")
    # webargs nests validation errors by location ({"json": {...}}); the location is implied.
    if isinstance(errors, dict) and len(errors) == 1 and next(iter(errors)) in ("json", "query", "form"):
        errors = next(iter(errors.values()))
    message = data.get("message") or error.description or HTTPStatus(error.code or 500).phrase
    if errors and "message" not in data:
        message = "the request is not valid: see errors"
    headers = dict(data.get("headers") or {})
    if error.code == 405 and hasattr(error, "valid_methods") and error.valid_methods:
        headers["Allow"] = ", ".join(error.valid_methods)
    if error.code == 401:
        headers.setdefault("WWW-Authenticate", "Bearer")
    return error_response(error.code or 500, message, errors, headers)


def _domain(error: MnistError) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    return error_response(error.status, error.message, error.errors, headers)


class RedisBusy(redis.ConnectionError):
    """Every Redis connection of this process is in use: the request is refused rather than queued.

    A Redis that hangs holds each command for `MNIST_REDIS_TIMEOUT` s; were every request thread
    allowed to wait on it, none would be left for the predictions that need no Redis.
    """


def _redis_down(error: redis.RedisError) -> Response:
    if isinstance(error, RedisBusy):  # one per refused request while Redis hangs: not a warning each
        log.debug("Redis busy: %s", error)
    else:
        log.warning("Redis error: %s", error)
    return error_response(
        503, "the service's Redis does not answer: try again shortly", headers={"Retry-After": "2"}
    )


def _unexpected(error: Exception) -> Response:
    log.exception("unhandled error")
    return error_response(500, "internal error: the service logged the details")


def register(app: Flask) -> None:
    """Install the handlers on `app` (after flask-smorest's, which they replace)."""
    app.register_error_handler(HTTPException, _http)
    app.register_error_handler(MnistError, _domain)
    app.register_error_handler(redis.RedisError, _redis_down)
    app.register_error_handler(Exception, _unexpected)
