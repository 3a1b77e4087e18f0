"""The one Redis factory of every process: a plain URL, or Sentinels that name the primary.

`connect(url, **options)` takes what `REDIS_URL` holds:

- ``redis://[[user]:password@]host:port/db``, ``rediss://…`` (TLS) or ``unix:///path?db=0``:
  redis-py's own URL forms, one server;
- ``redis+sentinel://[[user]:password@]host1:26379,host2:26379,host3:26379/mymaster/0``
  (``rediss+sentinel://`` for TLS to the data nodes): the Sentinels to ask, the master's name
  and the database. The user and password are those of the data nodes; ``?sentinel_password=``
  gives the Sentinels' own, when they have one. The port defaults to 26379, the database to 0.

A Sentinel client asks the Sentinels for the primary's address on every new connection and every
reconnect (`PrimaryConnection` over redis-py's `SentinelConnectionPool`), and a connection that
times out, breaks, or finds its server demoted to a replica drops itself: after a failover, the
next command, or its retry, reaches the new primary without a restart. Each Sentinel gets one try
per lookup, so a lost Sentinel's host costs `SENTINEL_TIMEOUT` before the next is asked.

`write_durably` is the other half of durability: Redis replicates asynchronously, so a write
acknowledged by the primary alone is lost when the primary's host dies before its replicas read
it. `WAIT n timeout` blocks until `n` replicas have everything its connection wrote.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, unquote

import redis
from redis.backoff import NoBackoff
from redis.client import Pipeline
from redis.connection import SSLConnection
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection
from redis.utils import SENTINEL

from shared.errors import ReplicationTimeout

#: The URL schemes of a Sentinel deployment (the second: TLS to the data nodes).
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
#: The Sentinels' port when the URL gives none (Redis' own default).
SENTINEL_PORT = 26379
#: Seconds a Sentinel may take to connect or answer when the options give no timeout: a dead
#: Sentinel's host costs this much before the next one is asked.
SENTINEL_TIMEOUT = 1.0
_PASSWORD = re.compile(r"^([a-z+]+://[^:@/]*):[^@/]*@")


class PrimaryConnection(SentinelManagedConnection):
    """A connection to the Sentinels' primary that asks them for its address on every reconnect."""

    def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        """Connect to the primary the Sentinels name now, unless connected already."""
        # redis-py reconnects a dropped connection through this method (send_packed_command),
        # not through `connect`, which alone asks the Sentinels: a command retried after its
        # server died would reconnect to the dead address for as long as its retries last.
        if self._sock is None and self.connection_pool.is_master:
            self.host, self.port = self.connection_pool.get_master_address()
        super().connect_check_health(check_health, retry_socket_connect)

    def read_response(
        self,
        disable_decoding: bool = False,
        *,
        timeout: Any = SENTINEL,
        disconnect_on_error: bool | None = True,
        push_request: bool | None = False,
    ) -> Any:
        """Read a reply; on a timeout or a broken socket, drop the connection (as a plain one does)."""
        # SentinelManagedConnection defaults disconnect_on_error to False, unlike Connection: a
        # command that timed out against a lost host left the socket open, the pool handed it out
        # again, and every later command timed out against the same dead address, never asking
        # the Sentinels (seen in tests/reliability/test_hosts.py: predictors never recovered).
        return super().read_response(
            disable_decoding,
            timeout=timeout,
            disconnect_on_error=disconnect_on_error,
            push_request=push_request,
        )


class PrimarySSLConnection(PrimaryConnection, SSLConnection):
    """`PrimaryConnection` over TLS (``rediss+sentinel://``)."""


class BlockingSentinelPool(SentinelConnectionPool, redis.BlockingConnectionPool):  # type: ignore[misc]
    """A Sentinel pool of at most `max_connections` that waits for a free one, as `BlockingConnectionPool`."""


def is_sentinel(url: str) -> bool:
    """Return True when `url` names Sentinels rather than one server."""
    return url.split("://", 1)[0].lower() in SENTINEL_SCHEMES


