"""shared.scoring: classifying in batches; one rule for accuracy, per-class accuracy, confusion matrix."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shared import mlp, scoring
from shared.training import EVAL_ROWS


def pixels(n: int, seed: int = 0) -> np.ndarray:
    """Return n random uint8 images (n, 784)."""
    return np.random.default_rng(seed).integers(0, 256, (n, mlp.INPUT_SIZE), dtype=np.uint8)


@pytest.mark.parametrize("batch", [1, 7, 50, 1000])
def test_classify_in_batches_equals_one_pass(batch: int) -> None:
    params = mlp.init_params((784, 32, 10), np.random.default_rng(1))
    x = pixels(50)
    calls: list[tuple[int, np.dtype]] = []

    def predict_proba(rows: np.ndarray) -> np.ndarray:
        calls.append((len(rows), rows.dtype))
        return mlp.predict_proba(params, mlp.scale_pixels(rows))

    probs = scoring.classify(predict_proba, x, batch=batch)
    whole = mlp.predict_proba(params, mlp.scale_pixels(x))
    # BLAS picks its kernel by the number of rows: the same sums, rounded differently.
    np.testing.assert_allclose(probs, whole, rtol=1e-5, atol=1e-7)
    assert [n for n, _ in calls] == [min(batch, 50 - lo) for lo in range(0, 50, batch)]
    assert all(dtype == np.uint8 for _, dtype in calls)  # the rows as x holds them


def test_classify_defaults_to_the_memory_estimates_batch() -> None:
    sizes: list[int] = []

    def predict_proba(rows: np.ndarray) -> np.ndarray:
        sizes.append(len(rows))
        return np.full((len(rows), 10), 0.1, np.float32)

    scoring.classify(predict_proba, np.zeros((EVAL_ROWS + 5, 784), np.uint8))
    assert sizes == [EVAL_ROWS, 5]
    empty = scoring.classify(predict_proba, np.zeros((0, 784), np.uint8))
    assert empty.shape == (0, 10) and sizes == [EVAL_ROWS, 5]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_predictor_scales_uint8_rows_to_the_models_dtype(dtype: type) -> None:
    params = mlp.init_params((784, 16, 10), np.random.default_rng(2), "he", dtype)
    x = pixels(20, seed=3)
    probs = scoring.predictor(params)(x)
    assert probs.dtype == dtype
    np.testing.assert_array_equal(probs, mlp.predict_proba(params, mlp.scale_pixels(x, dtype)))


def test_score_counts_accuracy_and_the_confusion_matrix() -> None:
    truth = np.array([0, 0, 9, 3, 9, 3, 3], dtype=np.uint8)  # uint8 labels, as datasets hold them
    predicted = np.array([0, 7, 9, 3, 3, 3, 1])
    s = scoring.score(truth, predicted)
    assert s.count == 7
    assert s.accuracy == 4 / 7
    assert s.confusion.shape == (10, 10) and s.confusion.sum() == 7
    assert s.confusion[0, 7] == 1 and s.confusion[9, 3] == 1 and s.confusion[3, 1] == 1  # row = true
    np.testing.assert_array_equal(s.confusion, scoring.confusion_matrix(truth, predicted))
    assert s.per_class[0] == 0.5 and s.per_class[3] == 2 / 3 and s.per_class[9] == 0.5


def test_a_class_with_no_images_has_no_accuracy() -> None:
    # Class 5 is never predicted right (0.0, a true figure); class 4 is not in the sample at all.
    s = scoring.score(np.array([5, 5, 1]), np.array([6, 6, 1]))
    assert s.per_class[5] == 0.0
    assert s.per_class[4] is None and s.per_class[1] == 1.0
    assert [c for c, a in enumerate(s.per_class) if a is None] == [0, 2, 3, 4, 6, 7, 8, 9]
    # JSON null, never 0.0: "not in the sample".
    figures = json.loads(json.dumps(s.to_dict()))
    assert figures["per_class_accuracy"][4] is None and figures["per_class_accuracy"][5] == 0.0


def test_score_of_no_images_is_none_not_nan() -> None:
    s = scoring.score(np.zeros(0, np.uint8), np.zeros(0, np.intp))
    assert s.count == 0 and s.accuracy is None
    assert s.per_class == [None] * 10 and not s.confusion.any()


def test_to_dict_has_the_evaluation_keys() -> None:
    figures = scoring.score(np.arange(10), np.arange(10)).to_dict()
    assert list(figures) == ["count", "accuracy", "confusion_matrix", "per_class_accuracy"]
    assert figures["count"] == 10 and figures["accuracy"] == 1.0
    assert figures["confusion_matrix"] == np.eye(10, dtype=int).tolist()
    assert figures["per_class_accuracy"] == [1.0] * 10
    json.dumps(figures)  # plain JSON values


def test_confusion_matrix_counts_true_rows_against_predicted_columns() -> None:
    truth = np.array([0, 0, 9, 3, 9], dtype=np.uint8)  # uint8 labels, as datasets hold them
    predicted = np.array([0, 7, 9, 3, 3])
    cm = scoring.confusion_matrix(truth, predicted)
    expected = np.zeros((10, 10), dtype=np.int64)
    for t, p in zip(truth, predicted, strict=True):
        expected[t, p] += 1
    np.testing.assert_array_equal(cm, expected)
    assert cm.sum() == 5 and cm.trace() == 3
