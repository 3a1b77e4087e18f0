"""`POST /v1/models/<m>/versions/<v>:evaluate` through HTTP (real gunicorn and Redis).

Every figure is checked against the same weights applied locally with `shared.mlp`, so the test
needs no trained model: random weights misclassify plenty, which exercises the capped list.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from services.api.evaluation import MAX_LIMIT, DatasetCache, dataset_bytes
from services.app import create_app
from shared import datasets, mlp, serialization
from shared.dataset_store import DatasetStore
from shared.errors import DatasetNotFound, InvalidInput
from tests.api_helpers import Live, live_stack, model_blob, sample, sample_npz, version_meta

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """One gunicorn for the module, with two versions of model `scored` and an uploaded dataset."""
    with live_stack(redis_url, tmp_path_factory.mktemp("evaluation"), workers=1) as stack:
        registry = stack.registry()
        for seed in (0, 1):
            registry.publish("scored", model_blob(hidden=16, seed=seed), version_meta(f"job-{seed}", 16))
        r = stack.upload(
            "small-upload", sample_npz(n_train=120, n_test=60), headers={"Content-Type": "application/x-npz"}
        )
        assert r.status_code == 201, r.text
        yield stack


def evaluate(live: Live, body: Any, model: str = "scored", version: int = 1, **kw: Any):
    """POST an evaluation with the write token (an evaluation always needs a token)."""
    kw["headers"] = {**live.auth, **kw.get("headers", {})}
    return live.post(f"/v1/models/{model}/versions/{version}:evaluate", json=body, **kw)


def local(seed: int, x: np.ndarray) -> np.ndarray:
    """Return the probabilities the version published with `seed` gives images x."""
    params, _ = serialization.model_from_bytes(model_blob(hidden=16, seed=seed))
    return mlp.predict_proba(params, mlp.scale_pixels(x))


def test_figures_match_the_weights_applied_locally(live: Live) -> None:
    r = evaluate(live, {"dataset": "mnist-sample", "limit": 300, "max_misclassified": 20})
    assert r.status_code == 200, r.text
    body = r.json()
    ds = sample()
    assert ds.x_test is not None and ds.y_test is not None
    x, y = ds.x_test[:300], ds.y_test[:300]
    probs = local(0, x)
    predicted = probs.argmax(axis=1)

    assert body["model"] == "scored" and body["model_version"] == 1 and body["count"] == 300
    assert body["dataset"] == {
        "name": "mnist-sample",
        "digest": ds.digest,
        "split": "test",
        "classes": list("0123456789"),
    }
    assert body["accuracy"] == pytest.approx(float((predicted == y).mean()))
    confusion = np.array(body["confusion_matrix"])
    assert confusion.shape == (10, 10) and confusion.sum() == 300
    assert confusion.sum(axis=1).tolist() == np.bincount(y, minlength=10).tolist()
    assert np.trace(confusion) / 300 == pytest.approx(body["accuracy"])
    for c, acc in enumerate(body["per_class_accuracy"]):
        assert acc == pytest.approx(confusion[c, c] / confusion[c].sum())

    wrong = np.flatnonzero(predicted != y)
    assert body["misclassified_count"] == wrong.size > 20
    assert [m["index"] for m in body["misclassified"]] == wrong[:20].tolist()  # capped, first ones first
    for m in body["misclassified"]:
        pixels = np.frombuffer(base64.b64decode(m["pixels"]), dtype=np.uint8)
        assert pixels.tolist() == x[m["index"]].tolist()
        assert m["label"] == y[m["index"]] and m["predicted"] == predicted[m["index"]] != m["label"]
        assert m["probabilities"] == pytest.approx(probs[m["index"]].tolist(), abs=1e-5)


def test_train_split_other_version_and_an_upload(live: Live) -> None:
    body = evaluate(live, {"dataset": "mnist-sample", "split": "train", "limit": 50}, version=2).json()
    ds = sample()
    predicted = local(1, ds.x_train[:50]).argmax(axis=1)
    assert body["model_version"] == 2 and body["dataset"]["split"] == "train" and body["count"] == 50
    assert body["accuracy"] == pytest.approx(float((predicted == ds.y_train[:50]).mean()))
    assert len(body["misclassified"]) == min(100, body["misclassified_count"])  # default cap

    upload = evaluate(live, {"dataset": "small-upload", "limit": 1000}).json()
    assert upload["count"] == 60 and upload["dataset"]["name"] == "small-upload"  # the split is shorter
    assert upload["dataset"]["digest"] == live.get("/v1/datasets/small-upload").json()["digest"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"dataset": "mnist-sample", "limit": 0}, "limit"),
        ({"dataset": "mnist-sample", "limit": MAX_LIMIT + 1}, "limit"),
        ({"dataset": "mnist-sample", "limit": "5"}, "limit"),
        ({"dataset": "mnist-sample", "limit": 2.5}, "limit"),
        ({"dataset": "mnist-sample", "split": "validation"}, "split"),
        ({"dataset": "mnist-sample", "max_misclassified": 101}, "max_misclassified"),
        ({"dataset": "mnist-sample", "labels": True}, "labels"),
        ({"dataset": "/etc/passwd"}, "dataset"),
        ({"dataset": "../small-upload"}, "dataset"),
        ({"dataset": "no-such-set"}, "dataset"),
    ],
)
def test_bad_requests_name_the_field(live: Live, body: dict[str, Any], field: str) -> None:
    r = evaluate(live, body)
    assert r.status_code == 400, r.text
    assert field in r.json()["errors"], r.json()


def test_missing_things_and_wrong_media(live: Live) -> None:
    assert evaluate(live, {}, model="nobody").status_code == 404
    assert evaluate(live, {}, version=99).status_code == 404
    r = live.post(
        "/v1/models/scored/versions/1:evaluate",
        data="dataset=x",
        headers={**live.auth, "Content-Type": "text/plain"},
    )
    assert r.status_code == 415
    assert live.get("/v1/models/scored/versions/1:evaluate").status_code == 405


def test_a_damaged_blob_is_a_503(live: Live) -> None:
    registry = live.registry()
    v = registry.publish("damaged", model_blob(), version_meta("job-d"))
    registry.redis.set(registry.keys.blob("damaged", v), b"not the published bytes")
    r = evaluate(live, {"limit": 10}, model="damaged", version=v)
    assert r.status_code == 503 and "sha256" in r.json()["message"]


def test_a_split_that_is_missing_is_a_400(live: Live) -> None:
    ds = sample()
    data = datasets.make_dataset("train-only", ds.x_train[:30], ds.y_train[:30], source="test")
    DatasetStore(live.registry().redis, live.registry().keys).put(data)
    r = evaluate(live, {"dataset": "train-only"})
    assert r.status_code == 400 and "split" in r.json()["errors"]
    assert evaluate(live, {"dataset": "train-only", "split": "train"}).json()["count"] == 30


@pytest.mark.parametrize("predict_token", ["p", ""])
def test_it_needs_the_predict_or_the_write_token(redis_url: str, predict_token: str) -> None:
    # It loads a model and a dataset into the process: never for anyone who can reach the port,
    # with or without a predict token (a predict token then opens it too).
    config = {
        "api_token": "w",
        "predict_token": predict_token,
        "redis_url": redis_url,
        "MODEL_WATCHER": False,
    }
    client = create_app(config).test_client()
    url = "/v1/models/none/versions/1:evaluate"
    assert client.post(url, json={}).status_code == 401
    assert client.post(url, json={}, headers={"Authorization": "Bearer x"}).status_code == 403
    assert client.post(url, json={}, headers={"Authorization": "Bearer w"}).status_code == 404
    with_p = client.post(url, json={}, headers={"Authorization": "Bearer p"}).status_code
    assert with_p == (404 if predict_token else 403)


class FakeStore:
    """Uploaded datasets by name, counting reads."""

    def __init__(self) -> None:
        self.data: dict[str, datasets.Dataset] = {}
        self.reads = 0

    def info(self, name: str) -> dict[str, Any]:
        if name not in self.data:
            raise DatasetNotFound(f"no uploaded dataset named {name!r}")
        return {"digest": self.data[name].digest}

    def get(self, name: str) -> datasets.Dataset | None:
        self.reads += 1
        return self.data.get(name)


def tiny(name: str, seed: int) -> datasets.Dataset:
    rng = np.random.default_rng(seed)
    return datasets.make_dataset(
        name, rng.integers(0, 256, (5, 784), dtype=np.uint8), np.arange(5, dtype=np.uint8), source="test"
    )


#: Bytes of a `tiny` dataset: 5 images of 784 pixels and their 5 labels.
TINY_BYTES = 5 * 785


def test_dataset_cache_is_a_small_lru_keyed_by_digest() -> None:
    store = FakeStore()
    cache = DatasetCache(max_bytes=2 * TINY_BYTES)  # two of them
    store.data = {"a": tiny("a", 0), "b": tiny("b", 1), "c": tiny("c", 2)}
    assert cache.get("a", store) is cache.get("a", store)  # type: ignore[arg-type]
    assert store.reads == 1
    cache.get("b", store)  # type: ignore[arg-type]
    cache.get("a", store)  # type: ignore[arg-type]  # a is now the most recent
    cache.get("c", store)  # type: ignore[arg-type]  # evicts b
    assert store.reads == 3
    cache.get("a", store)  # type: ignore[arg-type]
    assert store.reads == 3
    cache.get("b", store)  # type: ignore[arg-type]
    assert store.reads == 4
    store.data["a"] = tiny("a", 9)  # deleted and uploaded again: a new digest, a new read
    assert cache.get("a", store).digest == store.data["a"].digest  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        cache.get("gone", store)  # type: ignore[arg-type]


def test_dataset_cache_keeps_its_bytes_and_not_a_dataset_larger_than_them() -> None:
    store = FakeStore()
    cache = DatasetCache(max_bytes=3 * TINY_BYTES - 1)  # room for two
    store.data = {name: tiny(name, seed) for seed, name in enumerate("abc")}
    for name in "abc":
        cache.get(name, store)  # type: ignore[arg-type]
        assert cache.held <= cache.max_bytes
    assert cache.held == 2 * TINY_BYTES
    rng = np.random.default_rng(3)
    store.data["big"] = datasets.make_dataset(
        "big", rng.integers(0, 256, (8, 784), np.uint8), np.arange(8, dtype=np.uint8),
        rng.integers(0, 256, (8, 784), np.uint8), np.arange(8, dtype=np.uint8), source="test",
    )  # fmt: skip
    assert dataset_bytes(store.data["big"]) == 16 * 785 > cache.max_bytes
    reads = store.reads
    assert cache.get("big", store).digest == store.data["big"].digest  # type: ignore[arg-type]
    cache.get("big", store)  # type: ignore[arg-type]
    assert store.reads == reads + 2  # read for each request, never kept
    assert cache.held == 2 * TINY_BYTES
    cache.get("c", store)  # type: ignore[arg-type]
    assert store.reads == reads + 2  # what was kept is still there
