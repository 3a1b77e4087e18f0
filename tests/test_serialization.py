"""shared.serialization: exact round trips, and refusal of anything that is not one of our files."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from shared import mlp, serialization
from shared.errors import InvalidInput
from shared.training import TrainConfig, Trainer

META = {"recipe": "seed", "metrics": {"test_accuracy": 0.8125}, "dataset": {"digest": "sha256:00"}}


def params_of(sizes: tuple[int, ...], dtype: type = np.float32, seed: int = 0) -> list[np.ndarray]:
    return mlp.init_params(sizes, np.random.default_rng(seed), "uniform", dtype)


def npz_bytes(**arrays: np.ndarray) -> bytes:
    """Return .npz bytes of `arrays` written by NumPy itself (pickling allowed, as an attacker would)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def raw_model(params: list[np.ndarray], meta: object = None) -> dict[str, np.ndarray]:
    """Return the arrays of a model file, bypassing the writer's checks."""
    arrays = {f"{'Wb'[i % 2]}{i // 2 + 1}": p for i, p in enumerate(params)}
    arrays["meta"] = np.array(json.dumps({} if meta is None else meta))
    return arrays


@pytest.mark.parametrize(
    ("sizes", "dtype"),
    [
        ((784, 10, 10), np.float32),
        ((784, 10, 10), np.float64),
        ((784, 64, 32, 16, 10), np.float32),
        ((784, 10), np.float64),
    ],
)
def test_model_round_trip_is_exact(sizes: tuple[int, ...], dtype: type) -> None:
    params = params_of(sizes, dtype)
    loaded, meta = serialization.model_from_bytes(serialization.model_to_bytes(params, META))
    assert len(loaded) == len(params)
    for a, b in zip(params, loaded, strict=True):
        assert b.dtype == a.dtype and b.shape == a.shape and np.array_equal(a, b)
    assert {k: meta[k] for k in META} == META
    assert meta["format"] == serialization.MODEL_FORMAT
    assert meta["architecture"]["sizes"] == list(sizes)
    assert meta["architecture"]["dtype"] == np.dtype(dtype).name


def test_model_file_is_plain_npz_with_the_documented_names() -> None:
    data = serialization.model_to_bytes(params_of((784, 16, 10)), META)
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        assert sorted(npz.files) == ["W1", "W2", "b1", "b2", "meta"]
        assert npz["W1"].shape == (16, 784) and npz["b1"].shape == (16,)
        assert json.loads(str(npz["meta"]))["recipe"] == "seed"


def test_save_and_load_model_through_a_file(tmp_path: Path) -> None:
    params = params_of((784, 32, 10), np.float64)
    path = tmp_path / "model.npz"
    serialization.save_model(path, params, META)
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]  # no temporary file left
    loaded, meta = serialization.load_model(str(path))
    assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(params, loaded, strict=True))
    assert meta["metrics"] == META["metrics"]
    with pytest.raises(InvalidInput, match="cannot read"):
        serialization.load_model(tmp_path / "missing.npz")


def test_writer_refuses_what_it_could_not_read_back() -> None:
    with pytest.raises(InvalidInput, match="outputs"):
        serialization.model_to_bytes(params_of((784, 10, 7)), META)
    with pytest.raises(ValueError):
        serialization.model_to_bytes(params_of((784, 10)), {"loss": float("nan")})


