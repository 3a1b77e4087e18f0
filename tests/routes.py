"""Every route of the app and the token it takes: the one table the token tests check against.

docs/api.md gives users the same table. A route added without a line here fails
tests/test_openapi.py (the OpenAPI document's security) and tests/reliability/test_security.py
(the answers over HTTP).
"""

from __future__ import annotations

import re

from flask import Flask

#: Who may call a route (services/web/auth.py):
#: open: anyone; read: the predict or the write token once MNIST_PREDICT_TOKEN is set, else anyone;
#: predict: the predict token when set, else anyone (never the write token);
#: evaluate: the predict or the write token, always; write: the write token.
OPEN, READ, PREDICT, EVALUATE, WRITE = "open", "read", "predict", "evaluate", "write"

#: (method, Flask rule) → who may call it.
ROUTES: dict[tuple[str, str], str] = {
    # Health, readiness, metrics, the API description and the dashboard page.
    ("GET", "/healthz"): OPEN,
    ("GET", "/readyz"): OPEN,
    ("GET", "/metrics"): OPEN,
    ("GET", "/v2"): OPEN,
    ("GET", "/v2/health/live"): OPEN,
    ("GET", "/v2/health/ready"): OPEN,
    ("GET", "/openapi.json"): OPEN,
    ("GET", "/docs"): OPEN,
    ("GET", "/docs/static/<path:filename>"): OPEN,
    ("GET", "/"): OPEN,
    ("GET", "/static/<path:filename>"): OPEN,
    # Reads: what reveals or loads a model, a job or a dataset.
    ("GET", "/v1/models"): READ,
    ("GET", "/v1/models/<model>"): READ,
    ("GET", "/v1/models/<model>/versions/<int:version>"): READ,
    ("GET", "/v1/models/<model>/versions/<int:version>/weights"): READ,
    ("GET", "/v1/models/<model>/aliases/<alias>"): READ,
    ("GET", "/v1/models/<model>/rollout"): READ,
    ("GET", "/v1/models/<model>/rollout/rule"): READ,
    ("GET", "/v1/jobs"): READ,
    ("GET", "/v1/jobs/<job_id>"): READ,
    ("GET", "/v1/jobs/<job_id>/events"): READ,
    ("GET", "/v1/models/<model>/predictions"): READ,
    ("GET", "/v1/models/<model>/monitor"): READ,
    ("GET", "/v1/datasets"): READ,
    ("GET", "/v1/datasets/<name>"): READ,
    ("GET", "/v2/models/<model>"): READ,
    ("GET", "/v2/models/<model>/versions/<int:version>"): READ,
    ("GET", "/v2/models/<model>/ready"): READ,
    ("GET", "/v2/models/<model>/versions/<int:version>/ready"): READ,
    # Predictions.
    ("POST", "/v1/models/<model>:predict"): PREDICT,
    ("POST", "/v1/models/<model>/versions/<int:version>:predict"): PREDICT,
    ("POST", "/v1/models/<model>/labels/<alias>:predict"): PREDICT,
    ("POST", "/v2/models/<model>/infer"): PREDICT,
    ("POST", "/v2/models/<model>/versions/<int:version>/infer"): PREDICT,
    ("POST", "/v1/models/<model>/feedback"): PREDICT,
    ("POST", "/v1/models/<model>/versions/<int:version>:evaluate"): EVALUATE,
    # Writes.
    ("POST", "/v1/jobs"): WRITE,
    ("DELETE", "/v1/jobs/<job_id>"): WRITE,
    ("POST", "/v1/models/<model>/versions"): WRITE,
    ("POST", "/v1/models/<model>/rollout"): WRITE,
    ("PUT", "/v1/models/<model>/rollout/rule"): WRITE,
    ("DELETE", "/v1/models/<model>/rollout/rule"): WRITE,
    ("DELETE", "/v1/models/<model>/versions/<int:version>"): WRITE,
    ("PUT", "/v1/models/<model>/aliases/<alias>"): WRITE,
    ("DELETE", "/v1/models/<model>/aliases/<alias>"): WRITE,
    ("PUT", "/v1/models/<model>/shadow"): WRITE,
    ("DELETE", "/v1/models/<model>/shadow"): WRITE,
    ("POST", "/v1/datasets/<name>"): WRITE,
    ("POST", "/v1/datasets/<name>/from-feedback"): WRITE,
    ("DELETE", "/v1/datasets/<name>"): WRITE,
}

#: OpenAPI security of each kind of route (None: the operation declares none).
SECURITY: dict[str, list[dict[str, list[str]]] | None] = {
    OPEN: None,
    READ: [{}, {"predictToken": []}, {"bearerAuth": []}],
    PREDICT: [{}, {"predictToken": []}],
    EVALUATE: [{"predictToken": []}, {"bearerAuth": []}],
    WRITE: [{"bearerAuth": []}],
}


def app_routes(app: Flask) -> set[tuple[str, str]]:
    """Return (method, rule) of every route of `app`, HEAD and OPTIONS aside."""
    return {
        (method, rule.rule)
        for rule in app.url_map.iter_rules()
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}
    }


def openapi_path(rule: str) -> str:
    """Return the OpenAPI form of a Flask rule: /a/<int:b> -> /a/{b}."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def fill(rule: str, values: dict[str, str]) -> str:
    """Return the rule with each <converter:name> replaced by values[name]."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", lambda m: values[m.group(1)], rule)
