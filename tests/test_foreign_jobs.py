"""Jobs the API did not write: a real RQ worker (burst mode, in its own process) fails them unrun.

Whoever can write to Redis can queue a job naming any function, callback or webhook. The worker
runs `shared.jobs.TRAIN_FUNCTION` on one spec and nothing else: every other job ends failed with a
one-line reason, nothing of it is imported or called, and the worker goes on to the next job.
"""

from __future__ import annotations

import dataclasses
import http.server
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from rq import Queue, Retry
from rq.job import Callback, Job
from rq.serializers import JSONSerializer
from rq.webhook import Webhook

from shared.config import Settings
from shared.jobs import TRAIN_FUNCTION, Jobs, JobState, refusal
from shared.keys import Keys
from shared.pipeline import load_spec
from shared.registry import Registry
from tests.live_fixtures import ROOT, StackEnv

#: Trains in a blink.
TINY = {"dataset": "mnist-sample", "hidden": [8], "optimizer": "adam", "epochs": 1}
#: Seconds the burst worker may take for every job of a test (a tiny training run included).
BURST_TIMEOUT = 120

BURST = """
import sys
import redis
from shared.config import Settings
from worker.runner import make_worker

settings = Settings.from_env()
make_worker(settings, redis.Redis.from_url(settings.redis_url)).work(burst=True)
"""


class Hooks(http.server.BaseHTTPRequestHandler):
    """Counts the requests that reach it (a webhook that must never be sent)."""

    received: list[str] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        Hooks.received.append(self.path)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def hook_url() -> Iterator[str]:
    """Return the URL of a local HTTP server that records every request."""
    Hooks.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hooks)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()
    server.server_close()


@pytest.fixture
def jobs(redis_client: redis.Redis, stack_env: StackEnv) -> Jobs:
    """Jobs on this test's prefix and queue."""
    settings = dataclasses.replace(
        Settings.from_env({}),
        redis_url=stack_env.redis_url,
        key_prefix=stack_env.prefix,
        queue=stack_env.queue,
    )
    return Jobs(redis_client, settings)


def attacker_queue(stack_env: StackEnv) -> Queue:
    """Return the training queue as anyone who can write to Redis sees it (their own connection)."""
    return Queue(
        stack_env.queue, connection=redis.Redis.from_url(stack_env.redis_url), serializer=JSONSerializer
    )


