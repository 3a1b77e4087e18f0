"""The service's answers to one batch of `mnist predict`, as plain Python lists (no NumPy).

The library's `client.api.Prediction` holds the same answers as NumPy arrays. The command keeps
them as lists: it only formats them, and NumPy would take longer to import than the formatting.
The service answers JSON, or with `Accept: application/x-npy` the float32 probabilities as .npy
(see docs/predict.md): the command asks for .npy, which needs no JSON parser and no float text.
"""

from __future__ import annotations

import io
from typing import Protocol

from client.defaults import CLASSES
from client.errors import ClientError
from shared.formats import npy

#: Media type of an .npy answer.
NPY = "application/x-npy"
#: Headers of an .npy answer: the model and the version that answered.
MODEL_HEADER, VERSION_HEADER = "Mnist-Model", "Mnist-Model-Version"


class Headers(Protocol):
    """An answer's headers: http.client's HTTPMessage (whose `get` ignores case), or a dict."""

    def get(self, name: str, default: None = None, /) -> str | None: ...


class Answers:
    """Answers for n images: labels (n), probabilities (n × 10), and the model and version that gave them."""

    __slots__ = ("model", "version", "labels", "probabilities")

    def __init__(self, model: str, version: int, labels: list[int], probabilities: list[list[float]]) -> None:
        self.model, self.version, self.labels, self.probabilities = model, version, labels, probabilities

    def __len__(self) -> int:
        return len(self.labels)

    def confidence(self) -> list[float]:
        """Return the probability of each predicted label (n)."""
        return [row[label] for row, label in zip(self.probabilities, self.labels, strict=True)]

    def top_k(self, k: int) -> tuple[list[list[int]], list[list[float]]]:
        """Return each image's k most probable labels and their probabilities (n × k each), best first.

        Ties keep the lower label first, as the service and `Prediction.top_k` order them.
        """
        order = [sorted(range(CLASSES), key=row.__getitem__, reverse=True)[:k] for row in self.probabilities]
        chosen = [[row[c] for c in best] for row, best in zip(self.probabilities, order, strict=True)]
        return order, chosen


def parse(body: bytes, headers: Headers, count: int) -> Answers:
    """Return the Answers of a v1 answer for `count` images, .npy or JSON as its Content-Type says."""
    kind = (headers.get("Content-Type") or "").partition(";")[0].strip().lower()
    return parse_npy(body, headers, count) if kind == NPY else parse_json(body, count)


def parse_npy(body: bytes, headers: Headers, count: int) -> Answers:
    """Return the Answers of an .npy answer: probabilities (count, 10), the model and version in headers."""
    try:
        f = io.BytesIO(body)
        shape, fortran, descr = npy.read_header(f)
        kind = npy.kind_of(descr)
        if shape != (count, CLASSES) or fortran or kind is None or kind[0] != "f":
            raise ValueError(f"an array {descr!r} of shape {shape} for {count} images")
        flat = npy.read_array(f, descr, count * CLASSES).tolist()
        model, version = headers.get(MODEL_HEADER), int(headers.get(VERSION_HEADER) or "")
    except ValueError as exc:
        raise ClientError("Bad Answer", None, f"not a prediction answer ({exc})") from None
    if not model:
        raise ClientError("Bad Answer", None, f"an .npy answer without its {MODEL_HEADER} header")
    rows = [flat[i : i + CLASSES] for i in range(0, len(flat), CLASSES)]
    labels = [row.index(max(row)) for row in rows]  # the first of equals, as the service's argmax
    return Answers(model, version, labels, rows)


def parse_json(body: bytes, count: int) -> Answers:
    """Return the Answers of a v1 JSON answer {"model", "model_version", "predictions"} for `count` images."""
    import orjson  # only for JSON answers

    try:
        answer = orjson.loads(body)
        predictions = answer["predictions"]
        labels = [p["label"] for p in predictions]
        probabilities = [p["probabilities"] for p in predictions]
        result = Answers(str(answer["model"]), int(answer["model_version"]), labels, probabilities)
    except (ValueError, KeyError, TypeError) as exc:  # orjson.JSONDecodeError is a ValueError
        raise ClientError("Bad Answer", None, f"not a prediction answer ({exc!r})") from None
    if len(result) != count or any(len(row) != CLASSES for row in probabilities):
        raise ClientError("Bad Answer", None, f"{len(result)} answers for {count} images")
    return result
