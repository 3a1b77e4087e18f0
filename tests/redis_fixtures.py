"""Pytest fixtures on a real Redis, shared by every test file (`pytest_plugins` in conftest).

Tests use database 15 unless `MNIST_TEST_REDIS_URL` or `REDIS_URL` says otherwise, and each test
writes only under its own key prefix (`test-<8 hex>:`), deleted afterwards with SCAN + DEL: a
shared database (CI's, a developer's) is never flushed.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis

from shared.keys import Keys
from shared.registry import Registry

#: Redis of the tests when neither MNIST_TEST_REDIS_URL nor REDIS_URL is set (db 0 is the dev's).
DEFAULT_TEST_REDIS_URL = "redis://127.0.0.1:6379/15"


def delete_prefix(client: redis.Redis, prefix: str) -> int:
    """Delete every key that starts with `prefix`; return how many."""
    deleted = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        batch.append(key)
        if len(batch) >= 500:
            deleted += client.delete(*batch)
            batch.clear()
    if batch:
        deleted += client.delete(*batch)
    return deleted


@pytest.fixture(scope="session")
def redis_url() -> str:
    """Return the URL of the tests' Redis, failing clearly if it does not answer."""
    environ = os.environ
    url = environ.get("MNIST_TEST_REDIS_URL") or environ.get("REDIS_URL") or DEFAULT_TEST_REDIS_URL
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(
            f"Redis at {url} does not answer ({exc}): start one (`redis-server`) or set MNIST_TEST_REDIS_URL",
            pytrace=False,
        )
    finally:
        client.close()
    return url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """Return a binary-reply client of the tests' Redis."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def keys(redis_client: redis.Redis) -> Iterator[Keys]:
    """Return `Keys` under a prefix unique to this test; delete its keys afterwards."""
    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    yield Keys(prefix)
    delete_prefix(redis_client, prefix)


@pytest.fixture
def registry(redis_client: redis.Redis, keys: Keys) -> Registry:
    """Return a `Registry` on the test's prefix with the default retention."""
    return Registry(redis_client, keys)
