"""The web dashboard: `/` serves static/index.html; its scripts and styles are under /static.

A plain Flask blueprint, kept out of the OpenAPI document: the page is a client of the API, not
part of it. The page loads only same-origin scripts, so a strict Content-Security-Policy holds.
"""

from __future__ import annotations

from flask import Blueprint, Response, send_from_directory

blp = Blueprint("dashboard", __name__, static_folder="static", static_url_path="/static")

#: Same-origin scripts, styles and requests only (`data:` images: the empty favicon).
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


@blp.get("/")
def index() -> Response:
    """Serve the dashboard page."""
    assert blp.static_folder is not None
    response = send_from_directory(blp.static_folder, "index.html", max_age=0)
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response
