"""Marshmallow schemas shared by the command line, the HTTP API and the worker.

`TrainingSpecSchema` is the one definition of a training job: the same field names as
`mnist train`'s flags, with bounds that keep any one job inside a worker's memory budget
(docs/limits.md). Both the CLI and `POST /v1/jobs` validate through it before anything runs.
"""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from shared.recipes import RECIPES
from shared.training import OPTIMIZERS, SCHEDULES

#: Largest hidden layer, in units.
MAX_HIDDEN_UNITS = 2048
#: Most hidden layers.
MAX_HIDDEN_LAYERS = 4
#: Most passes over the training set.
MAX_EPOCHS = 500
#: Most optimizer steps.
MAX_ITERATIONS = 200_000
#: Largest mini-batch, in images (0 means the whole training set).
MAX_BATCH_SIZE = 8192
#: Model and dataset names: lower-case, digits, ".", "_" and "-"; no path separators.
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"

name_field = validate.Regexp(NAME_PATTERN, error="must match {regex}")  # formatted by marshmallow


class TrainingSpecSchema(Schema):
    """A training job: which model to publish, on which data, with which recipe and overrides."""

    class Meta:
        unknown = RAISE

    model = fields.String(
        load_default="mnist", validate=name_field, metadata={"description": "registry name to publish under"}
    )
    dataset = fields.String(
        load_default="mnist-sample",
        validate=validate.Length(1, 256),
        metadata={"description": "built-in or uploaded dataset name (a path on the command line)"},
    )
    recipe = fields.String(
        load_default=None,
        allow_none=True,
        validate=validate.OneOf(sorted(RECIPES)),
        metadata={"description": "named defaults; without it, explicit fields run exactly as given"},
    )
    hidden = fields.List(
        fields.Integer(validate=validate.Range(1, MAX_HIDDEN_UNITS)),
        validate=validate.Length(1, MAX_HIDDEN_LAYERS),
        load_default=None,
        metadata={"description": "hidden layer sizes, e.g. [256, 128]"},
    )
    optimizer = fields.String(load_default=None, validate=validate.OneOf(OPTIMIZERS))
    learning_rate = fields.Float(
        load_default=None, validate=validate.Range(0, 10, min_inclusive=False), allow_nan=False
    )
    batch_size = fields.Integer(
        load_default=None,
        validate=validate.Range(0, MAX_BATCH_SIZE),
        metadata={"description": "images per step; 0 = full batch"},
    )
    epochs = fields.Integer(load_default=None, validate=validate.Range(1, MAX_EPOCHS))
    iterations = fields.Integer(load_default=None, validate=validate.Range(1, MAX_ITERATIONS))
    seed = fields.Integer(load_default=None, validate=validate.Range(0, 2**32 - 1))
    weight_decay = fields.Float(load_default=None, validate=validate.Range(0, 1), allow_nan=False)
    validation_fraction = fields.Float(load_default=None, validate=validate.Range(0, 0.5), allow_nan=False)
    schedule = fields.String(load_default=None, validate=validate.OneOf(SCHEDULES))
    augment = fields.String(load_default=None, validate=validate.OneOf(("none", "shift", "affine")))
    patience = fields.Integer(load_default=None, validate=validate.Range(0, MAX_EPOCHS))
    dtype = fields.String(load_default=None, validate=validate.OneOf(("float32", "float64")))

    @validates_schema
    def _one_length(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("epochs") is not None and data.get("iterations") is not None:
            raise ValidationError("give epochs or iterations, not both", "iterations")
        if data.get("optimizer") == "gd" and data.get("batch_size") not in (None, 0):
            raise ValidationError("optimizer 'gd' is full-batch: batch_size must be 0", "batch_size")


def spec_to_config_fields(spec: dict[str, Any]) -> dict[str, Any]:
    """Return the hyperparameters of a loaded spec, for `shared.recipes.make_config`."""
    return {k: v for k, v in spec.items() if k not in ("model", "dataset", "recipe")}
