"""shared.recipes.make_config (recipe + explicit fields → config), shared.spec and TrainingSpecSchema."""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from marshmallow import ValidationError

from shared import spec, training
from shared.errors import InvalidInput
from shared.pipeline import plan
from shared.recipes import AUGMENT_DEFAULTS, DEFAULT_LEARNING_RATES, EXTRAS, NEUTRAL, RECIPES, make_config
from shared.schemas import TrainingSpecSchema
from shared.training import TrainConfig, estimate_memory

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
    loaded = load({})
    assert loaded["model"] == "mnist" and loaded["dataset"] == "mnist-sample"
    assert all(v is None for k, v in loaded.items() if k not in ("model", "dataset"))
    assert plan(loaded) == DEFAULT


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
    config = plan(load(raw))
    assert config.hidden == (256, 128) and config.batch_size == 128 and config.epochs == 5
    assert config.iterations is None and config.dtype == "float64" and config.patience == 2


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"hidden": [0]}, "hidden"),
        ({"hidden": [spec.MAX_HIDDEN_UNITS + 1]}, "hidden"),
        ({"hidden": [8] * (spec.MAX_HIDDEN_LAYERS + 1)}, "hidden"),
        ({"hidden": []}, "hidden"),
        ({"epochs": 0}, "epochs"),
        ({"epochs": spec.MAX_EPOCHS + 1}, "epochs"),
        ({"iterations": 0}, "iterations"),
        ({"epochs": 2, "iterations": 10}, "iterations"),
        ({"optimizer": "gd", "batch_size": 64}, "batch_size"),
        ({"batch_size": -1}, "batch_size"),
        ({"batch_size": spec.MAX_BATCH_SIZE + 1}, "batch_size"),
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
        ({"model": "mnist\n"}, "model"),  # a `$` would let the newline through; fullmatch does not
        ({"model": "a..b"}, "model"),
        ({"model": "x" * 65}, "model"),
    ],
)
def test_schema_rejects_out_of_bounds(raw: dict[str, Any], field: str) -> None:
    assert field in errors(raw)


def test_schema_messages_are_readable() -> None:
    assert errors({"model": "../x"})["model"] == [f"must match {spec.NAME_PATTERN.pattern}"]
    assert errors({"model": "a..b"})["model"] == ["must not contain '..'"]
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


# --- shared.spec: the one definition the schema, the flags, the recipes and the config share ------
def test_every_hyperparameter_is_a_train_config_field() -> None:
    config_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(spec.HYPERPARAMETERS) <= config_fields
    assert set(NEUTRAL) <= set(spec.HYPERPARAMETERS)
    assert set(EXTRAS) <= config_fields
    others = [f.name for f in spec.FIELDS if not f.hyperparameter]
    assert others == ["model", "dataset", "recipe"]  # what the job is, not how it trains
    with pytest.raises(ValueError, match="unknown training fields"):
        make_config(model="x")


def test_the_schema_fields_are_the_spec_fields() -> None:
    assert list(TrainingSpecSchema().fields) == [f.name for f in spec.FIELDS]


def test_the_choices_are_the_spec_choices() -> None:
    assert tuple(RECIPES) == spec.RECIPE_NAMES
    assert tuple(DEFAULT_LEARNING_RATES) == spec.OPTIMIZERS
    assert tuple(training.OPTIMIZER_SLOTS) == spec.OPTIMIZERS
    assert tuple(AUGMENT_DEFAULTS) == spec.AUGMENTATIONS
    # TrainConfig's Literal types spell the same choices out for the type checker.
    assert typing.get_args(training.Optimizer) == spec.OPTIMIZERS
    assert typing.get_args(training.Schedule) == spec.SCHEDULES
    assert typing.get_args(training.Augmentation) == spec.AUGMENTATIONS
    assert typing.get_args(training.DType) == spec.DTYPES


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("mnist", True),
        ("digits-v2.small_1", True),
        ("0", True),
        ("x" * 64, True),
        ("x" * 65, False),
        ("mnist\n", False),
        ("a..b", False),
        ("..", False),
        ("../x", False),
        ("a/b", False),
        ("Mnist", False),
        ("", False),
        (None, False),
        (3, False),
    ],
)
def test_one_rule_for_registry_names(name: object, valid: bool) -> None:
    assert spec.valid_name(name) is valid
    assert (spec.name_problem(name) is None) is valid


# --- pipeline.plan: spec → config, with the memory check ------------------------------------------
def test_plan_refuses_a_job_above_the_budget_with_one_message() -> None:
    loaded = load({"hidden": [2048, 2048], "batch_size": 4096})
    need = estimate_memory(plan(loaded), 60_000)
    assert plan(loaded, 60_000, need) == plan(loaded)  # exactly at the budget: accepted
    with pytest.raises(InvalidInput) as info:
        plan(loaded, 60_000, need - 1)
    mib = f"{need / 2**20:,.0f}"
    assert info.value.message == (
        f"this job needs about {mib} MiB on mnist-sample, above the {(need - 1) / 2**20:,.0f} MiB"
        " budget of a job: use fewer or smaller hidden layers or a smaller batch_size"
    )
    assert info.value.errors == {"batch_size": ["too large for the memory budget"]}


def test_plan_without_a_size_or_a_budget_checks_no_memory() -> None:
    loaded = load({"hidden": [2048] * 4, "batch_size": 0, "optimizer": "gd"})
    assert plan(loaded, None, 1) == plan(loaded, 70_000) == plan(loaded)


def test_plan_refuses_what_only_the_recipe_makes_impossible() -> None:
    # The schema passes it (no optimizer given); the seed recipe's gd is full-batch.
    with pytest.raises(InvalidInput, match="full-batch: batch_size must be 0"):
        plan(load({"recipe": "seed", "batch_size": 64}))


def test_the_api_document_lists_the_spec_fields() -> None:
    text = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text()
    table = text.split("| field | type | meaning |", 1)[1].split("\n\n", 1)[0]
    first_cells = [line.split("|")[1] for line in table.splitlines()[2:]]
    documented = [name for cell in first_cells for name in re.findall(r"`(\w+)`", cell)]
    assert documented == [f.name for f in spec.FIELDS]
