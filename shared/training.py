"""The training loop: optimizers, schedules, validation, early stopping, checkpoints. NumPy only.

`Trainer` runs one `TrainConfig` on uint8 images (n, 784) and labels (n,). It reports progress
through a callback after every step, stops cleanly between steps when `should_stop` says so,
and `checkpoint()` captures everything needed to resume to exactly the result of an
uninterrupted run.

Randomness is a pure function of the seed: the validation split uses ``default_rng([seed, 0])``
and epoch e's shuffle and augmentation use ``default_rng([seed, 1, e])``. A checkpoint therefore
holds the random state as counters (epoch, step within it) rather than as generator state, and a
resumed run regenerates the same epoch order bit for bit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np

from shared import augment, mlp
from shared.spec import OPTIMIZERS, SCHEDULES

# The spelled-out choices of shared.spec, for the type checker (a test keeps them equal).
Optimizer = Literal["gd", "sgd", "momentum", "adam"]
Schedule = Literal["constant", "cosine"]
Augmentation = Literal["none", "shift", "affine"]
DType = Literal["float32", "float64"]
#: Arrays of optimizer state per parameter array: momentum keeps a velocity, Adam two moments.
OPTIMIZER_SLOTS: dict[str, int] = {"gd": 0, "sgd": 0, "momentum": 1, "adam": 2}
#: Bytes of a training process before it holds any data: the interpreter, NumPy and the worker's
#: modules (an RQ work horse measured 73–79 MiB). Part of `estimate_memory`.
RUNTIME_BYTES = 96 * 2**20
#: Rows of one forward pass when a whole set is scored (`shared.scoring.classify`'s batch).
EVAL_ROWS = 8192


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; saved inside every model file and checkpoint."""

    hidden: tuple[int, ...] = (10,)
    optimizer: Optimizer = "gd"
    learning_rate: float = 0.1
    #: Images per step; 0 means the whole training set (full-batch gradient descent).
    batch_size: int = 0
    #: Passes over the training set; ignored when `iterations` is set.
    epochs: int = 1
    #: Optimizer steps in all, when set (the tutorial counts 500 iterations).
    iterations: int | None = None
    schedule: Schedule = "constant"
    #: Steps of linear warm-up before the schedule (0 = none).
    warmup_steps: int = 0
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.999
    epsilon: float = 1e-8
    #: L2 penalty on weights (not biases); decoupled (AdamW) with Adam.
    weight_decay: float = 0.0
    init: mlp.Init = "he"
    dtype: DType = "float32"
    seed: int = 0
    #: Share of the training images held out for validation (0 = none).
    validation_fraction: float = 0.0
    #: Epochs without a better validation accuracy before stopping (0 = never stop early).
    patience: int = 0
    #: Augmentation: "none", "shift" (whole pixels) or "affine" (shift, rotation, scale).
    augment: Augmentation = "none"
    max_shift: float = 0.0
    max_rotation: float = 0.0
    max_scale: float = 0.0
    #: Elastic distortion strength in pixels (0 = none) and smoothness, with augment="affine".
    elastic_alpha: float = 0.0
    elastic_sigma: float = 4.0

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}: expected one of {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}: expected one of {SCHEDULES}")
        if not 0 <= self.validation_fraction < 1:
            raise ValueError("validation_fraction must be in [0, 1)")
        if self.optimizer == "gd" and self.batch_size != 0:
            raise ValueError("optimizer 'gd' is full-batch: batch_size must be 0")

    @property
    def sizes(self) -> tuple[int, ...]:
        """Return the layer sizes: input, hidden…, output (e.g. (784, 10, 10))."""
        return (mlp.INPUT_SIZE, *self.hidden, mlp.CLASSES)

    def to_dict(self) -> dict[str, Any]:
        """Return the config as JSON-able values."""
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Build a config from `to_dict` output (unknown keys are an error)."""
        d = dict(d)
        if "hidden" in d:
            d["hidden"] = tuple(int(h) for h in d["hidden"])
        return cls(**d)


@dataclass(frozen=True)
class Progress:
    """One report of the loop: where it is and how it does.

    `loss` and `train_accuracy` are running means over the current epoch's steps so far (the
    forward pass already computes them); the validation figures are those of the last finished
    epoch (None before the first).
    """

    epoch: int
    iteration: int
    total_iterations: int
    loss: float
    train_accuracy: float
    val_accuracy: float | None
    val_loss: float | None
    learning_rate: float
    end_of_epoch: bool

    @property
    def fraction(self) -> float:
        """Return the share of all iterations done, 0–1."""
        return self.iteration / self.total_iterations if self.total_iterations else 1.0


@dataclass
class Checkpoint:
    """A paused run: parameters, optimizer state, counters and history.

    Resume it with `Trainer(config, x, y, checkpoint=...)`.
    """

    config: TrainConfig
    params: list[np.ndarray]
    optimizer_state: list[np.ndarray]
    iteration: int
    epoch: int
    step_in_epoch: int
    epoch_loss_sum: float
    epoch_correct: int
    epoch_seen: int
    elapsed: float
    samples: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_params: list[np.ndarray] | None = None
    best_val_accuracy: float = -1.0
    best_epoch: int = -1
    stopped_early: bool = False


@dataclass(frozen=True)
class TrainResult:
    """What a finished (or stopped) run produced."""

    params: list[np.ndarray]
    history: list[dict[str, Any]]
    train_accuracy: float
    val_accuracy: float | None
    iterations: int
    epochs: int
    seconds: float
    samples_per_second: float
    completed: bool
    stopped_early: bool
    best_epoch: int

    def metrics(self) -> dict[str, Any]:
        """Return the scalar results as JSON-able values."""
        return {
            "train_accuracy": self.train_accuracy,
            "val_accuracy": self.val_accuracy,
            "iterations": self.iterations,
            "epochs": self.epochs,
            "seconds": self.seconds,
            "samples_per_second": self.samples_per_second,
            "stopped_early": self.stopped_early,
            "best_epoch": self.best_epoch,
        }


def split_validation(
    x: np.ndarray, y: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (x_train, y_train, x_val, y_val): a seeded random `fraction` of the rows held out."""
    n_val = int(round(len(y) * fraction))
    if n_val == 0:
        return x, y, x[:0], y[:0]
    order = np.random.default_rng([seed, 0]).permutation(len(y))
    val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
    return x[train], y[train], x[val], y[val]


