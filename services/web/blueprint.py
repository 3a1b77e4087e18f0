"""The blueprint every resource uses: flask-smorest's, with JSON arguments read once (orjson), and
`json_response` for answers written with orjson."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import flask_smorest
import orjson
from flask import Response

from services.web.bodies import JsonParser

#: Status of a request whose body or query fails validation (webargs' default is 422).
VALIDATION_STATUS = 400
#: OpenAPI description of the Location header of a created resource.
LOCATION = {"description": "URL of the new resource", "schema": {"type": "string"}}


F = TypeVar("F", bound=Callable[..., Any])


def json_response(payload: Any, status: int = 200) -> Response:
    """Return `payload` as a JSON answer written by orjson (NumPy arrays and scalars included).

    For answers too large or too hot for marshmallow's serialization: a page of logged predictions
    with their pixels, an inference answer.
    """
    return Response(
        orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), status, mimetype="application/json"
    )


def documented_only(*decorators: Callable[[Any], Any]) -> Callable[[F], F]:
    """Give a view the OpenAPI description that `decorators` would, without their wrappers.

    flask-smorest's `doc()` and `response()` wrap the view: each wrapper is a call level, an
    `ensure_sync` check and the unpacking of a tuple, on every request. A view that always returns
    a finished Response needs none of that: the description (`_apidoc`, which the blueprint reads
    when the route is registered) is built on a copy, and the view itself is left unwrapped.
    """

    def decorator(view: F) -> F:
        described: Any = view
        for apply in reversed(decorators):  # innermost last, as stacked decorators apply
            described = apply(described)
        view._apidoc = described._apidoc  # type: ignore[attr-defined]
        return view

    return decorator


class Blueprint(flask_smorest.Blueprint):
    """A flask-smorest Blueprint whose `arguments` read a JSON body through `bodies.json_object`."""

    ARGUMENTS_PARSER = JsonParser()
