"""One training run from a spec: dataset → config → trainer → evaluation → model file.

`mnist train` (in-process) and the RQ worker both go through here, so a spec trains the same
way wherever it runs; they differ only in how they report progress and where the model goes.
`plan` (spec → config, memory checked) is also what the API runs at submit time.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from shared import datasets, drift, mlp, scoring
from shared.errors import InvalidInput
from shared.recipes import make_config
from shared.schemas import TrainingSpecSchema
from shared.spec import HYPERPARAMETERS
from shared.training import Checkpoint, TrainConfig, Trainer, TrainResult, estimate_memory

Uploaded = Callable[[str], "datasets.Dataset | None"]


@dataclass
class Run:
    """A spec made ready to train: its validated fields, config, dataset and trainer."""

    spec: dict[str, Any]
    config: TrainConfig
    dataset: datasets.Dataset
    trainer: Trainer


def load_spec(raw: dict[str, Any]) -> dict[str, Any]:
    """Return a validated spec (defaults filled); raises marshmallow.ValidationError."""
    return TrainingSpecSchema().load(raw)


def plan(spec: dict[str, Any], train_size: int | None = None, budget_bytes: int | None = None) -> TrainConfig:
    """Return the config a validated spec trains with; InvalidInput if it cannot run.

    The spec's recipe and explicit fields combine by `shared.recipes.make_config`. With the
    training-set size (images) and a budget (bytes), a run estimated to need more memory is
    refused; when the size is unknown (the API has not seen the data), the check waits for the
    worker, which plans again once it has loaded the dataset.
    """
    fields = {k: v for k, v in spec.items() if k in HYPERPARAMETERS}
    try:
        config = make_config(spec.get("recipe"), dataset=spec["dataset"], **fields)
    except ValueError as exc:  # a mix the schema cannot see: the seed recipe (gd) with a batch_size
        raise InvalidInput(str(exc)) from None
    if train_size is not None and budget_bytes is not None:
        need = estimate_memory(config, train_size)
        if need > budget_bytes:
            raise InvalidInput(
                f"this job needs about {need / 2**20:,.0f} MiB on {spec['dataset']}, above the"
                f" {budget_bytes / 2**20:,.0f} MiB budget of a job: use fewer or smaller hidden"
                " layers or a smaller batch_size",
                {"batch_size": ["too large for the memory budget"]},
            )
    return config


def prepare(
    spec: dict[str, Any],
    *,
    uploaded: Uploaded | None = None,
    checkpoint: Checkpoint | None = None,
    memory_budget: int | None = None,
    allow_paths: bool = True,
) -> Run:
    """Load the spec's dataset, `plan` it, and build its trainer, fresh or resumed from `checkpoint`.

    With `memory_budget` (bytes), a run estimated to need more raises InvalidInput first.
    `allow_paths=False` (the worker) reads only built-in and uploaded datasets, never a file
    that a job spec names.
    """
    data = datasets.load(spec["dataset"], uploaded=uploaded, allow_paths=allow_paths)
    config = plan(spec, len(data.y_train), memory_budget)
    trainer = Trainer(config, data.x_train, data.y_train, checkpoint=checkpoint)
    return Run(spec, config, data, trainer)


def evaluate(run: Run, result: TrainResult) -> dict[str, Any]:
    """Return the final metrics: accuracies of the trained model on train, validation and test."""
    t = run.trainer
    scaled = functools.partial(mlp.predict_proba, result.params)  # the trainer holds scaled pixels
    metrics = result.metrics()
    metrics["train_accuracy"] = _accuracy(scaled, t.x_train, t.y_train)
    metrics["val_accuracy"] = _accuracy(scaled, t.x_val, t.y_val)
    d = run.dataset
    if d.x_test is not None and d.y_test is not None:
        metrics["test_accuracy"] = _accuracy(scoring.predictor(result.params), d.x_test, d.y_test)
    else:
        metrics["test_accuracy"] = None
    metrics["train_size"] = int(len(t.y_train))
    metrics["val_size"] = int(len(t.y_val))
    metrics["test_size"] = 0 if d.y_test is None else int(len(d.y_test))
    return metrics


def _accuracy(predict_proba: scoring.PredictProba, x: np.ndarray, y: np.ndarray) -> float | None:
    """Return the share of x (n, 784) classified as y (n,); None without images."""
    return scoring.score(y, scoring.classify(predict_proba, x).argmax(axis=1)).accuracy


def model_meta(run: Run, result: TrainResult, metrics: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """Return the `meta` of the model file: config, recipe, dataset lineage, metrics, curve, profile.

    `profile` is the drift reference (`shared.drift`): the dataset's training split with its true
    labels, validation part included, as the trainer received it; 50 counts, built in one chunked
    pass over the uint8 images already in memory (about 0.1 s for 60,000).
    """
    info = run.dataset.info()
    return {
        "config": run.config.to_dict(),
        "recipe": run.spec.get("recipe"),
        "spec": run.spec,
        "dataset": {"name": info["name"], "digest": info["digest"], "source": info["source"]},
        "metrics": metrics,
        "history": result.history,
        "profile": drift.profile(run.dataset.x_train, run.dataset.y_train),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **extra,
    }
