"""Evaluate a version on a dataset: accuracy, confusion matrix, and the images it gets wrong.

``POST /v1/models/<m>/versions/<v>:evaluate`` classifies the first `limit` images of a split of a
built-in or uploaded dataset (by name, never a path) with the version the prediction service
holds (its model cache: loaded once, checked against its sha256, shared with the predict
routes). Datasets are kept in a per-process LRU of at most MNIST_EVAL_CACHE_MB: reading
fashion-mnist's 70,000 images takes seconds, classifying them a fraction of that.
"""

from __future__ import annotations

import base64
import threading
import time
from collections import OrderedDict
from typing import Any

import numpy as np
from flask import current_app
from marshmallow import RAISE, Schema, fields, validate

from services.serving.cache import LoadedModel
from services.web.auth import evaluate_access
from services.web.blueprint import VALIDATION_STATUS, Blueprint
from services.web.context import services
from shared import datasets, scoring
from shared.dataset_store import DatasetStore
from shared.errors import DatasetNotFound, InvalidInput
from shared.schemas import name_field

blp = Blueprint("evaluation", __name__, description="Evaluate a model version on a dataset")

#: Most images one evaluation classifies (fashion-mnist's training split has 60,000).
MAX_LIMIT = 60_000
#: Images classified when the request gives no limit.
DEFAULT_LIMIT = 10_000
#: Most misclassified images returned with their pixels (each is ~1 KiB of base64).
MAX_MISCLASSIFIED = 100
#: Images per forward pass: bounds the activations' memory (rows × widest layer × 4 bytes).
BATCH = 4096
#: Key of the dataset cache in `app.extensions`.
CACHE_EXTENSION = "mnist.evaluation.datasets"


class EvaluateRequestSchema(Schema):
    class Meta:
        unknown = RAISE

    dataset = fields.String(
        load_default=datasets.DEFAULT_DATASET,
        validate=name_field,
        metadata={"description": "built-in or uploaded dataset name (GET /v1/datasets)"},
    )
    split = fields.String(
        load_default="test",
        validate=validate.OneOf(["test", "train"]),
        metadata={"description": "which part of the dataset to classify"},
    )
    limit = fields.Integer(
        load_default=DEFAULT_LIMIT,
        strict=True,
        validate=validate.Range(1, MAX_LIMIT),
        metadata={"description": "classify the first `limit` images of the split"},
    )
    max_misclassified = fields.Integer(
        load_default=MAX_MISCLASSIFIED,
        strict=True,
        validate=validate.Range(0, MAX_MISCLASSIFIED),
        metadata={"description": "most misclassified images to return, first ones first"},
    )


class EvaluatedDatasetSchema(Schema):
    name = fields.String()
    digest = fields.String()
    split = fields.String()
    classes = fields.List(fields.String(), metadata={"description": "class names, index = label"})


class MisclassifiedSchema(Schema):
    index = fields.Integer(metadata={"description": "position of the image in the split"})
    label = fields.Integer(metadata={"description": "the true class"})
    predicted = fields.Integer()
    probabilities = fields.List(fields.Float(), metadata={"description": "P(class) for classes 0–9"})
    pixels = fields.String(metadata={"description": "base64 of the 784 uint8 pixels, row-major"})


class EvaluationSchema(Schema):
    model = fields.String()
    model_version = fields.Integer()
    dataset = fields.Nested(EvaluatedDatasetSchema)
    count = fields.Integer(metadata={"description": "images classified"})
    accuracy = fields.Float()
    confusion_matrix = fields.List(
        fields.List(fields.Integer()),
        metadata={"description": "10×10 counts: row = true class, column = predicted"},
    )
    per_class_accuracy = fields.List(
        fields.Float(allow_none=True),
        metadata={"description": "recall of each class (null: not in the sample)"},
    )
    misclassified_count = fields.Integer(metadata={"description": "all misclassified images"})
    misclassified = fields.List(
        fields.Nested(MisclassifiedSchema), metadata={"description": "the first ones"}
    )
    seconds = fields.Float(metadata={"description": "time spent classifying"})


def dataset_bytes(ds: datasets.Dataset) -> int:
    """Return the bytes of a dataset's arrays (pixels and labels of both splits)."""
    arrays = (ds.x_train, ds.y_train, ds.x_test, ds.y_test)
    return sum(a.nbytes for a in arrays if a is not None)


