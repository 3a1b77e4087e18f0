"""shared.training and shared.augment on a small real subset of mnist-sample.

Every run here is a few dozen steps of a small network on 500 images: fast, yet real digits.
"""

from __future__ import annotations

import math
from dataclasses import replace
from itertools import pairwise

import numpy as np
import pytest

from shared import augment, datasets, mlp, serialization
from shared.training import (
    Checkpoint,
    Progress,
    TrainConfig,
    Trainer,
    TrainResult,
    learning_rate_at,
    split_validation,
)

SUBSET = 500


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """Return the first 500 training images (500, 784) uint8 and labels of mnist-sample."""
    data = datasets.load("mnist-sample")
    return data.x_train[:SUBSET], data.y_train[:SUBSET]


def mean_loss(params: list[np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    return mlp.cross_entropy(mlp.forward(params, mlp.scale_pixels(x, params[0].dtype)), y.astype(np.intp))


def run_until(trainer: Trainer, iteration: int) -> TrainResult:
    """Run `trainer`, stopping it between steps once it has made `iteration` steps in all."""
    done = [trainer.checkpoint().iteration]
    return trainer.run(
        on_progress=lambda p: done.append(p.iteration), should_stop=lambda: done[-1] >= iteration
    )


def same_params(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    """Return whether two parameter lists are equal bit for bit, dtypes included."""
    return all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def weight_norm(params: list[np.ndarray]) -> float:
    return float(sum(np.sum(w.astype(np.float64) ** 2) for w in params[0::2]))


# --- optimizers ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "config",
    [
        TrainConfig(hidden=(32,), optimizer="gd", learning_rate=0.1, iterations=10),
        TrainConfig(hidden=(32,), optimizer="gd", learning_rate=0.1, iterations=10, init="uniform"),
        TrainConfig(hidden=(32,), optimizer="sgd", learning_rate=0.1, batch_size=50, epochs=1),
        TrainConfig(hidden=(32,), optimizer="momentum", learning_rate=0.05, batch_size=50, epochs=1),
        TrainConfig(hidden=(32,), optimizer="adam", learning_rate=1e-3, batch_size=50, epochs=1),
        TrainConfig(
            hidden=(16, 16), optimizer="adam", learning_rate=1e-3, batch_size=50, epochs=1, dtype="float64"
        ),
    ],
    ids=["gd", "gd-uniform", "sgd", "momentum", "adam", "adam-deep-float64"],
)
def test_every_optimizer_lowers_the_loss(digits: tuple[np.ndarray, np.ndarray], config: TrainConfig) -> None:
    x, y = digits
    trainer = Trainer(config, x, y)
    before = mean_loss([p.copy() for p in trainer.params], x, y)
    result = trainer.run()
    assert result.completed and result.iterations == trainer.total_iterations == 10
    assert all(p.dtype == np.dtype(config.dtype) for p in result.params)
    after = mean_loss(result.params, x, y)
    assert after < 0.9 * before, f"{config.optimizer}: loss {before:.3f} -> {after:.3f}"
    assert result.history[-1]["loss"] < result.history[0]["loss"] or len(result.history) == 1


def decay_config(optimizer: str, **changes: object) -> TrainConfig:
    config = TrainConfig(
        hidden=(16,),
        optimizer=optimizer,  # type: ignore[arg-type]
        learning_rate=1e-2 if optimizer == "adam" else 0.05,
        batch_size=0 if optimizer == "gd" else 50,
        iterations=10,
    )
    return replace(config, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize("optimizer", ["gd", "sgd", "momentum", "adam"])
def test_weight_decay_shrinks_the_weights(digits: tuple[np.ndarray, np.ndarray], optimizer: str) -> None:
    x, y = digits
    plain = Trainer(decay_config(optimizer), x, y).run().params
    decayed = Trainer(decay_config(optimizer, weight_decay=0.5), x, y).run().params
    assert weight_norm(decayed) < 0.95 * weight_norm(plain)


@pytest.mark.parametrize("optimizer", ["gd", "sgd", "momentum", "adam"])
def test_weight_decay_step_is_lr_times_decay_times_weights(
    digits: tuple[np.ndarray, np.ndarray], optimizer: str
) -> None:
    # After one step, with or without decay, the difference is −lr·wd·W (AdamW's decoupled decay
    # and SGD's L2 gradient agree on a first step) and biases are never decayed.
    x, y = digits
    config = decay_config(optimizer, iterations=1, dtype="float64", init="uniform")  # b ≠ 0
    start = [p.copy() for p in Trainer(config, x, y).params]
    plain = Trainer(config, x, y).run().params
    decayed = Trainer(replace(config, weight_decay=0.1), x, y).run().params
    for i, (p0, a, b) in enumerate(zip(start, plain, decayed, strict=True)):
        expected = -config.learning_rate * 0.1 * p0 if i % 2 == 0 else np.zeros_like(p0)
        np.testing.assert_allclose(b - a, expected, rtol=1e-6, atol=1e-12)


# --- schedules ----------------------------------------------------------------------------------
def test_cosine_schedule_goes_from_the_rate_to_zero() -> None:
    config = TrainConfig(learning_rate=0.2, schedule="cosine")
    total = 100
    assert learning_rate_at(config, 0, total) == pytest.approx(0.2)
    assert learning_rate_at(config, 50, total) == pytest.approx(0.1)
    assert 0 <= learning_rate_at(config, total - 1, total) < 0.2 * 1e-3
    rates = [learning_rate_at(config, s, total) for s in range(total)]
    assert all(a >= b for a, b in pairwise(rates))


def test_warmup_rises_linearly_then_the_schedule_starts() -> None:
    config = TrainConfig(learning_rate=0.2, schedule="cosine", warmup_steps=10)
    assert learning_rate_at(config, 0, 110) == pytest.approx(0.02)
    assert learning_rate_at(config, 4, 110) == pytest.approx(0.1)
    assert learning_rate_at(config, 9, 110) == pytest.approx(0.2)
    assert learning_rate_at(config, 10, 110) == pytest.approx(0.2)
    assert learning_rate_at(config, 60, 110) == pytest.approx(0.1)  # half-way through the cosine
    constant = TrainConfig(learning_rate=0.2, warmup_steps=4)
    assert [learning_rate_at(constant, s, 10) for s in range(6)] == pytest.approx(
        [0.05, 0.1, 0.15, 0.2, 0.2, 0.2]
    )
    assert learning_rate_at(TrainConfig(learning_rate=0.3), 99, 100) == 0.3


def test_progress_reports_the_scheduled_rate(digits: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = digits
    config = TrainConfig(
        hidden=(8,), optimizer="sgd", batch_size=100, iterations=10, schedule="cosine", warmup_steps=2
    )
    seen: list[Progress] = []
    Trainer(config, x, y).run(on_progress=seen.append)
    assert [p.learning_rate for p in seen] == [learning_rate_at(config, s, 10) for s in range(10)]


# --- determinism, validation --------------------------------------------------------------------
def test_same_seed_same_params_other_seed_other_params(digits: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = digits
    config = TrainConfig(
        hidden=(16,),
        optimizer="sgd",
        batch_size=50,
        iterations=15,
        augment="shift",
        max_shift=2,
        validation_fraction=0.1,
    )
    first = Trainer(config, x, y).run()
    second = Trainer(config, x, y).run()
    assert same_params(first.params, second.params)
    assert first.history == second.history
    other = Trainer(replace(config, seed=1), x, y).run()
    assert not np.array_equal(first.params[0], other.params[0])


def test_validation_split_is_deterministic_and_disjoint() -> None:
    n = 1000
    rows = np.arange(n).reshape(n, 1)
    labels = np.arange(n) % 10
    x_tr, y_tr, x_val, y_val = split_validation(rows, labels, 0.15, seed=7)
    assert len(x_val) == 150 and len(x_tr) == 850
    train_ids, val_ids = set(x_tr[:, 0]), set(x_val[:, 0])
    assert not train_ids & val_ids and train_ids | val_ids == set(range(n))
    np.testing.assert_array_equal(y_val, x_val[:, 0] % 10)  # labels travel with their images
    again = split_validation(rows, labels, 0.15, seed=7)
    np.testing.assert_array_equal(again[2], x_val)
    other = split_validation(rows, labels, 0.15, seed=8)
    assert set(other[2][:, 0]) != val_ids
    assert set(x_val[:, 0]) != set(range(850, 1000))  # random rows, not the tail
    none = split_validation(rows, labels, 0.0, seed=7)
    assert len(none[0]) == n and len(none[2]) == 0


def test_trainer_holds_out_the_validation_rows(digits: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = digits
    trainer = Trainer(TrainConfig(hidden=(8,), validation_fraction=0.2, iterations=1), x, y)
    assert len(trainer.y_train) == 400 and len(trainer.y_val) == 100
    result = trainer.run()
    assert result.val_accuracy is not None and result.history[-1]["val_loss"] is not None


# --- early stopping -----------------------------------------------------------------------------
def test_early_stopping_returns_the_best_epochs_params(digits: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = digits
    # lr 0.5 overshoots after a few epochs on 400 images: validation accuracy peaks, then falls.
    config = TrainConfig(
        hidden=(16,),
        optimizer="sgd",
        learning_rate=0.5,
        batch_size=50,
        epochs=30,
        validation_fraction=0.2,
        patience=2,
        seed=3,
    )
    trainer = Trainer(config, x, y)
    result = trainer.run()
    assert result.stopped_early and result.completed
    assert len(result.history) < config.epochs
    val = [h["val_accuracy"] for h in result.history]
    assert result.best_epoch == int(np.argmax(val)) + 1  # the first epoch with the best accuracy
    assert len(result.history) == result.best_epoch + config.patience
    assert result.val_accuracy == max(val)
    # The same run stopped right after the best epoch holds exactly the returned params.
    steps = result.best_epoch * trainer.steps_per_epoch
    assert same_params(result.params, run_until(Trainer(config, x, y), steps).params)
    assert not np.array_equal(result.params[0], trainer.params[0])  # the last epoch's differ


# --- stopping and progress ----------------------------------------------------------------------
def test_should_stop_stops_between_steps(digits: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = digits
    config = TrainConfig(hidden=(8,), optimizer="sgd", batch_size=50, epochs=3)
    seen: list[Progress] = []
    result = Trainer(config, x, y).run(on_progress=seen.append, should_stop=lambda: len(seen) >= 13)
    assert not result.completed
    assert result.iterations == 13 and seen[-1].iteration == 13
    assert result.epochs == 1 and len(result.history) == 1
    assert not Trainer(config, x, y).run(should_stop=lambda: True).iterations


def test_on_progress_is_called_every_step(digits: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = digits
    config = TrainConfig(hidden=(8,), optimizer="momentum", batch_size=64, epochs=3, validation_fraction=0.1)
    trainer = Trainer(config, x, y)
    seen: list[Progress] = []
    result = trainer.run(on_progress=seen.append)
    steps = trainer.steps_per_epoch
    assert steps == math.ceil(450 / 64)
    assert [p.iteration for p in seen] == list(range(1, 3 * steps + 1))
    assert all(p.total_iterations == 3 * steps for p in seen)
    fractions = [p.fraction for p in seen]
    assert all(a < b for a, b in pairwise(fractions)) and fractions[-1] == 1.0
    assert [p.iteration for p in seen if p.end_of_epoch] == [steps, 2 * steps, 3 * steps]
    assert seen[0].val_accuracy is None and seen[-1].val_accuracy == result.history[-1]["val_accuracy"]
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert result.samples_per_second > 0 and result.seconds > 0


def test_epochs_get_their_own_shuffle(digits: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = digits
    config = TrainConfig(hidden=(8,), optimizer="sgd", batch_size=50, epochs=2)
    trainer = Trainer(config, x, y)
    order0, order1 = trainer._epoch_data(0)[2], trainer._epoch_data(1)[2]
    assert sorted(order0) == list(range(SUBSET)) and not np.array_equal(order0, order1)
    # Two epochs in one run equal one epoch, then a second started from its checkpoint: each
    # epoch draws its own order (a run that reused epoch 0's order would differ here).
    whole = trainer.run()
    half = Trainer(config, x, y)
    run_until(half, half.steps_per_epoch)
    assert same_params(whole.params, Trainer(config, x, y, checkpoint=half.checkpoint()).run().params)


def test_trainer_rejects_bad_input(digits: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = digits
    with pytest.raises(ValueError, match="784"):
        Trainer(TrainConfig(), x[:, :100], y)
    with pytest.raises(ValueError, match="full-batch"):
        TrainConfig(optimizer="gd", batch_size=64)
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="rmsprop")  # type: ignore[arg-type]
    checkpoint = Trainer(TrainConfig(hidden=(8,), iterations=1), x, y).checkpoint()
    with pytest.raises(ValueError, match="different config"):
        Trainer(TrainConfig(hidden=(8,), iterations=2), x, y, checkpoint=checkpoint)


# --- resume -------------------------------------------------------------------------------------
RESUME_CONFIGS = {
    "sgd": TrainConfig(
        hidden=(16,), optimizer="sgd", learning_rate=0.1, batch_size=50, epochs=3, weight_decay=1e-3
    ),
    "momentum": TrainConfig(
        hidden=(16, 12),
        optimizer="momentum",
        learning_rate=0.05,
        batch_size=64,
        epochs=3,
        augment="shift",
        max_shift=2,
    ),
    "adam": TrainConfig(
        hidden=(16,),
        optimizer="adam",
        learning_rate=2e-3,
        batch_size=50,
        epochs=3,
        schedule="cosine",
        warmup_steps=3,
        weight_decay=1e-2,
        validation_fraction=0.2,
        patience=2,
        augment="affine",
        max_shift=2.0,
        max_rotation=12.0,
        max_scale=0.1,
    ),
    "gd": TrainConfig(hidden=(10,), optimizer="gd", iterations=12, init="uniform", validation_fraction=0.1),
}


def run_with_stops(config: TrainConfig, x: np.ndarray, y: np.ndarray, stops: list[int]) -> TrainResult:
    """Run `config`, stopping after each iteration in `stops`, resuming from checkpoint bytes."""
    checkpoint: Checkpoint | None = None
    for stop in stops:
        trainer = Trainer(config, x, y, checkpoint=checkpoint)
        partial = run_until(trainer, stop)
        assert not partial.completed and partial.iterations == stop
        checkpoint = serialization.checkpoint_from_bytes(
            serialization.checkpoint_to_bytes(trainer.checkpoint())
        )
    return Trainer(config, x, y, checkpoint=checkpoint).run()


@pytest.mark.parametrize(
    ("name", "stops"),
    [
        ("sgd", [10]),  # 500 images / 50: iteration 10 ends epoch 1
        ("sgd", [13]),  # mid-epoch
        ("momentum", [8]),  # 500 / 64 = 8 steps per epoch: an epoch boundary
        ("momentum", [3, 13]),  # twice, mid-epoch
        ("adam", [8]),  # epoch boundary, with a best epoch already kept
        ("adam", [5, 16, 19]),  # mid-epoch, boundary, mid-epoch
        ("gd", [1, 7]),  # full batch: every step ends an epoch
    ],
)
def test_resume_equals_an_uninterrupted_run_bit_for_bit(
    digits: tuple[np.ndarray, np.ndarray], name: str, stops: list[int]
) -> None:
    x, y = digits
    config = RESUME_CONFIGS[name]
    whole = Trainer(config, x, y).run()
    resumed = run_with_stops(config, x, y, stops)
    assert whole.completed and resumed.completed
    assert same_params(whole.params, resumed.params)
    assert resumed.history == whole.history
    for field in ("train_accuracy", "val_accuracy", "iterations", "epochs", "stopped_early", "best_epoch"):
        assert getattr(resumed, field) == getattr(whole, field), field


def test_checkpoint_is_a_copy(digits: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = digits
    trainer = Trainer(RESUME_CONFIGS["adam"], x, y)
    run_until(trainer, 9)
    ckpt = trainer.checkpoint()
    assert ckpt.best_params is not None and ckpt.best_epoch == 1
    assert (ckpt.iteration, ckpt.epoch, ckpt.step_in_epoch) == (9, 1, 1)
    saved = [[a.copy() for a in arrays] for arrays in (ckpt.params, ckpt.optimizer_state)]
    history = [dict(h) for h in ckpt.history]
    trainer.run()  # training goes on in place; the checkpoint taken before must not move
    assert trainer.checkpoint().iteration > 9
    assert same_params(saved[0], ckpt.params) and same_params(saved[1], ckpt.optimizer_state)
    assert ckpt.history == history and ckpt.iteration == 9


# --- augmentation -------------------------------------------------------------------------------
def blobs(n: int, seed: int = 0) -> np.ndarray:
    """Return n images (n, 784) uint8 with random pixels only in the central 10×10 square."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28), np.uint8)
    images[:, 9:19, 9:19] = rng.integers(1, 256, (n, 10, 10))
    return images.reshape(n, 784)


def centre_of_mass(x: np.ndarray) -> np.ndarray:
    """Return each image's centre of mass (n, 2) as (row, column)."""
    images = x.reshape(-1, 28, 28).astype(np.float64)
    total = images.sum(axis=(1, 2))
    idx = np.arange(28)
    return np.stack(
        [(images.sum(axis=2) * idx).sum(axis=1) / total, (images.sum(axis=1) * idx).sum(axis=1) / total],
        axis=1,
    )


def test_random_shifts_move_each_image_whole() -> None:
    x = blobs(300)
    moved = augment.random_shifts(x, 2, np.random.default_rng(0))
    assert moved.shape == x.shape and moved.dtype == np.uint8
    delta = centre_of_mass(moved) - centre_of_mass(x)
    shifts = np.rint(delta).astype(int)
    np.testing.assert_allclose(delta, shifts, atol=1e-9)  # whole pixels
    assert np.abs(shifts).max() <= 2
    assert len({tuple(s) for s in shifts}) == 25  # every shift in [-2, 2]² occurs
    for image, out, (dr, dc) in zip(x, moved, shifts, strict=True):
        expected = np.roll(image.reshape(28, 28), (dr, dc), axis=(0, 1))
        np.testing.assert_array_equal(out.reshape(28, 28), expected)  # pixels kept, only moved
    again = augment.random_shifts(x, 2, np.random.default_rng(0))
    np.testing.assert_array_equal(moved, again)
    assert augment.random_shifts(x, 0, np.random.default_rng(0)) is x


def test_random_affine_keeps_shape_and_is_seeded(digits: tuple[np.ndarray, np.ndarray]) -> None:
    x = digits[0][:100]
    out = augment.random_affine(x, np.random.default_rng(1), max_shift=2, max_rotation=12, max_scale=0.1)
    assert out.shape == x.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(
        out, augment.random_affine(x, np.random.default_rng(1), max_shift=2, max_rotation=12, max_scale=0.1)
    )
    other = augment.random_affine(x, np.random.default_rng(2), max_shift=2, max_rotation=12, max_scale=0.1)
    assert not np.array_equal(out, other)
    assert not np.array_equal(out, x)
    # The digits stay digits: ink is roughly conserved and the centre moves at most a few pixels.
    ink_ratio = out.sum(axis=1) / x.sum(axis=1)
    assert ink_ratio.min() > 0.7 and ink_ratio.max() < 1.4
    assert np.abs(centre_of_mass(out) - centre_of_mass(x)).max() < 4
    identity = augment.random_affine(x, np.random.default_rng(3), max_shift=0, max_rotation=0, max_scale=0)
    np.testing.assert_array_equal(identity, x)
