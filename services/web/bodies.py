"""Request bodies: read whole within MNIST_MAX_BODY_BYTES, whether or not they declare a length.

`request_body` is where every body's bytes enter; `json_object` reads a JSON body once, with
orjson, for the routes whose arguments flask-smorest validates (`JsonParser`).
"""

from __future__ import annotations

from typing import Any

import orjson
from flask import request
from webargs.flaskparser import FlaskParser

from services.web.context import services
from shared.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType


def request_body(limit: int | None = None) -> bytes:
    """Return the whole request body; PayloadTooLarge (413) above `limit`, even sent chunked.

    `limit` defaults to MNIST_MAX_BODY_BYTES.
    """
    if limit is None:
        limit = services().settings.max_body_bytes
    environ = request.environ
    declared = environ.get("CONTENT_LENGTH", "")
    if declared.isascii() and declared.isdigit():
        # The common case, a body of declared length, read as PEP 3333 has it: exactly that many
        # bytes from wsgi.input. That is 25 µs less per request than request.get_data() (its
        # LimitedStream and cached properties), and a body cut short shows here: gunicorn marks
        # its input terminated, so werkzeug would read what arrived as if it were whole.
        size = int(declared)
        if size > limit:
            raise PayloadTooLarge(f"the body is larger than {limit:,} bytes (MNIST_MAX_BODY_BYTES)")
        body = environ["wsgi.input"].read(size) if size else b""
        if len(body) != size:
            raise InvalidInput(f"the body ended after {len(body):,} of the {size:,} bytes it declared")
        return body
    # A Content-Length over the limit is refused before anything is read, but werkzeug ends a
    # chunked body silently *at* max_content_length: one byte more shows that it was larger.
    request.max_content_length = limit + 1
    body = request.get_data(cache=False)
    if len(body) > limit:
        raise PayloadTooLarge(f"the body is larger than {limit:,} bytes (MNIST_MAX_BODY_BYTES)")
    return body


def json_object() -> Any:
    """Return the request's JSON body, parsed once: 415 if not declared JSON, 413, 400 if empty or invalid."""
    if not request.is_json:
        raise UnsupportedMediaType("send the body as JSON with 'Content-Type: application/json'")
    body = request_body()
    if not body.strip():
        raise InvalidInput("the body is empty: send a JSON object")
    # orjson, not the standard library: json.loads recurses, and 100,000 nested lists would raise
    # RecursionError (a 500); orjson stops at 1,024 levels with an error.
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the body is not valid JSON ({exc})") from None


class JsonParser(FlaskParser):
    """webargs' Flask parser, reading JSON bodies through `json_object` (one read, one parse)."""

    def _raw_load_json(self, req: Any) -> Any:
        return json_object()
