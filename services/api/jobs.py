"""Training jobs: submit, list, look up, cancel, and follow one as Server-Sent Events."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis
from flask import Response, current_app, url_for
from flask.blueprints import BlueprintSetupState

from services.api.schemas import JobQuerySchema, JobSchema, JobSpecSchema
from services.web.auth import read_access, write_access
from services.web.blueprint import LOCATION, VALIDATION_STATUS, Blueprint
from services.web.context import EXTENSION, services
from services.web.errors import error_response
from shared import datasets
from shared.errors import InvalidInput, JobNotFound
from shared.jobs import Jobs, JobState

blp = Blueprint("jobs", __name__, url_prefix="/v1/jobs", description="Training jobs on the RQ workers")

#: Seconds between two reads of a followed job (the worker writes progress every 0.5 s).
EVENTS_POLL_INTERVAL = 0.25
#: Seconds between keep-alive comments on a quiet stream (proxies close idle connections).
EVENTS_KEEPALIVE = 15.0
#: Milliseconds an EventSource waits before reconnecting (the SSE `retry:` field).
EVENTS_RETRY_MS = 2000
#: Seconds a client refused an event stream is told to wait (`Retry-After`).
EVENTS_RETRY_AFTER = 10
#: Key of the process's `StreamSlots` in `app.extensions`.
SLOTS = "mnist.event_streams"


class StreamSlots:
    """The event streams one process serves at once: each holds a gunicorn thread while it lasts."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open = 0
        self._lock = threading.Lock()

    @property
    def in_use(self) -> int:
        """Return how many streams hold a slot now."""
        return self._open

    def take(self) -> Callable[[], None] | None:
        """Take a slot and return the function that gives it back (once), or None when all are taken."""
        with self._lock:
            if self._open >= self.limit:
                return None
            self._open += 1
        given_back = threading.Event()

        def give_back() -> None:
            with self._lock:
                if not given_back.is_set():
                    given_back.set()
                    self._open -= 1

        return give_back


def stream_limit(max_event_streams: int, threads: int) -> int:
    """Return the event streams allowed per process: the setting, or (0) a quarter of its threads."""
    # A quarter leaves three threads in four to predictions and the rest of the API, whatever
    # MNIST_THREADS is; below 4 threads no stream is served (clients poll GET /v1/jobs/<id>).
    return max_event_streams if max_event_streams > 0 else threads // 4


@blp.record_once
def _install_slots(state: BlueprintSetupState) -> None:
    settings = state.app.extensions[EXTENSION].settings
    state.app.extensions[SLOTS] = StreamSlots(stream_limit(settings.max_event_streams, settings.web_threads))


def _check_dataset(name: str) -> None:
    """Raise InvalidInput unless `name` is a built-in or an uploaded dataset right now."""
    if name in datasets.BUILTIN_NAMES:
        return  # availability is the worker's to check: its host may hold files this one lacks
    if services().datasets.exists(name):
        return
    raise InvalidInput(
        f"unknown dataset {name!r}: not a built-in ({', '.join(sorted(datasets.BUILTIN_NAMES))})"
        " nor an uploaded dataset (see GET /v1/datasets)",
        {"dataset": ["unknown dataset"]},
    )


