"""Dataset files: readers of IDX, CSV and NPZ digits into NumPy arrays.

What comes in is a path, a folder or a stream (a file, an upload's bytes). What comes out is
arrays, not a `Dataset`: `read_idx` and `read_csv` return images (n, 784) uint8, 28x28 flattened
row-major, and labels (n,) uint8 0-9; a folder of IDX files, a .zip/.tar[.gz] of them and an .npz
return `Splits` (x_train, y_train, x_test, y_test; the test pair None when the file has none). An
.npz's arrays come as stored, integers of (n, 28, 28) or (n, 784) and (n,): their values are
checked by `shared.datasets.make_dataset`, which builds the `Dataset`. Every reader checks a header
before it allocates anything the header declares, and raises `DatasetError(path, problem)` for a
bad file.

Files are measured by what they inflate to, not by their size: given a `Budget`, every reader
counts what it is about to read before it reads it (an IDX payload as its header declares it, an
NPZ array at its dtype's width, a CSV's text as gunzip would give it, an archive's members as its
index lists them) and refuses one that goes past the budget with `PayloadTooLarge` (413) before
anything is decompressed in full. A small compressed file can inflate a thousandfold. Imports
only the standard library and NumPy (and, of this project, `shared.formats`, which reads the IDX
and .npy headers and a CSV's first line, and `shared.errors`).
"""

from __future__ import annotations

import gzip
import os
import posixpath
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Collection, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, NamedTuple, cast

import numpy as np

from shared.errors import DatasetError, DatasetNotFound, PayloadTooLarge
from shared.formats import csv, idx, kinds, npy

PathLike = str | os.PathLike[str]

#: Pixels per image: 28 rows of 28, row-major.
PIXELS = 28 * 28
#: Most images one split may hold (images); a header declaring more is refused before reading.
MAX_IMAGES = 1_000_000
#: Most CSV text read from one file, after gunzip (bytes).
MAX_CSV_BYTES = 1 << 30
#: Bytes read from a stream at a time (bytes).
CHUNK_BYTES = 4 << 20

#: IDX file names by split: (images, labels); `.gz` and the `train-images.idx3-ubyte` spelling too.
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass
class Budget:
    """The inflated bytes one dataset may take as it is read: `limit` (None: no limit), `used` so far.

    Readers call `take` with what they are about to read, before they read it; past the limit
    it raises PayloadTooLarge (413), naming the file and `setting` (where the limit comes from).
    """

    limit: int | None
    setting: str = "the limit on inflated bytes"
    used: int = 0

    def take(self, name: str, size: int, what: str) -> None:
        """Count `size` more bytes of `what` in `name`; PayloadTooLarge once the total passes the limit."""
        self.used += size
        self.check(name, self.used, what)

    def check(self, name: str, total: int, what: str) -> None:
        """Raise PayloadTooLarge if `total` bytes of `what` in `name` pass the limit (counts nothing)."""
        if self.limit is not None and total > self.limit:
            raise PayloadTooLarge(
                f"{name}: more than {self.limit:,} bytes once inflated ({what}); the limit is {self.setting}"
            )


