"""Hostile input against the real gunicorn: fuzzing from the OpenAPI document, then targeted attacks.

- Property-based cases of every operation of /openapi.json, made by schemathesis (valid and
  invalid data, with the write token so that write routes run too): no answer may be a 5xx.
  `make test` runs a smoke pass (a few cases per operation); `make reliability` runs >= 1,000.
- Targeted: bodies over the limits (413), 100,000 nested JSON lists, a pickled .npy whose
  unpickling would create a file, an IDX upload whose header declares a huge size (the API
  worker's memory is read from /proc before and after), path traversal and null bytes in names,
  and CR/LF in names (no header may be injected into the response).
"""

from __future__ import annotations

import collections
import contextlib
import gzip
import http.client
import io
import json
import os
import pickle
import socket
import struct
import tarfile
import time
import uuid
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, Verbosity, given, seed, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from client.transport import exchange
from shared import dataset_files, mlp
from tests.api_helpers import Live, live_stack
from tests.datasets_fixtures import IMAGES_MAGIC, LABELS_MAGIC, idx_tar_bomb
from tests.reliability.conftest import Figures
from tests.reliability.stack import gunicorn_workers, label_blob, proc_status

#: Limits of the module's server: small, so that refusals are cheap to provoke.
MAX_BODY = 1 << 20
MAX_DATASET = 2 << 20
#: Cases per operation and generation mode (positive, negative) in the full fuzzing run.
FUZZ_EXAMPLES = 25
#: The same in the smoke run of `make test`.
SMOKE_EXAMPLES = 2
#: Hypothesis seed of the fuzzing runs (MNIST_FUZZ_SEED changes it), so that a run is reproducible.
FUZZ_SEED = int(os.environ.get("MNIST_FUZZ_SEED", "20261128"))


