"""Training jobs through HTTP: real gunicorn, real Redis, real `python -m worker`."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from services.app import create_app
from shared import serialization
from shared.config import Settings
from shared.jobs import Jobs, JobState
from tests.api_helpers import SMALL_JOB, Live, cleanup, live_stack, new_env, sse_events
from tests.live_fixtures import Process, start_worker

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """One gunicorn for the module (tests use distinct model names)."""
    with live_stack(redis_url, tmp_path_factory.mktemp("jobs")) as stack:
        yield stack


@pytest.fixture
def run_worker(live: Live, tmp_path: Path) -> Iterator[Process]:
    """A `python -m worker` on the module's queue, for one test."""
    process = start_worker(live.env, tmp_path)
    yield process
    process.stop()


def test_train_follow_publish_download(live: Live, run_worker: Process) -> None:
    # Affine augmentation makes the job last about a second (hidden [32] alone trains in 0.1 s),
    # long enough for the stream, which polls every 0.25 s, to see it running.
    spec = {**SMALL_JOB, "epochs": 3, "augment": "affine", "model": "flow"}
    queued = live.submit(spec)
    assert queued["status"] == "queued"
    assert queued["spec"] == spec
    job_id = queued["id"]

    with live.http.get(f"{live.url}/v1/jobs/{job_id}/events", stream=True, timeout=60) as stream:
        assert stream.status_code == 200
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        assert stream.headers["Cache-Control"] == "no-cache"
        assert stream.headers["X-Accel-Buffering"] == "no"
        events = list(sse_events(stream))  # the server closes the stream when the job ends

    names = [name for name, _ in events]
    assert names[0] == "retry" and names[-1] == "end" and names.count("end") == 1
    progress = [data for name, data in events if name == "progress"]
    assert progress[0]["status"] in ("queued", "started"), names
    assert "started" in [p["status"] for p in progress]
    end = events[-1][1]
    assert end["status"] == "finished" and end["progress"]["fraction"] == 1.0
    fractions = [(p["progress"] or {"fraction": 0.0})["fraction"] for p in progress] + [1.0]
    assert fractions == sorted(fractions) and fractions[0] < 1.0

    view = live.get(f"/v1/jobs/{job_id}").json()
    assert view["status"] == "finished" and view["error"] is None
    version = view["result"]["version"]
    assert view["result"]["model"] == "flow" and version >= 1
    assert view["result"]["metrics"]["test_accuracy"] > 0.5
    assert len(view["curve"]) == 3
    assert view["dataset"]["name"] == "mnist-sample"
    listed = live.get("/v1/jobs", params={"status": "finished"}).json()
    assert job_id in [j["id"] for j in listed]

    models = {m["name"]: m for m in live.get("/v1/models").json()}
    assert models["flow"]["latest"] == version and models["flow"]["versions"] == 1
    model = live.get("/v1/models/flow").json()
    assert [v["version"] for v in model["versions"]] == [version]
    assert model["versions"][0]["job_id"] == job_id

    detail = live.get(f"/v1/models/flow/versions/{version}").json()
    assert detail["lineage"]["job_id"] == job_id
    assert detail["lineage"]["dataset"]["name"] == "mnist-sample"
    assert detail["lineage"]["dataset"]["digest"] == view["dataset"]["digest"]
    assert detail["lineage"]["config"]["hidden"] == [32]
    assert detail["architecture"]["sizes"] == [784, 32, 10]
    assert len(detail["history"]) == 3
    assert detail["metrics"]["test_accuracy"] == view["result"]["metrics"]["test_accuracy"]

    weights = live.get(detail["weights_url"])
    assert weights.status_code == 200
    assert weights.headers["Content-Type"] == "application/octet-stream"
    assert "attachment" in weights.headers["Content-Disposition"]
    sha = hashlib.sha256(weights.content).hexdigest()
    assert weights.headers["ETag"] == f'"{sha}"' and detail["sha256"] == sha
    params, meta = serialization.model_from_bytes(weights.content)
    assert params[0].shape == (32, 784) and meta["job_id"] == job_id
    again = live.get(detail["weights_url"], headers={"If-None-Match": f'"{sha}"'})
    assert again.status_code == 304 and not again.content


