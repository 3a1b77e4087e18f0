"""shared.mlp: gradients against finite differences and the tutorial's formulas; stable softmax."""

from __future__ import annotations

import numpy as np
import pytest

from shared import mlp

#: Entries of each parameter array checked by finite differences (all of them when smaller).
FD_ENTRIES = 24
#: Step of the central differences (float64).
FD_EPS = 1e-6


def batch(m: int, seed: int = 0, dtype: type = np.float64) -> tuple[np.ndarray, np.ndarray]:
    """Return m random scaled inputs (m, 784) and labels (m,) covering several classes."""
    rng = np.random.default_rng(seed)
    x = rng.random((m, mlp.INPUT_SIZE)).astype(dtype)
    y = rng.permutation(np.arange(m) % mlp.CLASSES)
    return x, y


def loss(params: mlp.Params, x: np.ndarray, y: np.ndarray) -> float:
    return mlp.cross_entropy(mlp.forward(params, x), y)


@pytest.mark.parametrize(
    ("sizes", "init"),
    [((784, 10, 10), "uniform"), ((784, 10, 10), "he"), ((784, 16, 12, 10), "he"), ((784, 10), "he")],
)
def test_backward_matches_central_differences(sizes: tuple[int, ...], init: mlp.Init) -> None:
    rng = np.random.default_rng(1)
    params = mlp.init_params(sizes, rng, init, np.float64)
    for b in params[1::2]:
        b += rng.uniform(-0.1, 0.1, b.shape)  # non-zero biases, so their gradients are tested too
    x, y = batch(8)
    grads = mlp.backward(params, mlp.forward(params, x), y)
    assert len(grads) == len(params)
    for index, (p, g) in enumerate(zip(params, grads, strict=True)):
        assert g.shape == p.shape and g.dtype == np.float64
        flat, gflat = p.reshape(-1), g.reshape(-1)
        picks = rng.choice(flat.size, size=min(FD_ENTRIES, flat.size), replace=False)
        numeric = np.empty(len(picks))
        for j, k in enumerate(picks):
            old = flat[k]
            flat[k] = old + FD_EPS
            up = loss(params, x, y)
            flat[k] = old - FD_EPS
            down = loss(params, x, y)
            flat[k] = old
            numeric[j] = (up - down) / (2 * FD_EPS)
        analytic = gflat[picks]
        rel = np.linalg.norm(analytic - numeric) / (np.linalg.norm(analytic) + np.linalg.norm(numeric))
        name = f"{'Wb'[index % 2]}{index // 2 + 1}"
        assert rel < 1e-6, f"{name} of {sizes}: relative error {rel:.2e}"
        assert np.linalg.norm(analytic) > 0, f"{name}: a zero gradient proves nothing"


def test_backward_scale_multiplies_every_gradient() -> None:
    """A plain SGD step folds its learning rate into backward(): the same step, one pass less."""
    params = mlp.init_params((784, 16, 12, 10), np.random.default_rng(3), "he", np.float64)
    x, y = batch(8)
    fwd = mlp.forward(params, x)
    plain = mlp.backward(params, fwd, y)
    scaled = mlp.backward(params, fwd, y, scale=0.1)
    for g, s in zip(plain, scaled, strict=True):
        assert s.shape == g.shape
        np.testing.assert_allclose(s, 0.1 * g, rtol=1e-12, atol=1e-15)


def test_backward_equals_the_tutorial_formulas_in_column_layout() -> None:
    params = mlp.init_params((784, 10, 10), np.random.default_rng(2), "uniform", np.float64)
    w1, b1, w2, b2 = params
    x_rows, y = batch(32, seed=3)
    m = len(y)
    # The tutorial, literally: samples are columns.
    X = x_rows.T  # (784, m)
    Y = np.zeros((10, m))
    Y[y, np.arange(m)] = 1
    Z1 = w1 @ X + b1[:, None]
    A1 = np.maximum(Z1, 0)
    Z2 = w2 @ A1 + b2[:, None]
    A2 = np.exp(Z2) / np.exp(Z2).sum(axis=0)
    dZ2 = A2 - Y
    dW2 = 1 / m * dZ2 @ A1.T
    db2 = 1 / m * np.sum(dZ2, axis=1)
    dZ1 = w2.T @ dZ2 * (Z1 > 0)
    dW1 = 1 / m * dZ1 @ X.T
    db1 = 1 / m * np.sum(dZ1, axis=1)

    fwd = mlp.forward(params, x_rows)
    np.testing.assert_allclose(fwd.probabilities, A2.T, rtol=1e-12, atol=1e-15)
    for ours, theirs in zip(mlp.backward(params, fwd, y), (dW1, db1, dW2, db2), strict=True):
        assert ours.shape == theirs.shape
        np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-14)

    # Why we differ from the tutorial: its db = 1/m * np.sum(dZ) sums the whole matrix. For the
    # output layer every column of A2 − Y sums to 0, so its b2 would never learn.
    assert abs(1 / m * np.sum(dZ2)) < 1e-12 and np.abs(db2).max() > 1e-3


