"""The network: a multi-layer perceptron, ReLU hidden layers, a softmax output. NumPy only.

Conventions (the tutorial's, with one transposition):
- Parameters are the list ``[W1, b1, W2, b2, …, Wk, bk]``; ``Wi`` is (out, in) as in the
  tutorial, so W1 is hidden×784, and ``bi`` is (out,).
- A batch is rows: X is (m, 784), the transpose of the tutorial's (784, m). Then
  ``Zi = A(i-1)·Wiᵀ + bi`` is the tutorial's ``Wi·A(i-1) + bi`` transposed; rows keep every
  product one contiguous sgemm and let a batch be a slice of the dataset.
- Pixels enter as uint8 0–255 and are divided by 255 (`scale_pixels`).

The tutorial's formulas, in this layout, with Y one-hot (m, 10):
    dZk = (Ak − Y) / m            dWi = dZiᵀ·A(i-1)        dbi = Σ_rows dZi
    dZ(i-1) = dZi·Wi ∘ ReLU′(Z(i-1))
where dbi sums each unit over the batch (the tutorial's ``np.sum(dZ)`` sums the whole matrix:
a known bug, not reproduced).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Params = list[np.ndarray]
Init = Literal["uniform", "he"]

#: Pixels per image (28×28, row-major).
INPUT_SIZE = 784
#: Output classes (digits 0–9).
CLASSES = 10


def scale_pixels(x: np.ndarray, dtype: np.dtype | type = np.float32) -> np.ndarray:
    """Return uint8 (or 0–255 valued) pixels divided by 255 as `dtype`."""
    return np.divide(x, 255, dtype=dtype)


def init_params(
    sizes: Sequence[int], rng: np.random.Generator, init: Init = "he", dtype: type = np.float32
) -> Params:
    """Return fresh parameters for layer `sizes` (e.g. (784, 10, 10)).

    ``uniform`` is the tutorial's: every weight and bias uniform in [−0.5, 0.5].
    ``he`` draws weights from N(0, 2/fan_in) and sets biases to zero (He et al. 2015).
    """
    if len(sizes) < 2:
        raise ValueError(f"need at least an input and an output size, got {list(sizes)}")
    params: Params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=False):
        if init == "uniform":
            w = rng.uniform(-0.5, 0.5, size=(fan_out, fan_in))
            b = rng.uniform(-0.5, 0.5, size=fan_out)
        elif init == "he":
            w = rng.standard_normal((fan_out, fan_in)) * np.sqrt(2.0 / fan_in)
            b = np.zeros(fan_out)
        else:
            raise ValueError(f"unknown init {init!r}: expected 'uniform' or 'he'")
        params += [w.astype(dtype), b.astype(dtype)]
    return params


def layer_sizes(params: Params) -> tuple[int, ...]:
    """Return the layer sizes (input, hidden…, output) that `params` implement."""
    return (params[0].shape[1],) + tuple(w.shape[0] for w in params[0::2])


def softmax(z: np.ndarray, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return the row-wise softmax P (m, k) of logits z (m, k), and each row's normaliser (m, 1).

    z is shifted in place by its row max, so exp never overflows and z is left holding the
    shifted logits a loss needs; the normaliser Σ exp(shifted) is then at least 1, so its log is
    finite. P is written into `out` when given (z itself: a softmax without one more array).
    """
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z, out=out)
    norm = p.sum(axis=1, keepdims=True)
    p /= norm
    return p, norm


@dataclass
class Forward:
    """What a forward pass keeps for the backward pass and the loss.

    ``activations`` is [X, A1, …, A(k-1), P]: the input, each hidden ReLU output (m, units) and
    the softmax probabilities P (m, 10). ``shifted`` is the output logits minus their row max
    and ``log_norm`` the log of each row's softmax denominator, so the cross-entropy is
    ``log_norm − shifted[y]`` without ever taking log(0).
    """

    activations: list[np.ndarray]
    shifted: np.ndarray
    log_norm: np.ndarray

    @property
    def probabilities(self) -> np.ndarray:
        """Return the softmax output P (m, 10)."""
        return self.activations[-1]


