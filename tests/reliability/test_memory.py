"""Memory per request, bounded before it is spent (issue 14, items 2 and 3), against a real gunicorn.

Each scenario sends what an attacker sent, to one gunicorn worker process running with the
service's default limits, and reads that process's memory from /proc: its peak (VmHWM, reset
through /proc/<pid>/clear_refs just before) less its resident memory before, as the growth the
request caused. The scenarios and the figures the issue had before:

- a JSON prediction of one "image" of 15 M numbers (60 MB), no token: 400, +911 MiB, 1.9 s;
  three at once: +1.65 GB. Now a 413 counted on the body's bytes, before any parser runs.
- a V2 JSON `data` of 30 M values: +798 MiB. Now a 413 the same way.
- one image of MNIST_MAX_BATCH × 784 numbers, the most the count lets through, beside a valid
  10,000-image body: what parsing may cost at most.
- :evaluate on 4 uploaded datasets: three datasets kept whatever their size (+750 MiB with
  large uploads). Now MNIST_EVAL_CACHE_MB.
- uploads (with the token) of a 0.8 MB IDX zip, a 0.8 MB int64 NPZ and a 1.2 MB CSV.gz, each
  ~770 MB once inflated: 201, +767, +675, +767 MiB. Now each a 413 under 64 MiB of growth (the
  issue's threshold, asserted here).

The thresholds asserted are the issue's, with margins (these are the figures it asks for). An
`RssGuard` kills the worker past GUARD_MIB, so that a regression fails a test instead of taking
a shared machine's memory (MNIST_TEST_RSS_GUARD_MIB raises it, to measure an older checkout).
"""

from __future__ import annotations

import http.client
import io
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import orjson
import pytest

from client.transport import exchange
from shared import dataset_files, mlp
from tests.api_helpers import Live, live_stack
from tests.datasets_fixtures import csv_gz_bomb, idx_zip_bomb, npz_int64_bomb
from tests.reliability.conftest import Figures
from tests.reliability.stack import RssGuard, gunicorn_workers, label_blob, proc_status, reset_peak

pytestmark = pytest.mark.reliability

#: Resident memory past which the worker is killed (MiB): four times the largest valid request.
GUARD_MIB = int(os.environ.get("MNIST_TEST_RSS_GUARD_MIB", "1536"))
#: The issue's bound on the growth of an upload bomb's process (MiB).
BOMB_GROWTH_MIB = 64
#: Numbers in the issue's one-image JSON body (60 MB as "0.5,") and in its V2 `data` (as "1,").
HUGE_IMAGE_NUMBERS = 15_000_000
V2_VALUES = 30_000_000
#: Images of each dataset evaluated, and how many datasets (37 MiB each, blank but for one pixel).
EVAL_IMAGES = 50_000
EVAL_DATASETS = 4
#: The issue's upload bombs, ~770 MB each once inflated: IDX images, int64 NPZ images, CSV rows.
BOMBS: dict[str, tuple[Callable[[], bytes], int]] = {
    "idx": (lambda: idx_zip_bomb(dataset_files.MAX_IMAGES), dataset_files.MAX_IMAGES * 785),
    "npz": (lambda: npz_int64_bomb(122_800), 122_800 * 784 * 8),
    "csv": (lambda: csv_gz_bomb(490_000), 490_000 * 1570),
}


