"""A Redis that hangs (`CLIENT PAUSE` on a private redis-server): the app degrades, never starves.

The app runs in-process (`create_app`, Flask's test client from several threads) on a Redis of its
own, paused for far longer than any check here waits: whatever answers while it is paused did
not wait for it. The figures under load, through gunicorn, are tests/reliability/test_redis_trust.py's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask

from services.app import REDIS_RETRIES, create_app, redis_clients
from services.web.context import EXTENSION
from shared.config import Settings
from shared.keys import Keys
from shared.registry import Registry
from tests.reliability.stack import IMAGE, RAW, PrivateRedis, label_blob, private_redis

#: Milliseconds the private Redis stays paused: longer than any bound below (it is killed after).
PAUSE_MS = 120_000
#: Seconds a request of these tests may take before the test fails (a bound, not a figure).
BOUND = 30.0


@pytest.fixture
def paused_app(tmp_path: Path) -> Iterator[tuple[Flask, PrivateRedis]]:
    """An app (one Redis slot, a 5 s Redis timeout) serving model `m` v1 from memory; `pause` its Redis."""
    with private_redis(tmp_path) as db:
        Registry(db.client(), Keys("stall:")).publish("m", label_blob(1, label=1), {})
        app = create_app(
            {
                "redis_url": db.url,
                "key_prefix": "stall:",
                "env": "development",
                "redis_slots": 1,
                "redis_timeout": 5.0,
                "MODEL_WATCHER": False,
            }
        )
        assert predict(app)[0] == 200  # v1 is now held in memory
        yield app, db
        app.extensions[EXTENSION].predictions.stop()


def pause(db: PrivateRedis) -> None:
    client = db.client()
    client.execute_command("CLIENT", "PAUSE", PAUSE_MS, "ALL")
    client.close()


def predict(app: Flask) -> tuple[int, Any]:
    r = app.test_client().post("/v1/models/m:predict", data=IMAGE.tobytes(), content_type=RAW)
    return r.status_code, r.get_json()


class Call(threading.Thread):
    """One request in a thread of its own; `done` is set when it has answered."""

    def __init__(self, app: Flask, path: str) -> None:
        super().__init__(daemon=True)
        self.app, self.path = app, path
        self.done = threading.Event()
        self.status: int | None = None
        self.body: Any = None

    def run(self) -> None:
        r = self.app.test_client().get(self.path)
        self.status, self.body = r.status_code, r.get_json()
        self.done.set()

    def result(self) -> tuple[int | None, Any]:
        assert self.done.wait(BOUND), f"{self.path} did not answer within {BOUND} s"
        return self.status, self.body


def test_readyz_answers_from_its_own_short_ping_while_redis_hangs(
    paused_app: tuple[Flask, PrivateRedis],
) -> None:
    app, db = paused_app
    ready = app.test_client().get("/readyz").get_json()
    assert ready["redis"] is True and ready["ready"] is True
    pause(db)
    call = Call(app, "/readyz")
    call.start()
    status, body = call.result()
    assert status == 200 and body["redis"] is False and body["ready"] is True, body
    assert body["reason"] == "Redis does not answer: serving the models held in memory"


def test_requests_beyond_the_redis_slots_are_refused_and_predictions_answer(
    paused_app: tuple[Flask, PrivateRedis],
) -> None:
    app, db = paused_app
    pause(db)
    holder = Call(app, "/v1/models/m")  # takes the one slot, and waits for Redis (5 s)
    holder.start()
    slots = app.extensions[EXTENSION].redis.connection_pool.pool  # the pool's queue of free slots
    deadline = time.monotonic() + BOUND
    while slots.qsize() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert slots.qsize() == 0 and not holder.done.is_set()

    refused = Call(app, "/v1/models/m")
    refused.start()
    status, body = refused.result()
    assert status == 503 and body["message"] == "the service's Redis does not answer: try again shortly"
    assert not holder.done.is_set()  # refused while the first still waits: it did not queue
    status, body = predict(app)  # the default version, held in memory: no Redis
    assert status == 200 and body["model_version"] == 1
    assert not holder.done.is_set()

    status, body = holder.result()
    assert status == 503  # its command timed out (MNIST_REDIS_TIMEOUT), once: no retry after a timeout


def test_the_request_slots_default_to_half_the_threads() -> None:
    def slots(**overrides: Any) -> int:
        clients = redis_clients(Settings(**overrides))
        try:
            return clients.requests.connection_pool.max_connections
        finally:
            for client in clients:
                client.close()

    assert slots() == Settings().web_threads // 2 == 4
    assert slots(web_threads=1) == 1
    assert slots(web_threads=16) == 8
    assert slots(redis_slots=3) == 3


@pytest.mark.parametrize(
    ("error", "attempts"), [(redis.TimeoutError, 1), (redis.ConnectionError, 1 + REDIS_RETRIES)]
)
def test_redis_commands_are_retried_after_a_connection_error_never_after_a_timeout(
    error: type[Exception], attempts: int
) -> None:
    clients = redis_clients(Settings())
    calls: list[int] = []

    def fail() -> None:
        calls.append(1)
        raise error("no answer")

    try:
        for client in clients[:2]:  # the requests' and the watcher's
            calls.clear()
            retry = client.connection_pool.make_connection().retry  # a connection's own (not connected)
            with pytest.raises(error):
                retry.call_with_retry(fail, lambda exc: None)
            assert len(calls) == attempts
    finally:
        for client in clients:
            client.close()
