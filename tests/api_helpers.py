"""Helpers of the HTTP API tests: a module-wide live stack, job polling, SSE parsing, test data."""

from __future__ import annotations

import functools
import io
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import redis
import requests

from shared import datasets, serialization
from shared.keys import Keys
from shared.registry import Registry
from tests.live_fixtures import Server, StackEnv, cleanup_rq, new_env, start_server, start_worker
from tests.redis_fixtures import delete_prefix

#: Seconds a small training job may take from submission to its end on busy cores.
JOB_TIMEOUT = 60.0
#: A job that trains in a second or two on mnist-sample.
SMALL_JOB = {"dataset": "mnist-sample", "hidden": [32], "optimizer": "adam", "epochs": 2}
#: HTTP timeout of one request, in seconds.
HTTP_TIMEOUT = 15.0


def cleanup(env: StackEnv) -> None:
    """Delete everything `env`'s stack wrote: its keys and its RQ queue."""
    client = redis.Redis.from_url(env.redis_url)
    try:
        delete_prefix(client, env.prefix)
        cleanup_rq(client, env.queue)
    finally:
        client.close()


@dataclass
class Live:
    """A running gunicorn on its own stack, with an HTTP session."""

    server: Server
    env: StackEnv
    http: requests.Session

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def auth(self) -> dict[str, str]:
        return self.env.auth

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.http.get(self.url + path, timeout=HTTP_TIMEOUT, **kw)

    def post(self, path: str, **kw: Any) -> requests.Response:
        return self.http.post(self.url + path, timeout=HTTP_TIMEOUT, **kw)

    def put(self, path: str, **kw: Any) -> requests.Response:
        return self.http.put(self.url + path, timeout=HTTP_TIMEOUT, **kw)

    def delete(self, path: str, **kw: Any) -> requests.Response:
        return self.http.delete(self.url + path, timeout=HTTP_TIMEOUT, **kw)

    def upload(self, name: str, body: Any = None, **kw: Any) -> requests.Response:
        """POST a dataset on a connection of its own.

        After an error answered before the body was read (413, 409, 401), gunicorn drains at
        most 64 KiB of the unread body and then closes the connection it had announced as
        keep-alive: a session reusing it would fail on its next request.
        """
        headers = {**self.auth, **kw.pop("headers", {}), "Connection": "close"}
        return requests.post(
            f"{self.url}/v1/datasets/{name}", data=body, headers=headers, timeout=HTTP_TIMEOUT, **kw
        )

    def registry(self) -> Registry:
        """Return a Registry on this stack's prefix (to arrange state directly)."""
        return Registry(redis.Redis.from_url(self.env.redis_url), Keys(self.env.prefix))

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Submit `spec`; return the 202 view."""
        r = self.post("/v1/jobs", json=spec, headers=self.auth)
        assert r.status_code == 202, r.text
        return r.json()

    def train(self, spec: dict[str, Any], tmp: Path) -> dict[str, Any]:
        """Submit `spec`, run it on an RQ worker of its own (stopped afterwards); return the ended view."""
        worker = start_worker(self.env, tmp)
        try:
            return self.wait(self.submit(spec)["id"])
        finally:
            worker.stop()

    def wait(
        self, job_id: str, timeout: float = JOB_TIMEOUT, until: tuple[str, ...] = (), progress: bool = False
    ) -> dict[str, Any]:
        """Poll a job until it ends, or reaches a status of `until` (with progress, if asked)."""
        deadline = time.monotonic() + timeout
        while True:
            r = self.get(f"/v1/jobs/{job_id}", headers=self.auth)  # a read: any token opens it
            assert r.status_code == 200, r.text
            view = r.json()
            if view["status"] in ("finished", "failed", "canceled"):
                return view
            if view["status"] in until and (view["progress"] or not progress):
                return view
            assert time.monotonic() < deadline, f"job {job_id} still {view['status']}: {view}"
            time.sleep(0.1)


@contextmanager
def live_stack(redis_url: str, tmp: Path, workers: int = 2, **more: str) -> Iterator[Live]:
    """Run gunicorn on a fresh stack for the duration; delete the stack's data afterwards."""
    env = new_env(redis_url)
    try:
        server = start_server(env, tmp, workers=workers, **more)
        http = requests.Session()
        try:
            yield Live(server, env, http)
        finally:
            http.close()
            server.process.stop()
    finally:
        cleanup(env)


def sse_events(response: requests.Response) -> Iterator[tuple[str, Any]]:
    """Yield ("comment", text), ("retry", ms) or (event name, parsed JSON data) from an SSE stream."""
    name, data = "message", []
    for raw in response.iter_lines(decode_unicode=True):
        line = raw or ""
        if not line:
            if data:
                yield name, json.loads("\n".join(data))
            name, data = "message", []
        elif line.startswith(":"):
            yield "comment", line[1:].strip()
        elif line.startswith("retry:"):
            yield "retry", int(line.split(":", 1)[1])
        elif line.startswith("event:"):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            data.append(line.split(":", 1)[1].strip())


@functools.cache
def sample() -> datasets.Dataset:
    """Return mnist-sample (read once per test process)."""
    return datasets.load("mnist-sample")


def sample_npz(n_train: int = 300, n_test: int = 100) -> bytes:
    """Return an .npz (Keras layout) of the first real mnist-sample digits."""
    ds = sample()
    assert ds.x_test is not None and ds.y_test is not None
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        x_train=ds.x_train[:n_train].reshape(-1, 28, 28),
        y_train=ds.y_train[:n_train],
        x_test=ds.x_test[:n_test].reshape(-1, 28, 28),
        y_test=ds.y_test[:n_test],
    )
    return buf.getvalue()


def model_blob(hidden: int = 8, seed: int = 0) -> bytes:
    """Return a small valid model file (random weights)."""
    rng = np.random.default_rng(seed)
    params = [
        rng.standard_normal((hidden, 784)).astype(np.float32),
        np.zeros(hidden, np.float32),
        rng.standard_normal((10, hidden)).astype(np.float32),
        np.zeros(10, np.float32),
    ]
    return serialization.model_to_bytes(params, {"note": "test"})


def version_meta(job_id: str, hidden: int = 8) -> dict[str, Any]:
    """Return registry metadata shaped like a worker's (pipeline.model_meta)."""
    return {
        "config": {"hidden": [hidden], "optimizer": "adam", "dtype": "float32", "epochs": 2},
        "recipe": None,
        "spec": {"model": "digits", "dataset": "mnist-sample", "hidden": [hidden]},
        "dataset": {"name": "mnist-sample", "digest": "sha256:" + "ab" * 32, "source": "test"},
        "metrics": {"train_accuracy": 0.9, "val_accuracy": 0.88, "test_accuracy": 0.87},
        "history": [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.3}],
        "created_at": "2026-01-01T00:00:00+00:00",
        "job_id": job_id,
    }
