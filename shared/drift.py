"""Drift: how far live images are from the images a version was trained on, as PSI. NumPy only.

A *profile* counts images per bin of five features (`FEATURES`), each histogrammed into the
fixed bins of `BINS`; it is JSON as it is (`dict[str, list[int]]`), small (50 ints whatever the
number of images), and profiles add up (`merge`), so a live profile can be kept as counters in a
Redis hash (`counters`, `from_counters`).

- ``mean``: mean intensity of the image, 0–1 (pixels / 255).
- ``ink``: share of the image's pixels brighter than half scale (> 127.5, i.e. ≥ 128), 0–1.
- ``row``, ``col``: centre of mass of the intensities, in pixels from the top / the left edge
  (0–27); an all-zero image has none and counts at the image centre, 13.5.
- ``label``: the label, 0–9 (the true label for a training set, the predicted one live).

`BINS[feature]` holds the inner edges of its bins: bin k holds the values v with
``edges[k-1] <= v < edges[k]``, the first bin everything below the first edge and the last bin
everything from the last edge up, so every possible value has a bin. The edges sit where MNIST
digits fall (mean intensity and ink mostly 0.05–0.3; MNIST centred each digit's mass within
13.5–14.5 pixels), with one bin on each side for what falls outside.

`psi` compares two profiles feature by feature with the population stability index,
``PSI = Σ (q − p) · ln(q / p)`` over the bins, p and q being the shares of the reference and the
live images in each bin, each at least `EPSILON` so that an empty bin costs a large but finite
amount instead of a division by zero. `score` is the largest PSI of the features; above
`THRESHOLD` (0.25, the usual reading of a "significant shift") a version counts as drifted.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

#: A profile: counts of images per bin, by feature (JSON-safe as it is).
Profile = dict[str, list[int]]

#: Side of an image (pixels); images are rows of SIDE × SIDE pixels, row-major.
SIDE = 28
#: Pixels per image.
PIXELS = SIDE * SIDE
#: Classes of the label feature (digits 0–9).
CLASSES = 10
#: Pixel value above which a pixel counts as ink (half of 255).
INK_LEVEL = 127.5
#: Centre of mass given to an image without any ink at all (pixels: the image's centre).
BLANK_CENTRE = (SIDE - 1) / 2
#: Smallest share of a bin in `psi` (empty bins would divide by zero).
EPSILON = 1e-4
#: PSI above which a version's live traffic counts as drifted (0.25: a significant shift).
THRESHOLD = 0.25
#: Live images a drift score needs before it can say "drifted": below it, each feature's PSI is
#: mostly sampling noise (about 9 / n for ten bins: 0.09 at 100 images, 0.3 at 30).
MIN_IMAGES = 100
#: Prefix of a profile's counters in a Redis hash (`counters`): ``profile:<feature>:<bin>``.
COUNTER_PREFIX = "profile:"
#: Images histogrammed at once by `profile` (bounds its temporary memory to about 10 MB).
CHUNK = 4096

_SHARES = (0.05, 0.075, 0.1, 0.125, 0.15, 0.175, 0.2, 0.25, 0.3)
_CENTRE = (12.0, 13.0, 13.5, 13.75, 14.0, 14.25, 14.5, 15.0, 16.0)

#: Inner bin edges of each feature (a feature with k edges has k + 1 bins; see the module docstring).
BINS: dict[str, tuple[float, ...]] = {
    "mean": _SHARES,
    "ink": _SHARES,
    "row": _CENTRE,
    "col": _CENTRE,
    "label": tuple(float(c) for c in range(1, CLASSES)),
}
#: The features of a profile, in order.
FEATURES: tuple[str, ...] = tuple(BINS)


def bin_count(feature: str) -> int:
    """Return how many bins `feature` has."""
    return len(BINS[feature]) + 1


def empty() -> Profile:
    """Return the profile of no images (zeros in every bin)."""
    return {f: [0] * bin_count(f) for f in FEATURES}


def features(pixels: np.ndarray) -> dict[str, np.ndarray]:
    """Return the image features of pixels (n, 784) uint8: mean, ink, row, col, each (n,) float64."""
    n = len(pixels)
    img = pixels.reshape(n, SIDE, SIDE)
    rows = img.sum(axis=2, dtype=np.int64)  # (n, 28): mass of each row
    cols = img.sum(axis=1, dtype=np.int64)  # (n, 28): mass of each column
    total = rows.sum(axis=1)
    at = np.arange(SIDE, dtype=np.float64)
    blank = total == 0
    safe = np.where(blank, 1, total)
    return {
        "mean": total / (PIXELS * 255.0),
        "ink": np.count_nonzero(pixels > INK_LEVEL, axis=1) / PIXELS,
        "row": np.where(blank, BLANK_CENTRE, rows @ at / safe),
        "col": np.where(blank, BLANK_CENTRE, cols @ at / safe),
    }


def profile(pixels: np.ndarray, labels: np.ndarray) -> Profile:
    """Return the profile of images pixels (n, 784) uint8 with labels (n,) integers 0–9.

    Vectorised and chunked: 60,000 images take a few tens of milliseconds and little memory.
    ValueError for the wrong shapes, dtype or a label outside 0–9.
    """
    pixels, labels = np.asarray(pixels), np.asarray(labels)
    if pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.shape[1] != PIXELS:
        raise ValueError(f"pixels must be uint8 (n, {PIXELS}), not {pixels.dtype} {pixels.shape}")
    if labels.shape != (len(pixels),) or labels.dtype.kind not in "ui":
        raise ValueError(f"labels must be integers ({len(pixels)},), not {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= CLASSES):
        raise ValueError(f"labels must be 0–{CLASSES - 1}")
    counts = {f: np.zeros(bin_count(f), dtype=np.int64) for f in FEATURES}
    for lo in range(0, len(pixels), CHUNK):
        values = features(pixels[lo : lo + CHUNK])
        values["label"] = labels[lo : lo + CHUNK]
        for f, v in values.items():
            counts[f] += np.bincount(np.digitize(v, BINS[f]), minlength=bin_count(f))
    return {f: [int(c) for c in counts[f]] for f in FEATURES}


def check(raw: object) -> Profile:
    """Return `raw` (e.g. read from JSON) as a profile; ValueError unless it has every feature's bins."""
    if not isinstance(raw, Mapping) or set(raw) != set(FEATURES):
        raise ValueError(f"a profile is an object with exactly the features {', '.join(FEATURES)}")
    out: Profile = {}
    for f in FEATURES:
        counts = raw[f]
        ok = isinstance(counts, list) and len(counts) == bin_count(f)
        if not ok or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
            raise ValueError(f"profile feature {f!r} must be {bin_count(f)} counts ≥ 0")
        out[f] = list(counts)
    return out


