"""Paths of the service's routes that the client builds (no third-party imports)."""

from __future__ import annotations


def predict_path(model: str, version: int | None = None, alias: str | None = None) -> str:
    """Return the v1 predict route of a model, one of its versions, or an alias."""
    if version is not None:
        return f"/v1/models/{segment(model)}/versions/{int(version)}:predict"
    if alias is not None:
        return f"/v1/models/{segment(model)}/labels/{segment(alias)}:predict"
    return f"/v1/models/{segment(model)}:predict"


def segment(value: str) -> str:
    """Return a path segment, refusing what would change the path (the server checks names)."""
    text = str(value)
    if not text or any(c in text for c in "/?#%") or text in (".", ".."):
        raise ValueError(f"{text!r} is not a valid name")
    return text
