"""Fixtures and helpers of the tests that import model files: the app's test client, model files.

Registered in conftest (`pytest_plugins`), so that test files share the fixtures without importing them.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from flask.testing import FlaskClient

from services.app import create_app
from tests.api_helpers import cleanup, new_env
from tests.live_fixtures import StackEnv

#: The body limit of the test app (bytes): small, so that "too big" is cheap to send.
LIMIT = 2 * 2**20
NPZ = {"Content-Type": "application/x-npz"}


@pytest.fixture
def app_env(redis_url: str) -> Iterator[StackEnv]:
    """A stack environment (prefix, token) whose keys are deleted afterwards."""
    env = new_env(redis_url)
    yield env
    cleanup(env)


@pytest.fixture
def app_client(app_env: StackEnv) -> FlaskClient:
    """The app's test client, with a small body limit."""
    config = {
        "redis_url": app_env.redis_url,
        "key_prefix": app_env.prefix,
        "queue": app_env.queue,
        "api_token": app_env.token,
        "max_body_bytes": LIMIT,
        "MODEL_WATCHER": False,
        "ROLLOUT_TIMER": False,
    }
    return create_app(config).test_client()


def params(hidden: int = 16, seed: int = 0, label: int | None = None) -> list[np.ndarray]:
    """Return 784-hidden-10 float32 parameters; with `label`, a network that always answers it."""
    rng = np.random.default_rng(seed)
    found = [
        rng.standard_normal((hidden, 784)).astype(np.float32) * 0.05,
        np.zeros(hidden, np.float32),
        rng.standard_normal((10, hidden)).astype(np.float32) * 0.05,
        np.zeros(10, np.float32),
    ]
    if label is not None:
        found[-1][label] = 50.0
    return found


def npz(arrays: dict[str, Any], compressed: bool = False) -> bytes:
    """Return the .npz bytes of `arrays` (object arrays pickled, as np.savez writes them)."""
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


def layers(found: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Return the arrays W1, b1, … of `found`."""
    return {f"{'Wb'[i % 2]}{i // 2 + 1}": p for i, p in enumerate(found)}


def meta(**more: Any) -> np.ndarray:
    """Return a meta array: a JSON string."""
    return np.array(json.dumps({"recipe": "elsewhere", "metrics": {"test_accuracy": 0.9}, **more}))


def publish_two(app_client: FlaskClient, app_env: StackEnv, model: str) -> tuple[int, int]:
    """Import two versions of `model` answering 4 and 5; production on the first."""
    versions = []
    for label in (4, 5):
        data = npz({**layers(params(label=label)), "meta": meta()})
        r = app_client.post(f"/v1/models/{model}/versions", data=data, headers={**NPZ, **app_env.auth})
        versions.append(r.get_json()["version"])
    app_client.put(
        f"/v1/models/{model}/aliases/production", json={"version": versions[0]}, headers=app_env.auth
    )
    return versions[0], versions[1]
