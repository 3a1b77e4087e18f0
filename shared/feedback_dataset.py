"""A dataset from what the service saw: logged live predictions that received a feedback label.

The prediction log (`Keys.prediction_log`, a stream, one entry per image) is read oldest first in
pages of `PAGE` entries; each page's request ids are looked up in the feedback labels
(`Keys.feedback_labels`, request id -> true label) with one HMGET. A live entry (never a shadow's)
with a label, of the version asked for if any, gives one training image with its true label. An
entry that cannot be read (pixels not 784 bytes, a label outside 0–9) is skipped and counted.

The result is an ordinary dataset: the API stores it through `DatasetStore` as an upload would be,
so a training job names it like any other and its digest goes into the version's lineage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import redis

from shared import datasets
from shared.dataset_files import PIXELS
from shared.errors import PayloadTooLarge
from shared.keys import Keys

#: Log entries read per XRANGE (about 1 MB of pixels, one short command).
PAGE = 1000
#: Bytes one image with its label takes, as MNIST_MAX_DATASET_BYTES counts a dataset (uint8 each).
IMAGE_BYTES = PIXELS + 1
#: Log entries that are served predictions (shadow entries are never returned to clients).
LIVE = b"live"


@dataclass(frozen=True)
class Feedback:
    """Logged live images with their true labels, oldest first."""

    #: Images (n, 784) uint8.
    pixels: np.ndarray
    #: True labels (n,) uint8, 0–9.
    labels: np.ndarray
    #: Log entries read (live and shadow, labelled or not).
    scanned: int
    #: Labelled live entries skipped because they could not be read.
    skipped: int


def read(conn: redis.Redis, keys: Keys, model: str, *, version: int | None, max_images: int) -> Feedback:
    """Return the model's logged live images that have a feedback label (of `version` only, if given).

    PayloadTooLarge as soon as more than `max_images` are found: nothing beyond the limit is kept.
    """
    pixels, labels = bytearray(), bytearray()
    scanned = skipped = 0
    start = "-"
    wanted = None if version is None else str(version).encode()
    while True:
        page = _page(conn, keys.prediction_log(model), start)
        if not page:
            break
        scanned += len(page)
        live = [
            f for _, f in page if f.get(b"kind") == LIVE and (wanted is None or f.get(b"version") == wanted)
        ]
        ids = [f.get(b"id", b"") for f in live]
        found = cast(list[bytes | None], conn.hmget(keys.feedback_labels(model), ids)) if live else []
        for fields, label in zip(live, found, strict=True):
            if label is None:
                continue
            true = _label(label)
            image = fields.get(b"pixels", b"")
            if true is None or len(image) != PIXELS:
                skipped += 1
                continue
            if len(labels) >= max_images:
                raise PayloadTooLarge(
                    f"more than {max_images:,} labelled images: the dataset would be larger than"
                    " MNIST_MAX_DATASET_BYTES; name a version, or merge with a smaller dataset"
                )
            pixels += image
            labels.append(true)
        if len(page) < PAGE:
            break
        start = "(" + page[-1][0].decode()  # exclusive: the next page starts after this entry
    # Views of the buffers, not copies: the images may be most of MNIST_MAX_DATASET_BYTES.
    x = np.frombuffer(pixels, dtype=np.uint8).reshape(-1, PIXELS)
    return Feedback(x, np.frombuffer(labels, dtype=np.uint8), scanned, skipped)


def build(
    name: str, feedback: Feedback, *, model: str, version: int | None, merge: datasets.Dataset | None
) -> tuple[datasets.Dataset, dict[str, Any]]:
    """Return the dataset `name` of `feedback`'s images (then `merge`'s), and its origin as JSON.

    The merged dataset's test split, if it has one, is the new dataset's: a version trained on it
    is scored on images that did not come from the service.
    """
    origin: dict[str, Any] = {
        "kind": "feedback",
        "model": model,
        "version": version,
        "merged": None if merge is None else merge.name,
        "feedback_images": int(len(feedback.labels)),
        "scanned": feedback.scanned,
        "skipped": feedback.skipped,
    }
    of = f"{model} v{version}" if version is not None else f"{model} (every version)"
    source = f"feedback labels of {of}" + (f" merged with {merge.name}" if merge is not None else "")
    if merge is None:
        return datasets.make_dataset(name, feedback.pixels, feedback.labels, source=source), origin
    data = datasets.make_dataset(
        name,
        np.concatenate([feedback.pixels, merge.x_train]),
        np.concatenate([feedback.labels, merge.y_train]),
        merge.x_test,
        merge.y_test,
        source=source,
        classes=merge.classes,
    )
    return data, origin


def _label(raw: bytes) -> int | None:
    text = raw.decode("ascii", "replace").strip()
    return int(text) if text.isdigit() and len(text) == 1 else None


def _page(conn: redis.Redis, key: str, start: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """Return up to PAGE entries of stream `key` from `start` on: (entry id, fields), bytes all."""
    return cast(list[tuple[bytes, dict[bytes, bytes]]], conn.xrange(key, min=start, max="+", count=PAGE))
