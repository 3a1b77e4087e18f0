"""One training run from a spec: dataset → config → trainer → evaluation → model file.

`mnist train` (in-process) and the RQ worker both go through here, so a spec trains the same
way wherever it runs; they differ only in how they report progress and where the model goes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from shared import datasets, mlp
from shared.errors import InvalidInput
from shared.recipes import make_config
from shared.schemas import TrainingSpecSchema, spec_to_config_fields
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


def prepare(
    spec: dict[str, Any],
    *,
    uploaded: Uploaded | None = None,
    checkpoint: Checkpoint | None = None,
    memory_budget: int | None = None,
    allow_paths: bool = True,
) -> Run:
    """Load the spec's dataset and build its trainer, fresh or resumed from `checkpoint`.

    With `memory_budget` (bytes), a run estimated to need more raises InvalidInput first.
    `allow_paths=False` (the worker) reads only built-in and uploaded datasets, never a file
    that a job spec names.
    """
    config = make_config(spec.get("recipe"), dataset=spec["dataset"], **spec_to_config_fields(spec))
    data = datasets.load(spec["dataset"], uploaded=uploaded, allow_paths=allow_paths)
    if memory_budget is not None:
        need = estimate_memory(config, len(data.y_train))
        if need > memory_budget:
            raise InvalidInput(
                f"this job needs about {need / 2**20:,.0f} MiB on {data.name}, above the"
                f" {memory_budget / 2**20:,.0f} MiB budget of a job"
            )
    trainer = Trainer(config, data.x_train, data.y_train, checkpoint=checkpoint)
    return Run(spec, config, data, trainer)


def evaluate(run: Run, result: TrainResult) -> dict[str, Any]:
    """Return the final metrics: accuracies of the trained model on train, validation and test."""
    t = run.trainer
    metrics = result.metrics()
    metrics["train_accuracy"] = mlp.accuracy(result.params, t.x_train, t.y_train)
    metrics["val_accuracy"] = mlp.accuracy(result.params, t.x_val, t.y_val) if len(t.y_val) else None
    d = run.dataset
    if d.x_test is not None and d.y_test is not None and len(d.y_test):
        x_test = mlp.scale_pixels(d.x_test, t.dtype)
        metrics["test_accuracy"] = mlp.accuracy(result.params, x_test, d.y_test.astype(np.intp))
    else:
        metrics["test_accuracy"] = None
    metrics["train_size"] = int(len(t.y_train))
    metrics["val_size"] = int(len(t.y_val))
    metrics["test_size"] = 0 if d.y_test is None else int(len(d.y_test))
    return metrics


def model_meta(run: Run, result: TrainResult, metrics: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """Return the `meta` of the model file: config, recipe, dataset lineage, metrics, curve."""
    info = run.dataset.info()
    return {
        "config": run.config.to_dict(),
        "recipe": run.spec.get("recipe"),
        "spec": run.spec,
        "dataset": {"name": info["name"], "digest": info["digest"], "source": info["source"]},
        "metrics": metrics,
        "history": result.history,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **extra,
    }
