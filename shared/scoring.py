"""Scoring a classifier on labelled images: accuracy, per-class accuracy, confusion matrix. NumPy only.

One rule wherever a model is scored (the worker's final metrics, `mnist train`, `mnist evaluate`,
the demo): a class with no images in the sample has no accuracy, None (JSON null), never 0.0,
which would read as a class the model always gets wrong.

`classify` takes any `predict_proba` callable, rows (n, 784) → probabilities (n, 10): the raw
parameters of a model file (`predictor`), or a served model that reads uint8 rows itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared import mlp
from shared.training import EVAL_ROWS

#: A classifier: rows (n, 784) → class probabilities (n, 10).
PredictProba = Callable[[np.ndarray], np.ndarray]


def predictor(params: mlp.Params) -> PredictProba:
    """Return the classifier of uint8 rows (n, 784) that `params` implement (scaled per call)."""
    dtype = params[0].dtype

    def predict_proba(rows: np.ndarray) -> np.ndarray:
        return mlp.predict_proba(params, mlp.scale_pixels(rows, dtype))

    return predict_proba


def classify(predict_proba: PredictProba, x: np.ndarray, batch: int = EVAL_ROWS) -> np.ndarray:
    """Return the class probabilities (n, 10) of images x (n, 784), `batch` rows per call.

    The rows go to `predict_proba` as x holds them; batches bound the memory of the activations
    (`shared.training.estimate_memory` counts EVAL_ROWS of them).
    """
    if not len(x):
        return np.empty((0, mlp.CLASSES), np.float32)
    return np.concatenate([predict_proba(x[lo : lo + batch]) for lo in range(0, len(x), batch)])


@dataclass(frozen=True)
class Score:
    """How a classifier did on labelled images."""

    #: Images scored.
    count: int
    #: Share of the images classified right, 0–1; None without images.
    accuracy: float | None
    #: Counts (classes, classes): row = true class, column = predicted class.
    confusion: np.ndarray
    #: Accuracy of each class (its recall), index = label; None for a class with no images.
    per_class: list[float | None]

    def to_dict(self) -> dict[str, Any]:
        """Return the figures as JSON values: count, accuracy, confusion_matrix, per_class_accuracy."""
        return {
            "count": self.count,
            "accuracy": self.accuracy,
            "confusion_matrix": self.confusion.tolist(),
            "per_class_accuracy": self.per_class,
        }


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, classes: int = mlp.CLASSES) -> np.ndarray:
    """Return counts (classes, classes) of integer labels: row = true label, column = predicted."""
    cells = y_true.astype(np.intp) * classes + y_pred.astype(np.intp)
    return np.bincount(cells, minlength=classes * classes).reshape(classes, classes)


def score(y_true: np.ndarray, y_pred: np.ndarray, classes: int = mlp.CLASSES) -> Score:
    """Score predicted labels y_pred (n,) against true labels y_true (n,), integers 0 to classes − 1."""
    confusion = confusion_matrix(y_true, y_pred, classes)
    totals = confusion.sum(axis=1)
    count = int(len(y_true))
    return Score(
        count=count,
        accuracy=int(np.trace(confusion)) / count if count else None,
        confusion=confusion,
        per_class=[float(confusion[c, c] / totals[c]) if totals[c] else None for c in range(classes)],
    )
