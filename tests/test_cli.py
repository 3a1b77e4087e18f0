"""The `mnist` console script, run for real in a subprocess: train, evaluate, datasets, errors."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from marshmallow import validate

from client.cli import add_training_flags
from shared import datasets, serialization
from shared.schemas import TrainingSpecSchema
from tests.datasets_fixtures import csv_gz_bomb

ROOT = Path(__file__).resolve().parents[1]


def mnist_script() -> Path:
    """Return the `mnist` console script of the virtualenv running the tests (else the project's)."""
    for candidate in (Path(sys.executable).parent / "mnist", ROOT / ".venv" / "bin" / "mnist"):
        if candidate.is_file():
            return candidate
    pytest.fail("no `mnist` console script: install the project (make test does)")


def mnist(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `mnist args…` in `cwd` and return the finished process (stdout and stderr as text)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    # One BLAS thread: these matrices are small, and on a shared 2-core machine OpenBLAS's
    # threads spin against each other (the seed run takes ~2.5× longer with them).
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    return subprocess.run(
        [str(mnist_script()), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def last_json_line(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """Return the JSON object on the last line of stdout, checking it is the only JSON line."""
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines, "no output"
    assert [line for line in lines if line.startswith("{")] == [lines[-1]]
    summary = json.loads(lines[-1])
    assert isinstance(summary, dict)
    return summary


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """Train the tutorial recipe for 30 iterations once; return the model file and the summary."""
    work = tmp_path_factory.mktemp("cli")
    (work / "tmp").mkdir()
    proc = mnist("train", "--recipe", "seed", "--iterations", "30", "--json", "--out", "tmp/m.npz", cwd=work)
    return work / "tmp" / "m.npz", last_json_line(proc)


def test_train_prints_one_json_summary(trained: tuple[Path, dict[str, Any]]) -> None:
    _, summary = trained
    for key in ("train_accuracy", "val_accuracy", "test_accuracy"):
        assert 0 <= summary[key] <= 1, key
    assert summary["seconds"] > 0 and summary["samples_per_second"] > 0
    assert summary["iterations"] == 30
    assert summary["dataset"] == "mnist-sample" and summary["dataset_digest"].startswith("sha256:")
    assert summary["config"]["init"] == "uniform" and summary["config"]["hidden"] == [10]
    assert (summary["train_size"], summary["val_size"], summary["test_size"]) == (3600, 400, 1000)
    assert summary["test_accuracy"] > 0.15  # 30 steps already beat chance (0.1)


def test_the_model_file_loads(trained: tuple[Path, dict[str, Any]]) -> None:
    path, summary = trained
    assert not list(path.parent.glob(".*.tmp"))
    params, meta = serialization.load_model(path)
    assert [p.shape for p in params] == [(10, 784), (10,), (10, 10), (10,)]
    assert all(p.dtype == np.float32 for p in params)
    assert meta["metrics"]["test_accuracy"] == summary["test_accuracy"]
    assert meta["config"]["iterations"] == 30 and meta["recipe"] == "seed"
    assert meta["dataset"]["digest"] == summary["dataset_digest"]
    assert len(meta["history"]) == 30


def test_evaluate_reproduces_the_test_accuracy(trained: tuple[Path, dict[str, Any]]) -> None:
    path, summary = trained
    report = last_json_line(
        mnist("evaluate", "--model", str(path), "--dataset", "mnist-sample", "--json", cwd=path.parent)
    )
    assert report["accuracy"] == summary["test_accuracy"]
    assert report["images"] == 1000 and report["split"] == "test"
    cm = np.array(report["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == 1000
    assert np.trace(cm) / 1000 == pytest.approx(report["accuracy"])


def test_evaluate_gives_no_accuracy_for_a_class_it_never_saw(
    trained: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    sample = datasets.load("mnist-sample")
    assert sample.x_test is not None and sample.y_test is not None
    keep = sample.y_test < 5  # digits 5-9 are not in this file
    rows = np.column_stack([sample.y_test[keep], sample.x_test[keep]])
    header = "label," + ",".join(f"pixel{i}" for i in range(784))
    np.savetxt(tmp_path / "low.csv", rows, fmt="%d", delimiter=",", header=header, comments="")
    path, _ = trained
    flags = ("--model", str(path), "--dataset", "low.csv", "--split", "train", "--json")
    report = last_json_line(mnist("evaluate", *flags, cwd=tmp_path))
    assert report["images"] == int(keep.sum())
    per_class = report["per_class_accuracy"]
    assert per_class[5:] == [None] * 5  # null: not in the sample (0.0 would read as always wrong)
    assert all(isinstance(a, float) and 0 <= a <= 1 for a in per_class[:5])
    cm = np.array(report["confusion_matrix"])
    assert [cm[c, c] / cm[c].sum() for c in range(5)] == per_class[:5]


def test_the_training_flags_are_the_spec_fields() -> None:
    parser = argparse.ArgumentParser()
    add_training_flags(parser)
    flags = {a.dest: a for a in parser._actions if a.dest != "help"}
    schema = TrainingSpecSchema().fields
    assert set(flags) == set(schema)
    for name, action in flags.items():
        assert action.option_strings == ["--" + name.replace("_", "-")]
        assert action.default is None  # the schema fills in defaults: one place
        one_of = [list(v.choices) for v in schema[name].validators if isinstance(v, validate.OneOf)]
        assert ([list(action.choices)] if action.choices else []) == one_of
    assert parser.parse_args(["--hidden", "256,128", "--learning-rate", "0.5"]).hidden == [256, 128]
    with pytest.raises(SystemExit):
        parser.parse_args(["--epochs", "2", "--iterations", "5"])  # argparse prints its usage error


TOKEN_CASES = [
    # (command line, environment, the token sent to what the command calls)
    (["predict", "x.png"], {"MNIST_API_TOKEN": "w"}, None),  # the write token never goes to a prediction
    (["predict", "x.png"], {"MNIST_API_TOKEN": "w", "MNIST_PREDICT_TOKEN": "p"}, "p"),
    (["predict", "x.png", "--token", "t"], {"MNIST_PREDICT_TOKEN": "p"}, "t"),
    (["models"], {"MNIST_API_TOKEN": "w"}, "w"),  # reads take either token
    (["models"], {"MNIST_API_TOKEN": "w", "MNIST_PREDICT_TOKEN": "p"}, "p"),
    (["models", "--token", "t"], {"MNIST_PREDICT_TOKEN": "p"}, "t"),
    (["jobs", "show", "id"], {"MNIST_PREDICT_TOKEN": "p"}, "p"),
    (["jobs", "cancel", "id"], {"MNIST_API_TOKEN": "w", "MNIST_PREDICT_TOKEN": "p"}, "w"),
    (["jobs", "cancel", "id"], {"MNIST_PREDICT_TOKEN": "p"}, None),  # a write: never the predict token
    (["alias", "set", "production", "1"], {"MNIST_API_TOKEN": "w", "MNIST_PREDICT_TOKEN": "p"}, "w"),
    (["train", "--url", "http://h", "--token", "t"], {"MNIST_API_TOKEN": "w"}, "t"),
    (["datasets", "from-feedback", "d"], {"MNIST_API_TOKEN": "w", "MNIST_PREDICT_TOKEN": "p"}, "w"),
    (["datasets", "from-feedback", "d"], {"MNIST_PREDICT_TOKEN": "p"}, None),  # a write
]


@pytest.mark.parametrize(
    ("argv", "environ", "sent"), TOKEN_CASES, ids=[" ".join(a) for a, _, _ in TOKEN_CASES]
)
def test_each_command_chooses_the_token_of_what_it_calls(
    argv: list[str], environ: dict[str, str], sent: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from client.cli import build_parser
    from client.remote import PREDICT, READ, WRITE, client_of, token_of

    for variable in ("MNIST_API_TOKEN", "MNIST_PREDICT_TOKEN"):
        monkeypatch.delenv(variable, raising=False)
    for variable, value in environ.items():
        monkeypatch.setenv(variable, value)
    args = build_parser().parse_args(argv)
    if args.command == "predict":
        assert token_of(args, PREDICT) == sent
        return
    writes = args.command in ("alias", "train") or getattr(args, "jobs_action", None) == "cancel"
    writes = writes or getattr(args, "datasets_action", None) == "from-feedback"
    with client_of(args, WRITE if writes else READ) as client:
        assert client._token(WRITE if writes else READ) == sent
        assert client._token(PREDICT) != "w"  # $MNIST_API_TOKEN never goes to a prediction


def test_datasets_lists_the_builtins(tmp_path: Path) -> None:
    proc = mnist("datasets", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    entries = json.loads(proc.stdout)
    names = [e["name"] for e in entries]
    assert {"mnist-sample", "fashion-mnist", "mnist"} <= set(names)
    sample = entries[names.index("mnist-sample")]
    assert sample["available"] and sample["default"]


ERRORS = [
    (["train", "--dataset", "no-such-dataset", "--iterations", "1"], "no-such-dataset"),
    (
        ["train", "--dataset", "/nonexistent/digits/train.csv", "--iterations", "1"],
        "/nonexistent/digits/train.csv",
    ),
    (["train", "--hidden", "abc"], "--hidden"),
    (["train", "--hidden", "0", "--iterations", "1"], "hidden"),
    (["train", "--epochs", "0"], "epochs"),
    (["train", "--epochs", "2", "--iterations", "5"], "--epochs"),
    (["train", "--recipe", "bogus"], "bogus"),
    (["train", "--recipe", "seed", "--batch-size", "64", "--iterations", "1"], "batch"),
    (["evaluate", "--model", "corrupt.npz", "--dataset", "mnist-sample"], "corrupt.npz"),
    (["evaluate", "--model", "truncated.npz"], "truncated.npz"),
    (["evaluate", "--model", "missing.npz"], "missing.npz"),
    (["frobnicate"], "frobnicate"),
]


@pytest.mark.parametrize(("args", "mentions"), ERRORS, ids=[" ".join(a) for a, _ in ERRORS])
def test_errors_are_one_line_on_stderr(
    trained: tuple[Path, dict[str, Any]], tmp_path: Path, args: list[str], mentions: str
) -> None:
    good = trained[0].read_bytes()
    (tmp_path / "good.npz").write_bytes(good)
    (tmp_path / "truncated.npz").write_bytes(good[: len(good) // 2])
    (tmp_path / "corrupt.npz").write_bytes(b"this is not a model\n" * 10)
    proc = (
        mnist(*args, "--out", "out.npz", cwd=tmp_path) if args[0] == "train" else mnist(*args, cwd=tmp_path)
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("mnist") and mentions in lines[0]
    assert proc.stdout == ""
    assert not (tmp_path / "out.npz").exists()


def test_train_reads_a_file_within_the_inflated_limit(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The readers of uploads, with MNIST_MAX_DATASET_BYTES's default (128 MiB): a 250 KB CSV.gz
    of 141 MB of text is refused before it is held inflated."""
    monkeypatch.delenv("MNIST_MAX_DATASET_BYTES", raising=False)
    (tmp_path / "bomb.csv.gz").write_bytes(csv_gz_bomb(90_000))
    proc = mnist("train", "--dataset", "bomb.csv.gz", "--iterations", "1", "--out", "out.npz", cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "bomb.csv.gz: more than 134,217,728 bytes once inflated" in line, line
    assert "MNIST_MAX_DATASET_BYTES" in line
    assert not (tmp_path / "out.npz").exists()


# Slow (≈5–20 s): the tutorial's full 500 iterations. Runs by default; the lead registers the
# `slow` marker so that `-m "not slow"` can skip it.
@pytest.mark.slow
def test_seed_recipe_reaches_the_tutorials_accuracy(tmp_path: Path) -> None:
    proc = mnist(
        "train", "--recipe", "seed", "--dataset", "mnist-sample", "--json", "--out", "seed.npz", cwd=tmp_path
    )
    summary = last_json_line(proc)
    assert summary["iterations"] == 500
    assert 0.78 <= summary["test_accuracy"] <= 0.90, summary["test_accuracy"]
    assert 0.75 <= summary["train_accuracy"] <= 0.95 and 0.7 <= summary["val_accuracy"] <= 0.95
    assert (tmp_path / "seed.npz").is_file()
