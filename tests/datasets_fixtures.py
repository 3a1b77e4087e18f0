"""Tiny writers of dataset files (IDX, CSV, NPZ, archives) and a DatasetError check, for dataset tests."""

from __future__ import annotations

import gzip
import io
import re
import struct
import tarfile
import zipfile
from pathlib import Path
from typing import IO

import numpy as np
import pytest

from shared.errors import DatasetError

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"


def digits(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return n random images (n, 784) uint8 and labels cycling through 0-9."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, 784), dtype=np.uint8)
    y = (np.arange(n) % 10).astype(np.uint8)
    return x, y


def idx_images(
    x: np.ndarray, *, count: int | None = None, magic: int = IMAGES_MAGIC, size: int = 28
) -> bytes:
    """Return an IDX images file: header (magic, count, rows, cols) then the pixels."""
    n = len(x) if count is None else count
    return struct.pack(">IIII", magic, n, size, size) + np.asarray(x, np.uint8).tobytes()


def idx_labels(y: np.ndarray, *, count: int | None = None, magic: int = LABELS_MAGIC) -> bytes:
    """Return an IDX labels file: header (magic, count) then the labels."""
    n = len(y) if count is None else count
    return struct.pack(">II", magic, n) + np.asarray(y, np.uint8).tobytes()


def gz(data: bytes) -> bytes:
    """Return `data` gzipped, with a fixed mtime so the bytes are reproducible."""
    return gzip.compress(data, mtime=0)


def idx_files(
    x: np.ndarray,
    y: np.ndarray,
    x_test: np.ndarray | None = None,
    y_test: np.ndarray | None = None,
    *,
    gzipped: bool = True,
) -> dict[str, bytes]:
    """Return the IDX files of a dataset by their MNIST file names."""
    files = {TRAIN_IMAGES: idx_images(x), TRAIN_LABELS: idx_labels(y)}
    if x_test is not None and y_test is not None:
        files |= {TEST_IMAGES: idx_images(x_test), TEST_LABELS: idx_labels(y_test)}
    if gzipped:
        return {f"{name}.gz": gz(data) for name, data in files.items()}
    return files


def raises_naming(name: str | Path, *words: str) -> pytest.RaisesExc[DatasetError]:
    """Expect a DatasetError whose message names the file (and holds each of `words`)."""
    return pytest.raises(DatasetError, match=".*".join(map(re.escape, (str(name), *words))))


def write_files(folder: Path, files: dict[str, bytes]) -> Path:
    """Write each named file into `folder` (created); return the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def csv_text(x: np.ndarray, y: np.ndarray, *, header: bool = True, label_last: bool = False) -> str:
    """Return a CSV: Kaggle's header (optional), then label and 784 pixels per row."""
    lines = []
    if header:
        lines.append("label," + ",".join(f"pixel{i}" for i in range(784)))
    for pixels, label in zip(x.tolist(), y.tolist(), strict=True):
        cells = [*pixels, label] if label_last else [label, *pixels]
        lines.append(",".join(map(str, cells)))
    return "\n".join(lines) + "\n"


def write_csv(tmp_path: Path, text: str, name: str = "bad.csv") -> Path:
    """Write `text` as a CSV file; return its path."""
    path = tmp_path / name
    path.write_text(text)
    return path


def npz_bytes(**arrays: np.ndarray) -> bytes:
    """Return an .npz holding `arrays`, written with np.savez (pickling allowed, as numpy does)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def npy_with_header(shape: tuple[int, ...], payload: bytes, descr: str = "|u1") -> bytes:
    """Return .npy bytes whose header declares `shape` whatever the payload holds."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue() + payload  # the header writer includes the magic


def write_npz(tmp_path: Path, data: bytes, name: str = "mnist.npz") -> Path:
    """Write .npz bytes; return the path."""
    path = tmp_path / name
    path.write_bytes(data)
    return path


def zip_bytes(members: dict[str, bytes]) -> bytes:
    """Return a zip archive of `members` (deflated)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def tar_bytes(members: dict[str, bytes], mode: str = "w:gz") -> bytes:
    """Return a tar archive (gzipped by default) of `members`."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:  # type: ignore[call-overload]
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# --- Files that inflate far beyond their size, built without holding what they inflate to ----------

#: Zero bytes written at a time into a compressor (bytes).
_BLOCK = bytes(1 << 22)
#: One CSV row of blank pixels: a label 0 and 784 zeros (1,570 bytes).
BLANK_CSV_ROW = ",".join(["0"] * 785).encode() + b"\n"


def _write_zeros(out: IO[bytes], size: int) -> None:
    """Write `size` zero bytes to `out`, a block at a time."""
    while size > 0:
        out.write(_BLOCK[: min(size, len(_BLOCK))])
        size -= len(_BLOCK)


def idx_zip_bomb(images: int) -> bytes:
    """Return a zip of IDX files holding `images` blank digits: images × 785 bytes once inflated."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        with zf.open(TRAIN_IMAGES, "w", force_zip64=True) as f:
            f.write(struct.pack(">IIII", IMAGES_MAGIC, images, 28, 28))
            _write_zeros(f, images * 784)
        with zf.open(TRAIN_LABELS, "w", force_zip64=True) as f:
            f.write(struct.pack(">II", LABELS_MAGIC, images))
            _write_zeros(f, images)
    return buf.getvalue()


def npz_int64_bomb(images: int) -> bytes:
    """Return an .npz of `images` blank digits stored as int64: images × 784 × 8 bytes once inflated."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        with zf.open("x_train.npy", "w", force_zip64=True) as f:
            f.write(npy_with_header((images, 784), b"", descr="<i8"))
            _write_zeros(f, images * 784 * 8)
        with zf.open("y_train.npy", "w", force_zip64=True) as f:
            f.write(npy_with_header((images,), b""))
            _write_zeros(f, images)
    return buf.getvalue()


def csv_gz_bomb(rows: int) -> bytes:
    """Return a gzipped headerless CSV of `rows` blank digits: rows × 1,570 bytes of text once inflated."""
    block = BLANK_CSV_ROW * 2048
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9, mtime=0) as f:
        while rows > 0:
            f.write(block[: min(rows, 2048) * len(BLANK_CSV_ROW)])
            rows -= 2048
    return out.getvalue()


def idx_tar_bomb(images: int) -> bytes:
    """Return a tar of gzipped IDX files holding `images` blank digits: images × 785 bytes once
    inflated, while the tar's own index lists only the compressed sizes."""

    def gzipped(header: bytes, zeros: int) -> bytes:
        out = io.BytesIO()
        with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9, mtime=0) as f:
            f.write(header)
            _write_zeros(f, zeros)
        return out.getvalue()

    members = {
        f"{TRAIN_IMAGES}.gz": gzipped(struct.pack(">IIII", IMAGES_MAGIC, images, 28, 28), images * 784),
        f"{TRAIN_LABELS}.gz": gzipped(struct.pack(">II", LABELS_MAGIC, images), images),
    }
    return tar_bytes(members, mode="w")  # the members are gzipped already