@pytest.fixture(scope="module")
def live(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """One gunicorn worker process (its memory is read from /proc), small limits, model `mnist` v1."""
    with live_stack(
        redis_url,
        tmp_path_factory.mktemp("hostile"),
        workers=1,
        MNIST_MAX_BODY_BYTES=str(MAX_BODY),
        MNIST_MAX_DATASET_BYTES=str(MAX_DATASET),
    ) as stack:
        registry = stack.registry()
        registry.publish("mnist", label_blob(1, label=4), {"note": "hostile"})
        yield stack


def raw_request(live: Live, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """Send `path` byte for byte (no client normalisation) on a new connection; return (response, body).

    A body refused from its Content-Length alone is answered before it is read: the answer is read
    all the same, as `mnist predict` and urllib3 read it.
    """
    conn = http.client.HTTPConnection(urlsplit(live.url).netloc, timeout=60)
    try:
        response = exchange(conn, method, path, body, {"Connection": "close", **(headers or {})})
        return response, response.read()
    finally:
        conn.close()


Route = tuple[str, str, bytes | None, str | None]  # method, path, body, content type


def each_refused(
    live: Live, routes: list[Route]
) -> Iterator[tuple[str, str, http.client.HTTPResponse, bytes]]:
    """Send each route byte for byte with the token; assert a 4xx; yield (method, path, response, body)."""
    for method, path, body, content_type in routes:
        headers = {**live.auth, **({"Content-Type": content_type} if content_type else {})}
        response, raw = raw_request(live, method, path, body, headers)
        assert 400 <= response.status < 500, (method, path, response.status, raw[:200])
        yield method, path, response, raw


def assert_json_4xx(status: int, headers: Any, body: bytes, expected: int | None = None) -> dict:
    assert 400 <= status < 500, (status, body[:300])
    if expected is not None:
        assert status == expected, (status, body[:300])
    assert headers.get("Content-Type") == "application/json", headers
    payload = json.loads(body)
    assert payload.get("code", status) == status
    return payload


def worker_pid(live: Live) -> int:
    (pid,) = gunicorn_workers(live.server)
    return pid


# --- fuzzing from the OpenAPI document -----------------------------------------------------------
@dataclass
class Tally:
    """What a fuzzing run saw: cases per operation, statuses, and the 5xx with their reproduction."""

    per_operation: collections.Counter[str] = field(default_factory=collections.Counter)
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    server_errors: list[str] = field(default_factory=list)


def fuzz_operation(
    live: Live, session: requests.Session, strategy: Any, label: str, examples: int, tally: Tally
) -> None:
    """Run `examples` cases of one operation's strategy, counting them in `tally`."""

    @seed(FUZZ_SEED)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        verbosity=Verbosity.quiet,
    )
    @given(case=strategy)
    def run(case: schemathesis.Case) -> None:
        # A fresh connection per case: after an early 413, gunicorn closes a kept-alive one.
        response = case.call(session=session, headers={**live.auth, "Connection": "close"}, timeout=60)
        tally.per_operation[label] += 1
        tally.statuses[response.status_code] += 1
        try:
            case.validate_response(response, checks=[not_a_server_error])
        except Exception:  # schemathesis raises its failure group; keep the reproduction
            tally.server_errors.append(f"{response.status_code} {case.as_curl_command()}"[:600])

    # Unsatisfiable: e.g. no invalid value exists for a free-form string path parameter.
    with contextlib.suppress(Unsatisfiable):
        run()


def fuzz(live: Live, examples: int, fixed: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run schemathesis' cases of every operation (positive and negative) against `live`.

    With `fixed`, path parameters of those names take those values (existing resources), so that
    bodies and queries are fuzzed against a model, a version and an alias that exist.
    """
    schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json", timeout=30)
    tally = Tally()
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            names = {p.name for p in operation.path_parameters}
            path_parameters = {k: v for k, v in (fixed or {}).items() if k in names}
            if fixed is not None and (not path_parameters or operation.path.endswith("/events")):
                continue  # nothing to pin; an SSE stream of a live job would not end
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                strategy = operation.as_strategy(
                    generation_mode=mode, path_parameters=path_parameters or None
                )
                fuzz_operation(live, session, strategy, operation.label, examples, tally)
    return {
        "cases": sum(tally.per_operation.values()),
        "operations": len(tally.per_operation),
        "statuses": dict(sorted(tally.statuses.items())),
        "server_errors": tally.server_errors,
    }


def fixed_resources(live: Live) -> dict[str, Any]:
    """Return path parameters naming things that exist on the module's server."""
    job = live.submit({"dataset": "mnist-sample", "hidden": [8], "epochs": 1})  # no worker: stays queued
    live.registry().set_alias("mnist", "production", 1)
    return {
        "model": "mnist",
        "version": 1,
        "alias": "production",
        "name": "mnist-sample",
        "job_id": job["id"],
    }


def test_fuzz_smoke_every_operation_without_a_5xx(live: Live, figures: Figures) -> None:
    started = time.monotonic()
    outcome = fuzz(live, SMOKE_EXAMPLES)
    figures.record(
        "fuzz_smoke",
        cases=outcome["cases"],
        operations=outcome["operations"],
        server_errors=len(outcome["server_errors"]),
        seconds=round(time.monotonic() - started, 1),
    )
    assert outcome["server_errors"] == []
    assert outcome["operations"] >= 30


@pytest.mark.reliability
def test_fuzz_openapi_at_least_1000_cases_without_a_5xx(
    redis_url: str, tmp_path: Path, figures: Figures
) -> None:
    started = time.monotonic()
    # A fresh stack: the token is per stack, and the fuzzer's writes must not leak into other tests.
    with live_stack(redis_url, tmp_path, workers=2) as stack:
        stack.registry().publish("mnist", label_blob(2, label=1), {"note": "fuzz"})
        free = fuzz(stack, FUZZ_EXAMPLES)
        pinned = fuzz(stack, FUZZ_EXAMPLES, fixed_resources(stack))
        alive = requests.get(f"{stack.url}/healthz", timeout=10).status_code
    cases = free["cases"] + pinned["cases"]
    statuses: collections.Counter[int] = collections.Counter(free["statuses"])
    statuses.update(pinned["statuses"])
    errors = free["server_errors"] + pinned["server_errors"]
    figures.record(
        "fuzz",
        cases=cases,
        cases_random_names=free["cases"],
        cases_existing_resources=pinned["cases"],
        operations=free["operations"],
        statuses={str(k): v for k, v in sorted(statuses.items())},
        server_errors=len(errors),
        seed=FUZZ_SEED,
        seconds=round(time.monotonic() - started, 1),
    )
    assert errors == [], "\n".join(errors[:20])
    assert cases >= 1000
    assert alive == 200


# --- oversized bodies ----------------------------------------------------------------------------
BIG_JSON = b'{"instances": [[' + b"0," * (MAX_BODY // 2) + b"0]]}"


@pytest.mark.parametrize(
    ("method", "path", "content_type", "body"),
    [
        ("POST", "/v1/models/mnist:predict", "application/octet-stream", bytes(MAX_BODY + 784)),
        ("POST", "/v1/models/mnist:predict", "application/json", BIG_JSON),
        ("POST", "/v1/models/mnist/versions/1:predict", "application/x-npy", bytes(MAX_BODY + 1)),
        ("POST", "/v2/models/mnist/infer", "application/json", BIG_JSON),
        ("POST", "/v1/jobs", "application/json", BIG_JSON),
        ("PUT", "/v1/models/mnist/aliases/big", "application/json", BIG_JSON),
        ("POST", "/v1/models/mnist/versions/1:evaluate", "application/json", BIG_JSON),
        ("POST", "/v1/datasets/too-big", "text/csv", b"label" + b"," * (MAX_DATASET + 1)),
    ],
    ids=["raw", "json", "npy", "v2", "jobs", "alias", "evaluate", "dataset"],
)
def test_oversized_bodies_get_a_413(
    live: Live, method: str, path: str, content_type: str, body: bytes
) -> None:
    headers = {**live.auth, "Content-Type": content_type}
    response, raw = raw_request(live, method, path, body, headers)
    assert_json_4xx(response.status, response.headers, raw, 413)


@pytest.mark.parametrize(
    ("method", "path", "content_type", "limit"),
    [
        ("POST", "/v1/models/mnist:predict", "application/octet-stream", MAX_BODY),
        ("POST", "/v1/models/mnist:predict", "application/json", MAX_BODY),
        ("POST", "/v2/models/mnist/infer", "application/json", MAX_BODY),
        ("POST", "/v1/jobs", "application/json", MAX_BODY),
        ("PUT", "/v1/models/mnist/aliases/big", "application/json", MAX_BODY),
        ("POST", "/v1/models/mnist/versions/1:evaluate", "application/json", MAX_BODY),
        ("POST", "/v1/datasets/chunked", "text/csv", MAX_DATASET),
    ],
    ids=["predict", "predict-json", "v2", "jobs", "alias", "evaluate", "dataset"],
)
def test_oversized_chunked_bodies_get_a_413(
    live: Live, method: str, path: str, content_type: str, limit: int
) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(limit // 65536 + 2):
            yield bytes(65536)

    headers = {**live.auth, "Content-Type": content_type, "Connection": "close"}
    r = requests.request(method, live.url + path, data=chunks(), headers=headers, timeout=60)
    assert r.status_code == 413, r.text
    assert r.json()["code"] == 413


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/v1/models/mnist:predict", "application/octet-stream"),
        ("/v2/models/mnist/infer", "application/octet-stream"),
        ("/v1/datasets/truncated", "text/csv"),
    ],
    ids=["predict", "v2", "dataset"],
)
def test_a_body_shorter_than_its_content_length_is_a_400(live: Live, path: str, content_type: str) -> None:
    """The client half-closes after half the bytes it declared: a 400, nothing used or stored."""
    declared = 2 * mlp.INPUT_SIZE
    head = (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: {content_type}\r\n"
        f"Authorization: {live.auth['Authorization']}\r\n"
        f"Content-Length: {declared}\r\nConnection: close\r\n\r\n"
    )
    address = urlsplit(live.url)
    with socket.create_connection((address.hostname, address.port), timeout=30) as sock:
        sock.sendall(head.encode() + bytes(mlp.INPUT_SIZE))
        sock.shutdown(socket.SHUT_WR)
        answer = b"".join(iter(lambda: sock.recv(65536), b""))
    status_line, _, rest = answer.partition(b"\r\n")
    _, _, body = rest.partition(b"\r\n\r\n")
    assert status_line.split()[1] == b"400", answer[:300]
    assert f"ended after 784 of the {declared:,} bytes" in json.loads(body)["message"]
    if path.startswith("/v1/datasets/"):
        assert requests.get(live.url + path, timeout=30).status_code == 404


# --- deeply nested JSON ----------------------------------------------------------------------------
NESTED = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/models/mnist:predict", NESTED),
        ("POST", "/v1/models/mnist:predict", b'{"instances": ' + NESTED + b"}"),
        ("POST", "/v2/models/mnist/infer", NESTED),
        ("POST", "/v1/jobs", NESTED),
        ("POST", "/v1/jobs", b'{"hidden": ' + NESTED + b"}"),
        ("PUT", "/v1/models/mnist/aliases/deep", NESTED),
        ("POST", "/v1/models/mnist/versions/1:evaluate", NESTED),
    ],
    ids=["predict", "predict-instances", "v2", "jobs", "jobs-hidden", "alias", "evaluate"],
)
def test_deeply_nested_json_is_a_400_not_a_crash(
    live: Live, figures: Figures, method: str, path: str, body: bytes
) -> None:
    before = worker_pid(live)
    response, raw = raw_request(live, method, path, body, {**live.auth, "Content-Type": "application/json"})
    assert_json_4xx(response.status, response.headers, raw, 400)
    assert worker_pid(live) == before  # the worker did not die (no recursion crash, no restart)
    assert requests.get(f"{live.url}/healthz", timeout=10).status_code == 200