def forward(params: Params, x: np.ndarray) -> Forward:
    """Run the network on x (m, 784), already scaled; return every activation."""
    activations = [x]
    a = x
    last = len(params) // 2 - 1
    for i in range(0, len(params), 2):
        z = a @ params[i].T
        z += params[i + 1]
        if i // 2 < last:
            np.maximum(z, 0, out=z)  # ReLU in place: ReLU′(Z) is then A > 0
            a = z
            activations.append(a)
    p, norm = softmax(z)
    activations.append(p)
    return Forward(activations, z, np.log(norm[:, 0]))


def cross_entropy(fwd: Forward, y: np.ndarray) -> float:
    """Return the mean cross-entropy of labels y (m,) under a forward pass; finite always."""
    rows = np.arange(len(y))
    return float(np.mean(fwd.log_norm - fwd.shifted[rows, y]))


def backward(params: Params, fwd: Forward, y: np.ndarray, scale: float = 1.0) -> Params:
    """Return the gradients [dW1, db1, …] of the mean cross-entropy for labels y (m,).

    Each dWi has the shape of Wi, each dbi that of bi. Uses the tutorial's formulas (module
    docstring); the first layer's input gradient is never computed. Every gradient comes
    multiplied by `scale`: a plain gradient step folds its learning rate in here, on the small
    output-layer dZ, instead of in one more pass over each weight matrix.
    """
    m = len(y)
    dz = fwd.probabilities.copy()
    dz[np.arange(m), y] -= 1  # A − Y with Y one-hot, without building Y
    dz *= dz.dtype.type(scale / m)
    grads: Params = [np.empty(0)] * len(params)
    for i in range(len(params) - 2, -1, -2):
        a_prev = fwd.activations[i // 2]
        # (Aᵀ·dZ)ᵀ rather than dZᵀ·A: the same product, a faster sgemm, and an F-ordered result
        # that matches the trainer's F-ordered weights element for element.
        grads[i] = (a_prev.T @ dz).T
        grads[i + 1] = dz.sum(axis=0)
        if i > 0:
            da = dz @ params[i]
            da *= a_prev > 0
            dz = da
    return grads


#: Batch sizes [low, high) whose layers run as W·Aᵀ (the tutorial's column layout) instead of A·Wᵀ.
#: OpenBLAS multiplies a few rows by a large transposed weight matrix up to twice as slowly as
#: the same product by columns: through 784-512-10, 3 images took 365 µs by rows and 221 µs by
#: columns, 16 images 408 against 220 µs, 128 images 1.08 against 0.91 ms; for 1 or 2 rows, and
#: from 256 rows on, both take the same time (bench/small_batches.py).
COLUMN_BATCHES = (3, 256)


def predict_proba(params: Params, x: np.ndarray, columns: bool | None = None) -> np.ndarray:
    """Return class probabilities (m, 10) for scaled inputs x (m, 784).

    The same operations as `forward`, without what only training needs (the activations kept
    for backward, the log-normaliser of the loss): a one-image request pays per NumPy call.
    Batches in COLUMN_BATCHES multiply by columns, which rounds differently in the last bits;
    `columns` forces one layout or the other (the benchmark compares them).
    """
    if columns is None:
        columns = COLUMN_BATCHES[0] <= len(x) < COLUMN_BATCHES[1]
    a = x
    for i in range(0, len(params) - 2, 2):
        a = (params[i] @ a.T).T if columns else a @ params[i].T
        a += params[i + 1]
        np.maximum(a, 0, out=a)
    z = a @ params[-2].T
    z += params[-1]
    return softmax(z, out=z)[0]


def predict(params: Params, x: np.ndarray) -> np.ndarray:
    """Return the most probable class (m,) for scaled inputs x (m, 784)."""
    return predict_proba(params, x).argmax(axis=1)
