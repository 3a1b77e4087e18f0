"""The service across separate hosts (network namespaces on one bridge, tests/reliability/hosts.py).

Ten hosts, each test its own set, torn down after it:

    redis1   Redis primary       + Sentinel        api    gunicorn, both roles (jobs, registry)
    redis2   Redis replica       + Sentinel        pred1  gunicorn, MNIST_ROLE=predictor
    redis3   Redis replica       + Sentinel        pred2  gunicorn, MNIST_ROLE=predictor
    lb       nginx over pred1 and pred2            work1  python -m worker
                                                   work2  python -m worker

The client is the test process, on the bridge's own address. Every process reaches Redis through
the three Sentinels (``redis+sentinel://``) and publishes with MNIST_MIN_REPLICAS=1: two replicas,
so that one is left to acknowledge after the primary's host is lost. A host is lost by cutting its
link (its peers see silence, not a refusal) and killing its processes.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from rq.job import Job
from rq.serializers import JSONSerializer

from client import up
from shared.config import Settings
from shared.keys import Keys
from shared.redis_conn import connect
from shared.registry import Registry
from tests.live_fixtures import BIN, ROOT, StackEnv, wait_for
from tests.reliability.conftest import Figures
from tests.reliability.hosts import Host, Network, network
from tests.reliability.stack import IMAGE, RAW, Load, LoadResult, label_blob
from tests.sentinel_fixtures import Node, RedisGroup, sentinel_binary

pytestmark = pytest.mark.reliability

MODEL = "mnist"
#: Trains for about 10 s on an idle core; several times that here, beside ten hosts' processes.
LONG = {"dataset": "mnist-sample", "hidden": [64], "optimizer": "sgd", "batch_size": 64, "epochs": 500}
#: Seconds a job may take to end once it should.
END_TIMEOUT = 300.0
#: Seconds a host's processes may take to come up.
START_TIMEOUT = 60.0
PORT = 8000


@dataclasses.dataclass
class Cluster:
    """The hosts, the Redis group, the service's URLs and a registry client of the test's own."""

    net: Network
    group: RedisGroup
    env: StackEnv
    registry: Registry
    api: str
    lb: str
    predictors: dict[str, str]
    workers: dict[str, Host]

    def host(self, name: str) -> Host:
        return self.net.hosts[name]

    def versions(self) -> list[dict[str, Any]]:
        """Return every version of the model: its number, sha256 and the job that published it."""
        return [
            {"version": r.version, "sha256": r.sha256, "job": r.metadata.get("job_id")}
            for r in self.registry.versions(MODEL)
        ]

    def submit(self, spec: dict[str, Any]) -> str:
        r = requests.post(f"{self.api}/v1/jobs", json=spec, headers=self.env.auth, timeout=30)
        assert r.status_code == 202, r.text
        return str(r.json()["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        r = requests.get(f"{self.api}/v1/jobs/{job_id}", headers=self.env.auth, timeout=30)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def wait_job(self, job_id: str, fraction: float | None = None) -> dict[str, Any]:
        """Wait until the job has ended (or, with `fraction`, trained that much); return its view."""

        def reached() -> dict[str, Any] | None:
            try:
                r = requests.get(f"{self.api}/v1/jobs/{job_id}", headers=self.env.auth, timeout=30)
            except requests.RequestException:
                return None
            if r.status_code == 503:  # the API's Redis does not answer (a failover): ask again
                return None
            assert r.status_code == 200, r.text
            view = dict(r.json())
            if fraction is None:
                return view if view["status"] in ("finished", "failed", "canceled") else None
            return view if (view.get("progress") or {}).get("fraction", 0) >= fraction else None

        return wait_for(reached, END_TIMEOUT, f"job {job_id}", 0.25, self.logs)

    def worker_of(self, job_id: str) -> str | None:
        """Return the name of the RQ worker that took the job last."""
        job = Job.fetch(job_id, connection=self.registry.redis, serializer=JSONSerializer)
        return job.worker_name

    def served(self, url: str) -> int | None:
        """Return the version that answers an un-pinned prediction at `url`, or None."""
        try:
            r = requests.post(
                f"{url}/v1/models/{MODEL}:predict",
                data=IMAGE.tobytes(),
                headers={"Content-Type": RAW},
                timeout=5,
            )
        except requests.RequestException:
            return None
        return int(r.json()["model_version"]) if r.status_code == 200 else None

    def logs(self) -> str:
        parts = []
        for host in self.net.hosts.values():
            for log in sorted(host.workdir.glob("*.log")):
                parts.append(f"--- {host.name}/{log.name}\n{log.read_text(errors='replace')[-1500:]}")
        return "\n".join(parts)


def _gunicorn(host: Host, env: StackEnv, tmp: Path, role: str) -> str:
    prom = tmp / f"prometheus-{host.name}"
    prom.mkdir()
    argv = [
        str(BIN / "gunicorn"), "--config", str(ROOT / "services" / "gunicorn_conf.py"),
        "--bind", f"{host.address}:{PORT}", "--workers", "1", "services.app:create_app()",
    ]  # fmt: skip
    host.run(
        argv,
        env.environ(MNIST_ROLE=role, MNIST_THREADS="4", PROMETHEUS_MULTIPROC_DIR=str(prom)),
        "gunicorn.log",
    )
    return f"http://{host.address}:{PORT}"


def _nginx(host: Host, upstreams: list[Host], tmp: Path) -> str:
    """Start nginx on `host` with the service's template, its upstream servers the predictors."""
    folder = tmp / "nginx"
    (folder / "servers").mkdir(parents=True)
    folder.chmod(0o711)
    values = up.nginx_values(
        Settings(), f"{host.address}:{PORT}", f"{upstreams[0].address}:{PORT}", str(folder)
    )
    # The first server is the template's; each other host one line, with the same health checks.
    for other in upstreams[1:]:
        (folder / "servers" / f"{other.name}.conf").write_text(
            f"server {other.address}:{PORT} max_fails=1 fail_timeout=10s;\n"
        )
    binary = up.find_nginx()
    if binary is None:
        pytest.skip("nginx is not installed (make proxy)")
    conf = folder / "nginx.conf"  # (`nginx -t` would bind here, outside the host: not checked first)
    conf.write_text(up.render_nginx(up.NGINX_TEMPLATE.read_text(), values))
    host.run([binary, "-p", f"{folder}/", "-c", str(conf), "-e", "stderr"], log="nginx.log")
    return f"http://{host.address}:{PORT}"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """The ten hosts above, serving version 1 of the model; everything torn down afterwards."""
    sentinel_binary()
    with network(tmp_path) as net:
        group = RedisGroup(password=uuid.uuid4().hex)
        try:
            names = ("redis1", "redis2", "redis3", "api", "pred1", "pred2", "lb", "work1", "work2")
            hosts = {name: net.add(name) for name in names}
            r1, r2, r3 = (hosts[n] for n in ("redis1", "redis2", "redis3"))
            primary = group.start_server(Node("primary", r1.address, 6379, r1.workdir, r1.prefix))
            for h in (r2, r3):
                group.start_server(
                    Node(f"replica-{h.name}", h.address, 6379, h.workdir, h.prefix), replica_of=primary
                )
            for h in (r1, r2, r3):
                group.start_sentinel(
                    Node(f"sentinel-{h.name}", h.address, 26379, h.workdir, h.prefix), primary
                )
            group.wait_until_watched(replicas=2)

            tag = uuid.uuid4().hex[:6]
            env = StackEnv(
                redis_url=group.url(),
                prefix=f"hosts-{tag}:",
                queue=f"training-{tag}",
                token=f"tok-{tag}",
                extra={
                    "MNIST_MIN_REPLICAS": "1",
                    "MNIST_REPLICA_TIMEOUT": "2000",
                    "OPENBLAS_NUM_THREADS": "1",
                },
            )
            client = connect(
                env.redis_url,
                socket_timeout=5,
                socket_connect_timeout=1,
                retry=Retry(ExponentialBackoff(1.0, 0.05), 40),
            )
            registry = Registry(client, Keys(env.prefix), min_replicas=1, replica_timeout=2000)
            registry.publish(MODEL, label_blob(1), {"seed": 1})

            api = _gunicorn(hosts["api"], env, tmp_path, "all")
            predictors = {n: _gunicorn(hosts[n], env, tmp_path, "predictor") for n in ("pred1", "pred2")}
            for name in ("work1", "work2"):
                hosts[name].run(
                    [str(BIN / "python"), "-m", "worker"],
                    env.environ(MNIST_WORKER_NAME=f"{name}-{tag}"),
                    "worker.log",
                )
            lb = _nginx(hosts["lb"], [hosts["pred1"], hosts["pred2"]], tmp_path)
            found = Cluster(
                net, group, env, registry, api, lb, predictors, {n: hosts[n] for n in ("work1", "work2")}
            )
            for url in (*predictors.values(), lb):
                wait_for(
                    lambda u=url: found.served(u) == 1, START_TIMEOUT, f"{url} serving v1", 0.2, found.logs
                )
            wait_for(
                lambda: requests.get(f"{api}/healthz", timeout=2).ok,
                START_TIMEOUT,
                "the API",
                0.2,
                found.logs,
            )
            for name in ("work1", "work2"):
                wait_for(
                    lambda n=name: client.exists(f"rq:worker:{n}-{tag}"), START_TIMEOUT, name, 0.2, found.logs
                )
            yield found
        finally:
            group.stop()


