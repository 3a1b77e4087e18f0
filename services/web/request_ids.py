"""Request ids: every answer of a predict route names its request in `X-Request-Id`.

A client may send its own id (the header, or a V2 body's ``id``): kept when it is 1–64 characters
of ``A-Z a-z 0-9 . _ : -``, else replaced by a new one (16 random bytes in hex), so that ids are
safe to log, to show and to send feedback with. The id is chosen once per request (`flask.g`).
"""

from __future__ import annotations

import re

from flask import Response, g, request

from services.serving.service import new_request_id

#: The header of a request's id, in requests and answers.
HEADER = "X-Request-Id"
#: What a client's id may be.
VALID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def valid(candidate: object) -> bool:
    """Return True if `candidate` may be used as a request id."""
    return isinstance(candidate, str) and VALID.fullmatch(candidate) is not None


def request_id(given: object = None) -> str:
    """Return this request's id: `given` if valid, else the client's header if valid, else a new one."""
    chosen = g.get("request_id")
    if chosen is None:
        if not valid(given):
            given = request.environ.get("HTTP_X_REQUEST_ID")
        chosen = g.request_id = given if valid(given) else new_request_id()
    return chosen


def echo(response: Response) -> Response:
    """Name the request's id in the answer's `X-Request-Id` (errors included)."""
    response.headers[HEADER] = request_id()
    return response
