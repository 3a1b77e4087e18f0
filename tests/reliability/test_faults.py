"""Faults with the real stack: each scenario breaks one thing and measures what users see.

(a) An RQ worker SIGKILLed mid-training: the job resumes on the other worker from its last
    checkpoint and publishes exactly one version (the resume delay is recorded).
(b) Redis killed -9 and restarted (same port, same append-only file) under prediction traffic:
    un-pinned predictions never fail, the stack reconnects by itself (a publish after the restart
    is served, a job submitted after it completes on the same worker, a job that was training
    finishes), and the versions published before survive.
(c) A gunicorn worker process SIGKILLed under load: only requests in flight on it fail, gunicorn
    starts a new one, and every job accepted meanwhile exists and finishes.
(d) A corrupted blob in Redis: refused, the previous version keeps serving, /readyz says why.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from shared.config import Settings
from shared.jobs import Jobs
from shared.keys import Keys
from shared.registry import Registry
from tests.api_helpers import Live, cleanup, live_stack, new_env
from tests.live_fixtures import Process, Server, StackEnv, start_server, start_worker
from tests.reliability.conftest import Figures
from tests.reliability.stack import (
    IMAGE,
    RAW,
    Load,
    all_serving,
    gunicorn_workers,
    label_blob,
    private_redis,
    serving,
    wait_for,
)

#: Trains for about 10 s on one idle core (longer on a loaded machine): long enough to kill.
LONG = {"dataset": "mnist-sample", "hidden": [64], "optimizer": "sgd", "batch_size": 64, "epochs": 500}
#: Trains in about a second.
SHORT = {"dataset": "mnist-sample", "hidden": [8], "optimizer": "adam", "epochs": 1}
#: Seconds a job may take to end once it should (the machine is shared).
END_TIMEOUT = 180.0


def forget_workers(client: redis.Redis, queue: str) -> None:
    """Drop RQ's registrations of a queue's workers (a SIGKILLed worker never unregisters)."""
    registered = f"rq:workers:{queue}"
    for name in client.smembers(registered):
        client.srem("rq:workers", name)
        client.delete(name)
    client.delete(registered)


def jobs_of(env: StackEnv, conn: redis.Redis) -> Jobs:
    settings = dataclasses.replace(
        Settings.from_env({}), redis_url=env.redis_url, key_prefix=env.prefix, queue=env.queue
    )
    return Jobs(conn, settings)


def view(server: Server, job_id: str) -> dict[str, Any]:
    r = requests.get(f"{server.url}/v1/jobs/{job_id}", timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def submit(server: Server, spec: dict[str, Any]) -> str:
    r = requests.post(f"{server.url}/v1/jobs", json=spec, headers=server.env.auth, timeout=30)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def wait_ended(server: Server, job_id: str, timeout: float = END_TIMEOUT) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        v = view(server, job_id)
        return v if v["status"] in ("finished", "failed", "canceled") else None

    return wait_for(ended, timeout, f"job {job_id} to end", 0.2)


def predict_version(server: Server, model: str) -> int | None:
    """Return the version that answers an un-pinned prediction on a fresh connection."""
    r = requests.post(
        f"{server.url}/v1/models/{model}:predict",
        data=IMAGE.tobytes(),
        headers={"Content-Type": RAW, "Connection": "close"},
        timeout=30,
    )
    return r.json()["model_version"] if r.status_code == 200 else None


# --- (a) a worker dies mid-training ------------------------------------------------------------------
@pytest.mark.reliability
def test_a_sigkilled_worker_job_resumes_elsewhere_and_publishes_once(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path, figures: Figures
) -> None:
    env = new_env(redis_url)
    server = start_server(env, tmp_path, workers=1)
    workers: dict[str, Process] = {}
    try:
        for name in (f"a-{env.queue}", f"b-{env.queue}"):
            workers[name] = start_worker(env, tmp_path, name, OPENBLAS_NUM_THREADS="1")
        jobs = jobs_of(env, redis_client)
        keys = Keys(env.prefix)
        submitted = time.monotonic()
        job_id = submit(server, {**LONG, "model": "resume"})

        def halfway() -> dict[str, Any] | None:
            v = view(server, job_id)
            assert v["status"] in ("queued", "started"), v
            progress = v["progress"] or {}
            ok = progress.get("fraction", 0) >= 0.4 and redis_client.exists(keys.checkpoint(job_id))
            return progress if ok else None

        wait_for(halfway, END_TIMEOUT, "the job to pass 40 % with a checkpoint", 0.1)
        first = jobs.fetch(job_id).worker_name
        (other,) = set(workers) - {first}
        workers[first].kill_tree()  # the worker and its work horse, as a lost machine would
        killed = time.monotonic()
        # The dead attempt's last progress report (written at most 0.5 s before the kill).
        last_report = jobs.fetch(job_id).meta["progress"]
        wait_for(lambda: jobs.fetch(job_id).worker_name == other, 120, f"{other} to take the job", 0.1)
        taken = time.monotonic() - killed
        wait_for(lambda: (view(server, job_id)["attempts"] or 0) >= 2, 60, "the second attempt", 0.1)
        resumed = time.monotonic() - killed

        final = wait_ended(server, job_id)
        total = time.monotonic() - submitted
        assert final["status"] == "finished", final
        assert final["attempts"] == 2
        versions = requests.get(f"{server.url}/v1/models/resume", timeout=30).json()["versions"]
        assert [v["version"] for v in versions] == [final["result"]["version"]]
        assert versions[0]["job_id"] == job_id
        assert not redis_client.exists(keys.checkpoint(job_id))
        # Trained twice: at least the steps between the last checkpoint and the last report.
        redone = max(0, last_report["iteration"] - final["resumed_from_iteration"])
        figures.record(
            "worker_sigkill",
            progress_at_kill=round(last_report["fraction"], 3),
            iteration_last_reported=last_report["iteration"],
            checkpoint_interval_s=float(env.environ()["MNIST_CHECKPOINT_INTERVAL"]),
            resumed_from_iteration=final["resumed_from_iteration"],
            iterations_redone=redone,
            total_iterations=final["progress"]["total_iterations"],
            requeued_after_s=round(taken, 1),
            training_again_after_s=round(resumed, 1),
            job_seconds=round(total, 1),
            versions_published=len(versions),
        )
        assert resumed < 60
        assert 0 < final["resumed_from_iteration"] < final["progress"]["total_iterations"]
    finally:
        for process in workers.values():
            process.stop()
        server.process.stop()
        forget_workers(redis_client, env.queue)
        cleanup(env)


# --- (b) Redis restarts under traffic ------------------------------------------------------------------
@pytest.mark.reliability
def test_redis_killed_and_restarted_under_traffic(tmp_path: Path, figures: Figures) -> None:
    with private_redis(tmp_path, appendonly=True) as db:
        env = StackEnv(
            redis_url=db.url,
            prefix="rr:",
            queue="training-rr",
            token="tok-rr",
            extra={"MNIST_DEFAULT_MODEL": "steady"},
        )
        client = db.client()
        registry = Registry(client, Keys(env.prefix))
        published = [registry.publish("steady", label_blob(v, label=v), {"v": v}) for v in (1, 2, 3)]
        server = start_server(env, tmp_path)
        spare = {
            name: start_worker(env, tmp_path, name, OPENBLAS_NUM_THREADS="1") for name in ("rr-a", "rr-b")
        }
        pids = {name: p.pid for name, p in spare.items()}
        load: Load | None = None
        try:
            wait_for(
                lambda: all_serving(server, "steady", published[-1]), 30, "both gunicorn workers to serve v3"
            )
            jobs = jobs_of(env, client)
            # A job that is training when Redis goes away (it goes to one of the two workers).
            training = submit(server, {**LONG, "model": "during"})
            wait_for(
                lambda: (view(server, training)["progress"] or {}).get("fraction", 0) > 0.05,
                120,
                "the job to train",
            )
            trainer = jobs.fetch(training).worker_name
            assert trainer in spare
            time.sleep(1.5)  # appendfsync everysec: what was written a second ago is on disk

            load = Load(f"{server.url}/v1/models/steady:predict", concurrency=4, deadline=240).start()
            time.sleep(2)
            db.kill()
            killed = time.monotonic()
            time.sleep(1)
            ready = requests.get(f"{server.url}/readyz", timeout=30)
            assert ready.status_code == 200 and ready.json()["redis"] is False, ready.text
            during_outage = requests.get(f"{server.url}/v1/models/steady", timeout=30).status_code
            time.sleep(4)
            db.start()  # same port, same folder: it replays its append-only file
            up = time.monotonic()
            outage = up - killed

            wait_for(
                lambda: requests.get(f"{server.url}/readyz", timeout=30).json()["redis"], 30, "readyz redis"
            )
            readyz_after = time.monotonic() - up
            assert [r.version for r in registry.versions("steady")] == published  # the AOF kept them

            v4 = registry.publish("steady", label_blob(4, label=4), {"v": 4})
            published_at = time.monotonic()
            wait_for(
                lambda: all(predict_version(server, "steady") == v4 for _ in range(6)), 30, "v4 to be served"
            )
            served_after = time.monotonic() - published_at

            after_job = submit(server, {**SHORT, "model": "after"})
            after_started = time.monotonic()
            done = wait_ended(server, after_job)
            after_seconds = time.monotonic() - after_started
            assert done["status"] == "finished", done
            ran_on = jobs.fetch(after_job).worker_name

            during = wait_ended(server, training, timeout=300)
            result = load.stop()
            load = None
            alive = {name: p.alive() for name, p in spare.items()}
            registered = {name: bool(client.exists(f"rq:worker:{name}")) for name in spare}
            in_outage = [o for o in result.outcomes if killed <= o.started <= up]
            figures.record(
                "redis_restart",
                outage_s=round(outage, 1),
                requests=len(result.outcomes),
                requests_during_outage=len(in_outage),
                failures=len(result.failures),
                metadata_route_during_outage=during_outage,
                readyz_reconnected_after_s=round(readyz_after, 2),
                new_version_served_after_s=round(served_after, 2),
                job_after_restart_s=round(after_seconds, 1),
                job_after_restart_worker=ran_on,
                job_training_during_outage=during["status"],
                job_training_worker=trainer,
                job_training_attempts=during["attempts"],
                workers_alive=sum(alive.values()),
                versions_survived=len(published),
            )
            assert result.failures == [], result.failures[:5]
            assert len(in_outage) > 0
            assert all(alive.values()), {n: spare[n].log()[-3000:] for n, a in alive.items() if not a}
            assert all(registered.values()), registered
            assert ran_on in spare and {n: p.pid for n, p in spare.items()} == pids  # the same processes
            assert during["status"] == "finished", during
            assert len(registry.versions("during")) == 1
        finally:
            if load is not None:
                load.stop()
            for process in spare.values():
                process.stop()
            server.process.stop()
            client.close()


# --- (c) a gunicorn worker dies under load ----------------------------------------------------------
@pytest.mark.reliability
def test_a_sigkilled_gunicorn_worker_fails_only_its_requests(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path, figures: Figures
) -> None:
    env = new_env(redis_url)
    env.extra["MNIST_DEFAULT_MODEL"] = "busy"
    Registry(redis_client, Keys(env.prefix)).publish("busy", label_blob(1, label=1), {})
    server = start_server(env, tmp_path)
    worker = start_worker(env, tmp_path, OPENBLAS_NUM_THREADS="1")
    load: Load | None = None
    accepted: list[str] = []
    refused: list[str] = []
    try:
        wait_for(lambda: all_serving(server, "busy", 1), 30, "both gunicorn workers to serve v1")
        before = gunicorn_workers(server)
        load = Load(f"{server.url}/v1/models/busy:predict", concurrency=8, deadline=120).start()
        stop_submitting = threading.Event()

        def submitter() -> None:
            with requests.Session() as s:
                while not stop_submitting.is_set():
                    try:
                        r = s.post(
                            f"{server.url}/v1/jobs",
                            json={**SHORT, "model": "busy-jobs"},
                            headers=env.auth,
                            timeout=30,
                        )
                        (accepted if r.status_code == 202 else refused).append(
                            r.json()["id"] if r.status_code == 202 else f"{r.status_code} {r.text[:100]}"
                        )
                    except requests.RequestException as exc:
                        refused.append(f"{type(exc).__name__}")
                    stop_submitting.wait(0.4)

        submitting = threading.Thread(target=submitter, daemon=True)
        submitting.start()
        time.sleep(2)
        victim = before[0]
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        wait_for(
            lambda: len(set(gunicorn_workers(server)) - set(before)) == 1,
            60,
            "gunicorn to start a new worker",
        )
        replaced = time.monotonic() - killed
        wait_for(lambda: serving(server, "busy") == [1, 1], 60, "the new worker to serve")
        time.sleep(2)
        stop_submitting.set()
        submitting.join(30)
        result = load.stop()
        load = None

        late = [o for o in result.failures if o.started > killed + 0.5]
        finished = [wait_ended(server, job_id) for job_id in accepted]
        figures.record(
            "gunicorn_worker_sigkill",
            requests=len(result.outcomes),
            concurrency=result.concurrency,
            failed_requests=len(result.failures),
            failed_after_the_kill=len(late),
            new_worker_after_s=round(replaced, 2),
            jobs_accepted=len(accepted),
            jobs_refused_or_cut=len(refused),
            jobs_finished=sum(v["status"] == "finished" for v in finished),
        )
        assert len(result.failures) <= result.concurrency, [o.error for o in result.failures]
        assert late == [], [o.error for o in late]
        assert len(accepted) >= 5
        assert all(v["status"] == "finished" for v in finished), [
            v for v in finished if v["status"] != "finished"
        ]
        assert requests.get(f"{server.url}/healthz", timeout=10).status_code == 200
    finally:
        if load is not None:
            load.stop()
        worker.stop()
        server.process.stop()
        forget_workers(redis_client, env.queue)
        cleanup(env)


# --- (d) a corrupted blob ------------------------------------------------------------------------------
@pytest.fixture
def live(redis_url: str, tmp_path: Path) -> Iterator[Live]:
    with live_stack(redis_url, tmp_path, workers=2) as stack:
        yield stack


def test_a_corrupted_blob_is_refused_and_the_previous_version_serves(live: Live, figures: Figures) -> None:
    registry = live.registry()
    conn: redis.Redis = registry.redis
    server = live.server
    m = "fragile"
    v1 = registry.publish(m, label_blob(1, label=1), {})
    registry.set_alias(m, "production", v1)
    # Both gunicorn processes must hold v1: "the previous version" is the one a process holds.
    wait_for(lambda: all_serving(server, m, v1), 30, "both gunicorn workers to serve v1")
    v2 = registry.publish(m, label_blob(2, label=2), {})
    conn.set(Keys(live.env.prefix).blob(m, v2), b"bytes that do not match the sha256")
    registry.delete_alias(m, "production")  # the default moves to v2, which must be refused
    moved = time.monotonic()

    def reason() -> str:
        return requests.get(f"{live.url}/readyz", timeout=30).json()["reason"] or ""

    wait_for(lambda: all(f"v{v2} refused" in reason() for _ in range(4)), 30, "readyz to name the refusal")
    refused_after = time.monotonic() - moved
    ready = requests.get(f"{live.url}/readyz", timeout=30)
    assert ready.status_code == 200 and "sha256" in ready.json()["reason"], ready.text

    result = Load(f"{live.url}/v1/models/{m}:predict", concurrency=4, total=400).start().join()
    versions = {o.version for o in result.outcomes}
    pinned = requests.post(
        f"{live.url}/v1/models/{m}/versions/{v2}:predict",
        data=IMAGE.tobytes(),
        headers={"Content-Type": RAW},
        timeout=30,
    )
    weights = requests.get(f"{live.url}/v1/models/{m}/versions/{v2}/weights", timeout=30)
    metrics = requests.get(f"{live.url}/metrics", timeout=30).text
    corrupt_reloads = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("mnist_model_reloads_total{")
        and f'model="{m}"' in line
        and 'outcome="corrupt"' in line
    )

    v3 = registry.publish(m, label_blob(3, label=3), {})
    published = time.monotonic()
    wait_for(lambda: all(predict_version(server, m) == v3 for _ in range(6)), 30, "v3 to serve")
    recovered_after = time.monotonic() - published
    wait_for(lambda: all(reason() == "" for _ in range(4)), 30, "readyz to clear")
    figures.record(
        "corrupt_blob",
        refusal_reported_after_s=round(refused_after, 2),
        predictions_while_refused=len(result.outcomes),
        failures=len(result.failures),
        versions_answering=sorted(v for v in versions if v is not None),
        pinned_corrupt_version_status=pinned.status_code,
        weights_download_status=weights.status_code,
        corrupt_reloads_counted=int(corrupt_reloads),
        next_good_version_served_after_s=round(recovered_after, 2),
    )
    assert result.failures == [] and versions == {v1}
    assert pinned.status_code == 503 and "sha256" in pinned.json()["message"]
    assert weights.status_code == 503
    assert corrupt_reloads >= 1


@pytest.mark.reliability
def test_a_fresh_process_has_no_previous_version_to_fall_back_on(live: Live, figures: Figures) -> None:
    """Measure a limit: a process that starts while the default's blob is corrupt serves nothing.

    The processes that held v1 keep serving it; one that starts afterwards (gunicorn replacing a
    dead worker, a new replica) has no previous version in memory, and answers 503 for the
    model's un-pinned predictions until a good version is published.
    """
    registry = live.registry()
    server = live.server
    m = "fragile-fresh"
    v1 = registry.publish(m, label_blob(1, label=1), {})
    # The alias holds the default at v1 until v2's blob is corrupt: published unpinned, v2 could
    # be loaded (and served) in the moment between its publish and the corruption.
    registry.set_alias(m, "production", v1)
    wait_for(lambda: all_serving(server, m, v1), 30, "both gunicorn workers to serve v1")
    v2 = registry.publish(m, label_blob(2, label=2), {})
    registry.redis.set(Keys(live.env.prefix).blob(m, v2), b"bytes that do not match the sha256")
    registry.delete_alias(m, "production")  # the default moves to v2, which must be refused
    wait_for(lambda: "refused" in requests.get(f"{live.url}/readyz", timeout=30).text, 30, "the refusal")
    before = gunicorn_workers(server)
    os.kill(before[0], signal.SIGKILL)
    wait_for(lambda: len(set(gunicorn_workers(server)) - set(before)) == 1, 60, "a new gunicorn worker")
    statuses: collections.Counter[int] = collections.Counter()
    versions: collections.Counter[int] = collections.Counter()
    for _ in range(200):  # fresh connections: the two processes share them
        r = requests.post(
            f"{live.url}/v1/models/{m}:predict",
            data=IMAGE.tobytes(),
            headers={"Content-Type": RAW, "Connection": "close"},
            timeout=30,
        )
        statuses[r.status_code] += 1
        if r.status_code == 200:
            versions[r.json()["model_version"]] += 1
        else:
            assert r.status_code == 503 and "sha256" in r.json()["message"], r.text
    v3 = registry.publish(m, label_blob(3, label=3), {})
    wait_for(lambda: all_serving(server, m, v3), 30, "both gunicorn workers to serve v3")
    figures.record(
        "corrupt_blob_fresh_process",
        requests=sum(statuses.values()),
        answered_by_v1=versions.get(v1, 0),
        answered_503=statuses.get(503, 0),
        other_statuses=sum(n for code, n in statuses.items() if code not in (200, 503)),
    )
    assert set(versions) <= {v1}
    assert set(statuses) <= {200, 503}