@pytest.fixture(scope="module")
def live(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """One gunicorn worker process with the default limits, and model `mnist` v1."""
    with live_stack(redis_url, tmp_path_factory.mktemp("memory"), workers=1) as stack:
        stack.registry().publish("mnist", label_blob(5, label=3), {"note": "memory"})
        send(stack, "/v1/models/mnist:predict", orjson.dumps({"instances": [[0] * 784]}))  # warm
        yield stack


def worker(live: Live) -> int:
    (pid,) = gunicorn_workers(live.server)
    return pid


def send(live: Live, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    """POST `body` on a connection of its own; return the status and the JSON answer."""
    conn = http.client.HTTPConnection(urlsplit(live.url).netloc, timeout=300)
    try:
        headers = {"Content-Type": "application/json", "Connection": "close", **(headers or {})}
        response = exchange(conn, "POST", path, body, headers)
        raw = response.read()
        return response.status, orjson.loads(raw) if raw else {}
    finally:
        conn.close()


def measured(live: Live, requests: list[Callable[[], tuple[int, dict]]]) -> dict[str, Any]:
    """Send `requests` at once under an RssGuard; return statuses, messages, seconds and growth (MiB)."""
    pid = worker(live)
    before = proc_status(pid)["VmRSS"]
    reset_peak(pid)
    started = time.monotonic()
    with RssGuard([pid], GUARD_MIB) as guard, ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(lambda request: request(), requests))
    seconds = time.monotonic() - started
    assert not guard.killed, f"the worker passed {GUARD_MIB} MiB and was killed"
    peak = proc_status(pid)["VmHWM"]
    return {
        "statuses": [status for status, _ in answers],
        "messages": [answer.get("message", "") for _, answer in answers],
        "seconds": round(seconds, 2),
        "peak_rss_growth_mib": round((peak - before) / 1024),
    }


# --- predictions ----------------------------------------------------------------------------------
def huge_image_body(numbers: int) -> bytes:
    """Return a JSON prediction of one image of `numbers` numbers, 4 bytes each ("0.5,")."""
    return b'{"instances": [[' + b"0.5," * (numbers - 1) + b"0.5]]}"


def test_a_60_mb_one_image_json_body_is_refused_before_it_is_parsed(live: Live, figures: Figures) -> None:
    body = huge_image_body(HUGE_IMAGE_NUMBERS)
    body_mib = len(body) / 2**20
    one = measured(live, [lambda: send(live, "/v1/models/mnist:predict", body)])
    figures.record(
        "memory_json_one_image_60mb",
        body_bytes=len(body),
        status=one["statuses"][0],
        peak_rss_growth_mib=one["peak_rss_growth_mib"],
        seconds=one["seconds"],
    )
    three = measured(live, [lambda: send(live, "/v1/models/mnist:predict", body)] * 3)
    figures.record(
        "memory_json_one_image_60mb_x3",
        body_bytes=len(body),
        statuses=three["statuses"],
        peak_rss_growth_mib=three["peak_rss_growth_mib"],
        seconds=three["seconds"],
    )
    assert one["statuses"] == [413], one["messages"]
    assert "MNIST_MAX_BATCH" in one["messages"][0]
    # The body itself, read whole (up to MNIST_MAX_BODY_BYTES), and one count over it.
    assert one["peak_rss_growth_mib"] < 3 * body_mib, one
    assert three["statuses"] == [413] * 3, three["messages"]
    assert three["peak_rss_growth_mib"] < 3 * 3 * body_mib, three


def test_a_v2_data_of_30_m_values_is_refused_before_it_is_parsed(live: Live, figures: Figures) -> None:
    head = b'{"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32", "data": ['
    body = head + b"1," * (V2_VALUES - 1) + b"1]}]}"
    got = measured(live, [lambda: send(live, "/v2/models/mnist/infer", body)])
    figures.record(
        "memory_v2_data_30m",
        body_bytes=len(body),
        status=got["statuses"][0],
        peak_rss_growth_mib=got["peak_rss_growth_mib"],
        seconds=got["seconds"],
    )
    assert got["statuses"] == [413], got["messages"]
    assert got["peak_rss_growth_mib"] < 3 * len(body) / 2**20, got


def test_the_largest_json_body_within_the_count_costs_no_more_than_a_valid_one(
    live: Live, figures: Figures
) -> None:
    """One image of MNIST_MAX_BATCH × 784 numbers passes the count on the bytes; simdjson then
    refuses it (an image holds 784) before any array is built. Beside it, the largest valid body."""
    images = np.random.default_rng(0).integers(0, 256, (10_000, mlp.INPUT_SIZE), dtype=np.uint8)
    valid = orjson.dumps({"instances": images}, option=orjson.OPT_SERIALIZE_NUMPY)
    reference = measured(live, [lambda: send(live, "/v1/models/mnist:predict", valid)])
    body = huge_image_body(10_000 * mlp.INPUT_SIZE)
    got = measured(live, [lambda: send(live, "/v1/models/mnist:predict", body)])
    figures.record(
        "memory_json_largest_within_count",
        body_bytes=len(body),
        status=got["statuses"][0],
        peak_rss_growth_mib=got["peak_rss_growth_mib"],
        seconds=got["seconds"],
        valid_body_bytes=len(valid),
        valid_status=reference["statuses"][0],
        valid_peak_rss_growth_mib=reference["peak_rss_growth_mib"],
        valid_seconds=reference["seconds"],
    )
    assert reference["statuses"] == [200]
    assert got["statuses"] == [400] and "image 0 holds 7,840,000 values" in got["messages"][0]
    assert got["peak_rss_growth_mib"] < 1.5 * reference["peak_rss_growth_mib"] + 64, (got, reference)


# --- :evaluate's dataset cache --------------------------------------------------------------------
def blank_npz(images: int, seed: int) -> bytes:
    """Return a compressed .npz of `images` blank digits, one pixel lit per image (a digest of its own)."""
    x = np.zeros((images, mlp.INPUT_SIZE), np.uint8)
    x[np.arange(images), (np.arange(images) + seed) % mlp.INPUT_SIZE] = 255
    buf = io.BytesIO()
    np.savez_compressed(buf, x_train=x, y_train=(np.arange(images) % 10).astype(np.uint8))
    return buf.getvalue()


def test_evaluate_keeps_no_more_datasets_than_its_budget(
    redis_url: str, tmp_path: Path, figures: Figures
) -> None:
    """A fresh worker (what the scenarios above freed would blur what this one keeps)."""
    npz = {"Content-Type": "application/x-npz"}
    names = [f"eval-{i}" for i in range(EVAL_DATASETS)]
    with live_stack(redis_url, tmp_path, workers=1) as live:
        live.registry().publish("mnist", label_blob(5, label=3), {"note": "memory"})
        for i, name in enumerate(["eval-warm", *names]):
            r = live.upload(name, blank_npz(10 if name == "eval-warm" else EVAL_IMAGES, i), headers=npz)
            assert r.status_code == 201, r.text

        def evaluate(name: str) -> int:
            body = orjson.dumps({"dataset": name, "split": "train", "limit": 1000})
            return send(live, "/v1/models/mnist/versions/1:evaluate", body, live.auth)[0]

        assert evaluate("eval-warm") == 200  # the route's first use: its imports, the model
        pid = worker(live)
        before = proc_status(pid)["VmRSS"]
        with RssGuard([pid], GUARD_MIB) as guard:
            statuses = [evaluate(name) for name in names]
        assert not guard.killed
        time.sleep(0.5)
        kept_mib = (proc_status(pid)["VmRSS"] - before) / 1024
    dataset_mib = EVAL_IMAGES * 785 / 2**20
    budget_mib = 64  # MNIST_EVAL_CACHE_MB's default
    figures.record(
        "memory_evaluate_cache",
        datasets=EVAL_DATASETS,
        dataset_mib=round(dataset_mib, 1),
        budget_mib=budget_mib,
        statuses=statuses,
        rss_kept_mib=round(kept_mib),
        kept_before_mib=round(3 * dataset_mib),  # three datasets, whatever their size
    )
    assert statuses == [200] * EVAL_DATASETS
    assert kept_mib < budget_mib + 16, f"{kept_mib:.0f} MiB kept after {EVAL_DATASETS} evaluations"


# --- upload bombs ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(BOMBS), ids=["idx-zip", "npz-int64", "csv-gz"])
def test_an_upload_bomb_is_refused_before_it_inflates(live: Live, figures: Figures, kind: str) -> None:
    make, inflated = BOMBS[kind]
    bomb = make()
    path = f"/v1/datasets/bomb-{kind}?format={kind}"
    headers = {**live.auth, "Content-Type": "application/octet-stream"}
    try:
        got = measured(live, [lambda: send(live, path, bomb, headers)])
    finally:
        live.delete(f"/v1/datasets/bomb-{kind}", headers=live.auth)  # should an older server keep it
    figures.record(
        f"memory_upload_bomb_{kind}",
        upload_bytes=len(bomb),
        inflated_mib=round(inflated / 2**20),
        status=got["statuses"][0],
        peak_rss_growth_mib=got["peak_rss_growth_mib"],
        seconds=got["seconds"],
    )
    assert got["statuses"] == [413], got["messages"]
    assert "MNIST_MAX_DATASET_BYTES" in got["messages"][0]
    assert got["peak_rss_growth_mib"] < BOMB_GROWTH_MIB, got
    assert live.get(f"/v1/datasets/bomb-{kind}").status_code == 404


def test_the_guard_stops_a_process_that_swallows_memory() -> None:
    """The control: RssGuard kills a process past its limit (so the guarded scenarios are safe)."""
    hog = subprocess.Popen([sys.executable, "-c", "import time; b = b'x' * (300 << 20); time.sleep(30)"])
    try:
        with RssGuard([hog.pid], 100) as guard:
            hog.wait(20)
        assert guard.killed == [hog.pid] and hog.returncode == -9
    finally:
        if hog.poll() is None:
            hog.kill()
            hog.wait(5)
