"""Named training recipes and the one rule that turns a recipe plus explicit fields into a config.

- ``seed`` is the tutorial exactly: 784-10-10, U(−0.5, 0.5), full-batch gradient descent,
  α = 0.1, 500 iterations.
- ``default`` is the best recipe found for the embedded sample within 60 s on 2 cores
  (docs/recipes.md tells how it was chosen and what it reaches).

The rule (`make_config`): explicit fields override the recipe's. A recipe's *extras* (augmentation,
learning-rate schedule and warm-up, weight decay, early stopping) apply only when the recipe is
named explicitly or no hyperparameter is given at all: ``--hidden 256 --optimizer sgd`` runs
exactly what it says, nothing it did not ask for. Changing the optimizer without a learning
rate takes that optimizer's usual rate (`DEFAULT_LEARNING_RATES`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from shared.spec import HYPERPARAMETERS
from shared.training import TrainConfig

RECIPES: dict[str, TrainConfig] = {
    "seed": TrainConfig(
        hidden=(10,),
        optimizer="gd",
        learning_rate=0.1,
        batch_size=0,
        iterations=500,
        init="uniform",
        validation_fraction=0.1,
    ),
    "default": TrainConfig(
        hidden=(1024,),
        optimizer="adam",
        learning_rate=2e-3,
        batch_size=128,
        epochs=40,
        schedule="cosine",
        init="he",
        validation_fraction=0.1,
        augment="affine",
        max_shift=2.0,
        max_rotation=12.0,
        max_scale=0.1,
    ),
}

#: How a recipe adapts to a built-in dataset (by name), before explicit fields apply. Clothes
#: are not digits: rotating or shifting a garment changes what it looks like, and 60,000
#: images need no augmentation to generalise (docs/recipes.md has the measurements).
DATASET_ADJUSTMENTS: dict[tuple[str, str], dict[str, Any]] = {
    ("default", "fashion-mnist"): {
        "augment": "none",
        "max_shift": 0.0,
        "max_rotation": 0.0,
        "max_scale": 0.0,
        "epochs": 20,
    },
}

#: Learning rate taken when the optimizer is changed and no rate is given.
DEFAULT_LEARNING_RATES = {"gd": 0.1, "sgd": 0.1, "momentum": 0.05, "adam": 1e-3}

#: Fields that never switch a recipe's extras off (they do not change what is trained).
NEUTRAL = ("seed",)
#: What a recipe adds beyond the tutorial's loop, reset to "off" for plain runs.
EXTRAS: dict[str, Any] = {
    "schedule": "constant",
    "warmup_steps": 0,
    "weight_decay": 0.0,
    "patience": 0,
    "augment": "none",
    "max_shift": 0.0,
    "max_rotation": 0.0,
    "max_scale": 0.0,
    "elastic_alpha": 0.0,
}
#: Augmentation strengths that `augment` turns on when it is given explicitly.
AUGMENT_DEFAULTS: dict[str, dict[str, Any]] = {
    "none": {"max_shift": 0.0, "max_rotation": 0.0, "max_scale": 0.0},
    "shift": {"max_shift": 2.0, "max_rotation": 0.0, "max_scale": 0.0},
    "affine": {"max_shift": 2.0, "max_rotation": 12.0, "max_scale": 0.1},
}


def make_config(recipe: str | None = None, *, dataset: str | None = None, **fields: Any) -> TrainConfig:
    """Return the config of `recipe` (None: "default") for `dataset`, with explicit `fields` applied.

    A field given as None counts as unset.
    """
    given = {k: v for k, v in fields.items() if v is not None}
    unknown = set(given) - set(HYPERPARAMETERS)
    if unknown:
        raise ValueError(f"unknown training fields: {sorted(unknown)}")
    name = recipe or "default"
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}: expected one of {sorted(RECIPES)}")
    base = RECIPES[name]
    if dataset is not None and (name, dataset) in DATASET_ADJUSTMENTS:
        base = replace(base, **DATASET_ADJUSTMENTS[(name, dataset)])
    if recipe is None and set(given) - set(NEUTRAL):
        base = replace(base, **EXTRAS)
    changes: dict[str, Any] = dict(given)
    if "hidden" in changes:
        changes["hidden"] = tuple(int(h) for h in changes["hidden"])
    if "optimizer" in changes and "learning_rate" not in changes and changes["optimizer"] != base.optimizer:
        changes["learning_rate"] = DEFAULT_LEARNING_RATES[changes["optimizer"]]
    if "epochs" in changes:
        changes["iterations"] = None
    if changes.get("optimizer") == "gd" and "batch_size" not in changes:
        changes["batch_size"] = 0
    if base.optimizer == "gd" and changes.get("optimizer", "gd") != "gd" and "batch_size" not in changes:
        changes["batch_size"] = RECIPES["default"].batch_size
    if "augment" in changes:
        changes.update(AUGMENT_DEFAULTS[changes["augment"]])
    return replace(base, **changes)