@blp.route("", methods=["POST"])
@write_access(blp)
@blp.arguments(JobSpecSchema, error_status_code=VALIDATION_STATUS, description="the training spec")
@blp.response(202, JobSchema, description="queued", headers={"Location": LOCATION})
@blp.alt_response(400, response="BAD_REQUEST")
@blp.alt_response(415, response="UNSUPPORTED_MEDIA_TYPE")
def submit(spec: dict[str, Any]) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Queue a training job; unset fields come from the recipe."""
    _check_dataset(spec["dataset"])
    # Unset (None) fields are dropped: the stored spec reads as what the client asked for.
    spec = {k: v for k, v in spec.items() if v is not None}
    jobs = services().jobs
    job = jobs.submit(spec)
    return jobs.describe(job), 202, {"Location": url_for("jobs.get", job_id=job.id)}


@blp.route("", methods=["GET"])
@read_access(blp)
@blp.arguments(JobQuerySchema, location="query", error_status_code=VALIDATION_STATUS)
@blp.response(200, JobSchema(many=True), description="newest first")
@blp.alt_response(400, response="BAD_REQUEST")
def recent(query: dict[str, Any]) -> list[dict[str, Any]]:
    """List recent jobs, newest first, optionally in one state."""
    status = JobState(query["status"]) if query.get("status") else None
    return services().jobs.recent(limit=query["limit"], status=status)


@blp.route("/<job_id>", methods=["GET"])
@read_access(blp)
@blp.response(200, JobSchema)
@blp.alt_response(404, response="NOT_FOUND")
def get(job_id: str) -> dict[str, Any]:
    """Return a job: status, progress, learning curve so far, result or error."""
    jobs = services().jobs
    return jobs.describe(jobs.fetch(job_id))


@blp.route("/<job_id>", methods=["DELETE"])
@write_access(blp)
@blp.response(200, JobSchema, description="canceled")
@blp.alt_response(202, schema=JobSchema, description="still stopping: the worker stops at its next step")
@blp.alt_response(404, response="NOT_FOUND")
@blp.alt_response(409, response="CONFLICT", description="the job already ended")
def cancel(job_id: str) -> tuple[dict[str, Any], int]:
    """Cancel a queued job, or stop a running one (nothing is published)."""
    jobs = services().jobs
    view = jobs.describe(jobs.cancel(job_id))
    return view, 200 if JobState(view["status"]).ended else 202


@blp.route("/<job_id>/events", methods=["GET"])
@read_access(blp)
@blp.response(
    200,
    {"type": "string"},
    content_type="text/event-stream",
    description="`event: progress` with the job view on each change, `: keep-alive` every 15 s,"
    " and a last `event: end` with the final view; the server ends a stream after"
    " MNIST_EVENT_STREAM_SECONDS (clients reconnect)",
)
@blp.alt_response(404, response="NOT_FOUND")
@blp.alt_response(
    503,
    response="SERVICE_UNAVAILABLE",
    description="this process serves MNIST_MAX_EVENT_STREAMS streams already: retry after `Retry-After`"
    " seconds, or poll GET /v1/jobs/<id>",
)
def events(job_id: str) -> Response:
    """Follow a job as Server-Sent Events until it ends."""
    jobs = services().jobs
    jobs.fetch(job_id)  # an unknown id is a 404 now, not an event later
    slots: StreamSlots = current_app.extensions[SLOTS]
    give_back = slots.take()
    if give_back is None:
        return error_response(
            503,
            f"too many event streams: this server process serves {slots.limit} at once"
            f" (MNIST_MAX_EVENT_STREAMS); poll GET /v1/jobs/{job_id}, or retry later",
            headers={"Retry-After": str(EVENTS_RETRY_AFTER)},
        )
    try:
        keepalive = float(current_app.config.get("EVENTS_KEEPALIVE", EVENTS_KEEPALIVE))
        lifetime = services().settings.event_stream_seconds
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        stream = _stream(jobs, job_id, keepalive, time.monotonic() + lifetime)
        response = Response(stream, mimetype="text/event-stream", headers=headers)
    except BaseException:
        give_back()
        raise
    # The slot is given back when the server closes the response: the stream ended, the client
    # left (the next write failed), or it was never iterated.
    response.call_on_close(give_back)
    return response


def _event(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _stream(jobs: Jobs, job_id: str, keepalive: float, until: float) -> Iterator[str]:
    """Yield the SSE frames of one job until it ends (or expires), or until monotonic time `until`."""
    # Runs outside the request context (Flask has returned the Response): only plain objects.
    yield f"retry: {EVENTS_RETRY_MS}\n\n"
    last = None
    quiet_since = time.monotonic()
    while time.monotonic() < until:
        try:
            view = JobSchema().dump(jobs.describe(jobs.fetch(job_id)))
        except JobNotFound as exc:
            yield _event("error", {"code": 404, "status": "Not Found", "message": exc.message})
            return
        except redis.RedisError:
            message = "Redis does not answer: reconnect later"
            yield _event("error", {"code": 503, "status": "Service Unavailable", "message": message})
            return
        if JobState(view["status"]).ended:
            yield _event("end", view)
            return
        if view != last:
            last = view
            quiet_since = time.monotonic()
            yield _event("progress", view)
        elif time.monotonic() - quiet_since >= keepalive:
            quiet_since = time.monotonic()
            yield ": keep-alive\n\n"
        time.sleep(EVENTS_POLL_INTERVAL)