@pytest.mark.parametrize("big", [1e4, 1e30])
def test_softmax_and_cross_entropy_never_overflow_in_float32(big: float) -> None:
    # One layer with W = 0 makes the logits equal the biases, whatever the input.
    logits = np.array([big, -big, 0, big / 2, -big / 2, 1, 2, 3, 4, 5], dtype=np.float32)
    params = [np.zeros((10, 784), np.float32), logits]
    x = np.ones((10, 784), np.float32)
    y = np.arange(10)
    fwd = mlp.forward(params, x)
    p = fwd.probabilities
    assert p.dtype == np.float32
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-6)
    assert p[0, 0] == 1
    loss_value = mlp.cross_entropy(fwd, y)
    assert np.isfinite(loss_value)
    assert mlp.cross_entropy(fwd, np.zeros(10, np.intp)) == 0  # the right answer, certain
    assert mlp.cross_entropy(fwd, np.ones(10, np.intp)) == pytest.approx(2 * big, rel=1e-6)
    z = np.stack([logits, -logits])
    s, norm = mlp.softmax(z)
    assert np.isfinite(s).all() and np.isfinite(np.log(norm)).all()
    np.testing.assert_allclose(s.sum(axis=1), 1, rtol=1e-6)
    assert (z.max(axis=1) == 0).all()  # shifted in place: the logits a loss needs
    assert all(np.isfinite(g).all() for g in mlp.backward(params, fwd, y))


def test_softmax_in_place_is_the_same_softmax() -> None:
    z = np.random.default_rng(9).standard_normal((5, 10)).astype(np.float32) * 30
    expected = np.exp(z.astype(np.float64)) / np.exp(z.astype(np.float64)).sum(axis=1, keepdims=True)
    fresh, norm = mlp.softmax(z.copy())
    inplace, _ = mlp.softmax(z, out=z)
    assert inplace is z  # no new array: predict_proba's path
    np.testing.assert_array_equal(inplace, fresh)
    np.testing.assert_allclose(fresh, expected, rtol=1e-5, atol=1e-7)
    assert norm.shape == (5, 1) and (norm >= 1).all()


@pytest.mark.parametrize("rows", [1, 2, 3, 17, 255, 256, 300])
def test_predict_proba_equals_forward_in_either_layout(rows: int) -> None:
    params = mlp.init_params((784, 32, 16, 10), np.random.default_rng(5))
    x, _ = batch(rows, dtype=np.float32)
    expected = mlp.forward(params, x).probabilities
    proba = mlp.predict_proba(params, x)
    if mlp.COLUMN_BATCHES[0] <= rows < mlp.COLUMN_BATCHES[1]:  # W·Aᵀ: the same sums, other rounding
        np.testing.assert_allclose(proba, expected, rtol=1e-5, atol=1e-7)
        assert (proba.argmax(axis=1) == expected.argmax(axis=1)).all()
    else:  # A·Wᵀ, as forward(): the same bits
        np.testing.assert_array_equal(proba, expected)
    np.testing.assert_array_equal(mlp.predict_proba(params, x, columns=False), expected)


@pytest.mark.parametrize("sizes", [(784, 10, 10), (784, 32, 16, 10)])
def test_predict_proba_rows_sum_to_one_and_predict_is_their_argmax(sizes: tuple[int, ...]) -> None:
    params = mlp.init_params(sizes, np.random.default_rng(4), "uniform")
    x, _ = batch(50, dtype=np.float32)
    proba = mlp.predict_proba(params, x)
    assert proba.shape == (50, 10) and proba.dtype == np.float32
    assert (proba >= 0).all()
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-5)
    # The inference path drops what only training needs; 50 rows multiply by columns, which
    # rounds differently in the last bits only.
    np.testing.assert_allclose(proba, mlp.forward(params, x).probabilities, rtol=1e-5, atol=1e-7)
    labels = mlp.predict(params, x)
    np.testing.assert_array_equal(labels, proba.argmax(axis=1))
    assert mlp.layer_sizes(params) == sizes


def test_uniform_init_is_the_tutorials() -> None:
    params = mlp.init_params((784, 10, 10), np.random.default_rng(5), "uniform")
    assert [p.shape for p in params] == [(10, 784), (10,), (10, 10), (10,)]
    every = np.concatenate([p.ravel() for p in params])
    assert every.dtype == np.float32
    assert every.min() >= -0.5 and every.max() <= 0.5
    assert every.min() < -0.45 and every.max() > 0.45  # spans the range, not a narrower one
    for b in params[1::2]:
        assert np.abs(b).max() > 0  # biases are random too, as in the tutorial


def test_he_init_scales_by_fan_in_with_zero_biases() -> None:
    params = mlp.init_params((784, 256, 10), np.random.default_rng(6), "he")
    for w, b, fan_in in ((params[0], params[1], 784), (params[2], params[3], 256)):
        assert w.std() == pytest.approx(np.sqrt(2 / fan_in), rel=0.05)
        assert abs(w.mean()) < 0.1 * np.sqrt(2 / fan_in)
        assert not b.any()


def test_init_rejects_nonsense() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="init"):
        mlp.init_params((784, 10), rng, "xavier")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least"):
        mlp.init_params((784,), rng)


def test_float64_end_to_end() -> None:
    params = mlp.init_params((784, 16, 10), np.random.default_rng(7), "he", np.float64)
    assert all(p.dtype == np.float64 for p in params)
    pixels = np.random.default_rng(8).integers(0, 256, (20, 784), dtype=np.uint8)
    x = mlp.scale_pixels(pixels, np.float64)
    assert x.dtype == np.float64 and x.max() <= 1
    y = np.arange(20) % 10
    fwd = mlp.forward(params, x)
    value = mlp.cross_entropy(fwd, y)
    assert isinstance(value, float) and np.isfinite(value)
    assert all(g.dtype == np.float64 for g in mlp.backward(params, fwd, y))
    assert all(a.dtype == np.float64 for a in fwd.activations)
    assert mlp.predict_proba(params, x).dtype == np.float64


def test_scale_pixels_divides_by_255() -> None:
    pixels = np.array([[0, 51, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(mlp.scale_pixels(pixels), np.array([[0, 0.2, 1]], np.float32))
