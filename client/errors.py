"""`ClientError`: an error answer of the service, or a failure to reach it (no third-party imports)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class ClientError(Exception):
    """An error answer of the service, or a failure to reach it.

    `status` and `code` are the service's (e.g. "Not Found" and 404); `code` is None when no
    answer came back. `errors` maps fields to their problems for validation errors.
    """

    def __init__(
        self, status: str, code: int | None, message: str, errors: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors

    def __str__(self) -> str:
        head = f"{self.code} {self.status}: " if self.code is not None else ""
        tail = f" ({flatten(self.errors)})" if self.errors else ""
        return f"{head}{self.message}{tail}"


def error_from_answer(code: int, reason: str, body: bytes) -> ClientError:
    """Return the ClientError that an error answer describes (the service's {code, status, message})."""
    import json  # only for an error: `mnist predict` does not import it otherwise

    status = reason or "Error"
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, or not UTF-8: a proxy's page
        answer = None
    if not isinstance(answer, dict):
        text = body.decode("utf-8", "replace").strip().splitlines()
        return ClientError(status, code, text[0][:200] if text else f"HTTP {code}")
    message = answer.get("message") or answer.get("error") or f"HTTP {code}"
    errors = answer.get("errors") if isinstance(answer.get("errors"), dict) else None
    return ClientError(str(answer.get("status") or status), code, str(message), errors)


def flatten(messages: Any, name: Callable[[str], str] = str) -> str:
    """Return nested validation messages ({field: [message, …]}) on one line, fields through `name`."""
    if isinstance(messages, dict):
        return "; ".join(f"{name(str(k))}: {flatten(v, name)}" for k, v in messages.items())
    if isinstance(messages, list):
        return ", ".join(flatten(m, name) for m in messages)
    return str(messages)