def estimate_memory(config: TrainConfig, n_images: int) -> int:
    """Return the bytes a run of `config` on `n_images` (n, 784) images needs at its peak, roughly.

    Counts the process itself (RUNTIME_BYTES), the pixels (the uint8 source, its split copy, the
    scaled copies and one batch), the training state (parameters, optimizer slots, best-epoch
    copy), and the largest of three phases that never overlap: a step (gradients, activations and
    their gradients), the final accuracy passes (EVAL_ROWS rows of activations, the result's copy
    of the parameters and its model file), and a checkpoint (the state serialized to bytes).
    """
    item = np.dtype(config.dtype).itemsize
    sizes = config.sizes
    n_params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=False))
    batch = n_images if config.batch_size <= 0 else min(config.batch_size, n_images)
    copies = 2 if config.augment != "none" else 1
    data = n_images * mlp.INPUT_SIZE * (1 + copies + item * copies) + batch * mlp.INPUT_SIZE * item
    row = sum(sizes[1:]) * item  # one image's activations
    slots = OPTIMIZER_SLOTS[config.optimizer]
    params = n_params * item
    state = params * (1 + slots + (1 if config.patience else 0))
    step = params + batch * row * 3
    evaluation = min(n_images, EVAL_ROWS) * row + 2 * params
    checkpoint = state
    return RUNTIME_BYTES + data + state + max(step, evaluation, checkpoint)