def connect(url: str, *, blocking: bool = False, **options: Any) -> redis.Redis:
    """Return a client of the server (or Sentinel-monitored primary) that `url` names.

    `options` are redis-py's connection options (timeouts, retry, max_connections…); with
    `blocking`, the pool holds at most `max_connections` and waits `timeout` s for a free one.
    """
    if not is_sentinel(url):
        if blocking:
            return redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(url, **options))
        return redis.Redis.from_url(url, **options)
    target = parse_sentinel_url(url)
    sentinel_options: dict[str, Any] = {
        "socket_timeout": options.get("socket_timeout") or SENTINEL_TIMEOUT,
        "socket_connect_timeout": options.get("socket_connect_timeout") or SENTINEL_TIMEOUT,
        # One try per Sentinel, then the next: redis-py's default retries, nested in the
        # connection's own, would spend half a minute on a dead Sentinel's host before asking
        # a live one (the command's retry asks them all again anyway).
        "retry": Retry(NoBackoff(), 0),
    }
    if target["sentinel_password"] is not None:
        sentinel_options["password"] = target["sentinel_password"]
    sentinel = Sentinel(target["sentinels"], sentinel_kwargs=sentinel_options)
    node: dict[str, Any] = {key: target[key] for key in ("db", "username", "password")}
    node["connection_class"] = PrimarySSLConnection if target["ssl"] else PrimaryConnection
    pool_class = BlockingSentinelPool if blocking else SentinelConnectionPool
    return sentinel.master_for(target["service"], connection_pool_class=pool_class, **node, **options)


def parse_sentinel_url(url: str) -> dict[str, Any]:
    """Return the Sentinels, master name, database and credentials of a ``redis+sentinel://`` URL."""
    scheme, _, rest = url.partition("://")
    if scheme.lower() not in SENTINEL_SCHEMES:
        raise ValueError(f"not a Sentinel URL (expected {' or '.join(s + '://' for s in SENTINEL_SCHEMES)})")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    username = password = None
    if "@" in netloc:
        credentials, _, netloc = netloc.rpartition("@")
        user, colon, secret = credentials.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    sentinels = [_host_port(part, url) for part in netloc.split(",") if part]
    if not sentinels:
        raise ValueError(f"{redact(url)}: no Sentinel host")
    service, _, db = path.strip("/").partition("/")
    if not service:
        raise ValueError(f"{redact(url)}: no master name (…/mymaster/0)")
    if db and not db.isdigit():
        raise ValueError(f"{redact(url)}: the database must be a number, got {db!r}")
    params = parse_qs(query, keep_blank_values=True)
    unknown = sorted(set(params) - {"sentinel_password"})
    if unknown:
        raise ValueError(f"{redact(url)}: unknown option {', '.join(unknown)} (only sentinel_password)")
    sentinel_password = params.get("sentinel_password", [None])[-1]
    return {
        "sentinels": sentinels,
        "service": unquote(service),
        "db": int(db or 0),
        "username": username,
        "password": password,
        "sentinel_password": sentinel_password,
        "ssl": scheme.lower() == "rediss+sentinel",
    }


def _host_port(part: str, url: str) -> tuple[str, int]:
    if part.startswith("["):  # [::1]:26379
        host, _, port = part[1:].partition("]")
        port = port.lstrip(":")
    else:
        host, _, port = part.rpartition(":") if ":" in part else (part, "", "")
    if not host or (port and not port.isdigit()):
        raise ValueError(f"{redact(url)}: bad Sentinel address {part!r} (host:port)")
    return host, int(port or SENTINEL_PORT)


def redact(url: str) -> str:
    """Return `url` with its password, if any, replaced by `***` (the Sentinels' too)."""
    url = _PASSWORD.sub(r"\1:***@", url)
    return re.sub(r"([?&]sentinel_password=)[^&]*", r"\1***", url)


def write_durably(
    conn: redis.Redis, replicas: int, timeout_ms: int, what: str, write: Callable[[Pipeline], object]
) -> list[Any]:
    """Run the commands `write` queues, then WAIT for `replicas` replicas; return the commands' replies.

    One pipeline sends the writes and WAIT on the same connection, as WAIT needs (it counts the
    writes of its own connection). With `replicas` 0 nothing waits. Fewer acknowledgements within
    `timeout_ms` raise ReplicationTimeout: the writes are done on the primary, not yet durable.
    """
    if replicas > 0:
        socket_timeout = conn.get_connection_kwargs().get("socket_timeout")
        if socket_timeout and timeout_ms >= socket_timeout * 1000:
            # The read would time out first, and a retry would send the writes again.
            raise ValueError(
                f"MNIST_REPLICA_TIMEOUT ({timeout_ms} ms) must be shorter than the Redis"
                f" connection's socket timeout ({socket_timeout} s)"
            )
    pipe = conn.pipeline(transaction=False)
    write(pipe)
    if replicas <= 0:
        return pipe.execute()
    pipe.execute_command("WAIT", replicas, timeout_ms)
    *replies, acked = pipe.execute()
    if int(acked) < replicas:
        raise ReplicationTimeout(
            f"{what}: {acked} of the {replicas} replica(s) that MNIST_MIN_REPLICAS asks for acknowledged it"
            f" within {timeout_ms} ms (MNIST_REPLICA_TIMEOUT); it is on the primary only, and lost if the"
            " primary's host fails before a replica copies it"
        )
    return replies
