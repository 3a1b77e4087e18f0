"""Request bodies, read whole within MNIST_MAX_BODY_BYTES, whether or not they declare a length."""

from __future__ import annotations

from flask import request

from services.api.context import services
from shared.errors import PayloadTooLarge


def request_body(cache: bool = False) -> bytes:
    """Return the whole request body; PayloadTooLarge (413) above MNIST_MAX_BODY_BYTES, even sent chunked.

    `cache=True` keeps the body for a later `request.get_json()` (webargs reads it so).
    """
    limit = services().settings.max_body_bytes
    # A Content-Length over the limit is refused before anything is read, but werkzeug ends a
    # chunked body silently *at* max_content_length: one byte more shows that it was larger.
    request.max_content_length = limit + 1
    body = request.get_data(cache=cache)
    if len(body) > limit:
        raise PayloadTooLarge(f"the body is larger than {limit:,} bytes (MNIST_MAX_BODY_BYTES)")
    return body