def _window(result: LoadResult, since: float) -> dict[str, Any]:
    """Return the failures of a load run and when they happened, relative to `since`."""
    failed = result.failures
    return {
        "requests": len(result.outcomes),
        "failures": len(failed),
        "failures_from_s": round(failed[0].started - since, 2) if failed else None,
        "failures_to_s": round(failed[-1].started - since, 2) if failed else None,
        "slowest_ms": result.summary()["max_ms"],
        "p99_ms": result.summary()["p99_ms"],
    }


def _assert_no_version_lost_or_twice(cluster: Cluster, expected: int) -> None:
    versions = cluster.versions()
    numbers = [v["version"] for v in versions]
    assert numbers == list(range(1, expected + 1)), versions  # none lost, none skipped
    jobs = [v["job"] for v in versions if v["job"]]
    assert len(jobs) == len(set(jobs)), versions  # no job published twice
    assert len({v["sha256"] for v in versions}) == len(versions), versions


# --- the primary's host lost ---------------------------------------------------------------------
def test_the_primary_host_lost_under_load_and_during_a_job(cluster: Cluster, figures: Figures) -> None:
    job_id = cluster.submit(LONG)
    cluster.wait_job(job_id, fraction=0.2)
    wait_for(
        lambda: cluster.registry.redis.exists(Keys(cluster.env.prefix).checkpoint(job_id)), 60, "a checkpoint"
    )
    load = Load(f"{cluster.lb}/v1/models/{MODEL}:predict", concurrency=4, deadline=600, timeout=30).start()
    time.sleep(2)
    # Published, and acknowledged by a replica, right before the primary's host goes.
    before = cluster.registry.publish(MODEL, label_blob(2), {"seed": 2})
    lost = time.monotonic()
    cluster.host("redis1").cut()
    cluster.host("redis1").kill()
    survivors = {(n.host, n.port) for n in cluster.group.servers[1:]}
    wait_for(lambda: cluster.group.primary_address() in survivors, 60, "a replica promoted", 0.1)
    promoted = time.monotonic() - lost
    # A publish after the failover (the other replica acknowledges it) reaches both predictors.
    after = cluster.registry.publish(MODEL, label_blob(3), {"seed": 3})
    published = time.monotonic()
    for url in cluster.predictors.values():
        wait_for(lambda u=url: cluster.served(u) == after, 60, f"{url} serving v{after}", 0.2, cluster.logs)
    reached = time.monotonic() - published
    view = cluster.wait_job(job_id)
    ended = time.monotonic() - lost
    time.sleep(2)
    result = load.stop()

    window = _window(result, lost)
    figures.record(
        "hosts_primary_lost",
        promoted_after_s=round(promoted, 1),
        **window,
        version_before_kept=before in [v["version"] for v in cluster.versions()],
        publish_after_reached_both_predictors_s=round(reached, 1),
        job_status=view["status"],
        job_attempts=view.get("attempts"),
        job_resumed_from_iteration=view.get("resumed_from_iteration"),
        job_ended_after_s=round(ended, 1),
        versions=len(cluster.versions()),
    )
    print(f"\nprimary host lost: {window}, promoted after {promoted:.1f} s, job {view['status']}")
    assert view["status"] == "finished", (view, cluster.logs())
    assert before in [v["version"] for v in cluster.versions()]
    assert window["failures"] == 0, result.failures[:5]
    # v1 (seed), v2 (before the loss), v3 (after), and the job's: one each, in order.
    _assert_no_version_lost_or_twice(cluster, 4)
    assert cluster.registry.published_by(job_id) == view["result"]["version"]