class Splits(NamedTuple):
    """The arrays of a dataset file: train images and labels, and the test pair or None."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None


# --- Reading helpers -----------------------------------------------------------------------------


@contextmanager
def reading(name: str) -> Iterator[None]:
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
    if head != kinds.GZIP_MAGIC:
        return stream
    return cast(IO[bytes], gzip.GzipFile(fileobj=stream, mode="rb"))


def _inflated_size(stream: IO[bytes], cap: int) -> int:
    """Return the bytes that `stream` holds from where it is, gunzipped if it is gzip, counting no
    further than `cap` + 1; the stream is left where it was.

    A gzip stream is inflated chunk by chunk and thrown away: its own size field (ISIZE) is modulo
    2**32 and may lie, and holding the inflated text to measure it is what a bomb wants.
    """
    pos = stream.tell()
    if stream.read(2) != kinds.GZIP_MAGIC:
        size = stream.seek(0, os.SEEK_END) - pos
        stream.seek(pos)
        return size
    stream.seek(pos)
    total = 0
    with gzip.GzipFile(fileobj=stream, mode="rb") as inflated:  # leaves `stream` open
        while total <= cap:
            chunk = inflated.read(min(CHUNK_BYTES, cap + 1 - total))
            if not chunk:
                break
            total += len(chunk)
    stream.seek(pos)
    return total


def _read_upto(stream: IO[bytes], limit: int) -> bytearray:
    """Read at most `limit` bytes, chunk by chunk, so memory follows the data actually present."""
    buf = bytearray()
    while len(buf) < limit:
        chunk = stream.read(min(CHUNK_BYTES, limit - len(buf)))
        if not chunk:
            break
        buf += chunk
    return buf


def listdir(folder: Path) -> set[str]:
    with reading(str(folder)):
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
    images: IO[bytes], labels: IO[bytes], images_name: str, labels_name: str, budget: Budget
) -> tuple[np.ndarray, np.ndarray]:
    """Read one IDX pair: check both headers, count what they declare in `budget`, then read both payloads."""
    with reading(images_name):
        images = _maybe_gunzip(images)
        n_images = _idx_count(images, images_name, idx.IMAGES_MAGIC)
    with reading(labels_name):
        labels = _maybe_gunzip(labels)
        n_labels = _idx_count(labels, labels_name, idx.LABELS_MAGIC)
    if n_images != n_labels:
        raise DatasetError(
            images_name, f"holds {n_images:,} images but {labels_name} holds {n_labels:,} labels"
        )
    # What the headers declare is all that is read (`_idx_payload`), whatever gzip or an
    # archive's index claims: it is counted before a byte of it is inflated.
    budget.take(images_name, n_images * (PIXELS + 1), f"{n_images:,} images and labels of 785 bytes")
    with reading(labels_name):
        y = _idx_payload(labels, labels_name, n_labels, 1)
    bad = np.flatnonzero(y > 9)
    if bad.size:
        i = int(bad[0])
        raise DatasetError(labels_name, f"label {y[i]} at index {i}; labels must be 0-9")
    with reading(images_name):
        x = _idx_payload(images, images_name, n_images, PIXELS).reshape(n_images, PIXELS)
    return x, y


def read_idx(
    images_path: PathLike, labels_path: PathLike, *, budget: Budget | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read an IDX images file and its labels file (gzipped or not) into (n, 784) and (n,)."""
    images_file, labels_file = _existing_file(images_path), _existing_file(labels_path)
    with ExitStack() as stack:
        streams = []
        for p in (images_file, labels_file):
            with reading(str(p)):
                streams.append(stack.enter_context(open(p, "rb")))
        return _read_idx_streams(
            streams[0], streams[1], str(images_path), str(labels_path), budget or Budget(None)
        )


def _idx_names(base: str) -> tuple[str, ...]:
    dotted = base.replace("-idx", ".idx")
    return (base, base + ".gz", dotted, dotted + ".gz")


def idx_member(names: Collection[str], base: str) -> str | None:
    return next((n for n in _idx_names(base) if n in names), None)


def _idx_pairs(names: Collection[str], where: str) -> dict[str, tuple[str, str]]:
    """Find the train pair (required) and the t10k pair (optional) among file names."""
    pairs = {}
    for split, (images_base, labels_base) in IDX_FILES.items():
        images, labels = idx_member(names, images_base), idx_member(names, labels_base)
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
    budget: Budget | None,
) -> Splits:
    """Read the train and optional test pairs; return x_train, y_train, x_test, y_test."""
    budget = budget or Budget(None)

    def read(split: str) -> tuple[np.ndarray, np.ndarray]:
        images, labels = pairs[split]
        with ExitStack() as stack:
            streams = []
            for member in (images, labels):
                with reading(label(member)):
                    streams.append(stack.enter_context(opener(member)))
            return _read_idx_streams(streams[0], streams[1], label(images), label(labels), budget)

    x_train, y_train = read("train")
    x_test, y_test = read("test") if "test" in pairs else (None, None)
    return Splits(x_train, y_train, x_test, y_test)


