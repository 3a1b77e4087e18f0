"""The registry through HTTP (real gunicorn and Redis); versions are published directly."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest
import redis

from shared import serialization
from shared.keys import Keys
from shared.registry import Registry
from tests.api_helpers import Live, live_stack, model_blob, version_meta

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """One gunicorn for the module (each test uses its own model name)."""
    with live_stack(redis_url, tmp_path_factory.mktemp("models"), workers=1) as stack:
        yield stack


@pytest.fixture(scope="module")
def registry(live: Live) -> Iterator[Registry]:
    """The registry the server reads, to publish versions the way a worker does."""
    conn = redis.Redis.from_url(live.env.redis_url)
    yield Registry(conn, Keys(live.env.prefix))
    conn.close()


def publish(registry: Registry, model: str, n: int) -> list[int]:
    jobs = [f"job-{model}-{i}" for i in range(n)]
    return [
        registry.publish(model, model_blob(seed=i), version_meta(j), job_id=j) for i, j in enumerate(jobs)
    ]


def test_list_and_describe(live: Live, registry: Registry) -> None:
    v1, v2 = publish(registry, "listed", 2)
    models = {m["name"]: m for m in live.get("/v1/models").json()}
    assert models["listed"] == {"name": "listed", "latest": v2, "versions": 2, "aliases": {}, "splits": {}}

    model = live.get("/v1/models/listed").json()
    assert model["name"] == "listed" and model["latest"] == v2 and model["aliases"] == {}
    assert [v["version"] for v in model["versions"]] == [v1, v2]
    first = model["versions"][0]
    assert first["job_id"] == "job-listed-0" and first["metrics"]["test_accuracy"] == 0.87
    assert first["dataset"]["digest"].startswith("sha256:") and first["aliases"] == []

    detail = live.get(f"/v1/models/listed/versions/{v1}").json()
    assert detail["model"] == "listed" and detail["version"] == v1
    assert detail["lineage"]["job_id"] == "job-listed-0"
    assert detail["lineage"]["dataset"] == version_meta("x")["dataset"]
    assert detail["lineage"]["config"]["hidden"] == [8] and detail["lineage"]["recipe"] is None
    assert detail["history"] == version_meta("x")["history"]
    assert detail["architecture"]["sizes"] == [784, 8, 10]
    assert detail["sha256"] == hashlib.sha256(model_blob(seed=0)).hexdigest()
    assert detail["weights_url"] == f"/v1/models/listed/versions/{v1}/weights"


def test_weights_download(live: Live, registry: Registry) -> None:
    (v,) = publish(registry, "weights", 1)
    url = f"/v1/models/weights/versions/{v}/weights"
    r = live.get(url)
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/octet-stream"
    assert r.headers["Content-Disposition"] == f'attachment; filename="weights-v{v}.npz"'
    assert r.headers["ETag"] == f'"{hashlib.sha256(r.content).hexdigest()}"'
    params, _ = serialization.model_from_bytes(r.content)
    assert params[0].shape == (8, 784)
    assert live.get(url, headers={"If-None-Match": r.headers["ETag"]}).status_code == 304
    assert live.get(url, headers={"If-None-Match": '"other"'}).status_code == 200


def test_corrupt_blob_is_a_clear_503(live: Live, registry: Registry) -> None:
    (v,) = publish(registry, "corrupt", 1)
    registry.redis.set(registry.keys.blob("corrupt", v), b"not the bytes that were published")
    r = live.get(f"/v1/models/corrupt/versions/{v}/weights")
    assert r.status_code == 503
    assert r.json()["code"] == 503 and "sha256" in r.json()["message"]
    registry.redis.set(registry.keys.record("corrupt", v), b"{not json")
    r = live.get(f"/v1/models/corrupt/versions/{v}")
    assert r.status_code == 503 and "unreadable record" in r.json()["message"]


def test_aliases_create_move_rollback_delete(live: Live, registry: Registry) -> None:
    v1, v2 = publish(registry, "aliased", 2)
    auth = live.auth
    r = live.put("/v1/models/aliased/aliases/production", json={"version": v1}, headers=auth)
    assert r.status_code == 200
    assert r.json() == {
        "model": "aliased",
        "alias": "production",
        "version": v1,
        "previous": None,
        "split": None,
    }
    model = live.get("/v1/models/aliased").json()
    assert model["aliases"] == {"production": v1}
    assert [v["aliases"] for v in model["versions"]] == [["production"], []]
    listed = {m["name"]: m for m in live.get("/v1/models").json()}
    assert listed["aliased"]["aliases"] == {"production": v1}

    moved = live.put("/v1/models/aliased/aliases/production", json={"version": v2}, headers=auth).json()
    assert moved["version"] == v2 and moved["previous"] == v1
    assert live.get("/v1/models/aliased/aliases/production").json()["version"] == v2
    assert live.get(f"/v1/models/aliased/versions/{v2}").json()["aliases"] == ["production"]
    back = live.put("/v1/models/aliased/aliases/production", json={"version": v1}, headers=auth).json()
    assert back["version"] == v1 and back["previous"] == v2  # a rollback is a move back

    refused = live.delete(f"/v1/models/aliased/versions/{v1}", headers=auth)
    assert refused.status_code == 409 and refused.json()["code"] == 409
    assert live.get(f"/v1/models/aliased/versions/{v1}").status_code == 200

    assert live.delete("/v1/models/aliased/aliases/production", headers=auth).status_code == 204
    assert live.get("/v1/models/aliased/aliases/production").status_code == 404
    assert live.delete("/v1/models/aliased/aliases/production", headers=auth).status_code == 404
    assert live.delete(f"/v1/models/aliased/versions/{v1}", headers=auth).status_code == 204
    assert live.get(f"/v1/models/aliased/versions/{v1}").status_code == 404
    assert [v["version"] for v in live.get("/v1/models/aliased").json()["versions"]] == [v2]


@pytest.fixture(scope="module")
def one_version(registry: Registry) -> int:
    """Model `aliases-bad` with one version."""
    return publish(registry, "aliases-bad", 1)[0]


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/v1/models/aliases-bad/aliases/production", {"version": 99}, 404),
        ("/v1/models/no-such-model/aliases/production", {"version": 1}, 404),
        ("/v1/models/aliases-bad/aliases/production", {"version": "1"}, 400),
        ("/v1/models/aliases-bad/aliases/production", {"version": 0}, 400),
        ("/v1/models/aliases-bad/aliases/production", {"version": 1.5}, 400),
        ("/v1/models/aliases-bad/aliases/production", {"version": 1, "force": True}, 400),
        ("/v1/models/aliases-bad/aliases/production", {}, 400),
        ("/v1/models/aliases-bad/aliases/production", [1], 400),
        ("/v1/models/aliases-bad/aliases/123", {"version": 1}, 400),
        ("/v1/models/aliases-bad/aliases/Prod", {"version": 1}, 400),
    ],
)
def test_bad_alias_writes(live: Live, one_version: int, path: str, body: object, status: int) -> None:
    r = live.put(path, json=body, headers=live.auth)
    assert r.status_code == status, r.text
    assert r.json()["code"] == status and r.json()["message"]


def test_unknown_things_are_404(live: Live, registry: Registry) -> None:
    (v,) = publish(registry, "known", 1)
    for path in (
        "/v1/models/unknown",
        "/v1/models/unknown/versions/1",
        "/v1/models/unknown/versions/1/weights",
        f"/v1/models/known/versions/{v + 100}",
        f"/v1/models/known/versions/{v + 100}/weights",
        "/v1/models/known/aliases/staging",
        "/v1/models/known/versions/one",
        "/v1/models/known/versions/-1",
    ):
        r = live.get(path)
        assert r.status_code == 404, path
        assert r.json()["code"] == 404
    r = live.get("/v1/models/known/versions/0")
    assert r.status_code == 400 and "positive" in r.json()["message"]
    r = live.delete(f"/v1/models/known/versions/{v + 100}", headers=live.auth)
    assert r.status_code == 404
