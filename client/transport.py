"""A small HTTP transport on the standard library, for the hot path of `mnist predict`.

Importing requests and urllib3 takes about 0.2 s, which is longer than the service needs to
classify 10,000 images. `mnist predict` therefore sends its prediction POSTs with http.client.
The library (`client.api.Client`) stays on requests. Both follow the same policy: timeouts,
retries with backoff, and the service's JSON error body as a `ClientError`.

A prediction changes nothing on the service, so a POST may be repeated. It is retried when the
connection fails, when the answer breaks off or times out, and on a 500/502/503/504 answer.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import time
from urllib.parse import urlsplit

from client.defaults import DEFAULT_BACKOFF, DEFAULT_RETRIES, DEFAULT_TIMEOUT, RETRY_STATUSES
from client.errors import ClientError, error_from_answer

#: The User-Agent of every request (the library's too).
USER_AGENT = "mnist-client/1"


class Transport:
    """Keep-alive connections to the service at `url`, one per request in flight, reused in turn."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF,
    ) -> None:
        self.url = url.rstrip("/")
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not a service URL: expected http://host[:port]")
        self._kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        self._host, self._port, self._prefix = parts.hostname, parts.port, parts.path
        self.headers = {"User-Agent": USER_AGENT}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[bytes, http.client.HTTPMessage]:
        """POST a request that may be repeated; return a 2xx answer's body and headers, else ClientError."""
        headers = {**self.headers, **headers}
        failure = ClientError("Unreachable", None, f"POST {self.url}{path}: not sent")  # retries < 0
        retry_after = 0.0
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(max(retry_after, self._backoff(attempt)))
            conn = self._take()
            try:
                if conn.sock is None:
                    conn.connect()
            except OSError as exc:
                conn.close()
                reason = _reason(exc)
                failure = ClientError(
                    "Unreachable", None, f"cannot reach {self.url} ({reason}); is the service running?"
                )
                continue
            try:
                response = exchange(conn, "POST", self._prefix + path, body, headers)
                data = response.read()
            except TimeoutError:
                conn.close()
                failure = ClientError(
                    "Timeout", None, f"POST {self.url}{path}: no answer within {self.timeout:g} s"
                )
                continue
            except (OSError, http.client.HTTPException) as exc:  # a keep-alive connection closed, a reset
                conn.close()
                failure = ClientError("Unreachable", None, f"POST {self.url}{path}: {_reason(exc)}")
                continue
            self._give_back(conn, response)
            if response.status < 400:
                return data, response.headers
            failure = error_from_answer(response.status, response.reason, data)
            if response.status not in RETRY_STATUSES:
                break
            retry_after = _retry_after(response)
        raise failure

    def close(self) -> None:
        """Close the idle connections."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _take(self) -> http.client.HTTPConnection:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self._kind(self._host, self._port, timeout=self.timeout)

    def _give_back(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse) -> None:
        if response.will_close:
            conn.close()
            return
        with self._lock:
            self._idle.append(conn)

    def _backoff(self, attempt: int) -> float:
        """Return the seconds before retry `attempt` (1, 2, 3…): 0, then 2×, 4×… the backoff factor."""
        return 0.0 if attempt == 1 else self.backoff * 2 ** (attempt - 1)

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def exchange(
    conn: http.client.HTTPConnection, method: str, url: str, body: bytes | None, headers: dict[str, str]
) -> http.client.HTTPResponse:
    """Send a request on `conn` and return its response, also when the server answered early.

    A server may refuse a body from its Content-Length alone (a 413) and close the connection
    without reading it. Sending the rest of a large body then fails with EPIPE or ECONNRESET, while
    the answer already waits in the socket's receive buffer. As urllib3 does, ignore that failure
    and read the answer; when there is none, `getresponse` raises as for any dropped connection.
    """
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        conn.request(method, url, body=body, headers=headers)
    return conn.getresponse()


def _retry_after(response: http.client.HTTPResponse) -> float:
    """Return a Retry-After header given in seconds, else 0 (a date is ignored)."""
    value = (response.getheader("Retry-After") or "").strip()
    return float(value) if value.isdigit() else 0.0


def _reason(exc: BaseException) -> str:
    """Return why a connection failed, on one line."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return "unknown host"
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
