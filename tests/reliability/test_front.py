"""Hostile clients and a supervised stack, against `mnist up` as users run it (nginx in front).

- 500 connections that send one header line, or one body byte, every 2 s (no token; reopened
  when the server closes them) and 200 event streams of a queued job leave `/healthz` and a
  one-image prediction answering, p99 recorded (the issue asks under 100 ms). The same attack
  on gunicorn alone (the stack before nginx) is the "before" figure: /healthz times out.
- A worker SIGKILLed while training under `mnist up --workers 2`: the supervisor restarts it,
  the job finishes from its checkpoint (on the other worker or the restarted one) with exactly
  one version, and the API answers throughout.

These assert the issue's thresholds with margins (the machine is shared: a p99 figure is
recorded as measured, and asserted only well below the 10 s that the "before" run shows).
"""

from __future__ import annotations

import os
import re
import resource
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from shared.keys import Keys
from tests.live_fixtures import StackEnv, start_server
from tests.reliability.conftest import Figures
from tests.reliability.stack import IMAGE, RAW, label_blob, registry_on, wait_for
from tests.reliability.test_faults import END_TIMEOUT, LONG, forget_workers, jobs_of
from tests.up_helpers import IdleStreams, SlowClients, needs_nginx, percentile, start_up

#: Slow connections and event streams of the attack (the issue's figures).
SLOW = 500
STREAMS = 200
#: Seconds the front is measured under attack (requests alternate /healthz and a prediction).
MEASURE_SECONDS = 30.0
#: A p99 this far above the issue's 100 ms fails the test (the machine is shared).
P99_LIMIT_MS = 500.0
MODEL = "front"


@pytest.fixture(autouse=True)
def _open_files() -> None:
    # 700 sockets in this process, and as many on the server's side.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 4096 <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (4096, hard))


def _measure(url: str, seconds: float) -> dict[str, Any]:
    """Alternate GET /healthz and a one-image prediction for `seconds`; return their latencies."""
    times: dict[str, list[float]] = {"healthz": [], "predict": []}
    failures: list[str] = []
    headers = {"Content-Type": RAW}
    body = IMAGE.tobytes()
    end = time.monotonic() + seconds
    with requests.Session() as http:
        while time.monotonic() < end:
            for name in ("healthz", "predict"):
                started = time.monotonic()
                try:
                    if name == "healthz":
                        r = http.get(f"{url}/healthz", timeout=10)
                    else:
                        r = http.post(
                            f"{url}/v1/models/{MODEL}:predict", data=body, headers=headers, timeout=10
                        )
                    if r.status_code != 200:
                        failures.append(f"{name}: {r.status_code}")
                except requests.RequestException as exc:
                    failures.append(f"{name}: {type(exc).__name__}")
                times[name].append(time.monotonic() - started)
            time.sleep(0.02)
    out: dict[str, Any] = {"failures": len(failures), "failure_kinds": sorted(set(failures))[:5]}
    for name, values in times.items():
        out[f"{name}_requests"] = len(values)
        out[f"{name}_p50_ms"] = percentile(values, 50)
        out[f"{name}_p99_ms"] = percentile(values, 99)
        out[f"{name}_max_ms"] = round(max(values) * 1000, 1)
    return out


def _queued_job(url: str, env: StackEnv) -> str:
    r = requests.post(f"{url}/v1/jobs", json={**LONG, "model": "never"}, headers=env.auth, timeout=30)
    assert r.status_code == 202, r.text
    return r.json()["id"]


