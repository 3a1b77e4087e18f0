"""Bearer tokens: writes need MNIST_API_TOKEN; predictions need MNIST_PREDICT_TOKEN when it is set.

Tokens are compared with `hmac.compare_digest`, in constant time.
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Callable
from typing import Any, TypeVar

from flask import request
from flask_smorest import Blueprint

from services.web.context import services
from shared.config import Settings
from shared.errors import Forbidden, Unauthorized

F = TypeVar("F", bound=Callable[..., Any])


def _check(expected: str) -> None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("this route needs 'Authorization: Bearer <token>'")
    if not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise Forbidden("the bearer token is not valid")


def write_token_required(view: F) -> F:
    """Refuse the request unless it carries the API token (not enforced in development without one)."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        settings = services().settings
        if settings.api_token or not settings.development:
            _check(settings.api_token)
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def check_predict_token(settings: Settings | None = None) -> None:
    """Refuse a prediction without the predict token, when one is configured (in `settings`)."""
    expected = (settings or services().settings).predict_token
    if expected:
        _check(expected)


def write_access(blp: Blueprint) -> Callable[[F], F]:
    """Require the API token on a route and document it (bearerAuth, 401, 403)."""

    def decorator(view: F) -> F:
        guarded = write_token_required(view)
        guarded = blp.alt_response(401, response="UNAUTHORIZED")(guarded)
        guarded = blp.alt_response(403, response="FORBIDDEN")(guarded)
        return blp.doc(security=[{"bearerAuth": []}])(guarded)

    return decorator