class DatasetCache:
    """The datasets last loaded, by name (and digest, for uploads that may be replaced), within
    `max_bytes` of arrays: the least recently used go first; one larger than that is not kept."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, str], datasets.Dataset] = OrderedDict()
        self._bytes = 0
        # One lock for lookups and loads: two requests for an uncached 60,000-image set wait for
        # one read rather than each holding a copy.
        self._lock = threading.Lock()

    @property
    def held(self) -> int:
        """Return the bytes of the datasets kept."""
        return self._bytes

    def get(self, name: str, store: DatasetStore) -> datasets.Dataset:
        """Return dataset `name`, loading it on a miss; InvalidInput when there is none."""
        try:
            key = (name, "" if name in datasets.BUILTIN_NAMES else store.info(name)["digest"])
            with self._lock:
                if key in self._items:
                    self._items.move_to_end(key)
                    return self._items[key]
                found = datasets.load(name, uploaded=store.get, allow_paths=False)
                self._keep(key, found)
                return found
        except DatasetNotFound as exc:
            raise InvalidInput(exc.message, {"dataset": [exc.message]}) from None

    def _keep(self, key: tuple[str, str], found: datasets.Dataset) -> None:
        size = dataset_bytes(found)
        if size > self.max_bytes:
            return  # used by the request that loaded it, then freed
        self._items[key] = found
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self._bytes -= dataset_bytes(old)


def _cache() -> DatasetCache:
    # setdefault is atomic: threads racing on the first request agree on one cache.
    budget = services().settings.eval_cache_mb * 2**20
    return current_app.extensions.setdefault(CACHE_EXTENSION, DatasetCache(budget))


def _split(ds: datasets.Dataset, split: str, limit: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = (ds.x_test, ds.y_test) if split == "test" else (ds.x_train, ds.y_train)
    if x is None or y is None:
        raise InvalidInput(
            f"dataset {ds.name!r} has no test split: evaluate on 'train'", {"split": ["no test split"]}
        )
    if not len(y):
        raise InvalidInput(f"the {split} split of {ds.name!r} is empty", {"split": ["empty split"]})
    return x[:limit], y[:limit]


def evaluate(loaded: LoadedModel, x: np.ndarray, y: np.ndarray, max_wrong: int) -> dict[str, Any]:
    """Classify uint8 images x (n, 784) against labels y (n,); return the evaluation's figures."""
    probs = scoring.classify(loaded.predict_proba, x, batch=BATCH)
    predicted = probs.argmax(axis=1)
    wrong = np.flatnonzero(predicted != y)
    return {
        **scoring.score(y, predicted).to_dict(),
        "misclassified_count": int(wrong.size),
        "misclassified": [
            {
                "index": int(i),
                "label": int(y[i]),
                "predicted": int(predicted[i]),
                "probabilities": [round(float(p), 6) for p in probs[i]],
                "pixels": base64.b64encode(np.ascontiguousarray(x[i], dtype=np.uint8).tobytes()).decode(),
            }
            for i in wrong[:max_wrong]
        ],
    }


@blp.route("/v1/models/<model>/versions/<int:version>:evaluate", methods=["POST"])
@evaluate_access(blp)
@blp.arguments(EvaluateRequestSchema, error_status_code=VALIDATION_STATUS)
@blp.response(200, EvaluationSchema)
@blp.alt_response(400, response="BAD_REQUEST", description="invalid body, unknown dataset or no such split")
@blp.alt_response(404, response="NOT_FOUND", description="unknown model or version")
@blp.alt_response(415, response="UNSUPPORTED_MEDIA_TYPE")
@blp.alt_response(
    503, response="SERVICE_UNAVAILABLE", description="the version is not in memory and cannot be loaded"
)
def evaluate_version(body: dict[str, Any], model: str, version: int) -> dict[str, Any]:
    """Score a version on a dataset split: accuracy, confusion matrix, misclassified images."""
    svc = services()
    loaded = svc.predictions.model(model, version=version)
    ds = _cache().get(body["dataset"], svc.datasets)
    x, y = _split(ds, body["split"], body["limit"])
    started = time.perf_counter()
    figures = evaluate(loaded, x, y, body["max_misclassified"])
    return {
        "model": model,
        "model_version": version,
        "dataset": {
            "name": ds.name,
            "digest": ds.digest,
            "split": body["split"],
            "classes": list(ds.classes),
        },
        **figures,
        "seconds": round(time.perf_counter() - started, 4),
    }
