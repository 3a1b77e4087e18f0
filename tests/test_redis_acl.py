"""The Redis users of docs/deploy.md, run for real: the predictor role serves on read rights only.

The `ACL SETUSER` lines are read from docs/deploy.md itself and applied to a private redis-server
(its users die with it). The predictor role then runs in-process on its user: predictions
(default, pinned, alias), V2 metadata, readiness, metrics and hot reload all work, nothing it
does is denied (Redis's `ACL LOG` stays empty), and every write it might try is refused. The
API and worker users run the whole stack in tests/reliability/test_redis_trust.py.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from services.app import create_app
from services.web.context import EXTENSION
from shared.keys import Keys
from shared.registry import Registry
from tests.live_fixtures import ROOT
from tests.reliability.stack import IMAGE, RAW, PrivateRedis, label_blob, private_redis

#: Where the users are documented, as `ACL SETUSER mnist-<role> … >ROLE_PASSWORD …` lines.
DOC = ROOT / "docs" / "deploy.md"
ROLES = ("predictor", "api", "worker")
#: Seconds a published version may take to reach the in-process predictor (a bound, not a figure).
RELOAD_BOUND = 15.0


def documented_users() -> dict[str, str]:
    """Return the `ACL SETUSER` line of each role, as docs/deploy.md gives it."""
    found = {m[1]: m[0] for m in re.finditer(r"^ACL SETUSER mnist-(\w+) .*$", DOC.read_text(), re.MULTILINE)}
    assert sorted(found) == sorted(ROLES), found
    return found


def create_users(client: redis.Redis) -> dict[str, str]:
    """Create the documented users with fresh passwords; return each role's password."""
    passwords = {}
    for role, line in documented_users().items():
        password = uuid.uuid4().hex
        words = line.replace(f"{role.upper()}_PASSWORD", password).split()
        assert client.execute_command(*words) in (b"OK", "OK"), line
        passwords[role] = password
    return passwords


def user_url(db: PrivateRedis, role: str, password: str) -> str:
    return f"redis://mnist-{role}:{password}@127.0.0.1:{db.port}/0"


def denied(client: redis.Redis) -> list[str]:
    """Return what Redis refused since the last reset, as "user: reason object"."""
    return [
        f"{entry['username']}: {entry['reason']} {entry['object']}"
        for entry in client.acl_log()  # type: ignore[union-attr]
    ]


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[tuple[PrivateRedis, redis.Redis, dict[str, str]]]:
    """A private redis-server with the documented users; its `default` user stays the admin."""
    with private_redis(tmp_path) as db:
        admin = db.client()
        passwords = create_users(admin)
        admin.acl_log_reset()
        yield db, admin, passwords
        admin.close()


def test_the_documented_users_are_valid_acl_rules(acl_redis: tuple[PrivateRedis, redis.Redis, dict]) -> None:
    _, admin, passwords = acl_redis
    users = {u.decode() if isinstance(u, bytes) else u for u in admin.acl_users()}
    assert {f"mnist-{role}" for role in ROLES} <= users
    assert set(passwords) == set(ROLES)


def test_the_predictor_role_serves_on_the_documented_read_rights(
    acl_redis: tuple[PrivateRedis, redis.Redis, dict[str, str]],
) -> None:
    db, admin, passwords = acl_redis
    registry = Registry(admin, Keys())  # the default prefix: what the documented patterns name
    registry.publish("mnist", label_blob(1, label=1), {})
    registry.publish("mnist", label_blob(2, label=2), {})
    registry.set_alias("mnist", "staging", 1)
    url = user_url(db, "predictor", passwords["predictor"])
    config = {
        "redis_url": url,
        "role": "predictor",
        "env": "development",
        "poll_interval": 0.2,
        "log_sample": 1.0,
        "feedback_window": 1,  # every label after the first turns the window over (RENAME)
    }
    app = create_app(config)
    http = app.test_client()
    try:
        answers = {
            path: http.post(path, data=IMAGE.tobytes(), content_type=RAW).get_json()["model_version"]
            for path in (
                "/v1/models/mnist:predict",
                "/v1/models/mnist/versions/1:predict",
                "/v1/models/mnist/labels/staging:predict",
            )
        }
        assert answers == {
            "/v1/models/mnist:predict": 2,
            "/v1/models/mnist/versions/1:predict": 1,
            "/v1/models/mnist/labels/staging:predict": 1,
        }
        assert http.get("/v2/models/mnist").get_json()["versions"] == ["1", "2"]
        assert http.get("/v2/health/ready").status_code == 200
        ready = http.get("/readyz").get_json()
        assert ready["redis"] is True and ready["reason"] is None, ready
        assert http.get("/metrics").status_code == 200

        registry.publish("mnist", label_blob(3, label=3), {})  # heard through SUBSCRIBE
        deadline = time.monotonic() + RELOAD_BOUND
        while time.monotonic() < deadline:
            answer = http.post("/v1/models/mnist:predict", data=IMAGE.tobytes(), content_type=RAW).get_json()
            if answer["model_version"] == 3:
                break
            time.sleep(0.05)
        assert answer["model_version"] == 3
        app.extensions[EXTENSION].predictions.cache.refresh()  # a poll's reads too

        # The recorder's writes (log, index, counters) and feedback are the predictor's too.
        def label(answer: dict) -> dict:
            labels = {"labels": [{"request_id": answer["request_id"], "label": 3}]}
            deadline = time.monotonic() + RELOAD_BOUND
            counted = {}
            while time.monotonic() < deadline:  # unknown until the recorder has written the answer
                counted = http.post("/v1/models/mnist/feedback", json=labels).get_json()
                if counted["unknown"] == 0:
                    break
                time.sleep(0.05)
            return counted

        assert label(answer) == {"accepted": 1, "unknown": 0, "repeated": 0}
        again = http.post("/v1/models/mnist:predict", data=IMAGE.tobytes(), content_type=RAW).get_json()
        assert again["model_version"] == 3
        assert label(again) == {"accepted": 1, "unknown": 0, "repeated": 0}
        assert admin.hget(Keys().window_previous("mnist", 3), "feedback") == b"1"  # turned over
        assert admin.xlen(Keys().prediction_log("mnist")) >= 4
        assert denied(admin) == []  # nothing the predictor did needed more than it has
    finally:
        app.extensions[EXTENSION].predictions.stop()

    # What it may not do, tried on purpose.
    mine = redis.Redis.from_url(url)
    try:
        for attempt in (
            lambda: Registry(mine, Keys()).publish("mnist", label_blob(9), {}),
            lambda: Registry(mine, Keys()).set_alias("mnist", "production", 1),
            lambda: mine.set("mnist:anything", b"x"),
            lambda: mine.delete("mnist:model:mnist:v1:blob"),
            lambda: mine.get("rq:queue:training"),
            lambda: mine.publish("mnist:events", b"{}"),
            lambda: mine.flushall(),
            lambda: mine.keys("*"),
        ):
            with pytest.raises(redis.exceptions.NoPermissionError):
                attempt()
    finally:
        mine.close()
    assert [v.version for v in registry.versions("mnist")] == [1, 2, 3]