def test_cancel_queued_then_running(live: Live, tmp_path: Path) -> None:
    # No worker yet: the job stays queued, and a canceled job must never run later.
    queued = live.submit({**SMALL_JOB, "model": "never"})
    r = live.delete(f"/v1/jobs/{queued['id']}", headers=live.auth)
    assert r.status_code == 200 and r.json()["status"] == "canceled"
    assert live.delete(f"/v1/jobs/{queued['id']}", headers=live.auth).status_code == 409

    worker = start_worker(live.env, tmp_path)
    try:
        long = live.submit({**SMALL_JOB, "hidden": [256], "epochs": 300, "model": "stopped"})
        # The worker is inside the training loop once progress appears.
        live.wait(long["id"], until=("started",), progress=True)
        r = live.delete(f"/v1/jobs/{long['id']}", headers=live.auth)
        assert r.status_code in (200, 202), r.text
        ended = live.wait(long["id"])
        assert ended["status"] == "canceled" and ended["result"] is None
        assert ended["progress"]["fraction"] < 1.0
    finally:
        worker.stop()

    never = live.get(f"/v1/jobs/{queued['id']}").json()
    assert never["status"] == "canceled" and never["started_at"] is None and never["progress"] is None
    assert live.get("/v1/models/never").status_code == 404
    assert live.get("/v1/models/stopped").status_code == 404
    canceled = {j["id"] for j in live.get("/v1/jobs", params={"status": "canceled"}).json()}
    assert {queued["id"], long["id"]} <= canceled


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"dataset": "no-such-dataset"}, "dataset"),
        ({"dataset": "/etc/passwd"}, "dataset"),
        ({"dataset": "../../etc/passwd"}, "dataset"),
        ({"epochs": 501}, "epochs"),
        ({"hidden": [4096]}, "hidden"),
        ({"hidden": [8, 8, 8, 8, 8]}, "hidden"),
        ({"batch_size": 100_000}, "batch_size"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"epochs": 2, "iterations": 10}, "iterations"),
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"model": "Bad/Name"}, "model"),
        ({"model": "mnist\n"}, "model"),
        ({"model": "a..b"}, "model"),
        ({"dataset": "mnist-sample\n"}, "dataset"),
        ({"dataset": "a..b"}, "dataset"),
        (
            {
                "dataset": "fashion-mnist",
                "hidden": [2048] * 4,
                "batch_size": 8192,
                "dtype": "float64",
                "optimizer": "adam",
            },
            "batch_size",
        ),
    ],
)
def test_jobs_that_cannot_succeed_are_refused(live: Live, spec: dict, field: str) -> None:
    r = live.post("/v1/jobs", json=spec, headers=live.auth)
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["code"] == 400 and body["status"] == "Bad Request" and body["message"]
    assert field in body["errors"], body


def test_a_spec_that_its_recipe_makes_impossible_is_refused(live: Live) -> None:
    # The schema passes it (no optimizer given); the seed recipe's gd is full-batch. Planned at
    # submit time, it is a 400 that says why, not an error of the service.
    r = live.post("/v1/jobs", json={"recipe": "seed", "batch_size": 64}, headers=live.auth)
    assert r.status_code == 400, r.text
    assert r.json()["message"] == "optimizer 'gd' is full-batch: batch_size must be 0"


def test_refused_jobs_publish_nothing(live: Live) -> None:
    live.post("/v1/jobs", json={"dataset": "nope", "model": "refused"}, headers=live.auth)
    assert live.get("/v1/models/refused").status_code == 404
    assert all(j["spec"]["model"] != "refused" for j in live.get("/v1/jobs").json())


def test_list_filters_and_limits(live: Live) -> None:
    assert live.get("/v1/jobs", params={"limit": 1}).status_code == 200
    assert len(live.get("/v1/jobs", params={"limit": 1}).json()) <= 1
    for bad in ({"limit": 0}, {"limit": "many"}, {"status": "done"}):
        r = live.get("/v1/jobs", params=bad)
        assert r.status_code == 400 and r.json()["code"] == 400


def test_events_of_unknown_job_is_404(live: Live) -> None:
    r = live.get("/v1/jobs/no-such-job/events")
    assert r.status_code == 404 and r.headers["Content-Type"] == "application/json"


def test_events_keep_alive_and_end_on_cancel(redis_url: str) -> None:
    """In-process, with a short keep-alive: a queued job's stream idles, then ends when canceled."""
    env = new_env(redis_url)
    config = {
        "redis_url": env.redis_url,
        "key_prefix": env.prefix,
        "queue": env.queue,
        "api_token": env.token,
        "MODEL_WATCHER": False,
        "EVENTS_KEEPALIVE": 0.3,
    }
    try:
        app = create_app(config)
        client = app.test_client()
        job_id = client.post("/v1/jobs", json=SMALL_JOB, headers=env.auth).get_json()["id"]
        response = client.get(f"/v1/jobs/{job_id}/events", buffered=False)
        chunks = (c.decode() if isinstance(c, bytes) else c for c in response.response)
        assert next(chunks).startswith("retry:")
        first = next(chunks)
        assert first.startswith("event: progress") and '"status":"queued"' in first
        assert next(chunks) == ": keep-alive\n\n"
        assert client.delete(f"/v1/jobs/{job_id}", headers=env.auth).status_code == 200
        rest = "".join(chunks)
        assert rest.startswith("event: end") and '"status":"canceled"' in rest
        response.close()
    finally:
        cleanup(env)


def test_sse_stream_survives_a_client_that_leaves(live: Live) -> None:
    job = live.submit({**SMALL_JOB, "model": "left"})
    with requests.get(f"{live.url}/v1/jobs/{job['id']}/events", stream=True, timeout=10) as stream:
        first = next(e for e in sse_events(stream) if e[0] == "progress")
        assert first[1]["status"] == "queued"
    live.delete(f"/v1/jobs/{job['id']}", headers=live.auth)
    assert live.get("/healthz").status_code == 200


def test_jobs_of_another_queue_are_not_visible(live: Live) -> None:
    """A job id from another deployment sharing the Redis is a 404, not someone else's job."""
    other = new_env(live.env.redis_url)
    conn = redis.Redis.from_url(other.redis_url)
    try:
        settings = dataclasses.replace(Settings(), key_prefix=other.prefix, queue=other.queue)
        foreign = Jobs(conn, settings).submit({**SMALL_JOB, "model": "foreign"})
        assert live.get(f"/v1/jobs/{foreign.id}").status_code == 404
        assert live.delete(f"/v1/jobs/{foreign.id}", headers=live.auth).status_code == 404
        assert Jobs(conn, settings).state(foreign) is JobState.QUEUED
    finally:
        conn.close()
        cleanup(other)