def run_burst(stack_env: StackEnv) -> str:
    """Run a real worker on the queue until it is empty; return what it logged."""
    done = subprocess.run(
        [sys.executable, "-c", BURST],
        env=stack_env.environ(OPENBLAS_NUM_THREADS="1"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=BURST_TIMEOUT,
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    return log


def forget_worker(client: redis.Redis, queue: str) -> None:
    """Drop RQ's registration of the burst worker (it unregisters itself; this is for a failed run)."""
    for name in client.smembers(f"rq:workers:{queue}"):
        client.srem("rq:workers", name)
        client.delete(name)
    client.delete(f"rq:workers:{queue}")


def test_foreign_jobs_fail_unrun_and_the_worker_goes_on(
    jobs: Jobs, stack_env: StackEnv, redis_client: redis.Redis, tmp_path: Path, hook_url: str
) -> None:
    queue = attacker_queue(stack_env)
    made = tmp_path / "made-by-the-job"
    foreign = {
        "function": queue.enqueue("os.makedirs", str(made / "a"), retry=Retry(max=3)),
        "callback": queue.enqueue(
            TRAIN_FUNCTION,
            {"dataset": "nope"},
            on_failure=Callback("os.makedirs"),
            on_success=Callback("os.getcwd"),
        ),
        "webhook": queue.enqueue(TRAIN_FUNCTION, dict(TINY), webhooks=[Webhook(hook_url, "failed")]),
        "arguments": queue.enqueue(TRAIN_FUNCTION, dict(TINY), str(made / "b")),
        "keywords": queue.enqueue(TRAIN_FUNCTION, spec=dict(TINY)),
    }
    not_json = queue.enqueue("os.makedirs", str(made / "c"))
    redis_client.hset(not_json.key, "data", zlib.compress(b"\x80\x04\x95 a pickle, say"))
    foreign["payload"] = not_json
    unreadable = queue.enqueue("os.makedirs", str(made / "d"))
    redis_client.hset(unreadable.key, "status", "no-such-status")  # RQ itself cannot load this job
    ours = jobs.submit(load_spec({**TINY, "model": "after"}))  # queued last: the worker must reach it
    try:
        log = run_burst(stack_env)
    finally:
        forget_worker(redis_client, stack_env.queue)

    assert not made.exists()  # nothing of any foreign job ran
    assert Hooks.received == []
    expected = {
        "function": "refused: function 'os.makedirs' is not worker.tasks.train, the only one that runs here",
        "callback": (
            "refused: it asks for a success_callback and a failure_callback, which this service never sets"
        ),
        "webhook": "refused: it asks for webhooks, which this service never sets",
        "arguments": "refused: worker.tasks.train takes one spec (a JSON object) and nothing else",
        "keywords": "refused: worker.tasks.train takes one spec (a JSON object) and nothing else",
        "payload": "refused: its payload is not the JSON of a job (only worker.tasks.train runs here)",
    }
    failed = set(queue.failed_job_registry.get_job_ids())
    for kind, job in foreign.items():
        view = jobs.describe(jobs.fetch(job.id))  # what GET /v1/jobs/<id> shows
        assert view["status"] == JobState.FAILED.value, (kind, view)
        assert view["error"] == expected[kind], kind
        assert job.id in failed
        assert log.count(f"job {job.id} {expected[kind]}") == 1, (kind, log)
        assert Job.fetch(job.id, connection=redis_client, serializer=JSONSerializer).retries_left == 0
    assert f"job {unreadable.id} refused: RQ cannot read it (ValueError: \"'no-such-status' is not" in log
    assert "quitting" not in log.replace("done, quitting", ""), log  # RQ's "unhandled exception, quitting"
    assert "Traceback" not in log

    # The one job of ours, queued after all of them, ran and published.
    assert jobs.state(jobs.fetch(ours.id)) is JobState.FINISHED, jobs.describe(jobs.fetch(ours.id))
    assert [r.version for r in Registry(redis_client, Keys(stack_env.prefix)).versions("after")] == [1]
    assert queue.count == 0
    assert redis_client.llen(f"rq:intermediate:{stack_env.queue}") == 0
    assert queue.started_job_registry.count == 0


@pytest.mark.parametrize(
    ("args", "kwargs", "why"),
    [
        pytest.param(({"dataset": "mnist-sample"},), {}, None, id="ours"),
        pytest.param((), {}, "one spec", id="no-spec"),
        pytest.param(("mnist-sample",), {}, "one spec", id="not-an-object"),
        pytest.param(({}, {}), {}, "one spec", id="two-specs"),
        pytest.param(({},), {"x": 1}, "one spec", id="keywords"),
    ],
)
def test_refusal_reads_the_stored_payload_only(
    redis_client: redis.Redis, stack_env: StackEnv, args: tuple, kwargs: dict, why: str | None
) -> None:
    job = attacker_queue(stack_env).enqueue(TRAIN_FUNCTION, *args, **kwargs)
    stored = Job.fetch(job.id, connection=redis_client, serializer=JSONSerializer)  # as a worker reads it
    reason = refusal(stored)
    assert reason is None if why is None else why in (reason or ""), reason


def test_a_refusal_names_a_long_or_odd_function_on_one_line(
    redis_client: redis.Redis, stack_env: StackEnv
) -> None:
    name = "os.system\n" + "x" * 500
    job = attacker_queue(stack_env).enqueue("os.getcwd")
    job.func_name = name
    job.save()
    reason = refusal(Job.fetch(job.id, connection=redis_client, serializer=JSONSerializer)) or ""
    assert "\n" not in reason and "'os.system\\nxxx" in reason and len(reason) < 200, reason
