"""Benchmark of the batch client: `mnist predict` end to end against the raw HTTP batch rate.

Starts its own gunicorn (2 workers × 8 threads, one BLAS thread each, as bench/predict.py) on a
private key prefix of the local Redis (or $REDIS_URL), publishes one 784-512-10 model (He init:
the rate does not depend on the weights), writes 10,000 images (Fashion-MNIST's test set when
installed, else mnist-sample's test digits repeated) to an NPZ file with their labels, and
measures, interleaved round by round so that a neighbour's load hits both alike:

- (a) raw HTTP: one POST of the 10,000 images as one application/octet-stream body with
  requests, the answer parsed with orjson: images/s (what bench/predict.py calls (a)), the
  reference of every ratio;
- (a′) the same POST with `Accept: application/x-npy`, the .npy answer loaded with NumPy: the
  answer `mnist predict` asks for, shown so that its ratio can be read against it too;
- (b) `mnist predict FILE.npz --output out.csv` as a subprocess, for several --batch-size
  values: the wall time of the whole command (interpreter start, imports, reading, requests,
  parsing, writing the CSV, the accuracy and confusion matrix) → images/s, and its ratio to (a).
  Target: ≥ 50 % at the default batch size;
- (c) the same command in-process, and the start-up alone (a Python that imports what the
  command imports).

Each measure in a round is the fastest of 3 calls, and each ratio of (b) is the median over the
rounds of the command's rate over the raw POST's measured just before it, as in
bench/predict.py (bench/common.py: `fastest_rate`, `paired`). Everything the run wrote in Redis
is deleted afterwards.

Usage: python bench/client.py [--rounds 5] [--batch-sizes 500,1000,2000,5000,10000]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import orjson
import redis
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    fastest_rate,
    paired,
    print_table,
    save_results,
    start_gunicorn,
    stop_gunicorn,
)
from client.cli import DEFAULT_PREDICT_BATCH  # noqa: E402
from shared import datasets, mlp, serialization  # noqa: E402
from shared.keys import Keys  # noqa: E402
from shared.registry import Registry  # noqa: E402

MODEL = "bench"
SIZES = (784, 512, 10)
IMAGES = 10_000
TARGET = 0.5
MNIST = Path(sys.executable).parent / "mnist"


def test_images() -> tuple[np.ndarray, np.ndarray, str]:
    """Return 10,000 images (n, 784) uint8, their labels, and where they come from."""
    try:
        data = datasets.load("fashion-mnist")
        assert data.x_test is not None and data.y_test is not None
        return data.x_test[:IMAGES], data.y_test[:IMAGES], "fashion-mnist test set"
    except datasets.DatasetNotFound:
        data = datasets.load("mnist-sample")
        assert data.x_test is not None and data.y_test is not None
        reps = -(-IMAGES // len(data.y_test))
        x = np.tile(data.x_test, (reps, 1))[:IMAGES]
        y = np.tile(data.y_test, reps)[:IMAGES]
        return x, y, "mnist-sample test digits, repeated"


def raw_rate(session: requests.Session, url: str, body: bytes, npy: bool = False) -> float:
    """Return images/s of one raw uint8 POST of every image, its answer (JSON, or .npy) parsed."""
    headers = {"Content-Type": "application/octet-stream"}
    if npy:
        headers["Accept"] = "application/x-npy"
    started = time.perf_counter()
    response = session.post(f"{url}/v1/models/{MODEL}:predict", data=body, headers=headers)
    response.raise_for_status()
    if npy:
        count = len(np.load(io.BytesIO(response.content), allow_pickle=False))
    else:
        count = len(orjson.loads(response.content)["predictions"])
    elapsed = time.perf_counter() - started
    assert count == IMAGES
    return IMAGES / elapsed


def command_env() -> dict[str, str]:
    """Return the environment of the measured commands: as installed, with bytecode cached."""
    # A sandbox may set PYTHONDONTWRITEBYTECODE; then every run would recompile the project's modules.
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def command_rate(url: str, npz: Path, out: Path, batch_size: int) -> float:
    """Return images/s of one whole `mnist predict` command (wall time of the subprocess)."""
    cmd = [str(MNIST), "predict", str(npz), "--url", url, "--model", MODEL, "--output", str(out)]
    cmd += ["--batch-size", str(batch_size)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=out.parent, env=command_env())
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"mnist predict failed: {proc.stderr}")
    return IMAGES / elapsed


def startup_seconds() -> float:
    """Return the wall time of a Python that imports what `mnist predict` imports, and does nothing."""
    code = "import client.cli, client.predict"
    env = {**command_env(), "OPENBLAS_NUM_THREADS": "1"}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=env)
    return time.perf_counter() - started


def pipeline_rate(url: str, npz: Path, out: Path) -> float:
    """Return images/s of the same command run in this process: the pipeline without start-up."""
    from client import predict

    args = argparse.Namespace(
        command="predict", inputs=[str(npz)], url=url, model=MODEL, version=None, alias=None,
        output=str(out), batch_size=DEFAULT_PREDICT_BATCH, top_k=None, probabilities=False,
        strict=False, quiet=True,
    )  # fmt: skip
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        predict.predict(args)
    return IMAGES / (time.perf_counter() - started)


def main() -> None:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of every measure")
    parser.add_argument("--batch-sizes", default="500,1000,2000,5000,10000", help="--batch-size values")
    args = parser.parse_args()
    sizes = sorted({int(s) for s in args.batch_sizes.split(",")} | {DEFAULT_PREDICT_BATCH})

    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    conn = redis.Redis.from_url(redis_url)
    params = mlp.init_params(SIZES, np.random.default_rng(0))
    Registry(conn, Keys(prefix)).publish(MODEL, serialization.model_to_bytes(params, {}), {"bench": True})
    x, y, source = test_images()
    tmp = Path(tempfile.mkdtemp(prefix="bench-client-"))
    npz = tmp / "images.npz"
    np.savez(npz, x_test=x.reshape(-1, 28, 28), y_test=y)
    out = tmp / "out.csv"
    (tmp / "prometheus").mkdir()
    process, url = start_gunicorn(redis_url, prefix, uuid.uuid4().hex, tmp / "prometheus", model=MODEL)
    body = x.tobytes()
    session = requests.Session()
    raw: dict[int, list[float]] = {s: [] for s in sizes}  # measured just before each command
    raw_npy: list[float] = []
    rates: dict[int, list[float]] = {s: [] for s in sizes}
    inproc: list[float] = []
    startup: list[float] = []
    try:
        raw_rate(session, url, body)  # warm-up: the model loads, connections open, bytecode is cached
        raw_rate(session, url, body, npy=True)
        command_rate(url, npz, out, DEFAULT_PREDICT_BATCH)
        pipeline_rate(url, npz, out)
        # Each measure in a round is the fastest of a few calls; each ratio pairs a command with
        # the raw POST measured just before it (bench/common.py), as bench/predict.py does.
        for _ in range(args.rounds):
            for size in sizes:
                raw[size].append(fastest_rate(lambda: raw_rate(session, url, body)))
                rates[size].append(fastest_rate(lambda size=size: command_rate(url, npz, out, size)))
            raw_npy.append(fastest_rate(lambda: raw_rate(session, url, body, npy=True)))
            inproc.append(fastest_rate(lambda: pipeline_rate(url, npz, out)))
            startup.append(min(startup_seconds() for _ in range(3)))
        rows_written = sum(1 for _ in out.open()) - 1
    finally:
        session.close()
        stop_gunicorn(process)
        for key in conn.scan_iter(match=f"{prefix}*", count=1000):
            conn.delete(key)
        shutil.rmtree(tmp, ignore_errors=True)
    assert rows_written == IMAGES, rows_written
    report(
        args,
        source,
        raw,
        statistics.median(raw_npy),
        rates,
        statistics.median(inproc),
        statistics.median(startup),
    )


def report(
    args: argparse.Namespace,
    source: str,
    raw_pairs: dict[int, list[float]],
    raw_npy: float,
    rates: dict[int, list[float]],
    inproc: float,
    startup: float,
) -> None:
    """Print the Markdown table and save the results."""
    raw = statistics.median(v for values in raw_pairs.values() for v in values)
    medians = {size: statistics.median(values) for size, values in rates.items()}
    ratios = {size: paired(rates[size], raw_pairs[size]) for size in rates}

    def row(measure: str, rate: float, target: str = "", ratio: float | None = None) -> dict[str, str]:
        shown = f"{rate:,.0f} img/s ({IMAGES / rate:.2f} s)"
        ratio = rate / raw if ratio is None else ratio
        return {"measure": measure, "rate": shown, "ratio": f"{100 * ratio:.0f} %", "target": target}

    rows = [row("(a) raw HTTP: one 10,000-image uint8 POST, answer parsed", raw)]
    rows.append(row("(a′) the same POST answered as .npy (`Accept: application/x-npy`)", raw_npy))
    for size in medians:
        default = size == DEFAULT_PREDICT_BATCH
        label = f"(b) `mnist predict` NPZ → CSV, --batch-size {size}{' (default)' if default else ''}"
        rows.append(row(label, medians[size], "≥ 50 %" if default else "", ratios[size]))
    rows.append(row("(c) the same command in-process (no interpreter start-up)", inproc))
    rows.append(
        {
            "measure": "start-up: `python -c 'import client.cli, client.predict'`",
            "rate": f"{startup:.2f} s",
            "ratio": "",
            "target": "",
        }
    )
    print(
        f"\n{IMAGES:,} images ({source}), model {'-'.join(map(str, SIZES))}, {os.cpu_count()} CPUs,"
        f" load average {os.getloadavg()[0]:.1f}, medians of {args.rounds} interleaved rounds"
        " of the fastest of 3 calls; (b)'s ratios paired within each round\n"
    )
    print_table(rows)
    ratio = ratios[DEFAULT_PREDICT_BATCH]
    print(f"\n`mnist predict` at the default batch size: {100 * ratio:.0f} % of (a), "
          f"{100 * medians[DEFAULT_PREDICT_BATCH] / raw_npy:.0f} % of (a′)")  # fmt: skip
    path = save_results(
        "client",
        {
            "config": {
                "images": IMAGES,
                "source": source,
                "model": list(SIZES),
                "cpus": os.cpu_count(),
                "load_average": os.getloadavg()[0],
                "default_batch_size": DEFAULT_PREDICT_BATCH,
                "rounds": args.rounds,
            },
            "raw_images_per_s": raw,
            "raw_npy_images_per_s": raw_npy,
            "command_images_per_s": {str(s): r for s, r in medians.items()},
            "in_process_images_per_s": inproc,
            "startup_s": startup,
            "ratio": ratio,
            "ratio_to_raw_npy": medians[DEFAULT_PREDICT_BATCH] / raw_npy,
            "ratios": {str(s): r for s, r in ratios.items()},
            "rounds": {
                "raw": {str(s): v for s, v in raw_pairs.items()},
                "command": {str(s): v for s, v in rates.items()},
            },
            "target": TARGET,
            "met": ratio >= TARGET,
        },
    )
    print(f"\nsaved {path}")


if __name__ == "__main__":
    main()