@needs_nginx
@pytest.mark.reliability
def test_slow_clients_and_idle_streams_leave_mnist_up_answering(
    stack_env: StackEnv, tmp_path: Path, figures: Figures
) -> None:
    # No training worker: the job stays queued, its streams never end by themselves.
    stack = start_up(stack_env, tmp_path, 0)
    registry = registry_on(stack_env.redis_url, stack_env.prefix)
    slow = streams = None
    try:
        registry.publish(MODEL, label_blob(1, label=3), {})
        wait_for(lambda: _measure(stack.url, 0.01)["failures"] == 0, 30, "the model to answer")
        quiet = _measure(stack.url, 5.0)
        job_id = _queued_job(stack.url, stack_env)
        port = int(stack.url.rsplit(":", 1)[1])

        started = time.monotonic()
        slow = SlowClients("127.0.0.1", port, SLOW, interval=2.0).start()
        streams = IdleStreams("127.0.0.1", port, job_id, STREAMS)
        statuses = streams.open()
        opened_s = time.monotonic() - started
        time.sleep(5.0)  # two more pieces from every slow client
        attacked = _measure(stack.url, MEASURE_SECONDS)
        open_at_end = slow.open
        reopened = slow.reopened
        assert stack.healthy()
        figures.record(
            "hostile_clients_front",
            slow_connections=SLOW,
            slow_connections_open_at_end=open_at_end,
            slow_connections_closed_by_nginx_and_reopened=reopened,
            event_streams=STREAMS,
            event_stream_statuses=statuses,
            attack_opened_in_s=round(opened_s, 1),
            quiet_healthz_p99_ms=quiet["healthz_p99_ms"],
            quiet_predict_p99_ms=quiet["predict_p99_ms"],
            **{k: v for k, v in attacked.items() if k != "failure_kinds"},
            measured_for_s=MEASURE_SECONDS,
        )
        assert attacked["failures"] == 0, attacked["failure_kinds"]
        assert attacked["healthz_p99_ms"] < P99_LIMIT_MS and attacked["predict_p99_ms"] < P99_LIMIT_MS, (
            attacked
        )
        # The streams beyond the bound were refused at once, the others hold their slots.
        assert statuses.get("503", 0) >= STREAMS - 2 * 2 and set(statuses) <= {"200", "503"}, statuses
        assert open_at_end >= SLOW * 0.9
    finally:
        if slow is not None:
            slow.stop()
        if streams is not None:
            streams.close()
        out = stack.stop()
        registry.redis.close()
    assert stack.proc.returncode == 0, out[-3000:]


@pytest.mark.reliability
def test_before_nginx_slow_clients_starve_gunicorn_alone(
    stack_env: StackEnv, tmp_path: Path, figures: Figures
) -> None:
    """The "before": the same slow clients straight at gunicorn (2 processes × 8 threads)."""
    server = start_server(stack_env, tmp_path)
    port = int(server.url.rsplit(":", 1)[1])
    slow = None
    try:
        slow = SlowClients("127.0.0.1", port, SLOW, interval=2.0).start()
        time.sleep(3.0)
        outcomes = []
        for _ in range(3):
            started = time.monotonic()
            try:
                r = requests.get(f"{server.url}/healthz", timeout=10)
                outcomes.append(f"{r.status_code} in {time.monotonic() - started:.1f} s")
            except requests.RequestException as exc:
                outcomes.append(f"{type(exc).__name__} after {time.monotonic() - started:.1f} s")
        open_during = slow.open
        figures.record(
            "hostile_clients_gunicorn_alone",
            slow_connections=SLOW,
            threads=16,
            healthz_tries=outcomes,
            healthz_timeouts=sum("Timeout" in o for o in outcomes),
        )
        # A measure of the "before", not a property to keep: what is asserted is that the attack
        # was in place (the slow connections held). Whether gunicorn alone then starves depends
        # on which connections its threads pick up first: on 2026-12-06 /healthz timed out on 3 of
        # 3 tries in two runs, 1 of 3 in another, 0 of 3 in a fourth. The "after" test, through
        # nginx, is the one that asserts the figures the issue asks for.
        assert open_during >= SLOW * 0.9, open_during
    finally:
        if slow is not None:
            slow.stop()
        server.process.stop(signal.SIGKILL)


def _worker_pid(client: redis.Redis, name: str) -> int:
    return int(client.hget(f"rq:worker:{name}", "pid") or 0)


