"""gunicorn's gthread worker, with one-image predictions answered on its event loop's own thread.

gthread hands every request from its event loop to a pool thread and the finished connection
back: two thread wake-ups, a pipe write and two epoll registrations per request, and the GIL
passed twice. For a prediction answered from memory in a few hundred microseconds, that is a
large share of the request. On a quiet 2-core machine, through nginx, one image per request at
8 clients, this worker spends about 15 % less CPU per request than gthread and halves p99
(docs/benchmarks.md, issue 17). It is the default (`MNIST_WEB_WORKER=inline`); on a host where
the server competes with other busy processes for the CPU, plain gthread
(`MNIST_WEB_WORKER=gthread`) kept more requests/s in the runs measured there: the loop thread
never sleeps under load, and the scheduler's fair share gives a thread that never yields less.
A request is served inline when its bytes, *peeked* from the socket (not read), show all of:

- the request line of an un-pinned predict route (`POST /v1/models/<m>:predict`,
  `POST /v2/models/<m>/infer`): answered from the model held in memory, never waiting on Redis
  once the model is loaded (pinned versions and aliases may load from Redis: the pool);
- a `Content-Length` of at most `INLINE_BODY_BYTES`, and the whole request already received: the
  loop never waits on a client (nginx hands gunicorn whole requests; a slow client of a bare
  gunicorn gets the pool, as before).

Everything else (event streams, uploads, large batches, every route that may wait on Redis, TLS,
bytes left over from a previous request) takes gthread's pool unchanged.
"""

from __future__ import annotations

import re
import socket
from concurrent import futures
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

#: Largest body served inline, in bytes: a JSON request of one to a dozen images.
INLINE_BODY_BYTES = 65_536
#: Bytes of a request's head looked at (request line and headers): more means the pool.
HEAD_BYTES = 8_192
#: Request lines served inline: the un-pinned predict routes, v1 and V2.
INLINE_LINE = re.compile(
    rb"POST /(?:v1/models/[^/?# ]+:predict|v2/models/[^/?# ]+/infer)(?:\?[^ ]*)? HTTP/1\.[01]\r\n"
)
#: A Content-Length header (the only body framing served inline; chunked bodies take the pool).
CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*([0-9]{1,9})[ \t]*(?=\r\n)", re.IGNORECASE)


def complete_inline_request(head: bytes) -> bool:
    """Return True if `head` (bytes peeked from a connection) is a whole request to serve inline."""
    if INLINE_LINE.match(head) is None:
        return False
    end = head.find(b"\r\n\r\n")
    if end < 0:  # headers not all received (or longer than HEAD_BYTES)
        return False
    headers = head[: end + 2]
    if b"transfer-encoding" in headers.lower():
        return False
    lengths = CONTENT_LENGTH.findall(headers)
    if len(lengths) != 1:  # none, or several: gunicorn's parser decides, on the pool
        return False
    size = int(lengths[0])
    return size <= INLINE_BODY_BYTES and len(head) >= end + 4 + size


class InlineThreadWorker(ThreadWorker):
    """gthread, but whole small predictions run on the event loop's thread (see the module doc)."""

    def enqueue_req(self, conn: Any) -> None:
        """Serve `conn`'s next request inline when it qualifies, else hand it to the pool."""
        if not self._inline(conn):
            super().enqueue_req(conn)
            return
        done: futures.Future = futures.Future()
        try:
            done.set_result(self.handle(conn))
        except Exception as exc:  # as from the pool: finish_request closes the connection
            done.set_exception(exc)  # (SystemExit, a timeout's abort, goes on up as it would)
        self.finish_request(conn, done)

    def on_client_socket_readable(self, conn: Any, client: Any) -> None:
        """Serve a kept-alive connection's next request inline, leaving it on the poller, when it qualifies.

        gthread takes the socket off the poller and puts it back after every request (two
        `epoll_ctl` calls and the selector's bookkeeping); a request answered inline and followed
        by nothing keeps its registration, and only its keep-alive deadline moves.
        """
        if not self._inline(conn):
            super().on_client_socket_readable(conn, client)
            return
        keep = self.handle(conn)  # catches what the pool's thread would; SystemExit goes on up
        if keep and self.alive and not conn.parser.unreader.buf.getvalue():
            conn.sock.setblocking(False)
            conn.set_timeout()
            self.keepalived_conns.remove(conn)  # the deque stays sorted by deadline
            self.keepalived_conns.append(conn)
            return
        # Closing, stopping, or bytes read ahead: off the poller, and gthread's own ending decides.
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        done: futures.Future = futures.Future()
        done.set_result(keep)
        self.finish_request(conn, done)

    def _inline(self, conn: Any) -> bool:
        if self.cfg.is_ssl or not self.alive:
            return False
        parser = conn.parser
        if parser is not None and parser.unreader.buf.getvalue():  # read ahead: not in the socket
            return False
        try:
            head = conn.sock.recv(HEAD_BYTES + INLINE_BODY_BYTES, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except OSError:  # nothing received yet (EAGAIN), or the connection is gone: the pool decides
            return False
        return complete_inline_request(head)
