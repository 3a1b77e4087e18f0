"""The typed Python client of the service: jobs, models, datasets, batch predictions, feedback.

    from client.api import Client
    client = Client("http://127.0.0.1:8000", token=os.environ["MNIST_API_TOKEN"],
                    predict_token=os.environ.get("MNIST_PREDICT_TOKEN"))
    result = client.predict(images)           # (N, 784) or (N, 28, 28) uint8
    result.labels, result.probabilities       # (N,), (N, 10)

Tokens: `token` (the write token) goes to writes; `predict_token` to predictions (never the
write token: a service with MNIST_PREDICT_TOKEN refuses it there, one without needs none); reads
send `predict_token`, else `token` (the service takes either once it guards reads).

Retry policy: a connection that cannot be opened is retried for every request (nothing reached
the server). A 500/502/503/504 answer or a broken read is retried only for requests that are
safe to repeat: GET, PUT, DELETE and the prediction POSTs (a prediction changes nothing).
`submit`, `upload_dataset`, `dataset_from_feedback`, `push` and `rollout` are POSTs that the
server may have carried out before it failed: they are sent once past the connection, so a retry
can never queue a job, store a dataset, or publish a version, twice.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from client.defaults import (
    CLASSES,
    DEFAULT_BACKOFF,
    DEFAULT_BATCH_SIZE,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    PIXELS,
    RETRY_STATUSES,
)
from client.errors import ClientError, error_from_answer
from client.routes import predict_path
from client.routes import segment as _segment

#: Methods retried on a retry status or a broken read: the ones that may be repeated.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
#: Seconds an event stream may stay silent before it counts as broken (the server pings every 15 s).
EVENTS_READ_TIMEOUT = 45.0
#: Feedback labels per call, the most the service takes in one.
FEEDBACK_PER_CALL = 1000


@dataclass(frozen=True)
class Prediction:
    """Answers for N images: labels (N,) int64, probabilities (N, 10) float32, versions (N,) int64.

    `request_ids` name each image as feedback names it (`Client.feedback`): the id of its request,
    and ``<id>/<i>`` for image i of a request of several (empty for answers read from elsewhere).
    """

    model: str
    labels: np.ndarray
    probabilities: np.ndarray
    versions: np.ndarray
    request_ids: tuple[str, ...] = ()

    @property
    def version(self) -> int:
        """Return the version that answered, when one version answered every image."""
        found = np.unique(self.versions)
        if len(found) != 1:
            raise ValueError(f"versions {found.tolist()} answered: read .versions")
        return int(found[0])

    @property
    def confidence(self) -> np.ndarray:
        """Return the probability of each predicted label (N,)."""
        return self.probabilities[np.arange(len(self.labels)), self.labels]

    def top_k(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Return the k most probable labels (N, k) and their probabilities (N, k), best first."""
        order = np.argsort(-self.probabilities, axis=1, kind="stable")[:, :k]
        return order, np.take_along_axis(self.probabilities, order, axis=1)


#: What a request is, for the token it carries (see the module docstring).
READ, PREDICT, WRITE = "read", "predict", "write"