# --- pickles ----------------------------------------------------------------------------------------
class CreatesAFile:
    """An object whose unpickling creates the file `path` (what an attacker's payload would do)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.path, "w"))


def pickled_npy(path: Path, shape: tuple[int, ...] = (1, 784)) -> bytes:
    """Return .npy bytes of an object array holding CreatesAFile(path) (np.save pickles it)."""
    array = np.empty(shape, dtype=object)
    array.flat[0] = CreatesAFile(path)
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


def test_the_payload_does_create_a_file_when_unpickled(tmp_path: Path) -> None:
    """The control: the payload below is live, so its refusal by the server means something."""
    marker = tmp_path / "control"
    loaded = np.load(io.BytesIO(pickled_npy(marker)), allow_pickle=True)
    loaded.flat[0].close()
    assert marker.exists()


def test_a_pickled_npy_is_refused_and_never_unpickled(live: Live, tmp_path: Path, figures: Figures) -> None:
    marker = tmp_path / f"unpickled-{uuid.uuid4().hex[:6]}"
    npy = pickled_npy(marker)
    npz = io.BytesIO()
    with zipfile.ZipFile(npz, "w") as zf:
        zf.writestr("x_train.npy", pickled_npy(marker, (2, 784)))
        labels = io.BytesIO()
        np.save(labels, np.array([1, 2], np.uint8))
        zf.writestr("y_train.npy", labels.getvalue())
    attempts = [
        ("POST", "/v1/models/mnist:predict", "application/x-npy", npy),
        ("POST", "/v1/models/mnist/versions/1:predict", "application/x-npy", npy),
        ("POST", "/v1/models/mnist:predict", "application/x-npy", pickle.dumps(CreatesAFile(marker))),
        ("POST", "/v1/datasets/pickled-npz", "application/x-npz", npz.getvalue()),
        ("POST", "/v1/datasets/pickled-zip", "application/octet-stream", npz.getvalue()),
        ("POST", "/v1/datasets/pickled-npy", "application/octet-stream", npy),
        ("POST", "/v1/datasets/pickled-raw", "application/octet-stream", pickle.dumps(CreatesAFile(marker))),
    ]
    for method, path, content_type, body in attempts:
        response, raw = raw_request(live, method, path, body, {**live.auth, "Content-Type": content_type})
        assert_json_4xx(response.status, response.headers, raw, 400)
    time.sleep(0.2)
    assert not marker.exists(), "the server unpickled the payload"
    assert live.get("/v1/datasets/pickled-npz").status_code == 404
    figures.record("pickle", attempts=len(attempts), refused=len(attempts), unpickled=0)


# --- an IDX header that declares a huge size --------------------------------------------------------
def idx_archive(images: int, labels: int, payload_images: int = 3, compress_members: bool = False) -> bytes:
    """Return a .tar.gz of IDX files whose headers declare `images` / `labels` but hold few bytes."""
    image_file = struct.pack(">IIII", IMAGES_MAGIC, images, 28, 28) + bytes(784 * payload_images)
    label_file = struct.pack(">II", LABELS_MAGIC, labels) + bytes(payload_images)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in (("train-images-idx3-ubyte", image_file), ("train-labels-idx1-ubyte", label_file)):
            if compress_members:
                name, data = name + ".gz", gzip.compress(data)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize(
    ("images", "labels", "status", "message"),
    [
        (2**32 - 1, 2**32 - 1, 400, "declares 4,294,967,295 images; expected 1 to 1,000,000"),
        # 785 MB declared: more than MNIST_MAX_DATASET_BYTES once inflated, refused from the header.
        (dataset_files.MAX_IMAGES, dataset_files.MAX_IMAGES, 413, "1,000,000 images and labels"),
        (dataset_files.MAX_IMAGES, 3, 400, "holds 1,000,000 images but"),
    ],
    ids=["4-billion", "limit-1m", "images-1m"],
)
def test_an_idx_header_declaring_a_huge_size_allocates_nothing(
    live: Live, figures: Figures, images: int, labels: int, status: int, message: str
) -> None:
    pid = worker_pid(live)
    # Warm the worker's upload path once, so that what is measured is this request alone.
    raw_request(live, "POST", "/v1/datasets/warm-up?format=idx", idx_archive(3, 3), live.auth)
    before = proc_status(pid)
    body = idx_archive(images, labels)
    response, raw = raw_request(
        live, "POST", f"/v1/datasets/huge-{images}-{labels}?format=idx", body, live.auth
    )
    after = proc_status(pid)
    payload = assert_json_4xx(response.status, response.headers, raw, status)
    assert message in payload["message"]
    grew_kib = after["VmHWM"] - before["VmHWM"]
    declared_mib = images * 784 / 2**20
    figures.record(
        f"idx_huge_header_{images}x{labels}",
        declared_mib=round(declared_mib),
        upload_bytes=len(body),
        peak_rss_growth_kib=grew_kib,
        status=response.status,
    )
    assert worker_pid(live) == pid
    assert grew_kib < 16 * 1024, f"the worker's peak RSS grew by {grew_kib} KiB for a {len(body)}-byte upload"


@pytest.mark.reliability
def test_a_compressed_idx_upload_at_the_image_limit(live: Live, figures: Figures) -> None:
    """A small upload whose gzipped IDX members inflate to MAX_IMAGES real (blank) images.

    The body limit counts compressed bytes; MNIST_MAX_DATASET_BYTES counts what the IDX headers
    declare, before a byte of it is inflated: a 413 (tests/reliability/test_memory.py has the
    issue's bombs against the setting's default).
    """
    pid = worker_pid(live)
    body = idx_tar_bomb(dataset_files.MAX_IMAGES)
    before = proc_status(pid)
    started = time.monotonic()
    response, raw = raw_request(live, "POST", "/v1/datasets/inflated?format=idx", body, live.auth)
    seconds = time.monotonic() - started
    after = proc_status(pid)
    grew_mib = (after["VmHWM"] - before["VmHWM"]) / 1024
    figures.record(
        "idx_inflating_upload",
        upload_bytes=len(body),
        inflated_mib=round(dataset_files.MAX_IMAGES * 785 / 2**20),
        status=response.status,
        peak_rss_growth_mib=round(grew_mib),
        seconds=round(seconds, 1),
    )
    assert_json_4xx(response.status, response.headers, raw, 413)
    assert worker_pid(live) == pid
    assert grew_mib < 64, f"peak RSS grew by {grew_mib:.0f} MiB for a {len(body):,}-byte upload"


@pytest.mark.reliability
def test_inflating_uploads_sent_at_once_are_refused_before_they_inflate(
    redis_url: str, tmp_path: Path, figures: Figures
) -> None:
    """Three uploads that each inflate to MAX_IMAGES images, at once, to a fresh process.

    Read together, each would hold its ~770 MB at the same time (one at a time, ~770 MB: the
    figure before MNIST_MAX_DATASET_BYTES counted inflated bytes); each is refused from its
    headers now, and the process barely grows.
    """
    uploads = 3
    body = idx_tar_bomb(dataset_files.MAX_IMAGES)
    with live_stack(redis_url, tmp_path, workers=1, MNIST_MAX_DATASET_BYTES=str(MAX_DATASET)) as stack:
        pid = worker_pid(stack)
        before = proc_status(pid)

        def upload(i: int) -> tuple[http.client.HTTPResponse, bytes]:
            return raw_request(stack, "POST", f"/v1/datasets/at-once-{i}?format=idx", body, stack.auth)

        started = time.monotonic()
        with ThreadPoolExecutor(uploads) as pool:
            answers = list(pool.map(upload, range(uploads)))
        seconds = time.monotonic() - started
        after = proc_status(pid)
    grew_mib = (after["VmHWM"] - before["VmHWM"]) / 1024
    inflated_mib = dataset_files.MAX_IMAGES * 785 / 2**20
    figures.record(
        "idx_inflating_uploads_at_once",
        uploads=uploads,
        inflated_mib_each=round(inflated_mib),
        statuses=[response.status for response, _ in answers],
        peak_rss_growth_mib=round(grew_mib),
        seconds=round(seconds, 1),
    )
    assert [response.status for response, _ in answers] == [413] * uploads, [raw[:200] for _, raw in answers]
    assert grew_mib < 64, f"peak RSS grew by {grew_mib:.0f} MiB for {uploads} uploads at once"


# --- path traversal and null bytes in names -----------------------------------------------------------
TRAVERSALS = [
    "..%2F..%2Fetc%2Fpasswd",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "%2e%2e",
    "..",
    "..%252f..%252fetc%252fpasswd",
    "..%5c..%5cetc%5cpasswd",
    "%2Fetc%2Fpasswd",
    "passwd%00",
    "mnist%00.npz",
    "%00",
    "a%00%2F..%2F..",
    "%c0%ae%c0%ae%c0%af",
    "....%2F%2F....%2F%2Fetc",
]


@pytest.mark.parametrize("name", TRAVERSALS)
def test_traversal_and_null_bytes_in_names_are_refused(live: Live, name: str) -> None:
    planted = f"/tmp/planted-{uuid.uuid4().hex[:6]}"
    routes: list[Route] = [
        ("GET", f"/v1/datasets/{name}", None, None),
        ("POST", f"/v1/datasets/{name}", b"label,pixel0\n", "text/csv"),
        ("DELETE", f"/v1/datasets/{name}", None, None),
        ("GET", f"/v1/models/{name}", None, None),
        ("GET", f"/v1/models/{name}/versions/1/weights", None, None),
        ("POST", f"/v1/models/{name}:predict", bytes(784), "application/octet-stream"),
        ("POST", f"/v1/models/mnist/labels/{name}:predict", bytes(784), "application/octet-stream"),
        ("PUT", f"/v1/models/{name}/aliases/production", b'{"version": 1}', "application/json"),
        ("PUT", f"/v1/models/mnist/aliases/{name}", b'{"version": 1}', "application/json"),
        ("GET", f"/v2/models/{name}", None, None),
        ("GET", f"/v1/jobs/{name}", None, None),
    ]
    for method, path, _, raw in each_refused(live, routes):
        assert b"root:" not in raw and b"PK\x03\x04" not in raw, (method, path)
    # A dataset named by a path in a job spec or an evaluation is refused too, before anything runs.
    for spec in ({"dataset": "../../etc/passwd"}, {"dataset": "/etc/passwd"}, {"dataset": planted}):
        r = live.post("/v1/jobs", json=spec, headers=live.auth)
        assert r.status_code == 400 and "dataset" in r.json()["errors"], r.text
        r = live.post("/v1/models/mnist/versions/1:evaluate", json=spec, headers=live.auth)
        assert r.status_code == 400, r.text
    assert not Path(planted).exists()


# --- header injection ---------------------------------------------------------------------------------
CRLF = [
    "a%0d%0aX-Injected:%20yes",
    "a%0aX-Injected:%20yes",
    "a%0dX-Injected:%20yes",
    "%0d%0aSet-Cookie:%20x=1",
]


@pytest.mark.parametrize("name", CRLF)
def test_crlf_in_a_model_alias_or_dataset_name_injects_no_header(live: Live, name: str) -> None:
    routes: list[Route] = [
        ("PUT", f"/v1/models/{name}/aliases/production", b'{"version": 1}', "application/json"),
        ("PUT", f"/v1/models/mnist/aliases/{name}", b'{"version": 1}', "application/json"),
        ("GET", f"/v1/models/mnist/aliases/{name}", None, None),
        ("DELETE", f"/v1/models/mnist/aliases/{name}", None, None),
        ("GET", f"/v1/models/{name}/versions/1/weights", None, None),
        ("POST", f"/v1/datasets/{name}", b"label,pixel0\n", "text/csv"),
        ("POST", f"/v1/models/{name}:predict", bytes(784), "application/octet-stream"),
        ("GET", f"/v1/jobs/{name}", None, None),
        ("GET", f"/v1/jobs/{name}/events", None, None),
        ("GET", f"/v2/models/{name}/versions/1", None, None),
    ]
    for method, path, response, _ in each_refused(live, routes):
        names = {k.lower() for k, _ in response.getheaders()}
        assert "x-injected" not in names and "set-cookie" not in names, (method, path, response.getheaders())
        for key, value in response.getheaders():
            assert "\r" not in value and "\n" not in value, (key, value)
    # Valid names never hold CR or LF, so the headers built from them (Location,
    # Content-Disposition) cannot either; no refused name was stored.
    assert "injected" not in live.get("/v1/models/mnist").text.lower()
    assert "injected" not in live.get("/v1/datasets").text.lower()


# --- job ids RQ would refuse ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "job_id", ["%C3%A9t%C3%A9", "a%22b", "a;b", "a:b", "%F0%9F%92%A5", "a%20b", "x" * 65]
)
def test_job_ids_outside_rqs_alphabet_are_a_404_not_a_500(live: Live, job_id: str) -> None:
    """Found by the fuzzer: RQ raises ValueError for such ids (a 500), and reads "a:b" as job "a"."""
    for method, path in (
        ("GET", f"/v1/jobs/{job_id}"),
        ("DELETE", f"/v1/jobs/{job_id}"),
        ("GET", f"/v1/jobs/{job_id}/events"),
    ):
        response, raw = raw_request(live, method, path, None, live.auth)
        assert_json_4xx(response.status, response.headers, raw, 404)


def test_a_job_id_with_a_colon_is_not_read_as_another_job(live: Live) -> None:
    job_id = live.submit({"dataset": "mnist-sample", "hidden": [8], "epochs": 1})["id"]  # no worker: queued
    assert live.get(f"/v1/jobs/{job_id}").status_code == 200
    assert live.get(f"/v1/jobs/{job_id}:anything").status_code == 404
