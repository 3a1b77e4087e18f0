"""A dataset from feedback: the prediction log joined with feedback labels, stored, trained on.

The log and the labels are written here directly, in the entry format of `Keys.prediction_log`
(the recorder that writes them in production is the prediction service's), so that each test
knows exactly which entries are live, shadow, labelled or damaged.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import redis

from client.cli import main as mnist
from shared import datasets, feedback_dataset
from shared.dataset_store import DatasetStore
from shared.errors import PayloadTooLarge
from shared.keys import Keys
from tests.api_helpers import SMALL_JOB, Live, live_stack

pytestmark = pytest.mark.slow


def log(
    conn: redis.Redis,
    keys: Keys,
    model: str,
    images: np.ndarray,
    truth: np.ndarray | None,
    *,
    version: int = 1,
    kind: str = "live",
) -> list[str]:
    """Log `images` (n, 784) uint8 as predictions of `model`, with `truth` as feedback labels if given.

    Return the request ids. The predicted label is the true one shifted by one (always wrong):
    the dataset must take the feedback's label, never the prediction's.
    """
    ids = [f"req-{uuid.uuid4().hex[:12]}" for _ in images]
    with conn.pipeline(transaction=False) as pipe:
        for i, (rid, image) in enumerate(zip(ids, images, strict=True)):
            true = 0 if truth is None else int(truth[i])
            probs = np.full(10, 0.01, "<f4")
            probs[(true + 1) % 10] = 0.91
            fields = {
                "id": rid,
                "version": str(version),
                "label": str((true + 1) % 10),
                "kind": kind,
                "probabilities": probs.tobytes(),
                "pixels": image.astype(np.uint8).tobytes(),
            }
            pipe.xadd(keys.prediction_log(model), fields)  # type: ignore[arg-type]
            if truth is not None:
                pipe.hset(keys.feedback_labels(model), rid, str(true))
        pipe.execute()
    return ids


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    data = datasets.load("mnist-sample")
    assert data.x_test is not None and data.y_test is not None
    return data.x_test, data.y_test


# --- reading the log ----------------------------------------------------------------------------
def test_read_joins_live_labelled_entries_across_pages(
    redis_client: redis.Redis,
    keys: Keys,
    digits: tuple[np.ndarray, np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    x, y = digits
    monkeypatch.setattr(feedback_dataset, "PAGE", 7)  # pages end inside every kind of run below
    log(redis_client, keys, "m", x[:20], y[:20], version=1)
    log(redis_client, keys, "m", x[20:30], None, version=1)  # no feedback
    log(redis_client, keys, "m", x[30:40], y[30:40], version=2, kind="shadow")  # never served
    log(redis_client, keys, "m", x[40:55], y[40:55], version=2)
    found = feedback_dataset.read(redis_client, keys, "m", version=None, max_images=1000)
    assert found.scanned == 55 and found.skipped == 0
    np.testing.assert_array_equal(found.pixels, np.concatenate([x[:20], x[40:55]]))
    np.testing.assert_array_equal(found.labels, np.concatenate([y[:20], y[40:55]]))
    two = feedback_dataset.read(redis_client, keys, "m", version=2, max_images=1000)
    np.testing.assert_array_equal(two.labels, y[40:55])
    assert feedback_dataset.read(redis_client, keys, "m", version=3, max_images=1000).labels.size == 0
    assert feedback_dataset.read(redis_client, keys, "other", version=None, max_images=1000).scanned == 0


def test_read_skips_damaged_entries_and_stops_past_its_limit(
    redis_client: redis.Redis, keys: Keys, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = digits
    ids = log(redis_client, keys, "m", x[:5], y[:5])
    redis_client.hset(keys.feedback_labels("m"), ids[1], "12")  # not a digit label
    redis_client.xadd(
        keys.prediction_log("m"), {"id": "short", "version": "1", "kind": "live", "pixels": b"\0" * 10}
    )
    redis_client.hset(keys.feedback_labels("m"), "short", "3")
    found = feedback_dataset.read(redis_client, keys, "m", version=None, max_images=4)
    assert found.skipped == 2
    np.testing.assert_array_equal(found.labels, y[[0, 2, 3, 4]])
    with pytest.raises(PayloadTooLarge, match="more than 3 labelled images"):
        feedback_dataset.read(redis_client, keys, "m", version=None, max_images=3)


# --- over HTTP, with a worker -------------------------------------------------------------------
@pytest.fixture(scope="module")
def live(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    with live_stack(redis_url, tmp_path_factory.mktemp("feedback"), workers=1) as stack:
        yield stack


@pytest.fixture(scope="module")
def conn(live: Live) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(live.env.redis_url)
    yield client
    client.close()


def from_feedback(live: Live, name: str, **body: object) -> dict:
    r = live.post(f"/v1/datasets/{name}/from-feedback", json=body, headers=live.auth)
    return {**r.json(), "http": r.status_code}


def test_a_dataset_from_feedback_trains_a_version_that_carries_its_digest(
    live: Live, conn: redis.Redis, digits: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    x, y = digits
    keys = Keys(live.env.prefix)
    log(conn, keys, "loop", x[:300], y[:300], version=1)
    log(conn, keys, "loop", x[300:400], None, version=1)
    r = live.post(
        "/v1/datasets/from-loop/from-feedback",
        json={"model": "loop", "merge": "mnist-sample"},
        headers=live.auth,
    )
    assert r.status_code == 201, r.text
    assert r.headers["Location"].endswith("/v1/datasets/from-loop")
    info = r.json()
    assert info["kind"] == "uploaded" and info["train_size"] == 300 + 4000 and info["test_size"] == 1000
    assert info["origin"] == {
        "kind": "feedback",
        "model": "loop",
        "version": None,
        "merged": "mnist-sample",
        "feedback_images": 300,
        "scanned": 400,
        "skipped": 0,
    }
    assert info["source"] == "feedback labels of loop (every version) merged with mnist-sample"
    assert live.get("/v1/datasets/from-loop").json() == info
    # Stored as an upload is: the feedback's images with their true labels, then the merged ones.
    stored = DatasetStore(conn, keys).get("from-loop")
    assert stored is not None and stored.digest == info["digest"]
    sample = datasets.load("mnist-sample")
    np.testing.assert_array_equal(stored.x_train[:300], x[:300])
    np.testing.assert_array_equal(stored.y_train, np.concatenate([y[:300], sample.y_train]))
    assert stored.x_test is not None and np.array_equal(stored.x_test, sample.x_test)

    done = live.train({**SMALL_JOB, "dataset": "from-loop", "model": "retrained", "hidden": [16]}, tmp_path)
    assert done["status"] == "finished", done
    version = live.get(f"/v1/models/retrained/versions/{done['result']['version']}").json()
    lineage = version["lineage"]["dataset"]
    assert lineage["name"] == "from-loop" and lineage["digest"] == info["digest"]
    assert "feedback labels of loop" in lineage["source"]


def test_one_versions_feedback_without_merging(
    live: Live, conn: redis.Redis, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = digits
    keys = Keys(live.env.prefix)
    log(conn, keys, "two", x[:30], y[:30], version=1)
    log(conn, keys, "two", x[30:50], y[30:50], version=2)
    got = from_feedback(live, "two-v2", model="two", version=2)
    assert got["http"] == 201, got
    assert got["train_size"] == 20 and got["test_size"] == 0
    assert got["origin"]["version"] == 2 and got["origin"]["merged"] is None


def test_the_cli_and_the_client_build_one(
    live: Live, conn: redis.Redis, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = digits
    log(conn, Keys(live.env.prefix), "cli", x[:12], y[:12])
    out = io.StringIO()
    with redirect_stdout(out):
        status = mnist(
            [
                "datasets",
                "from-feedback",
                "cli-set",
                "--model",
                "cli",
                "--url",
                live.url,
                "--token",
                live.env.token,
            ]
        )
    assert status == 0
    assert out.getvalue().startswith(
        "cli-set: 12 images with feedback labels, 12 to train on, 0 to test; sha256:"
    )
    out = io.StringIO()
    with redirect_stdout(out):
        args = ["datasets", "from-feedback", "cli-merged", "--model", "cli", "--merge", "cli-set", "--json"]
        status = mnist([*args, "--url", live.url, "--token", live.env.token])
    assert status == 0
    info = json.loads(out.getvalue())
    assert info["train_size"] == 24 and info["origin"]["merged"] == "cli-set"


@pytest.mark.parametrize(
    ("name", "body", "status", "words"),
    [
        ("nothing", {"model": "empty-log"}, 404, "no published version"),
        ("bad-merge", {"model": "errs", "merge": "no-such-set"}, 404, "no-such-set"),
        ("mnist-sample", {"model": "errs"}, 409, "built-in"),
        ("bad-version", {"model": "errs", "version": 0}, 400, "version"),
        ("bad-field", {"model": "errs", "labels": "all"}, 400, "labels"),
        ("no-model", {}, 400, "model"),
        ("bad/name", {"model": "errs"}, 404, ""),
    ],
)
def test_refusals(live: Live, conn: redis.Redis, name: str, body: dict, status: int, words: str) -> None:
    got = from_feedback(live, name, **body)
    assert got["http"] == status and got["code"] == status, got
    assert words in json.dumps(got)
    if status != 409:
        assert live.get(f"/v1/datasets/{name}").status_code in (400, 404)


def test_no_labelled_entry_is_a_400_and_a_taken_name_a_409(
    live: Live, conn: redis.Redis, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = digits
    keys = Keys(live.env.prefix)
    live.registry().publish("unlabelled", b"not read here", {})
    log(conn, keys, "unlabelled", x[:5], None)
    got = from_feedback(live, "none", model="unlabelled")
    assert (
        got["http"] == 400
        and "no logged live prediction of unlabelled has a feedback label" in got["message"]
    )
    assert "read 5 log entries" in got["message"]
    log(conn, keys, "taken", x[:5], y[:5])
    assert from_feedback(live, "taken-set", model="taken")["http"] == 201
    again = from_feedback(live, "taken-set", model="taken")
    assert again["http"] == 409 and "already uploaded" in again["message"]


def test_a_write_needs_the_token(live: Live) -> None:
    r = live.post("/v1/datasets/x/from-feedback", json={"model": "mnist"})
    assert r.status_code == 401 and r.json()["code"] == 401


def test_the_upload_limit_holds_before_the_dataset_is_built(
    redis_url: str, tmp_path: Path, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = digits
    # 20 images and their labels fit in 20 × 785 bytes; one more does not.
    with live_stack(redis_url, tmp_path, workers=1, MNIST_MAX_DATASET_BYTES=str(20 * 785)) as small:
        conn = redis.Redis.from_url(small.env.redis_url)
        try:
            keys = Keys(small.env.prefix)
            log(conn, keys, "big", x[:21], y[:21])
            got = from_feedback(small, "too-big", model="big")
            assert got["http"] == 413 and "MNIST_MAX_DATASET_BYTES" in got["message"], got
            merged = from_feedback(small, "too-big", model="big", merge="mnist-sample")
            assert merged["http"] == 413 and "'mnist-sample' alone fills" in merged["message"], merged
            assert small.get("/v1/datasets/too-big").status_code == 404
            conn.xtrim(keys.prediction_log("big"), maxlen=20, approximate=False)
            assert from_feedback(small, "fits", model="big")["http"] == 201
        finally:
            conn.close()
