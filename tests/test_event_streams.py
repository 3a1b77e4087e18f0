"""The bound on event streams per web process: beyond MNIST_MAX_EVENT_STREAMS a 503 with Retry-After,
a slot given back when a stream ends, and streams that end after MNIST_EVENT_STREAM_SECONDS."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask.testing import FlaskClient

from services.api.jobs import SLOTS, StreamSlots, stream_limit
from services.app import create_app
from tests.api_helpers import SMALL_JOB, cleanup, live_stack, new_env, sse_events
from tests.live_fixtures import StackEnv


@pytest.fixture
def env(redis_url: str) -> Iterator[StackEnv]:
    env = new_env(redis_url)
    yield env
    cleanup(env)


def _client(env: StackEnv, **settings: Any) -> tuple[FlaskClient, StreamSlots]:
    config = {
        "redis_url": env.redis_url,
        "key_prefix": env.prefix,
        "queue": env.queue,
        "api_token": env.token,
        "MODEL_WATCHER": False,
        **settings,
    }
    app = create_app(config)
    return app.test_client(), app.extensions[SLOTS]


def _queued_job(client: FlaskClient, env: StackEnv) -> str:
    return client.post("/v1/jobs", json=SMALL_JOB, headers=env.auth).get_json()["id"]


def test_the_default_leaves_three_threads_in_four_to_the_rest() -> None:
    assert stream_limit(0, 8) == 2
    assert stream_limit(0, 16) == 4
    assert stream_limit(0, 3) == 0  # too few threads to give one to a stream
    assert stream_limit(5, 8) == 5  # the setting wins


def test_beyond_the_bound_a_503_with_retry_after_and_a_slot_comes_back_when_a_stream_ends(
    env: StackEnv,
) -> None:
    client, slots = _client(env, max_event_streams=2)
    job_id = _queued_job(client, env)
    first = client.get(f"/v1/jobs/{job_id}/events", buffered=False)
    second = client.get(f"/v1/jobs/{job_id}/events", buffered=False)
    assert first.status_code == second.status_code == 200
    assert slots.in_use == 2

    refused = client.get(f"/v1/jobs/{job_id}/events", buffered=False)
    assert refused.status_code == 503
    assert refused.headers["Retry-After"].isdigit()
    body = refused.get_json()
    assert body["code"] == 503 and body["status"] == "Service Unavailable"
    assert "MNIST_MAX_EVENT_STREAMS" in body["message"] and f"/v1/jobs/{job_id}" in body["message"]
    assert slots.in_use == 2

    first.close()  # the client left (or the stream ended): the server closes the response
    assert slots.in_use == 1
    first.close()  # given back once only
    assert slots.in_use == 1
    third = client.get(f"/v1/jobs/{job_id}/events", buffered=False)
    assert third.status_code == 200
    for response in (second, third):
        response.close()
    assert slots.in_use == 0


def test_an_unknown_job_takes_no_slot(env: StackEnv) -> None:
    client, slots = _client(env, max_event_streams=1)
    assert client.get("/v1/jobs/no-such-job/events").status_code == 404
    assert slots.in_use == 0


def test_a_stream_ends_after_its_lifetime_and_gives_its_slot_back(env: StackEnv) -> None:
    client, slots = _client(env, max_event_streams=1, event_stream_seconds=0.6, EVENTS_KEEPALIVE=0.2)
    job_id = _queued_job(client, env)
    response = client.get(f"/v1/jobs/{job_id}/events", buffered=False)
    chunks = [c.decode() if isinstance(c, bytes) else c for c in response.response]  # ends by itself
    response.close()
    assert chunks[0].startswith("retry:") and chunks[1].startswith("event: progress")
    assert not any(c.startswith("event: end") for c in chunks)  # the job goes on: clients reconnect
    assert slots.in_use == 0


@pytest.mark.slow
def test_gunicorn_refuses_a_stream_beyond_the_bound_and_serves_one_after_a_job_ends(
    redis_url: str, tmp_path: Path
) -> None:
    """One gunicorn process allowed one stream: a second is a 503 until the first job's stream ends."""
    with live_stack(redis_url, tmp_path, workers=1, MNIST_MAX_EVENT_STREAMS="1") as live:
        first_job = live.submit({**SMALL_JOB, "model": "one"})["id"]
        second_job = live.submit({**SMALL_JOB, "model": "two"})["id"]
        with requests.get(f"{live.url}/v1/jobs/{first_job}/events", stream=True, timeout=10) as stream:
            events = sse_events(stream)
            assert next(e for e in events if e[0] == "progress")[1]["status"] == "queued"
            refused = live.get(f"/v1/jobs/{second_job}/events")
            assert refused.status_code == 503 and "Retry-After" in refused.headers
            assert live.get("/healthz").status_code == 200  # the other threads answer
            assert live.delete(f"/v1/jobs/{first_job}", headers=live.auth).status_code == 200
            assert next(e for e in events if e[0] == "end")[1]["status"] == "canceled"
        # The slot comes back once gunicorn has closed the ended response, right after its last bytes.
        for _ in range(50):
            stream = requests.get(f"{live.url}/v1/jobs/{second_job}/events", stream=True, timeout=10)
            if stream.status_code != 503:
                break
            stream.close()
            time.sleep(0.1)
        with stream:
            assert stream.status_code == 200
            assert next(e for e in sse_events(stream) if e[0] == "progress")[1]["status"] == "queued"
            live.delete(f"/v1/jobs/{second_job}", headers=live.auth)