class CreatesAFile:
    """Unpickling this would create `path`: the proof that a loader ran pickle."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.path), "w"))


@pytest.mark.parametrize("key", ["meta", "W1"])
def test_pickled_arrays_are_refused_and_never_unpickled(tmp_path: Path, key: str) -> None:
    marker = tmp_path / "pwned"
    arrays = raw_model(params_of((784, 10)))
    arrays[key] = np.array([CreatesAFile(marker)], dtype=object)
    data = npz_bytes(**arrays)
    with pytest.raises(InvalidInput, match="refused"):
        serialization.model_from_bytes(data)
    path = tmp_path / "evil.npz"
    path.write_bytes(data)
    with pytest.raises(InvalidInput, match="evil.npz"):
        serialization.load_model(path)
    assert not marker.exists()


def test_a_bare_pickle_is_not_unpickled(tmp_path: Path) -> None:
    import pickle

    marker = tmp_path / "pwned"
    with pytest.raises(InvalidInput, match="not a valid .npz"):
        serialization.model_from_bytes(pickle.dumps(CreatesAFile(marker)))
    assert not marker.exists()


def refusal(data: bytes) -> str:
    with pytest.raises(InvalidInput) as info:
        serialization.model_from_bytes(data, "upload.npz")
    message = info.value.message
    assert message.startswith("upload.npz: ") and "\n" not in message
    return message


def test_missing_or_bad_meta_is_refused() -> None:
    params = params_of((784, 10, 10))
    no_meta = raw_model(params)
    del no_meta["meta"]
    assert "no 'meta'" in refusal(npz_bytes(**no_meta))
    assert "not JSON" in refusal(npz_bytes(**{**raw_model(params), "meta": np.array("{nope")}))
    assert "JSON object" in refusal(npz_bytes(**{**raw_model(params), "meta": np.array("[1, 2]")}))
    assert "no 'meta'" in refusal(npz_bytes(**{**raw_model(params), "meta": np.array([1.0, 2.0])}))


def test_inconsistent_networks_are_refused() -> None:
    w1, b1, w2, b2 = params_of((784, 16, 10))
    # W2 reads 12 inputs where layer 1 gives 16.
    assert "layer 2 shapes" in refusal(npz_bytes(**raw_model([w1, b1, w2[:, :12], b2])))
    assert "layer 1 shapes" in refusal(npz_bytes(**raw_model([w1[:, :700], b1, w2, b2])))
    assert "layer 1 shapes" in refusal(npz_bytes(**raw_model([w1, b1[:8], w2, b2])))
    assert "9 outputs, expected 10" in refusal(npz_bytes(**raw_model([w1, b1, w2[:9], b2[:9]])))
    assert "expected arrays" in refusal(npz_bytes(**{**raw_model([w1, b1, w2, b2]), "W3": w2}))
    missing_bias = raw_model([w1, b1, w2, b2])
    del missing_bias["b2"]
    assert "expected arrays" in refusal(npz_bytes(**missing_bias))
    assert "float32 or float64" in refusal(npz_bytes(**raw_model([w1.astype(np.int32), b1, w2, b2])))
    assert "float32 or float64" in refusal(npz_bytes(**raw_model([w1, b1.astype(np.float64), w2, b2])))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_refused(bad: float) -> None:
    w1, b1, w2, b2 = params_of((784, 16, 10))
    w2 = w2.copy()
    w2[3, 4] = bad
    assert "layer 2 holds NaN or Inf" in refusal(npz_bytes(**raw_model([w1, b1, w2, b2])))


def test_bytes_that_are_not_an_npz_are_refused() -> None:
    good = serialization.model_to_bytes(params_of((784, 10, 10)), META)
    for data in (b"", b"hello, world\n", b"\x93NUMPY", good[: len(good) // 2], good[:-30]):
        assert "not a valid .npz file" in refusal(data)
    lone_array = io.BytesIO()
    np.save(lone_array, np.zeros(3))
    assert "not a valid .npz file" in refusal(lone_array.getvalue())
    # A zip whose member is not a .npy array.
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("W1.npy", b"garbage")
    assert "upload.npz" in refusal(buf.getvalue())


def test_checkpoint_round_trip_is_exact() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (200, 784), dtype=np.uint8)
    labels = np.arange(200) % 10
    config = TrainConfig(
        hidden=(8, 6),
        optimizer="adam",
        batch_size=32,
        epochs=3,
        validation_fraction=0.2,
        patience=2,
        schedule="cosine",
    )
    trainer = Trainer(config, pixels, labels)
    seen: list[int] = [0]
    trainer.run(on_progress=lambda p: seen.append(p.iteration), should_stop=lambda: seen[-1] >= 7)
    original = trainer.checkpoint()
    assert original.best_params is not None and original.history
    back = serialization.checkpoint_from_bytes(serialization.checkpoint_to_bytes(original))
    assert back.config == original.config
    for name in ("params", "optimizer_state", "best_params"):
        a, b = getattr(original, name), getattr(back, name)
        assert all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(a, b, strict=True)), name
    for name in (
        "iteration",
        "epoch",
        "step_in_epoch",
        "epoch_loss_sum",
        "epoch_correct",
        "epoch_seen",
        "elapsed",
        "samples",
        "history",
        "best_val_accuracy",
        "best_epoch",
        "stopped_early",
    ):
        assert getattr(back, name) == getattr(original, name), name
    fresh = Trainer(TrainConfig(hidden=(8,), iterations=1), pixels, labels).checkpoint()
    assert serialization.checkpoint_from_bytes(serialization.checkpoint_to_bytes(fresh)).best_params is None