def read_idx_folder(path: PathLike, *, budget: Budget | None = None) -> Splits:
    """Read a folder of MNIST IDX files: the train pair, and the t10k pair when present."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DatasetNotFound(f"{path}: no such folder")
    pairs = _idx_pairs(listdir(folder), str(path))

    def open_member(member: str) -> IO[bytes]:
        return open(folder / member, "rb")  # the caller's ExitStack closes it

    return _read_idx_splits(pairs, open_member, lambda member: str(folder / member), budget)


def read_idx_archive(stream: IO[bytes], name: str, *, budget: Budget | None = None) -> Splits:
    """Read a .zip or .tar[.gz] holding IDX files (in any folder); errors name `name`.

    With a `budget`, the members' sizes in the archive's index must fit it too (a tar's are read
    as it is walked, so that walking a .tar.gz inflates no further than the budget).
    """
    head = stream.read(4)
    stream.seek(0)
    budget = budget or Budget(None)
    with ExitStack() as stack:
        with reading(name):
            if head.startswith(kinds.ZIP_MAGIC):
                opener = _zip_opener(stack.enter_context(zipfile.ZipFile(stream)), name, budget)
            else:
                try:
                    tf = stack.enter_context(tarfile.open(fileobj=stream, mode="r:*"))
                except tarfile.ReadError:
                    raise DatasetError(name, "not a zip or tar archive of IDX files") from None
                opener = _tar_opener(tf, name, budget)
            pairs = _idx_pairs(opener.names, name)
        return _read_idx_splits(pairs, opener, lambda member: f"{name}:{member}", budget)


class _ArchiveOpener:
    """Open an archive's members by base name, whatever folder they sit in."""

    def __init__(self, members: dict[str, Callable[[], IO[bytes]]]) -> None:
        self.names = set(members)
        self._members = members

    def __call__(self, member: str) -> IO[bytes]:
        return self._members[member]()


def _zip_opener(zf: zipfile.ZipFile, name: str, budget: Budget) -> _ArchiveOpener:
    def opener(info: zipfile.ZipInfo) -> Callable[[], IO[bytes]]:
        return lambda: zf.open(info)

    infos = [i for i in zf.infolist() if not i.is_dir()]
    # The central directory's sizes may lie: zipfile never inflates a member past its file_size,
    # and the IDX headers bound what is read. A larger claim is refused all the same.
    budget.check(name, sum(i.file_size for i in infos), "the sizes of its members")
    return _ArchiveOpener({posixpath.basename(i.filename): opener(i) for i in infos})


def _tar_opener(tf: tarfile.TarFile, name: str, budget: Budget) -> _ArchiveOpener:
    def opener(member: tarfile.TarInfo) -> Callable[[], IO[bytes]]:
        def open_member() -> IO[bytes]:
            f = tf.extractfile(member)
            assert f is not None  # only regular files are listed
            return f

        return open_member

    files, total = [], 0
    for member in tf:  # walked, not getmembers(): a .tar.gz is inflated only as far as it is read
        if member.isfile():
            total += member.size
            budget.check(name, total, "the sizes of its members")
            files.append(member)
    return _ArchiveOpener({posixpath.basename(m.name): opener(m) for m in files})


# --- CSV -----------------------------------------------------------------------------------------


def read_csv_text(stream: IO[bytes], name: str, *, budget: Budget | None = None) -> bytearray:
    """Read a CSV stream (gzipped or not), refusing more than MAX_CSV_BYTES of text.

    With a `budget`, the text is measured first (a gzip stream inflated and thrown away, up to
    what the budget has left) and counted in it: a refused file is never held inflated.
    """
    with reading(name):
        if budget is not None and budget.limit is not None:
            cap = max(budget.limit - budget.used, 0)
            size = _inflated_size(stream, cap)
            shown = f"more than {cap:,}" if size == cap + 1 else f"{size:,}"  # counted no further
            budget.take(name, size, f"{shown} bytes of CSV text")
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


