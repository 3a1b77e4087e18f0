"""Request bodies: read whole within MNIST_MAX_BODY_BYTES, whether or not they declare a length.

`request_body` is where every body's bytes enter; `json_object` reads a JSON body once, with
orjson, for the routes whose arguments flask-smorest validates (`JsonParser`). `check_json_size`
counts what a JSON text can hold on its bytes, before any parser builds an object per value:
JSON's Python objects cost 10 to 25 times the bytes that spell them, so a body within
MNIST_MAX_BODY_BYTES could otherwise take gigabytes once parsed.
"""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class JsonLimits:
    """The most a JSON body may hold, each counted on its bytes before it is parsed."""

    values: int  # array elements and object members, a string counting twice (see check_json_size)
    arrays: int  # one `[` each: lists nested without siblings have no comma between them
    objects: int  # one `{` each: the same for objects
    members: int  # one `:` each: an object's members, the costliest values to parse
    reason: str  # what the limits follow from (a setting), for the error message


#: What an argument body (a job spec, an alias, an evaluation) may hold, of each kind: a spec
#: holds a few dozen values. Parsed, at most ~100 bytes each, about 40 MB in all (values).
ARGUMENT_LIMIT = 131_072
#: The limits of every body read by `json_object`.
ARGUMENT_LIMITS = JsonLimits(
    ARGUMENT_LIMIT, ARGUMENT_LIMIT, ARGUMENT_LIMIT, ARGUMENT_LIMIT, "the arguments of a request"
)


def check_json_size(body: bytes, limits: JsonLimits, what: str = "body", *, structure: bool = True) -> None:
    """Refuse (413) a JSON text that holds more than `limits` allow, counted before it is parsed.

    Parsed into Python objects, a number costs 8 to 32 bytes, a string about 60, a list 64, an
    object's member about 100. A text holds at most one value more than its commas; a string
    (two quotes) counts as two values, so that the values bound the bytes of objects built
    whatever their kind; brackets, braces and colons bound what escapes the commas (lists and
    objects nested without siblings) or costs more still. Each count is one pass of
    `bytes.count` (about 0.4 ms per MB), skipped when the text is too short to exceed its limit
    (n bytes hold fewer than n values). Characters inside strings count too, which only makes the
    bound safer. `structure=False` counts commas only, for a parser whose cost per value does not
    depend on its kind (simdjson's).
    """

    def refuse_above(found: int, limit: int, kind: str) -> None:
        if found > limit:
            raise PayloadTooLarge(
                f"the {what} holds {found:,} JSON {kind}: the limit is {limit:,}, for {limits.reason}"
            )

    if len(body) >= limits.values:
        if structure:
            found = body.count(b",") + 1 + body.count(b'"') // 2
            refuse_above(found, limits.values, "values (counted by their commas, a string as two)")
        else:
            refuse_above(body.count(b",") + 1, limits.values, "values (counted by their commas)")
    if not structure:
        return
    for char, limit, kind in (
        (b"[", limits.arrays, "arrays"),
        (b"{", limits.objects, "objects"),
        (b":", limits.members, "object members (counted by their colons)"),
    ):
        if len(body) > limit:
            refuse_above(body.count(char), limit, kind)


def json_object() -> Any:
    """Return the request's JSON body, parsed once: 415 if not declared JSON, 413, 400 if empty or invalid."""
    if not request.is_json:
        raise UnsupportedMediaType("send the body as JSON with 'Content-Type: application/json'")
    body = request_body()
    if not body.strip():
        raise InvalidInput("the body is empty: send a JSON object")
    check_json_size(body, ARGUMENT_LIMITS)
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
