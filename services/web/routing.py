"""The routing key of a prediction request: what keeps one client on one version of a traffic split."""

from __future__ import annotations

from flask import request

#: Header naming the routing key (any text: a user, a session); hashed, never stored.
ROUTING_HEADER = "X-Routing-Key"


def routing_key() -> str | None:
    """Return the request's routing key: X-Routing-Key, else the client's X-Request-Id, else None (random)."""
    environ = request.environ  # the raw headers: this runs on every prediction
    return environ.get("HTTP_X_ROUTING_KEY") or environ.get("HTTP_X_REQUEST_ID") or None