def parse_csv(
    raw: bytes | bytearray, name: str, *, label_last: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Parse a label and 784 pixel columns (header optional) into (n, 784) and (n,) uint8.

    The label is first, or last when `label_last`, when a header's last column is `label`, or
    when a headerless file's first column is all zero and its last is not (shared.formats.csv).
    """
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DatasetError(name, "not a text CSV file (not UTF-8)") from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise DatasetError(name, "empty file")
    layout = csv.sniff(lines[0])
    if layout.columns == PIXELS:
        raise DatasetError(
            name,
            "line 1: 784 columns, pixels without a label column (like Kaggle's test.csv): "
            "not a training set; expected 785 columns, a label and 784 pixels",
        )
    if layout.columns != PIXELS + 1:
        raise DatasetError(name, f"line 1: {layout.columns} columns; expected 785 (label + 784 pixels)")
    start = int(layout.header)  # Kaggle's header: label,pixel0,...
    label_last = label_last or layout.label == PIXELS
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
    if not (label_last or layout.header):
        label_last = csv.label_last(table[:, 0].tolist(), table[:, -1].tolist())
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


def read_csv(path: PathLike, *, budget: Budget | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read a label-first CSV (Kaggle's train.csv, or headerless; .csv.gz too) into x and y."""
    p = _existing_file(path)
    with reading(str(path)), open(p, "rb") as f:
        raw = read_csv_text(f, str(path), budget=budget)
    return parse_csv(raw, str(path))


# --- NPZ -----------------------------------------------------------------------------------------

_NPZ_ARRAYS = ("x_train", "y_train", "x_test", "y_test")


def _check_npy_header(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, key: str, budget: Budget
) -> None:
    """Check one member's .npy header: plain integers, a bounded shape, a size that matches, in `budget`."""
    with zf.open(info) as f:
        try:
            shape, _, descr = npy.read_header(f)
            dtype = np.lib.format.descr_to_dtype(descr)
        except (ValueError, TypeError, IndexError) as exc:  # descr_to_dtype(()) raises IndexError
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
    count = int(np.prod(shape, dtype=np.int64))
    # At its stored width: an int64 array holds 8 bytes per pixel until it is converted.
    budget.take(name, count * dtype.itemsize, f"array {key!r}: {count:,} values of {dtype}")
    size = offset + count * dtype.itemsize
    if info.file_size != size:
        raise DatasetError(name, f"array {key!r} is {info.file_size:,} bytes; its header declares {size:,}")


def read_npz_stream(stream: IO[bytes], name: str, *, budget: Budget | None = None) -> Splits:
    """Read Keras-style x_train, y_train[, x_test, y_test] from an .npz stream.

    Checks each array's .npy header (integers, shape, size, and its bytes in `budget`) before any
    array is read, not its values (labels 0-9, pixels 0-255, as many labels as images):
    `shared.datasets.make_dataset` checks those.
    """
    budget = budget or Budget(None)
    head = stream.read(4)
    stream.seek(0)
    if not head.startswith(kinds.ZIP_MAGIC):
        raise DatasetError(name, "not an .npz file (not a zip archive)")
    with reading(name):
        with zipfile.ZipFile(stream) as zf:
            infos = {i.filename: i for i in zf.infolist()}
            keys = [k for k in _NPZ_ARRAYS if f"{k}.npy" in infos]
            missing = [k for k in _NPZ_ARRAYS[:2] if k not in keys]
            if missing:
                held = ", ".join(sorted(infos)) or "nothing"
                raise DatasetError(name, f"no array {', '.join(missing)} (it holds {held})")
            for key in keys:
                _check_npy_header(zf, infos[f"{key}.npy"], name, key, budget)
        stream.seek(0)
        with np.load(stream, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in keys}
    return Splits(arrays["x_train"], arrays["y_train"], arrays.get("x_test"), arrays.get("y_test"))


def read_npz(path: PathLike, *, budget: Budget | None = None) -> Splits:
    """Read a Keras-style mnist.npz (never unpickling) into its arrays."""
    p = _existing_file(path)
    with reading(str(path)), open(p, "rb") as f:
        return read_npz_stream(f, str(path), budget=budget)