def learning_rate_at(config: TrainConfig, step: int, total: int) -> float:
    """Return the learning rate for 0-based `step` of `total` under the config's schedule."""
    lr = config.learning_rate
    if config.warmup_steps and step < config.warmup_steps:
        return lr * (step + 1) / config.warmup_steps
    if config.schedule == "cosine":
        span = max(1, total - config.warmup_steps)
        t = min(1.0, (step - config.warmup_steps) / span)
        return lr * 0.5 * (1.0 + math.cos(math.pi * t))
    return lr


class Trainer:
    """Trains an MLP with one config on uint8 images; see the module docstring."""

    def __init__(
        self,
        config: TrainConfig,
        x: np.ndarray,
        y: np.ndarray,
        *,
        checkpoint: Checkpoint | None = None,
    ) -> None:
        """Split off the validation set, scale the pixels, and start fresh or from `checkpoint`."""
        if x.ndim != 2 or x.shape[1] != mlp.INPUT_SIZE or len(x) != len(y):
            raise ValueError(f"expected x (n, 784) and y (n,), got {x.shape} and {y.shape}")
        self.config = config
        self.dtype = np.dtype(config.dtype)
        x_train, y_train, x_val, y_val = split_validation(x, y, config.validation_fraction, config.seed)
        if len(y_train) == 0:
            raise ValueError("no training images left after the validation split")
        self.x_raw = x_train  # uint8, the source of augmented epochs
        self.x_train = mlp.scale_pixels(x_train, self.dtype)
        self.y_train = y_train.astype(np.intp)
        self.x_val = mlp.scale_pixels(x_val, self.dtype)
        self.y_val = y_val.astype(np.intp)
        n = len(self.y_train)
        self.batch = n if config.batch_size <= 0 else min(config.batch_size, n)
        self.steps_per_epoch = math.ceil(n / self.batch)
        if config.iterations is not None:
            self.total_iterations = config.iterations
        else:
            self.total_iterations = config.epochs * self.steps_per_epoch
        self.total_epochs = math.ceil(self.total_iterations / self.steps_per_epoch)
        self._state = checkpoint if checkpoint is not None else self._fresh_state()
        if self._state.config != config:
            raise ValueError("the checkpoint was made with a different config")
        s = self._state
        # Weights in Fortran order: (out, in) as everywhere, but Wᵀ is then C-contiguous, which
        # OpenBLAS multiplies faster (about 5 % on a whole step at batch 256, docs/benchmarks.md);
        # gradients and optimizer state follow the same layout, so updates stay contiguous. A
        # fresh run and a resumed one use the same layout, hence the same bits.
        s.params = [np.asfortranarray(p) for p in s.params]
        s.optimizer_state = [np.asfortranarray(a) for a in s.optimizer_state]
        self._plain_step = config.optimizer in ("gd", "sgd") and not config.weight_decay

    # ----------------------------------------------------------------------------------------
    def _fresh_state(self) -> Checkpoint:
        rng = np.random.default_rng([self.config.seed, 2])
        params = mlp.init_params(self.config.sizes, rng, self.config.init, self.dtype.type)
        slots = OPTIMIZER_SLOTS[self.config.optimizer]
        opt_state = [np.zeros_like(p) for p in params for _ in range(slots)]
        return Checkpoint(self.config, params, opt_state, 0, 0, 0, 0.0, 0, 0, 0.0)

    @property
    def params(self) -> list[np.ndarray]:
        """Return the current parameters (live arrays, updated in place)."""
        return self._state.params

    @property
    def history(self) -> list[dict[str, Any]]:
        """Return the learning curve so far: one entry per finished epoch (live list, do not modify)."""
        return self._state.history

    def checkpoint(self, copy: bool = True) -> Checkpoint:
        """Return a deep copy of the run's state, safe to serialize while training goes on.

        With `copy=False`, return the live state instead (no second copy of a big model in
        memory): serialize it before the next step, as a progress callback does.
        """
        s = self._state
        if not copy:
            return s
        return replace(
            s,
            params=[a.copy() for a in s.params],
            optimizer_state=[a.copy() for a in s.optimizer_state],
            best_params=None if s.best_params is None else [a.copy() for a in s.best_params],
            history=[dict(h) for h in s.history],
        )

    def _epoch_data(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return (x, y, order) for `epoch`: its (augmented) images and shuffled row order."""
        cfg = self.config
        n = len(self.y_train)
        if self.batch == n and cfg.augment == "none":
            return self.x_train, self.y_train, np.arange(n)  # full batch: order is irrelevant
        rng = np.random.default_rng([cfg.seed, 1, epoch])
        order = rng.permutation(n) if self.batch < n else np.arange(n)
        if cfg.augment == "shift":
            x = mlp.scale_pixels(augment.random_shifts(self.x_raw, int(cfg.max_shift), rng), self.dtype)
        elif cfg.augment == "affine":
            moved = augment.random_affine(
                self.x_raw,
                rng,
                max_shift=cfg.max_shift,
                max_rotation=cfg.max_rotation,
                max_scale=cfg.max_scale,
                elastic_alpha=cfg.elastic_alpha,
                elastic_sigma=cfg.elastic_sigma,
            )
            x = mlp.scale_pixels(moved, self.dtype)
        else:
            x = self.x_train
        return x, self.y_train, order

    def _update(self, grads: list[np.ndarray], lr: float) -> None:
        """Apply one optimizer step to the parameters in place."""
        cfg = self.config
        s = self._state
        t = self.dtype.type
        wd = cfg.weight_decay
        if cfg.optimizer == "adam":
            step = s.iteration + 1
            b1, b2 = cfg.beta1, cfg.beta2
            lr_t = lr * math.sqrt(1 - b2**step) / (1 - b1**step)
            eps_t = cfg.epsilon * math.sqrt(1 - b2**step)
            for i, (p, g) in enumerate(zip(s.params, grads, strict=False)):
                m, v = s.optimizer_state[2 * i], s.optimizer_state[2 * i + 1]
                m *= t(b1)
                m += t(1 - b1) * g
                v *= t(b2)
                g *= g
                g *= t(1 - b2)
                v += g
                if wd and i % 2 == 0:
                    p *= t(1 - lr * wd)
                denom = np.sqrt(v)
                denom += t(eps_t)
                np.divide(m, denom, out=denom)
                denom *= t(lr_t)
                p -= denom
            return
        for i, (p, g) in enumerate(zip(s.params, grads, strict=False)):
            if wd and i % 2 == 0:
                g += t(wd) * p
            if cfg.optimizer == "momentum":
                v = s.optimizer_state[i]
                v *= t(cfg.momentum)
                v += g
                g = v.copy()
            g *= t(lr)
            p -= g

    def _end_epoch(self) -> None:
        """Close the epoch: validate, record history, track the best parameters."""
        s = self._state
        val_acc: float | None = None
        val_loss: float | None = None
        n_val = len(self.y_val)
        if n_val:
            # One batch of rows at a time: a whole validation set in one pass would hold the
            # activations of every image (2 GB for 30,000 images through 4×2048 float64 layers).
            loss_sum, correct = 0.0, 0
            for lo in range(0, n_val, self.batch):
                yb = self.y_val[lo : lo + self.batch]
                fwd = mlp.forward(s.params, self.x_val[lo : lo + self.batch])
                loss_sum += mlp.cross_entropy(fwd, yb) * len(yb)
                correct += int((fwd.probabilities.argmax(axis=1) == yb).sum())
            del fwd
            val_loss = loss_sum / n_val
            val_acc = correct / n_val
        entry = {
            "epoch": s.epoch + 1,
            "iteration": s.iteration,
            "loss": s.epoch_loss_sum / max(1, s.step_in_epoch),
            "train_accuracy": s.epoch_correct / max(1, s.epoch_seen),
            "val_accuracy": val_acc,
            "val_loss": val_loss,
        }
        s.history.append(entry)
        if self.config.patience and val_acc is not None:
            if val_acc > s.best_val_accuracy:
                s.best_val_accuracy, s.best_epoch = val_acc, s.epoch + 1
                s.best_params = [p.copy() for p in s.params]
            elif s.epoch + 1 - s.best_epoch >= self.config.patience:
                s.stopped_early = True
        s.epoch += 1
        s.step_in_epoch = 0
        s.epoch_loss_sum, s.epoch_correct, s.epoch_seen = 0.0, 0, 0

    def run(
        self,
        on_progress: Callable[[Progress], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> TrainResult:
        """Train until done, stopped early, or `should_stop()` (checked between steps) is true."""
        s = self._state
        started = time.perf_counter() - s.elapsed
        total = self.total_iterations
        while s.iteration < total and not s.stopped_early:
            x, y, order = self._epoch_data(s.epoch)
            n = len(y)
            while s.step_in_epoch < self.steps_per_epoch and s.iteration < total:
                if should_stop is not None and should_stop():
                    s.elapsed = time.perf_counter() - started
                    return self._result(completed=False)
                lo = s.step_in_epoch * self.batch
                if self.batch == n:
                    xb, yb = x, y
                else:
                    rows = order[lo : lo + self.batch]
                    xb, yb = x[rows], y[rows]
                fwd = mlp.forward(s.params, xb)
                loss = mlp.cross_entropy(fwd, yb)
                correct = int((fwd.probabilities.argmax(axis=1) == yb).sum())
                lr = learning_rate_at(self.config, s.iteration, total)
                if self._plain_step:
                    grads = mlp.backward(s.params, fwd, yb, scale=lr)  # W ← W − α·dW is then W −= dW
                    for p, g in zip(s.params, grads, strict=True):
                        p -= g
                else:
                    grads = mlp.backward(s.params, fwd, yb)
                    self._update(grads, lr)
                del fwd, grads  # not held through validation or a checkpoint (memory peaks)
                s.iteration += 1
                s.step_in_epoch += 1
                s.epoch_loss_sum += loss
                s.epoch_correct += correct
                s.epoch_seen += len(yb)
                s.samples += len(yb)
                end = s.step_in_epoch == self.steps_per_epoch or s.iteration == total
                if end:
                    self._end_epoch()
                if on_progress is not None:
                    on_progress(self._progress(end, lr))
                if end:
                    break  # the next epoch has its own shuffle and augmentation (and may stop early)
            s.elapsed = time.perf_counter() - started
        s.elapsed = time.perf_counter() - started
        return self._result(completed=True)

    def _progress(self, end_of_epoch: bool, lr: float) -> Progress:
        s = self._state
        if end_of_epoch:
            last = s.history[-1]
            loss, acc = last["loss"], last["train_accuracy"]
        else:
            loss = s.epoch_loss_sum / max(1, s.step_in_epoch)
            acc = s.epoch_correct / max(1, s.epoch_seen)
        val = s.history[-1] if s.history else {}
        return Progress(
            epoch=s.epoch,
            iteration=s.iteration,
            total_iterations=self.total_iterations,
            loss=loss,
            train_accuracy=acc,
            val_accuracy=val.get("val_accuracy"),
            val_loss=val.get("val_loss"),
            learning_rate=lr,
            end_of_epoch=end_of_epoch,
        )

    def _result(self, completed: bool) -> TrainResult:
        s = self._state
        params = s.params
        if completed and s.best_params is not None:
            params = s.best_params  # early stopping keeps the best validated epoch
        last = s.history[-1] if s.history else {}
        val_acc = s.best_val_accuracy if s.best_params is not None and completed else last.get("val_accuracy")
        return TrainResult(
            params=[p.copy() for p in params],
            history=[dict(h) for h in s.history],
            train_accuracy=float(last.get("train_accuracy", float("nan"))),
            val_accuracy=val_acc,
            iterations=s.iteration,
            epochs=s.epoch,
            seconds=s.elapsed,
            samples_per_second=s.samples / s.elapsed if s.elapsed else 0.0,
            completed=completed,
            stopped_early=s.stopped_early,
            best_epoch=s.best_epoch,
        )
