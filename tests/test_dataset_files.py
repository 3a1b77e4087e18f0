"""Dataset file readers: good and malformed IDX, CSV and NPZ files, and the header refusals."""

from __future__ import annotations

import io
import pickle
import re
import time
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from shared import datasets
from shared.dataset_files import Budget, read_csv, read_idx, read_idx_archive, read_idx_folder, read_npz
from shared.errors import DatasetNotFound, PayloadTooLarge
from tests.datasets_fixtures import (
    BLANK_CSV_ROW,
    TEST_IMAGES,
    TEST_LABELS,
    TRAIN_IMAGES,
    TRAIN_LABELS,
    csv_gz_bomb,
    csv_text,
    digits,
    gz,
    idx_files,
    idx_images,
    idx_labels,
    idx_tar_bomb,
    idx_zip_bomb,
    npy_with_header,
    npz_bytes,
    npz_int64_bomb,
    raises_naming,
    tar_bytes,
    write_csv,
    write_files,
    write_npz,
    zip_bytes,
)

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
    train_only = datasets.read_idx_folder(write_files(tmp_path / "train", idx_files(x, y)))  # for info()
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


@pytest.mark.parametrize("square", [True, False])
def test_read_npz_keras_layout(tmp_path: Path, square: bool) -> None:
    x, y = digits(9)
    xt, yt = digits(4, seed=3)
    shape = (-1, 28, 28) if square else (-1, 784)
    path = write_npz(
        tmp_path,
        npz_bytes(x_train=x.reshape(shape), y_train=y, x_test=xt.reshape(shape), y_test=yt),
    )
    ds = datasets.read_npz(path)  # the Dataset: (n, 28, 28) images become (n, 784)
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
        datasets.parse_bytes("upload.npz", path.read_bytes(), "npz")
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
            datasets.read_npz(path)  # the Dataset: counts and values are checked there
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


# --- Inflated bytes --------------------------------------------------------------------------------
#: The budget of these tests: 1 MiB of inflated data, where a 1,336-image dataset fits.
LIMIT = 1 << 20


def budget() -> Budget:
    return Budget(LIMIT, "MNIST_MAX_DATASET_BYTES")


def refused_within(peak_bytes: int, read: Callable[[], object], *words: str) -> None:
    """Expect `read` to raise PayloadTooLarge naming the limit, the setting and `words`, using
    less than `peak_bytes` of Python memory on the way (tracemalloc: NumPy's arrays included)."""
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooLarge) as caught:
            read()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = caught.value.message
    assert "1,048,576 bytes once inflated" in message and "MNIST_MAX_DATASET_BYTES" in message, message
    assert all(word in message for word in words), message
    assert peak < peak_bytes, f"{peak:,} bytes held to refuse it"


def test_an_idx_archive_is_counted_by_what_its_headers_declare_before_it_is_inflated() -> None:
    # Gzipped members in a plain tar: its index lists 15 KB, the IDX headers 20,000 images.
    bomb = idx_tar_bomb(20_000)
    assert len(bomb) < 40_000
    refused_within(
        1 << 20,
        lambda: read_idx_archive(io.BytesIO(bomb), "bomb.tar", budget=budget()),
        "bomb.tar:train-images-idx3-ubyte.gz",
        "20,000 images",
    )
    # A zip's central directory lists the inflated sizes: refused from the index alone.
    bomb = idx_zip_bomb(20_000)
    assert len(bomb) < 40_000
    refused_within(
        1 << 20,
        lambda: read_idx_archive(io.BytesIO(bomb), "bomb.zip", budget=budget()),
        "bomb.zip",
        "the sizes of its members",
    )
    x, y = digits(1_300)
    read_idx_archive(io.BytesIO(tar_bytes(idx_files(x, y))), "fits.tgz", budget=budget())


def test_an_archives_index_must_fit_too_and_a_tar_is_walked_only_that_far() -> None:
    x, y = digits(10)
    members = {"README": bytes(2 * LIMIT), **idx_files(x, y)}  # 2 MiB of zeros before the IDX files
    for archive in (tar_bytes(members), zip_bytes(members)):
        refused_within(
            1 << 20,
            lambda archive=archive: read_idx_archive(io.BytesIO(archive), "a", budget=budget()),
            "the sizes of its members",
        )


def test_the_idx_files_of_a_folder_share_one_budget(tmp_path: Path) -> None:
    x, y = digits(1_000)  # 785,000 bytes: fits alone, not with a test split of 400 more images
    train = write_files(tmp_path / "train", idx_files(x, y))
    spent = budget()
    read_idx_folder(train, budget=spent)
    assert spent.used == 1_000 * 785
    both = write_files(tmp_path / "both", idx_files(x, y, x[:400], y[:400]))
    with raises_naming_limit(both / f"{TEST_IMAGES}.gz"):
        read_idx_folder(both, budget=budget())
    with raises_naming_limit(both / f"{TRAIN_IMAGES}.gz"):
        read_idx(both / f"{TRAIN_IMAGES}.gz", both / f"{TRAIN_LABELS}.gz", budget=Budget(700_000))


def raises_naming_limit(path: Path) -> pytest.RaisesExc[PayloadTooLarge]:
    return pytest.raises(PayloadTooLarge, match=re.escape(f"{path}: more than"))


def test_an_npz_is_counted_at_its_dtypes_width(tmp_path: Path) -> None:
    bomb = npz_int64_bomb(200)  # 200 images: 157 KB of uint8, 1.25 MB as int64
    assert len(bomb) < 10_000
    refused_within(
        1 << 20,
        lambda: read_npz(write_npz(tmp_path, bomb, "int64.npz"), budget=budget()),
        "int64.npz",
        "'x_train': 156,800 values of int64",
    )
    x, y = digits(200)
    splits = read_npz(write_npz(tmp_path, npz_bytes(x_train=x, y_train=y), "uint8.npz"), budget=budget())
    np.testing.assert_array_equal(splits.x_train, x)


@pytest.mark.parametrize("gzipped", [True, False])
def test_csv_text_is_measured_before_it_is_read(tmp_path: Path, gzipped: bool) -> None:
    if gzipped:
        data = csv_gz_bomb(20_000)  # 55 KB of gzip, 31 MB of text
        assert len(data) < 60_000
        path = write_csv(tmp_path, "", "bomb.csv.gz")
        path.write_bytes(data)
        # Inflated a chunk at a time and thrown away: nothing like the 31 MB is held.
        refused_within(8 << 20, lambda: read_csv(path, budget=budget()), "bomb.csv.gz", "CSV text")
    else:
        path = write_csv(tmp_path, "", "plain.csv")
        path.write_bytes(BLANK_CSV_ROW * 700)  # 1.1 MB
        refused_within(1 << 20, lambda: read_csv(path, budget=budget()), "1,099,000 bytes of CSV text")
    x, y = digits(300)  # ~300 KB of text
    fits = write_csv(tmp_path, "", "fits.csv.gz")
    fits.write_bytes(gz(csv_text(x, y).encode()))
    spent = budget()
    np.testing.assert_array_equal(read_csv(fits, budget=spent)[0], x)
    assert spent.used == len(csv_text(x, y).encode())
