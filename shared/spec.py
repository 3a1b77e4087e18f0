"""The training spec: its fields, their bounds and choices, and the rule for registry names.

One definition, read by everything that takes a spec: `shared.schemas.TrainingSpecSchema` (and
through it `POST /v1/jobs`) is generated from `FIELDS`, the flags of `mnist train` are derived
from them (`client.cli.add_training_flags`), and `shared.recipes.make_config` takes the fields
marked as hyperparameters. Standard library only, and not even `dataclasses` (it imports
`inspect`): the `mnist` command builds its parser from this module at every start.
"""

from __future__ import annotations

import re
from typing import NamedTuple, TypeGuard

#: Optimizers of `shared.training` (the tutorial's full-batch gradient descent is "gd").
OPTIMIZERS: tuple[str, ...] = ("gd", "sgd", "momentum", "adam")
#: Learning-rate schedules of `shared.training`.
SCHEDULES: tuple[str, ...] = ("constant", "cosine")
#: Augmentations of `shared.training`: none, whole-pixel shifts, or shift, rotation and scale.
AUGMENTATIONS: tuple[str, ...] = ("none", "shift", "affine")
#: Floating-point types a network trains in.
DTYPES: tuple[str, ...] = ("float32", "float64")
#: Names of the recipes of `shared.recipes` (a test keeps them equal to `RECIPES`' keys).
RECIPE_NAMES: tuple[str, ...] = ("seed", "default")

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
#: Largest seed (NumPy seeds are unsigned 32-bit integers here).
MAX_SEED = 2**32 - 1
#: Longest dataset name or path a spec may give, in characters.
MAX_DATASET_LENGTH = 256

#: Model, alias and dataset names: lower-case, digits, ".", "_" and "-"; no path separators.
#: Matched with `fullmatch` (so "mnist\n" is refused); `valid_name` adds the ".." rule.
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
#: The fields that set the length of training: give one of them, not both.
LENGTH_FIELDS = ("epochs", "iterations")


def name_problem(name: object) -> str | None:
    """Return what is wrong with a registry name (model, alias, dataset), or None if it is valid."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        return f"must match {NAME_PATTERN.pattern}"
    if ".." in name:  # "a..b" matches the pattern, yet reads as a path's parent
        return "must not contain '..'"
    return None


def valid_name(name: object) -> TypeGuard[str]:
    """Return True if `name` is a valid registry name (model, alias, dataset)."""
    return name_problem(name) is None


class Field(NamedTuple):
    """One field of a training spec: a JSON field of `POST /v1/jobs` and a flag of `mnist train`."""

    name: str
    #: Type of the value, or of each item when `items` is set: int, float or str.
    kind: type
    #: What the field means (the OpenAPI description, and the flag's help unless `flag_help`).
    help: str = ""
    #: Value when the field is not given; None lets the recipe decide.
    default: str | None = None
    #: The values allowed (a string field), in the order shown.
    choices: tuple[str, ...] = ()
    #: Smallest and largest value (of each item), inclusive unless `exclusive_minimum`.
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    #: A list of `type`: its fewest and most items.
    items: tuple[int, int] | None = None
    #: Fewest and most characters of a string.
    length: tuple[int, int] | None = None
    #: A registry name (`valid_name`).
    registry_name: bool = False
    #: A field of `shared.training.TrainConfig`, passed to `shared.recipes.make_config`.
    hyperparameter: bool = True
    #: The flag's help where the command line spells the field differently.
    flag_help: str | None = None

    @property
    def flag(self) -> str:
        """Return the command-line flag of the field (learning_rate → --learning-rate)."""
        return "--" + self.name.replace("_", "-")


#: Every field of a training spec, in the order of `mnist train --help` and of the API document.
FIELDS: tuple[Field, ...] = (
    Field(
        "model",
        str,
        "registry name to publish under",
        default="mnist",
        registry_name=True,
        hyperparameter=False,
        flag_help="with --url: registry name to publish under",
    ),
    Field(
        "dataset",
        str,
        "built-in or uploaded dataset name (a path on the command line)",
        default="mnist-sample",
        length=(1, MAX_DATASET_LENGTH),
        hyperparameter=False,
        flag_help="built-in name or path",
    ),
    Field(
        "recipe",
        str,
        "named defaults; without it, explicit fields run exactly as given",
        choices=RECIPE_NAMES,
        hyperparameter=False,
        flag_help="named defaults (see docs/recipes.md)",
    ),
    Field(
        "hidden",
        int,
        "hidden layer sizes, e.g. [256, 128]",
        minimum=1,
        maximum=MAX_HIDDEN_UNITS,
        items=(1, MAX_HIDDEN_LAYERS),
        flag_help="hidden layer sizes, e.g. 256 or 256,128",
    ),
    Field("optimizer", str, choices=OPTIMIZERS),
    Field("learning_rate", float, minimum=0, maximum=10, exclusive_minimum=True),
    Field("batch_size", int, "images per step; 0 = full batch", minimum=0, maximum=MAX_BATCH_SIZE),
    Field("epochs", int, minimum=1, maximum=MAX_EPOCHS),
    Field("iterations", int, minimum=1, maximum=MAX_ITERATIONS),
    Field("seed", int, minimum=0, maximum=MAX_SEED),
    Field("weight_decay", float, minimum=0, maximum=1),
    Field("validation_fraction", float, minimum=0, maximum=0.5),
    Field("schedule", str, choices=SCHEDULES),
    Field("augment", str, choices=AUGMENTATIONS),
    Field("patience", int, "early stopping: epochs without improvement", minimum=0, maximum=MAX_EPOCHS),
    Field("dtype", str, choices=DTYPES),
)

#: The fields that `shared.recipes.make_config` takes (each a `TrainConfig` field).
HYPERPARAMETERS: tuple[str, ...] = tuple(f.name for f in FIELDS if f.hyperparameter)
