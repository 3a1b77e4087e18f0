"""Weights ⇄ bytes: the model file (.npz) and training checkpoints. Never pickle.

Model file: arrays ``W1, b1, …, Wk, bk`` (``Wi`` shaped (out, in), ``bi`` (out,)) and ``meta``, a
0-d unicode array holding a JSON object (architecture, recipe, metrics, dataset digest). Every
load uses ``np.load(..., allow_pickle=False)`` and checks that the arrays form one network.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import fields
from pathlib import Path
from typing import IO, Any

import numpy as np

from shared import mlp
from shared.errors import InvalidInput
from shared.training import Checkpoint, TrainConfig

#: Version of the model file layout, stored in meta["format"].
MODEL_FORMAT = 1
#: Most layers a model file may hold (bounds what a hostile file can make us allocate).
MAX_LAYERS = 16


def architecture(params: list[np.ndarray]) -> dict[str, Any]:
    """Return the JSON description of the network that `params` implement."""
    return {
        "sizes": list(mlp.layer_sizes(params)),
        "hidden_activation": "relu",
        "output_activation": "softmax",
        "dtype": str(params[0].dtype),
        "input": "784 pixels, row-major 28x28, divided by 255",
    }


def _write(target: IO[bytes] | str | Path, arrays: dict[str, np.ndarray]) -> None:
    np.savez(target, allow_pickle=False, **arrays)  # type: ignore[arg-type]  # (numpy's stubs)


def model_to_bytes(params: list[np.ndarray], meta: dict[str, Any]) -> bytes:
    """Return the .npz bytes of a model: its parameters and `meta` (plus its architecture)."""
    check_params(params, "model")
    meta = {"format": MODEL_FORMAT, "architecture": architecture(params), **meta}
    arrays = {}
    for i in range(len(params) // 2):
        arrays[f"W{i + 1}"] = params[2 * i]
        arrays[f"b{i + 1}"] = params[2 * i + 1]
    arrays["meta"] = np.array(json.dumps(meta, allow_nan=False, default=_json_default))
    buf = io.BytesIO()
    _write(buf, arrays)
    return buf.getvalue()


def save_model(path: str | Path, params: list[np.ndarray], meta: dict[str, Any]) -> None:
    """Write a model file to `path` atomically (a temporary file, then a rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(model_to_bytes(params, meta))
    tmp.replace(path)


def model_from_bytes(data: bytes, name: str = "model") -> tuple[list[np.ndarray], dict[str, Any]]:
    """Return (params, meta) from .npz bytes; `InvalidInput` (naming `name`) if they are not a model."""
    arrays = _load_npz(data, name)
    meta_raw = arrays.pop("meta", None)
    if meta_raw is None or meta_raw.dtype.kind != "U" or meta_raw.ndim != 0:
        raise InvalidInput(f"{name}: no 'meta' JSON string")
    try:
        meta = json.loads(str(meta_raw))
    except (ValueError, RecursionError) as exc:  # RecursionError: arrays nested thousands deep
        raise InvalidInput(f"{name}: 'meta' is not JSON ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(meta, dict):
        raise InvalidInput(f"{name}: 'meta' is not a JSON object")
    layers = len(arrays) // 2
    expected = {f"{p}{i}" for i in range(1, layers + 1) for p in "Wb"}
    if set(arrays) != expected or layers == 0:
        raise InvalidInput(f"{name}: expected arrays W1, b1, …, Wk, bk and meta; got {sorted(arrays)}")
    params = []
    for i in range(1, layers + 1):
        params += [arrays[f"W{i}"], arrays[f"b{i}"]]
    check_params(params, name)
    return params, meta


def load_model(path: str | Path) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Return (params, meta) from a model file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot read ({exc.strerror})") from None
    return model_from_bytes(data, str(path))


def check_params(params: list[np.ndarray], name: str) -> None:
    """Raise `InvalidInput` unless params are [W1, b1, …] of one finite float network 784 → 10."""
    if not params or len(params) % 2 or len(params) // 2 > MAX_LAYERS:
        raise InvalidInput(f"{name}: expected 1 to {MAX_LAYERS} layers of (W, b)")
    fan_in = mlp.INPUT_SIZE
    for i in range(0, len(params), 2):
        w, b = params[i], params[i + 1]
        layer = i // 2 + 1
        if w.dtype not in (np.float32, np.float64) or b.dtype != w.dtype:
            raise InvalidInput(f"{name}: W{layer}/b{layer} must both be float32 or float64")
        if w.ndim != 2 or w.shape[1] != fan_in or b.shape != (w.shape[0],):
            raise InvalidInput(
                f"{name}: layer {layer} shapes W{w.shape} b{b.shape} do not follow from input {fan_in}"
            )
        if not (np.isfinite(w).all() and np.isfinite(b).all()):
            raise InvalidInput(f"{name}: layer {layer} holds NaN or Inf")
        fan_in = w.shape[0]
    if fan_in != mlp.CLASSES:
        raise InvalidInput(f"{name}: the last layer has {fan_in} outputs, expected {mlp.CLASSES}")


def _load_npz(data: bytes, name: str) -> dict[str, np.ndarray]:
    # np.load reads anything that is not zip or .npy as a pickle: say "not .npz", not "pickled".
    if not data.startswith(b"PK\x03\x04"):
        raise InvalidInput(f"{name}: not a valid .npz file (not a zip archive)")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except ValueError as exc:
        # NumPy raises ValueError for object arrays when allow_pickle=False.
        raise InvalidInput(f"{name}: refused ({exc})") from None
    except (zipfile.BadZipFile, OSError, EOFError, KeyError) as exc:
        raise InvalidInput(f"{name}: not a valid .npz file ({exc})") from None


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


# --- checkpoints --------------------------------------------------------------------------------
def checkpoint_to_bytes(ckpt: Checkpoint) -> bytes:
    """Return a training checkpoint as .npz bytes: arrays by name plus a JSON state."""
    arrays: dict[str, np.ndarray] = {}
    for i, p in enumerate(ckpt.params):
        arrays[f"param{i}"] = p
    for i, p in enumerate(ckpt.optimizer_state):
        arrays[f"opt{i}"] = p
    for i, p in enumerate(ckpt.best_params or []):
        arrays[f"best{i}"] = p
    scalars = {
        f.name: getattr(ckpt, f.name)
        for f in fields(ckpt)
        if f.name not in ("config", "params", "optimizer_state", "best_params")
    }
    state = {
        "config": ckpt.config.to_dict(),
        "counts": [len(ckpt.params), len(ckpt.optimizer_state), len(ckpt.best_params or [])],
        "has_best": ckpt.best_params is not None,
        **scalars,
    }
    # repr() of floats round-trips exactly through JSON, so resumed runs match bit for bit.
    arrays["state"] = np.array(json.dumps(state, default=_json_default))
    buf = io.BytesIO()
    _write(buf, arrays)
    return buf.getvalue()


def checkpoint_from_bytes(data: bytes) -> Checkpoint:
    """Return the checkpoint that `checkpoint_to_bytes` wrote."""
    arrays = _load_npz(data, "checkpoint")
    state = json.loads(str(arrays["state"]))
    n_params, n_opt, n_best = state.pop("counts")
    has_best = state.pop("has_best")
    config = TrainConfig.from_dict(state.pop("config"))
    return Checkpoint(
        config=config,
        params=[arrays[f"param{i}"] for i in range(n_params)],
        optimizer_state=[arrays[f"opt{i}"] for i in range(n_opt)],
        best_params=[arrays[f"best{i}"] for i in range(n_best)] if has_best else None,
        **state,
    )
