"""The OpenAPI document describes every route; the docs page and its offline assets load."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from services.app import create_app
from tests.routes import OPEN, ROUTES, SECURITY, app_routes, openapi_path

#: Routes of the docs and the dashboard page, not part of the API.
UNDOCUMENTED = {
    "dashboard.static",
    "_swagger_static",
    "api-docs.openapi_json",
    "api-docs.openapi_swagger_ui",
    "dashboard.index",
}
METHODS = {"get", "put", "post", "delete", "patch"}


@pytest.fixture(scope="module")
def app() -> Flask:
    return create_app({"api_token": "docs-token", "MODEL_WATCHER": False})


@pytest.fixture(scope="module")
def client(app: Flask) -> Iterator[FlaskClient]:
    with app.test_client() as c:
        yield c


@pytest.fixture(scope="module")
def spec(client: FlaskClient) -> dict[str, Any]:
    r = client.get("/openapi.json")
    assert r.status_code == 200 and r.content_type == "application/json"
    return r.get_json()


def refs(node: Any) -> Iterator[str]:
    """Yield every $ref in a document."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def resolve(spec: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = spec
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def test_document_is_openapi_3(spec: dict[str, Any]) -> None:
    try:
        from openapi_spec_validator import validate  # type: ignore[import-not-found]
    except ImportError:
        validate = None
    if validate is not None:
        validate(spec)
    assert re.fullmatch(r"3\.0\.\d+", spec["openapi"])
    assert spec["info"]["title"] == "mnist-service" and spec["info"]["version"]
    schemes = spec["components"]["securitySchemes"]
    for name, token in (("bearerAuth", "MNIST_API_TOKEN"), ("predictToken", "MNIST_PREDICT_TOKEN")):
        assert {k: v for k, v in schemes[name].items() if k != "description"} == {
            "type": "http",
            "scheme": "bearer",
        }
        assert token in schemes[name]["description"]
    for ref in set(refs(spec)):
        resolve(spec, ref)  # KeyError if dangling
    for path, item in spec["paths"].items():
        assert path.startswith("/")
        for method, op in item.items():
            if method not in METHODS:
                continue
            assert op["responses"], (method, path)
            assert op.get("summary"), f"{method.upper()} {path} has no summary"
            for code in op["responses"]:
                assert code == "default" or re.fullmatch(r"[1-5]\d\d", code), code
            declared = {
                p["name"] for p in op.get("parameters", []) + item.get("parameters", []) if p["in"] == "path"
            }
            assert declared == set(re.findall(r"{([^}]+)}", path)), (method, path, declared)


def test_every_route_is_documented(app: Flask, spec: dict[str, Any]) -> None:
    for rule in app.url_map.iter_rules():
        if rule.endpoint in UNDOCUMENTED:
            continue
        path = openapi_path(rule.rule)
        assert path in spec["paths"], f"{rule.rule} is not in /openapi.json"
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            assert method.lower() in spec["paths"][path], f"{method} {rule.rule} is not documented"


def test_every_route_has_a_token_rule(app: Flask) -> None:
    missing = sorted(app_routes(app) - set(ROUTES))
    assert missing == [], f"add these routes to tests/routes.py (and docs/api.md's table): {missing}"
    gone = sorted(set(ROUTES) - app_routes(app))
    assert gone == [], f"tests/routes.py lists routes the app no longer has: {gone}"


def test_each_operation_declares_the_token_it_takes(spec: dict[str, Any]) -> None:
    for (method, rule), rule_kind in ROUTES.items():
        path = openapi_path(rule)
        if path not in spec["paths"]:
            assert rule_kind == OPEN, f"{method} {rule} is guarded but not in /openapi.json"
            continue
        op = spec["paths"][path][method.lower()]
        assert op.get("security") == SECURITY[rule_kind], (method, path, rule_kind, op.get("security"))
        if rule_kind != OPEN:
            assert {"401", "403"} <= set(op["responses"]), (method, path)


def test_responses_have_schemas(spec: dict[str, Any]) -> None:
    job = spec["paths"]["/v1/jobs/{job_id}"]["get"]["responses"]["200"]
    assert job["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Job"}
    props = resolve(spec, "#/components/schemas/Job")["properties"]
    assert {"id", "status", "progress", "result", "error"} <= set(props)
    body = spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"model", "dataset", "hidden", "optimizer", "epochs"} <= set(
        resolve(spec, body["$ref"])["properties"]
    )
    error = resolve(spec, "#/components/responses/NOT_FOUND")["content"]["application/json"]["schema"]
    assert {"code", "status", "message", "errors"} <= set(resolve(spec, error["$ref"])["properties"])
    events = spec["paths"]["/v1/jobs/{job_id}/events"]["get"]["responses"]["200"]
    assert "text/event-stream" in events["content"]
    weights = spec["paths"]["/v1/models/{model}/versions/{version}/weights"]["get"]["responses"]["200"]
    assert "application/octet-stream" in weights["content"] and "ETag" in weights["headers"]
    upload = spec["paths"]["/v1/datasets/{name}"]["post"]["requestBody"]["content"]
    assert {"application/octet-stream", "text/csv", "multipart/form-data"} <= set(upload)


def test_docs_page_and_its_assets_load(client: FlaskClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200 and page.content_type.startswith("text/html")
    html = page.get_data(as_text=True)
    assets = re.findall(r'(?:src|href)="(/docs/static/[^"]+)"', html)
    assert any(a.endswith(".js") for a in assets) and any(a.endswith(".css") for a in assets)
    for asset in assets:
        r = client.get(asset)
        assert r.status_code == 200 and r.data, asset
    assert "/openapi.json" in html
    assert client.get("/docs/static/../../../../etc/passwd").status_code == 404
