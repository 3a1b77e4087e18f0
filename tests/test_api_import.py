"""Importing model files and splitting aliases through HTTP: the app's test client on a real Redis."""

from __future__ import annotations

import hashlib
import io
import zipfile
from typing import Any

import numpy as np
import pytest
from flask.testing import FlaskClient

from shared import serialization
from shared.keys import Keys
from shared.registry import Registry
from tests.app_fixtures import LIMIT, NPZ, layers, meta, npz, params, publish_two
from tests.live_fixtures import StackEnv


def test_import_publishes_a_version_marked_imported(app_client: FlaskClient, app_env: StackEnv) -> None:
    data = npz({**layers(params(label=7)), "meta": meta(job_id="theirs-1", profile={"mean": [1]})})
    r = app_client.post(
        "/v1/models/imported/versions?alias=production", data=data, headers={**NPZ, **app_env.auth}
    )
    assert r.status_code == 201, r.get_json()
    body = r.get_json()
    assert r.headers["Location"].endswith(f"/v1/models/imported/versions/{body['version']}")
    assert body["lineage"]["source"] == "import"
    assert body["lineage"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert body["lineage"]["job_id"] is None and body["lineage"]["recipe"] == "elsewhere"
    assert body["aliases"] == ["production"] and body["metrics"] == {"test_accuracy": 0.9}
    assert body["architecture"]["sizes"] == [784, 16, 10]
    # Stored as the documented model file, its meta carrying the lineage, not the foreign job.
    registry = Registry(app_client.application.extensions["mnist"].redis, Keys(app_env.prefix))
    blob, record = registry.get_blob("imported", body["version"])
    stored, stored_meta = serialization.model_from_bytes(blob)
    assert all(np.array_equal(a, b) for a, b in zip(stored, params(label=7), strict=True))
    assert stored_meta["lineage"]["source"] == "import" and "job_id" not in stored_meta
    assert "profile" not in record.metadata
    # And it serves: the production alias names it.
    answer = app_client.post("/v1/models/imported:predict", json={"instances": [[0] * 784]})
    assert answer.status_code == 200
    assert answer.get_json()["model_version"] == body["version"]
    assert answer.get_json()["predictions"][0]["label"] == 7


def test_float64_and_deeper_networks_import(app_client: FlaskClient, app_env: StackEnv) -> None:
    rng = np.random.default_rng(1)
    deep = [
        rng.standard_normal((32, 784)),
        np.zeros(32),
        rng.standard_normal((16, 32)),
        np.zeros(16),
        rng.standard_normal((10, 16)),
        np.zeros(10),
    ]
    data = npz({**layers(deep), "meta": meta()}, compressed=True)
    r = app_client.post("/v1/models/deep/versions", data=data, headers={**NPZ, **app_env.auth})
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["architecture"]["sizes"] == [784, 32, 16, 10]


def bad_files() -> dict[str, tuple[bytes, int, str]]:
    """Return name -> (body, status, part of the message) of files that must be refused."""
    good = layers(params())
    nan = [p.copy() for p in params()]
    nan[0][3, 5] = np.nan
    wide = [p.copy() for p in params()]
    wide[0] = np.zeros((16, 783), np.float32)
    bomb = {
        **good,
        "W1": np.zeros((1000, 784)),
        "b1": np.zeros(1000),
        "W2": np.zeros((10, 1000)),
        "meta": meta(),
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("W1.npy", b"\x93NUMPY\x01\x00\x10\x00{'descr': '<f4'}  \n")
    return {
        "not a zip": (b"hello, this is not a model", 400, "not a zip archive"),
        "a broken zip": (b"PK\x03\x04" + b"\x00" * 100, 400, "not a valid .npz"),
        "pickled meta": (npz({**good, "meta": np.array([{"a": 1}], dtype=object)}), 400, "pickled data"),
        "pickled weights": (
            npz({**good, "W1": np.array([1, "x"], dtype=object), "meta": meta()}),
            400,
            "pickled",
        ),
        "no meta": (npz(good), 400, "meta"),
        "meta not JSON": (npz({**good, "meta": np.array("{nope")}), 400, "not JSON"),
        "meta nested deep": (npz({**good, "meta": np.array("[" * 100_000 + "]" * 100_000)}), 400, "not JSON"),
        "integer weights": (npz({**good, "W1": np.zeros((16, 784), np.int32), "meta": meta()}), 400, "float"),
        "wrong shapes": (npz({**layers(wide), "meta": meta()}), 400, "do not follow from input 784"),
        "9 outputs": (npz({**good, "W2": np.zeros((9, 16), np.float32), "meta": meta()}), 400, "shapes"),
        "NaN": (npz({**layers(nan), "meta": meta()}), 400, "NaN"),
        "a stranger member": (npz({**good, "meta": meta(), "evil": np.zeros(3)}), 400, "holds ['evil.npy']"),
        "a layer missing": (
            npz({"W1": good["W1"], "b1": good["b1"], "W3": good["W2"], "meta": meta()}),
            400,
            "",
        ),
        "a bad header": (buf.getvalue(), 400, "bad .npy header"),
        "inflates too far": (npz(bomb, compressed=True), 413, "inflates to"),
        "too big": (b"PK\x03\x04" + bytes(LIMIT), 413, "larger than"),
        "empty": (b"", 400, "empty"),
    }


@pytest.mark.parametrize("case", list(bad_files()))
def test_bad_model_files_are_refused_with_4xx(app_client: FlaskClient, app_env: StackEnv, case: str) -> None:
    data, status, why = bad_files()[case]
    r = app_client.post("/v1/models/refused/versions", data=data, headers={**NPZ, **app_env.auth})
    assert r.status_code == status, r.get_json()
    body = r.get_json()
    assert body["code"] == status and why in body["message"]
    assert app_client.get("/v1/models/refused").status_code == 404  # nothing published


def test_import_needs_the_token_a_model_file_and_valid_names(
    app_client: FlaskClient, app_env: StackEnv
) -> None:
    data = npz({**layers(params()), "meta": meta()})
    assert app_client.post("/v1/models/m/versions", data=data, headers=NPZ).status_code == 401
    wrong = {**NPZ, "Authorization": "Bearer nope"}
    assert app_client.post("/v1/models/m/versions", data=data, headers=wrong).status_code == 403
    as_json = {"Content-Type": "application/json", **app_env.auth}
    assert app_client.post("/v1/models/m/versions", data=data, headers=as_json).status_code == 415
    assert (
        app_client.post("/v1/models/-m/versions", data=data, headers={**NPZ, **app_env.auth}).status_code
        == 400
    )
    assert (
        app_client.post(
            "/v1/models/m/versions?alias=12", data=data, headers={**NPZ, **app_env.auth}
        ).status_code
        == 400
    )
    assert app_client.get("/v1/models/m").status_code == 404


# --- splits over HTTP ------------------------------------------------------------------------------
def test_an_alias_split_over_http(app_client: FlaskClient, app_env: StackEnv) -> None:
    base, canary = publish_two(app_client, app_env, "split")
    url = "/v1/models/split/aliases/production"
    r = app_client.put(
        url, json={"versions": {str(base): 3, str(canary): 1}, "reason": "try"}, headers=app_env.auth
    )
    assert r.status_code == 200, r.get_json()
    split = {str(base): 0.75, str(canary): 0.25}
    assert r.get_json() == {
        "model": "split",
        "alias": "production",
        "version": base,
        "previous": base,
        "split": split,
    }
    model = app_client.get("/v1/models/split").get_json()
    assert model["splits"] == {"production": split} and model["aliases"] == {"production": base}
    listed = {m["name"]: m for m in app_client.get("/v1/models", headers=app_env.auth).get_json()}
    assert listed["split"]["splits"] == {"production": split}
    assert listed["split"]["aliases"] == {"production": base}
    assert [v["aliases"] for v in model["versions"]] == [["production"], ["production"]]
    assert app_client.get(url).get_json()["split"] == split
    # Predictions route by key: the answer names the version that computed it.
    seen = {}
    for i in range(200):
        answer = app_client.post(
            "/v1/models/split:predict", json={"instances": [[0] * 784]}, headers={"X-Routing-Key": str(i)}
        )
        body = answer.get_json()
        assert body["predictions"][0]["label"] == (4 if body["model_version"] == base else 5)
        seen[str(i)] = body["model_version"]
    assert set(seen.values()) == {base, canary}
    again = app_client.post(
        "/v1/models/split:predict", json={"instances": [[0] * 784]}, headers={"X-Request-Id": "7"}
    )
    assert again.get_json()["model_version"] == seen["7"]  # the app_client's request id is the key too
    v2 = app_client.post(
        "/v2/models/split/infer",
        json={"inputs": [{"name": "input", "shape": [1, 784], "datatype": "UINT8", "data": [0] * 784}]},
        headers={"X-Routing-Key": "7"},
    )
    assert v2.status_code == 200, v2.get_json()
    assert v2.get_json()["model_version"] == str(seen["7"])
    # A plain alias clears the split.
    assert app_client.put(url, json={"version": canary}, headers=app_env.auth).get_json()["split"] is None
    assert app_client.get("/v1/models/split").get_json()["splits"] == {}


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"versions": {"1": 0.5, "99": 0.5}}, 404),
        ({"versions": {"1": 0, "2": 1}}, 400),
        ({"versions": {"1": "half", "2": 1}}, 400),
        ({"versions": {"x": 1, "2": 1}}, 400),
        ({"versions": {}}, 400),
        ({"versions": {str(i): 1 for i in range(1, 12)}}, 400),
        ({"version": 1, "versions": {"1": 1}}, 400),
        ({}, 400),
        ({"versions": {"1": 0.5, "2": 0.5}, "reason": "x" * 501}, 400),
    ],
)
def test_bad_splits_are_refused(
    app_client: FlaskClient, app_env: StackEnv, body: dict[str, Any], status: int
) -> None:
    base, canary = publish_two(app_client, app_env, "badsplit")
    r = app_client.put("/v1/models/badsplit/aliases/production", json=body, headers=app_env.auth)
    assert r.status_code == status, r.get_json()
    assert app_client.get("/v1/models/badsplit").get_json()["splits"] == {}