def counters(p: Mapping[str, list[int]], prefix: str = COUNTER_PREFIX) -> dict[str, int]:
    """Return the non-zero bins of `p` as counters named ``<prefix><feature>:<bin>`` (for HINCRBY)."""
    return {f"{prefix}{f}:{i}": int(c) for f in p for i, c in enumerate(p[f]) if c}


def from_counters(fields: Mapping[str | bytes, str | bytes | int], prefix: str = COUNTER_PREFIX) -> Profile:
    """Return the profile that counters (a hash as HGETALL gives it) hold; other fields are ignored."""
    p = empty()
    for raw_name, raw_value in fields.items():
        name = raw_name.decode() if isinstance(raw_name, bytes) else raw_name
        if not name.startswith(prefix):
            continue
        feature, _, index = name[len(prefix) :].rpartition(":")
        if feature in p and index.isdigit() and int(index) < len(p[feature]):
            p[feature][int(index)] += int(raw_value)
    return p


def count(p: Mapping[str, list[int]]) -> int:
    """Return how many images profile `p` counts (0 for an empty one)."""
    return int(sum(p.get("label", ())))


def merge(a: Mapping[str, list[int]], b: Mapping[str, list[int]]) -> Profile:
    """Return the profile of the images of `a` and of `b` together (bins added feature by feature)."""
    _same_bins(a, b)
    return {f: [int(x) + int(y) for x, y in zip(a[f], b[f], strict=True)] for f in a}


def psi(reference: Mapping[str, list[int]], live: Mapping[str, list[int]]) -> dict[str, float]:
    """Return the PSI of each feature of `live` against `reference` (0: the same shares).

    ValueError when the profiles have different features or bins, or a feature counts no image.
    """
    _same_bins(reference, live)
    out = {}
    for f in reference:
        p, q = _shares(reference[f], f), _shares(live[f], f)
        out[f] = float(np.sum((q - p) * np.log(q / p)))
    return out


def score(reference: Mapping[str, list[int]], live: Mapping[str, list[int]]) -> float:
    """Return the drift score of `live` against `reference`: the largest PSI of their features."""
    return max(psi(reference, live).values())


def _shares(counts: list[int], feature: str) -> np.ndarray:
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    if total <= 0:
        raise ValueError(f"feature {feature!r} counts no image: nothing to compare")
    return np.maximum(c / total, EPSILON)


def _same_bins(a: Mapping[str, list[int]], b: Mapping[str, list[int]]) -> None:
    if set(a) != set(b):
        raise ValueError(f"profiles with different features: {sorted(a)} and {sorted(b)}")
    for f in a:
        if len(a[f]) != len(b[f]):
            raise ValueError(
                f"feature {f!r} has {len(a[f])} bins in one profile and {len(b[f])} in the other"
            )