# --- a predictor's host cut off ------------------------------------------------------------------
def test_a_predictor_host_cut_off_behind_the_load_balancer(cluster: Cluster, figures: Figures) -> None:
    load = Load(f"{cluster.lb}/v1/models/{MODEL}:predict", concurrency=4, deadline=600, timeout=60).start()
    time.sleep(3)
    cut = time.monotonic()
    cluster.host("pred2").cut()
    time.sleep(40)  # four of nginx's fail_timeout periods: each lets one request try pred2 again
    result = load.stop()
    after = [o for o in result.outcomes if o.started >= cut]
    slow = [o for o in after if o.seconds > 1.0]
    # The last request that waited on pred2 before nginx took it out (the later ones are probes).
    first_out = min((o.started + o.seconds for o in slow), default=cut) - cut
    window = _window(result, cut)
    figures.record(
        "hosts_predictor_cut",
        **window,
        requests_after_cut=len(after),
        slow_requests_after_cut=len(slow),
        taken_out_after_s=round(first_out, 1),
        slowest_after_cut_s=round(max((o.seconds for o in after), default=0), 1),
        still_served_by=cluster.served(cluster.lb),
    )
    print(f"\npredictor cut off: {window}, {len(slow)} slow of {len(after)}, out after {first_out:.1f} s")
    assert window["failures"] == 0, result.failures[:5]
    assert len(after) > 10 * len(slow)  # nearly every request after the cut went to pred1 at once
    _assert_no_version_lost_or_twice(cluster, 1)


