"""Bearer tokens: who may call each route (docs/api.md has the table).

Two tokens: the write token (`MNIST_API_TOKEN`, required outside development) and the predict
token (`MNIST_PREDICT_TOKEN`, optional). Every route is one of:

- **open**: health, readiness, `/metrics`, `GET /v2`, the API description and the dashboard page;
- **read** (`read_access`): every route that reveals or loads a model, a job or a dataset. Open
  while no predict token is set; once one is, the predict or the write token;
- **predict** (`check_predict_token`, on the hot path): the predict token, when one is set;
  the write token never opens a prediction;
- **evaluate** (`evaluate_access`): the predict or the write token, always (it loads a model and
  a dataset into the process: not for anyone who can reach the port);
- **write** (`write_access`): the write token.

In development without a token, nothing is enforced that has no token to compare with. Tokens
are compared with `hmac.compare_digest`, in constant time, against every accepted token.
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

#: OpenAPI security schemes: the write token and the predict token, both HTTP bearer tokens.
SECURITY_SCHEMES = {
    "bearerAuth": {"type": "http", "scheme": "bearer", "description": "the write token, MNIST_API_TOKEN"},
    "predictToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "the predict token, MNIST_PREDICT_TOKEN (when the server sets one)",
    },
}
#: OpenAPI security of each kind of route (`{}`: no token, when the server has none to ask for).
WRITE_SECURITY: list[dict[str, list[str]]] = [{"bearerAuth": []}]
READ_SECURITY: list[dict[str, list[str]]] = [{}, {"predictToken": []}, {"bearerAuth": []}]
PREDICT_SECURITY: list[dict[str, list[str]]] = [{}, {"predictToken": []}]
EVALUATE_SECURITY: list[dict[str, list[str]]] = [{"predictToken": []}, {"bearerAuth": []}]


def _bearer() -> str:
    """Return the request's bearer token; Unauthorized without one."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("this route needs 'Authorization: Bearer <token>'")
    return token.strip()


def _check(*accepted: str) -> None:
    """Refuse the request unless its bearer token is one of `accepted` (non-empty tokens)."""
    given = _bearer().encode()
    # Compared with each one, always: which token matched, if any, takes the same time.
    matches = [hmac.compare_digest(given, token.encode()) for token in accepted]
    if not any(matches):
        raise Forbidden("the bearer token is not valid")


def check_write_token(settings: Settings | None = None) -> None:
    """Refuse a write without the API token (not enforced in development without one)."""
    settings = settings or services().settings
    if settings.api_token or not settings.development:
        _check(settings.api_token)


def check_predict_token(settings: Settings | None = None) -> None:
    """Refuse a prediction without the predict token, when one is configured (in `settings`)."""
    expected = (settings or services().settings).predict_token
    if expected:
        _check(expected)


def check_read_token(settings: Settings | None = None) -> None:
    """Refuse a read without the predict or the write token, once a predict token is configured."""
    settings = settings or services().settings
    if settings.predict_token:
        _check(*[t for t in (settings.predict_token, settings.api_token) if t])


def check_evaluate_token(settings: Settings | None = None) -> None:
    """Refuse an evaluation without the predict or the write token (open only in development without any)."""
    settings = settings or services().settings
    accepted = [t for t in (settings.predict_token, settings.api_token) if t]
    if accepted or not settings.development:
        _check(*accepted)


def _guard(check: Callable[[], None], view: F) -> F:
    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        check()
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _access(
    blp: Blueprint, check: Callable[[], None], security: list[dict[str, list[str]]], when: str
) -> Callable[[F], F]:
    def decorator(view: F) -> F:
        guarded = _guard(check, view)
        guarded = blp.alt_response(401, response="UNAUTHORIZED", description=f"no token{when}")(guarded)
        guarded = blp.alt_response(403, response="FORBIDDEN", description=f"a wrong token{when}")(guarded)
        return blp.doc(security=security)(guarded)

    return decorator


def write_access(blp: Blueprint) -> Callable[[F], F]:
    """Require the API token on a route and document it (bearerAuth, 401, 403)."""
    return _access(blp, check_write_token, WRITE_SECURITY, "")


def read_access(blp: Blueprint) -> Callable[[F], F]:
    """Require the predict or the API token on a read once MNIST_PREDICT_TOKEN is set; document it."""
    return _access(blp, check_read_token, READ_SECURITY, " (when MNIST_PREDICT_TOKEN is set)")


def evaluate_access(blp: Blueprint) -> Callable[[F], F]:
    """Require the predict or the API token on an evaluation; document it."""
    return _access(blp, check_evaluate_token, EVALUATE_SECURITY, "")