@pytest.mark.reliability
def test_a_worker_sigkilled_under_mnist_up_is_restarted_and_its_job_finishes_once(
    stack_env: StackEnv, redis_client: redis.Redis, tmp_path: Path, figures: Figures
) -> None:
    stack = start_up(stack_env, tmp_path, 2, OPENBLAS_NUM_THREADS="1")
    polls: list[str] = []
    stop_polling = threading.Event()

    def poll(job_id: str) -> None:
        # The API answers throughout: /healthz and the job, every 0.2 s, through the front.
        with requests.Session() as http:
            while not stop_polling.wait(0.2):
                for path in ("/healthz", f"/v1/jobs/{job_id}"):
                    try:
                        polls.append(str(http.get(f"{stack.url}{path}", timeout=10).status_code))
                    except requests.RequestException as exc:
                        polls.append(type(exc).__name__)

    poller = None
    try:
        wait_for(lambda: len(stack.programs()["worker"]) == 2, 30, "two workers")
        jobs = jobs_of(stack_env, redis_client)
        keys = Keys(stack_env.prefix)
        submitted = time.monotonic()
        r = requests.post(
            f"{stack.url}/v1/jobs", json={**LONG, "model": "supervised"}, headers=stack_env.auth
        )
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        poller = threading.Thread(target=poll, args=(job_id,), daemon=True)
        poller.start()

        def halfway() -> dict[str, Any] | None:
            v = requests.get(f"{stack.url}/v1/jobs/{job_id}", timeout=10).json()
            assert v["status"] in ("queued", "started"), v
            progress = v["progress"] or {}
            ok = progress.get("fraction", 0) >= 0.4 and redis_client.exists(keys.checkpoint(job_id))
            return progress if ok else None

        wait_for(halfway, END_TIMEOUT, "the job to pass 40 % with a checkpoint", 0.1)
        name = jobs.fetch(job_id).worker_name
        pid = _worker_pid(redis_client, name)
        assert pid in stack.programs()["worker"], (pid, stack.programs())
        last_report = jobs.fetch(job_id).meta["progress"]
        stack_pids = stack.programs()
        os.kill(pid, signal.SIGKILL)  # the worker only: the supervisor takes its work horse with it
        killed = time.monotonic()

        def restarted() -> bool:
            workers = stack.programs()["worker"]
            return len(workers) == 2 and pid not in workers

        wait_for(restarted, 30, "the killed worker to be restarted", 0.1, details=stack.log)
        restarted_s = time.monotonic() - killed

        def ended() -> dict[str, Any] | None:
            v = requests.get(f"{stack.url}/v1/jobs/{job_id}", timeout=10).json()
            return v if v["status"] in ("finished", "failed", "canceled") else None

        final = wait_for(ended, END_TIMEOUT, "the job to end", 0.2)
        finished_s = time.monotonic() - killed
        total_s = time.monotonic() - submitted
        stop_polling.set()
        poller.join(15)
        versions = requests.get(f"{stack.url}/v1/models/supervised", timeout=10).json()["versions"]
        others = {k: v for k, v in stack.programs().items() if k != "worker"}
        figures.record(
            "up_worker_sigkill",
            progress_at_kill=round(last_report["fraction"], 3),
            worker_restarted_after_s=round(restarted_s, 1),
            resumed_from_iteration=final.get("resumed_from_iteration"),
            total_iterations=final["progress"]["total_iterations"],
            attempts=final["attempts"],
            finished_after_kill_s=round(finished_s, 1),
            job_seconds=round(total_s, 1),
            versions_published=len(versions),
            api_requests=len(polls),
            api_failures=sum(p != "200" for p in polls),
            processes_kept_running=sorted(k for k, v in others.items() if v and v == stack_pids[k]),
        )
        assert final["status"] == "finished", final
        assert [v["version"] for v in versions] == [final["result"]["version"]]
        assert versions[0]["job_id"] == job_id
        assert 0 < final["resumed_from_iteration"] < final["progress"]["total_iterations"]
        assert all(p == "200" for p in polls), sorted(set(polls))
        assert re.search(rf"worker\.\d \(pid {pid}\) was killed by SIGKILL", stack.log())
        assert all(v == stack_pids[k] for k, v in others.items())  # the rest of the stack kept running
    finally:
        stop_polling.set()
        out = stack.stop()
        forget_workers(redis_client, stack_env.queue)  # the killed one never unregistered
    assert stack.proc.returncode == 0, out[-3000:]