# --- a worker's host partitioned -----------------------------------------------------------------
def test_a_worker_host_partitioned_longer_than_its_heartbeat(cluster: Cluster, figures: Figures) -> None:
    # work2 cut off first, so that work1 takes the job; then work2 back and work1 cut off.
    cluster.host("work2").cut()
    job_id = cluster.submit(LONG)
    view = cluster.wait_job(job_id, fraction=0.25)
    keys = Keys(cluster.env.prefix)
    wait_for(lambda: cluster.registry.redis.exists(keys.checkpoint(job_id)), 60, "a checkpoint")
    first = cluster.worker_of(job_id)
    cluster.host("work2").heal()
    time.sleep(3)
    cut = time.monotonic()
    cluster.host("work1").cut()
    taken = wait_for(
        lambda: (cluster.job(job_id).get("attempts") or 0) >= 2,
        120,
        "the other worker to take the job",
        0.5,
        cluster.logs,
    )
    taken_after = time.monotonic() - cut
    view = cluster.wait_job(job_id)
    finished_after = time.monotonic() - cut
    healed = time.monotonic()
    cluster.host("work1").heal()
    # The first worker's horse, cut off mid-run, reaches Redis again: it must not publish again.
    time.sleep(30)
    figures.record(
        "hosts_worker_partitioned",
        first_worker=first,
        partitioned_s=round(healed - cut, 1),
        taken_over_after_s=round(taken_after, 1),
        job_status=view["status"],
        job_attempts=view.get("attempts"),
        resumed_from_iteration=view.get("resumed_from_iteration"),
        finished_after_s=round(finished_after, 1),
        versions_of_the_job=sum(1 for v in cluster.versions() if v["job"] == job_id),
    )
    print(f"\nworker partitioned: taken over after {taken_after:.1f} s, {view['status']}, {taken}")
    assert view["status"] == "finished", (view, cluster.logs())
    assert view["resumed_from_iteration"], view
    _assert_no_version_lost_or_twice(cluster, 2)
    assert cluster.registry.published_by(job_id) == 2
