"""shared.recipes.make_config (recipe + explicit fields → config) and TrainingSpecSchema bounds."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from marshmallow import ValidationError

from shared import schemas
from shared.recipes import DEFAULT_LEARNING_RATES, EXTRAS, RECIPES, make_config
from shared.schemas import TrainingSpecSchema, spec_to_config_fields
from shared.training import TrainConfig

DEFAULT = RECIPES["default"]


def extras_of(config: TrainConfig) -> dict[str, Any]:
    return {k: getattr(config, k) for k in EXTRAS}


def test_the_default_recipe_has_extras_worth_switching_off() -> None:
    assert extras_of(DEFAULT) != EXTRAS  # otherwise the rules below test nothing
    assert DEFAULT.augment == "affine" and DEFAULT.schedule == "cosine"


def test_no_fields_give_the_default_recipe_with_its_extras() -> None:
    assert make_config() == DEFAULT
    assert make_config(None, hidden=None, optimizer=None) == DEFAULT  # None means unset


def test_seed_is_the_tutorial() -> None:
    seed = make_config("seed")
    assert seed.hidden == (10,)
    assert seed.init == "uniform"
    assert seed.optimizer == "gd" and seed.learning_rate == 0.1 and seed.batch_size == 0
    assert seed.iterations == 500
    assert seed.dtype == "float32"
    assert extras_of(seed) == EXTRAS  # the tutorial has no schedule, decay, augmentation, patience


def test_explicit_fields_without_a_recipe_drop_the_extras() -> None:
    config = make_config(hidden=[256], optimizer="sgd")
    assert config.hidden == (256,) and config.optimizer == "sgd"
    assert config.augment == "none" and config.max_shift == 0 and config.max_rotation == 0
    assert config.schedule == "constant" and config.warmup_steps == 0
    assert config.weight_decay == 0 and config.patience == 0
    assert config.learning_rate == DEFAULT_LEARNING_RATES["sgd"]
    assert config.batch_size == DEFAULT.batch_size and config.epochs == DEFAULT.epochs
    # Any one hyperparameter counts, including a non-architectural one.
    assert extras_of(make_config(learning_rate=0.01)) == EXTRAS
    assert extras_of(make_config(validation_fraction=0.2)) == EXTRAS


def test_explicit_fields_with_a_named_recipe_keep_its_extras() -> None:
    config = make_config("default", hidden=[256], optimizer="sgd")
    assert config.hidden == (256,) and config.optimizer == "sgd"
    assert extras_of(config) == extras_of(DEFAULT)
    assert config.learning_rate == DEFAULT_LEARNING_RATES["sgd"]


def test_an_explicit_extra_is_kept_and_brings_its_strengths() -> None:
    config = make_config(hidden=[64], augment="shift", schedule="cosine")
    assert config.augment == "shift" and config.max_shift == 2.0 and config.max_rotation == 0
    assert config.schedule == "cosine" and config.weight_decay == 0
    assert make_config("default", augment="none").max_rotation == 0


@pytest.mark.parametrize("optimizer", ["gd", "sgd", "momentum", "adam"])
def test_changing_the_optimizer_takes_its_usual_rate(optimizer: str) -> None:
    expected = DEFAULT.learning_rate if optimizer == DEFAULT.optimizer else DEFAULT_LEARNING_RATES[optimizer]
    assert make_config(optimizer=optimizer).learning_rate == expected
    assert make_config(optimizer=optimizer, learning_rate=0.02).learning_rate == 0.02


def test_gd_is_full_batch_and_leaving_gd_takes_mini_batches() -> None:
    assert make_config(optimizer="gd").batch_size == 0
    from_seed = make_config("seed", optimizer="momentum")
    assert (
        from_seed.batch_size == DEFAULT.batch_size
        and from_seed.learning_rate == DEFAULT_LEARNING_RATES["momentum"]
    )
    assert make_config("seed", optimizer="sgd", batch_size=32).batch_size == 32


def test_epochs_clear_iterations() -> None:
    config = make_config("seed", epochs=3)
    assert config.epochs == 3 and config.iterations is None
    assert make_config("seed", iterations=30).iterations == 30
    assert make_config(iterations=30).iterations == 30


def test_a_seed_alone_keeps_the_extras() -> None:
    assert make_config(seed=7) == replace(DEFAULT, seed=7)
    assert make_config("seed", seed=7) == replace(RECIPES["seed"], seed=7)


def test_make_config_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="unknown recipe"):
        make_config("best")
    with pytest.raises(ValueError, match="unknown training fields"):
        make_config(hiddne=[10])
    with pytest.raises(ValueError, match="full-batch"):
        make_config("seed", batch_size=64)  # gd with mini-batches is not gd


# --- TrainingSpecSchema -------------------------------------------------------------------------
def load(raw: dict[str, Any]) -> dict[str, Any]:
    return TrainingSpecSchema().load(raw)


def errors(raw: dict[str, Any]) -> dict[str, Any]:
    with pytest.raises(ValidationError) as info:
        load(raw)
    return info.value.messages  # type: ignore[return-value]


def test_schema_fills_defaults() -> None:
    spec = load({})
    assert spec["model"] == "mnist" and spec["dataset"] == "mnist-sample"
    assert all(v is None for k, v in spec.items() if k not in ("model", "dataset"))
    assert make_config(spec["recipe"], **spec_to_config_fields(spec)) == DEFAULT


def test_schema_accepts_a_full_spec_and_it_becomes_a_config() -> None:
    raw = {
        "model": "digits-v2.small_1",
        "dataset": "mnist-sample",
        "recipe": "default",
        "hidden": [256, 128],
        "optimizer": "momentum",
        "learning_rate": 0.02,
        "batch_size": 128,
        "epochs": 5,
        "seed": 3,
        "weight_decay": 1e-4,
        "validation_fraction": 0.1,
        "schedule": "cosine",
        "augment": "shift",
        "patience": 2,
        "dtype": "float64",
    }
    spec = load(raw)
    config = make_config(spec["recipe"], **spec_to_config_fields(spec))
    assert config.hidden == (256, 128) and config.batch_size == 128 and config.epochs == 5
    assert config.iterations is None and config.dtype == "float64" and config.patience == 2


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"hidden": [0]}, "hidden"),
        ({"hidden": [schemas.MAX_HIDDEN_UNITS + 1]}, "hidden"),
        ({"hidden": [8] * (schemas.MAX_HIDDEN_LAYERS + 1)}, "hidden"),
        ({"hidden": []}, "hidden"),
        ({"epochs": 0}, "epochs"),
        ({"epochs": schemas.MAX_EPOCHS + 1}, "epochs"),
        ({"iterations": 0}, "iterations"),
        ({"epochs": 2, "iterations": 10}, "iterations"),
        ({"optimizer": "gd", "batch_size": 64}, "batch_size"),
        ({"batch_size": -1}, "batch_size"),
        ({"batch_size": schemas.MAX_BATCH_SIZE + 1}, "batch_size"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"learning_rate": float("nan")}, "learning_rate"),
        ({"validation_fraction": 0.9}, "validation_fraction"),
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"recipe": "best"}, "recipe"),
        ({"dtype": "float16"}, "dtype"),
        ({"layers": 3}, "layers"),
        ({"model": "../x"}, "model"),
        ({"model": "a/b"}, "model"),
        ({"model": "Mnist"}, "model"),
        ({"model": ""}, "model"),
    ],
)
def test_schema_rejects_out_of_bounds(raw: dict[str, Any], field: str) -> None:
    assert field in errors(raw)


def test_schema_messages_are_readable() -> None:
    assert errors({"model": "../x"})["model"] == [f"must match {schemas.NAME_PATTERN}"]
    assert errors({"epochs": 2, "iterations": 10})["iterations"] == ["give epochs or iterations, not both"]
    assert errors({"layers": 3})["layers"] == ["Unknown field."]


def test_the_default_recipe_adapts_to_fashion_mnist_but_explicit_fields_still_win() -> None:
    digits = make_config(None, dataset="mnist-sample")
    clothes = make_config(None, dataset="fashion-mnist")
    assert digits.augment == "affine" and clothes.augment == "none"
    assert clothes.max_rotation == 0 and clothes.epochs == 20
    assert clothes.hidden == digits.hidden and clothes.optimizer == digits.optimizer
    assert make_config("default", dataset="fashion-mnist", augment="shift").augment == "shift"
    assert make_config("seed", dataset="fashion-mnist") == make_config("seed")
