"""Helpers of the client tests: a quickly trained model, a live stack with a worker, test pictures."""

from __future__ import annotations

import functools
import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from shared import datasets, mlp, pipeline, serialization
from tests.api_helpers import Live, live_stack
from tests.live_fixtures import Process, start_worker

#: A model that trains in about half a second on mnist-sample and reaches ~90 % on its test split.
QUICK_SPEC = {
    "dataset": "mnist-sample",
    "hidden": [64],
    "optimizer": "adam",
    "epochs": 5,
    "augment": "shift",
    "seed": 0,
}


@functools.cache
def trained() -> tuple[list[np.ndarray], dict[str, Any]]:
    """Return the parameters and metadata of QUICK_SPEC, trained in-process once per test run."""
    run = pipeline.prepare(pipeline.load_spec(QUICK_SPEC))
    result = run.trainer.run()
    metrics = pipeline.evaluate(run, result)
    return result.params, pipeline.model_meta(run, result, metrics)


def publish(live: Live, model: str = "mnist") -> int:
    """Publish the quick model under `model` on the live stack's registry; return its version."""
    params, meta = trained()
    return live.registry().publish(model, serialization.model_to_bytes(params, meta), meta)


def predict_locally(images: np.ndarray) -> np.ndarray:
    """Return what the quick model predicts for uint8 images (n, 784) or (n, 28, 28), in-process."""
    params, _ = trained()
    return mlp.predict(params, mlp.scale_pixels(images.reshape(len(images), -1)))


@functools.cache
def sample_digits() -> tuple[np.ndarray, np.ndarray]:
    """Return mnist-sample's test digits (n, 784) uint8 and their labels."""
    data = datasets.load("mnist-sample")
    assert data.x_test is not None and data.y_test is not None
    return data.x_test, data.y_test


def dark_on_light(
    digit: np.ndarray, rng: np.random.Generator, side: int = 100, size: int = 64
) -> Image.Image:
    """Return an MNIST digit as a scan would show it: dark ink on white, enlarged, off-centre."""
    ink = Image.fromarray(255 - digit.reshape(28, 28)).resize((size, size), Image.Resampling.LANCZOS)
    canvas = Image.new("L", (side, side), 255)
    canvas.paste(ink, (int(rng.integers(0, side - size)), int(rng.integers(0, side - size))))
    return canvas


def png_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    """Return an image encoded as PNG (or another Pillow format)."""
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


@dataclass
class Stack:
    """A live gunicorn with a published model, and optionally an RQ worker."""

    live: Live
    version: int
    worker: Process | None


@contextmanager
def client_stack(redis_url: str, tmp: Path, worker: bool = False, **more: str) -> Iterator[Stack]:
    """Run gunicorn (and a worker) on a fresh stack with the quick model published as `mnist`."""
    with live_stack(redis_url, tmp, **more) as live:
        process = start_worker(live.env, tmp) if worker else None
        try:
            yield Stack(live, publish(live), process)
        finally:
            if process is not None:
                process.stop()