class Client:
    """One HTTP session to the service at `url`, with timeouts, retries and the bearer tokens."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        predict_token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF,
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.predict_token = predict_token
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.session = requests.Session()
        self.session.headers["User-Agent"] = "mnist-client/1"
        self.session.mount("http://", HTTPAdapter(max_retries=self._retry(IDEMPOTENT)))
        self.session.mount("https://", HTTPAdapter(max_retries=self._retry(IDEMPOTENT)))
        # The POSTs under /v1/models/ this session sends are predictions and feedback: those may be
        # repeated too (a feedback label counts once per request id, however often it is sent). An
        # import or a rollout decision goes through `_once`, never repeated past the connection.
        predictions = HTTPAdapter(max_retries=self._retry(IDEMPOTENT | {"POST"}))
        self.session.mount(f"{self.url}/v1/models/", predictions)
        self._once = requests.Session()
        self._once.headers["User-Agent"] = self.session.headers["User-Agent"]
        self._once.mount("http://", HTTPAdapter(max_retries=self._retry(IDEMPOTENT)))
        self._once.mount("https://", HTTPAdapter(max_retries=self._retry(IDEMPOTENT)))

    def _retry(self, methods: frozenset[str]) -> Retry:
        return Retry(
            total=self.retries,
            connect=self.retries,
            read=self.retries,
            status=self.retries,
            other=0,
            allowed_methods=methods,
            status_forcelist=RETRY_STATUSES,
            backoff_factor=self.backoff,
            raise_on_status=False,  # the last answer's JSON error says more than "too many retries"
            respect_retry_after_header=True,
        )

    def close(self) -> None:
        """Close the session's connections."""
        self.session.close()
        self._once.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- Jobs -----------------------------------------------------------------------------------

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Queue a training job (a spec with the fields of `mnist train`'s flags); return its view."""
        return self._json("POST", "/v1/jobs", json=spec, auth=WRITE)

    def job(self, job_id: str) -> dict[str, Any]:
        """Return a job's view: status, progress, result or error."""
        return self._json("GET", f"/v1/jobs/{_segment(job_id)}", auth=READ)

    def jobs(self, status: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Return recent jobs, newest first, optionally only those in `status`."""
        params = {k: v for k, v in (("status", status), ("limit", limit)) if v is not None}
        return self._json("GET", "/v1/jobs", params=params, auth=READ)

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a queued or running job; return its view (status "canceled", or still stopping)."""
        return self._json("DELETE", f"/v1/jobs/{_segment(job_id)}", auth=WRITE)

    def events(self, job_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yield (event, job view) from the job's event stream until it ends ("end") or fails ("error").

        A stream that breaks before its end is reopened (up to `retries` times in a row): the
        server starts each stream with the job's current view.
        """
        path = f"/v1/jobs/{_segment(job_id)}/events"
        failures = 0
        while True:
            try:
                response = self._send("GET", path, auth=READ, stream=True, read_timeout=EVENTS_READ_TIMEOUT)
                with response:
                    for name, data in parse_sse(response.iter_lines()):
                        failures = 0
                        yield name, data
                        if name in ("end", "error"):
                            return
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError):
                pass
            except ClientError as exc:
                if exc.code is not None:
                    raise
            failures += 1
            if failures > self.retries:
                raise ClientError("Unreachable", None, f"the event stream of job {job_id} keeps breaking")
            time.sleep(self.backoff * 2 ** (failures - 1))

    # --- Models ---------------------------------------------------------------------------------

    def models(self) -> list[dict[str, Any]]:
        """Return every model: name, latest version, number of versions, aliases."""
        return self._json("GET", "/v1/models", auth=READ)

    def model(self, name: str) -> dict[str, Any]:
        """Return a model: its versions (oldest first) with metrics, and its aliases."""
        return self._json("GET", f"/v1/models/{_segment(name)}", auth=READ)

    def version(self, name: str, version: int) -> dict[str, Any]:
        """Return one version's metadata: metrics, learning curve, lineage."""
        return self._json("GET", f"/v1/models/{_segment(name)}/versions/{int(version)}", auth=READ)

    def weights(self, name: str, version: int) -> bytes:
        """Return one version's model file (.npz bytes)."""
        path = f"/v1/models/{_segment(name)}/versions/{int(version)}/weights"
        return self._send("GET", path, auth=READ).content

    def set_alias(self, name: str, alias: str, version: int) -> dict[str, Any]:
        """Point `alias` at a version; return {"model", "alias", "version", "previous"}."""
        path = f"/v1/models/{_segment(name)}/aliases/{_segment(alias)}"
        return self._json("PUT", path, json={"version": int(version)}, auth=WRITE)

    def set_split(
        self, name: str, alias: str, versions: dict[int, float], reason: str | None = None
    ) -> dict[str, Any]:
        """Split `alias` over versions with weights ({4: 0.9, 5: 0.1}); return the alias with its "split"."""
        path = f"/v1/models/{_segment(name)}/aliases/{_segment(alias)}"
        body: dict[str, Any] = {"versions": {str(int(v)): w for v, w in versions.items()}}
        if reason:
            body["reason"] = reason
        return self._json("PUT", path, json=body, auth=WRITE)

    def push(self, name: str, data: bytes, alias: str | None = None) -> dict[str, Any]:
        """Publish a model file (.npz bytes) as `name`'s next version (and point `alias` at it); return it."""
        params = {"alias": alias} if alias else None
        # Its own connection: after an early refusal (413, 415) gunicorn closes the connection.
        headers = {"Content-Type": "application/x-npz", "Connection": "close"}
        path = f"/v1/models/{_segment(name)}/versions"
        return self._json("POST", path, data=data, params=params, headers=headers, auth=WRITE, once=True)

    def rollout(self, name: str, action: str, **fields: Any) -> dict[str, Any]:
        """Decide a rollout: action canary (version, weight, alias, reason), promote or rollback (reason)."""
        body = {"action": action, **{k: v for k, v in fields.items() if v is not None}}
        path = f"/v1/models/{_segment(name)}/rollout"
        return self._json("POST", path, json=body, auth=WRITE, once=True)

    def rollout_status(self, name: str, alias: str | None = None) -> dict[str, Any]:
        """Return the rollout of `alias` (default production): its split, canary and recent decisions."""
        params = {"alias": alias} if alias else None
        return self._json("GET", f"/v1/models/{_segment(name)}/rollout", params=params, auth=READ)

    def rollout_rule(self, name: str) -> dict[str, Any]:
        """Return the model's automatic rollout rule, with what it would decide now (`now`)."""
        return self._json("GET", f"/v1/models/{_segment(name)}/rollout/rule", auth=READ)

    def set_rollout_rule(
        self, name: str, min_feedback: int, max_accuracy_drop: float, **fields: Any
    ) -> dict[str, Any]:
        """Set the rule that promotes or rolls back the canary by itself; return it, with its verdict now."""
        body = {"min_feedback": min_feedback, "max_accuracy_drop": max_accuracy_drop}
        body.update({k: v for k, v in fields.items() if v is not None})
        return self._json("PUT", f"/v1/models/{_segment(name)}/rollout/rule", json=body, auth=WRITE)

    def delete_rollout_rule(self, name: str) -> None:
        """Remove the model's automatic rollout rule."""
        self._send("DELETE", f"/v1/models/{_segment(name)}/rollout/rule", auth=WRITE)

    def delete_alias(self, name: str, alias: str) -> None:
        """Remove an alias (the version it named stays)."""
        self._send("DELETE", f"/v1/models/{_segment(name)}/aliases/{_segment(alias)}", auth=WRITE)

    # --- Watching predictions -------------------------------------------------------------------

    def feedback(self, name: str, labels: list[tuple[str, int]]) -> dict[str, int]:
        """Send the true labels of logged requests, (request id, label 0–9) pairs, in calls of 1,000.

        Return the counts summed over the calls: {"accepted", "unknown", "repeated"}.
        """
        totals = {"accepted": 0, "unknown": 0, "repeated": 0}
        path = f"/v1/models/{_segment(name)}/feedback"
        for lo in range(0, len(labels), FEEDBACK_PER_CALL):
            body = {
                "labels": [
                    {"request_id": r, "label": int(lab)} for r, lab in labels[lo : lo + FEEDBACK_PER_CALL]
                ]
            }
            answer = self._json("POST", path, json=body, auth=PREDICT)
            for key in totals:
                totals[key] += int(answer.get(key, 0))
        return totals

    def monitor(self, name: str) -> dict[str, Any]:
        """Return each version's requests, online accuracy, confusion, shadow agreement and drift."""
        return self._json("GET", f"/v1/models/{_segment(name)}/monitor", auth=READ)

    def predictions(self, name: str, **query: Any) -> dict[str, Any]:
        """Return a page of the model's prediction log, newest first.

        `query`: version, since, until (Unix ms), before (a page's `next`), limit (≤ 1000), pixels.
        """
        params = {
            k: (str(v).lower() if isinstance(v, bool) else v) for k, v in query.items() if v is not None
        }
        return self._json("GET", f"/v1/models/{_segment(name)}/predictions", params=params, auth=READ)

    def set_shadow(self, name: str, version: int, sample: float = 1.0) -> dict[str, Any]:
        """Make `version` the model's shadow for `sample` (0–1) of its live images."""
        body = {"version": int(version), "sample": float(sample)}
        return self._json("PUT", f"/v1/models/{_segment(name)}/shadow", json=body, auth=WRITE)

    def delete_shadow(self, name: str) -> None:
        """Stop the model's shadow version."""
        self._send("DELETE", f"/v1/models/{_segment(name)}/shadow", auth=WRITE)

    # --- Datasets -------------------------------------------------------------------------------

    def datasets(self) -> list[dict[str, Any]]:
        """Return the built-in datasets (with availability on the server), then the uploaded ones."""
        return self._json("GET", "/v1/datasets", auth=READ)

    def upload_dataset(self, name: str, data: bytes, format: str | None = None) -> dict[str, Any]:
        """Upload a dataset file (npz, csv or a zip/tar of idx files) under `name`; return its entry."""
        params = {"format": format} if format else None
        # Its own connection: after an early refusal (413, 409) gunicorn closes the connection.
        headers = {"Content-Type": "application/octet-stream", "Connection": "close"}
        return self._json(
            "POST", f"/v1/datasets/{_segment(name)}", data=data, params=params, headers=headers, auth=WRITE
        )

    def dataset_from_feedback(
        self, name: str, model: str = "mnist", version: int | None = None, merge: str | None = None
    ) -> dict[str, Any]:
        """Store dataset `name` from the model's logged live predictions that have feedback labels.

        Only `version`'s predictions when given; `merge` names a dataset whose images join them.
        Return the new dataset's entry (its `digest`, sizes and `origin`).
        """
        body = {"model": model, "version": version, "merge": merge}
        return self._json("POST", f"/v1/datasets/{_segment(name)}/from-feedback", json=body, auth=WRITE)

    def delete_dataset(self, name: str) -> None:
        """Delete an uploaded dataset."""
        self._send("DELETE", f"/v1/datasets/{_segment(name)}", auth=WRITE)

    # --- Predictions ----------------------------------------------------------------------------

    def predict(
        self,
        images: np.ndarray,
        model: str = "mnist",
        version: int | None = None,
        alias: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        top_k: int | None = None,
    ) -> Prediction:
        """Classify uint8 images (N, 784) or (N, 28, 28), sent as raw bytes in requests of `batch_size`.

        Without `version` or `alias` the server answers with `production`, else the latest.
        `top_k` is checked here (1–10); read the k best with `Prediction.top_k(k)`.
        """
        if version is not None and alias is not None:
            raise ValueError("give a version or an alias, not both")
        if top_k is not None and not 1 <= top_k <= CLASSES:
            raise ValueError(f"top_k must be from 1 to {CLASSES}, got {top_k}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        rows = as_pixels(images)
        path = predict_path(model, version, alias)
        parts = [self.predict_raw(path, rows[i : i + batch_size]) for i in range(0, len(rows), batch_size)]
        if not parts:
            empty = np.zeros(0, np.int64)
            return Prediction(model, empty, np.zeros((0, CLASSES), np.float32), empty)
        return Prediction(
            model=parts[0].model,
            labels=np.concatenate([p.labels for p in parts]),
            probabilities=np.concatenate([p.probabilities for p in parts]),
            versions=np.concatenate([p.versions for p in parts]),
            request_ids=tuple(i for p in parts for i in p.request_ids),
        )

    def predict_raw(self, path: str, rows: np.ndarray) -> Prediction:
        """POST one batch of uint8 rows (n, 784) to a predict `path`; return the answers."""
        headers = {"Content-Type": "application/octet-stream"}
        response = self._send("POST", path, data=rows.tobytes(), headers=headers, auth=PREDICT)
        return parse_predictions(response.content)

    # --- Plumbing -------------------------------------------------------------------------------

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        response = self._send(method, path, **kw)
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise ClientError(
                response.reason or "Bad Answer", response.status_code, f"{method} {path}: not a JSON answer"
            ) from None

    def _send(
        self,
        method: str,
        path: str,
        *,
        auth: str | None = None,
        headers: dict[str, str] | None = None,
        read_timeout: float | None = None,
        once: bool = False,
        **kw: Any,
    ) -> requests.Response:
        """Send a request with the token of its kind `auth`; return a 2xx/3xx answer, else ClientError.

        `once`: a POST with effects, not repeated once it reached the server (see the module doc).
        """
        headers = dict(headers or {})
        token = self._token(auth)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        timeout = (self.timeout, read_timeout or self.timeout)
        try:
            session = self._once if once else self.session
            response = session.request(method, self.url + path, headers=headers, timeout=timeout, **kw)
        except requests.exceptions.RetryError as exc:
            raise ClientError("Unreachable", None, f"{method} {self.url}{path}: {_reason(exc)}") from None
        except requests.ConnectionError as exc:
            raise ClientError(
                "Unreachable", None, f"cannot reach {self.url} ({_reason(exc)}); is the service running?"
            ) from None
        except requests.Timeout:
            raise ClientError(
                "Timeout", None, f"{method} {self.url}{path}: no answer within {self.timeout:g} s"
            ) from None
        if response.status_code >= 400:
            raise error_from(response)
        return response

    def _token(self, auth: str | None) -> str | None:
        """Return the token a request of kind `auth` carries (see the module docstring)."""
        if auth == WRITE:
            return self.token
        if auth == PREDICT:
            return self.predict_token  # never the write token
        if auth == READ:
            return self.predict_token or self.token
        return None


def error_from(response: requests.Response) -> ClientError:
    """Return the ClientError that an error answer describes (the service's {code, status, message})."""
    return error_from_answer(response.status_code, response.reason, response.content)


def parse_predictions(body: bytes) -> Prediction:
    """Return the Prediction of one v1 answer {"model", "model_version", "predictions"}."""
    answer = orjson.loads(body)
    predictions = answer["predictions"]
    n = len(predictions)
    probabilities = np.array([p["probabilities"] for p in predictions], dtype=np.float32).reshape(n, CLASSES)
    labels = np.fromiter((p["label"] for p in predictions), dtype=np.int64, count=n)
    versions = np.full(n, int(answer["model_version"]), dtype=np.int64)
    request_id = answer.get("request_id")
    ids: tuple[str, ...] = ()
    if isinstance(request_id, str):
        ids = (request_id,) if n == 1 else tuple(f"{request_id}/{i}" for i in range(n))
    return Prediction(answer["model"], labels, probabilities, versions, ids)


def as_pixels(images: np.ndarray) -> np.ndarray:
    """Return images as C-contiguous uint8 rows (N, 784); ValueError for another shape or range."""
    array = np.asarray(images)
    if array.ndim == 2 and array.shape[1] == PIXELS or array.ndim == 3 and array.shape[1:] == (28, 28):
        rows = array.reshape(len(array), PIXELS)
    else:
        raise ValueError(f"images have shape {array.shape}: expected (N, 784) or (N, 28, 28)")
    if rows.dtype != np.uint8:
        if rows.dtype.kind not in "iu":
            raise ValueError(f"images have dtype {rows.dtype}: expected uint8 pixels 0-255")
        if rows.size and (rows.min() < 0 or rows.max() > 255):
            raise ValueError("images hold values outside 0-255")
        rows = rows.astype(np.uint8)
    return np.ascontiguousarray(rows)


def parse_sse(lines: Iterator[bytes | str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (event name, JSON data) from Server-Sent Events lines; comments and `retry:` are skipped."""
    name, data = "message", list[str]()
    for raw in lines:
        line = raw.decode() if isinstance(raw, bytes) else raw
        if not line:
            if data:
                yield name, json.loads("\n".join(data))
            name, data = "message", []
        elif line.startswith(":"):
            continue
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())


def _reason(exc: Exception) -> str:
    """Return the innermost reason of a requests/urllib3 error, on one line."""
    reason: Any = exc
    for _ in range(5):
        inner = getattr(reason, "reason", None) or (reason.args[0] if getattr(reason, "args", None) else None)
        if inner is None or inner is reason or isinstance(inner, str):
            break
        reason = inner
    text = str(reason)
    if "Connection refused" in text:
        return "connection refused"
    if "Name or service not known" in text or "nodename nor servname" in text:
        return "unknown host"
    return text.splitlines()[0][:200] if text else type(exc).__name__
