"""Traffic splits: an alias that names several versions with weights, and how a request is routed.

A split is ``{version: weight}``: 2 to `MAX_VERSIONS` versions, weights > 0 normalised to sum to
1. Routing is deterministic for a key: the key and the model hash (sha256) to a point in [0, 1),
matched against the cumulative weights, so one client (one `X-Routing-Key`) sees one version for
as long as the split stands; without a key the point is random. Pure: the standard library only.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

from shared.errors import InvalidInput

#: Most versions one split may name.
MAX_VERSIONS = 10
#: The denominator of `route_point`'s hash (sha256 is 256 bits).
_HASH_SPAN = 2**256


def normalize(weights: Mapping[Any, Any]) -> dict[int, float]:
    """Return `weights` as {version: weight} summing to 1, sorted by version; InvalidInput if it is no split.

    Keys may be ints or decimal strings (JSON objects have string keys); weights are positive
    finite numbers, any scale (``{4: 9, 5: 1}`` is 90 % / 10 %).
    """
    if not isinstance(weights, Mapping) or not weights:
        raise InvalidInput("a split names at least one version with its weight: {version: weight}")
    if len(weights) > MAX_VERSIONS:
        raise InvalidInput(f"a split names at most {MAX_VERSIONS} versions, got {len(weights)}")
    parsed: dict[int, float] = {}
    for key, weight in weights.items():
        version = _version(key)
        if version in parsed:
            raise InvalidInput(f"version {version} is named twice in the split")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise InvalidInput(f"the weight of version {version} must be a number, got {weight!r}")
        if not math.isfinite(weight) or weight <= 0:
            raise InvalidInput(f"the weight of version {version} must be > 0 and finite, got {weight!r}")
        parsed[version] = float(weight)
    total = math.fsum(parsed.values())
    return {v: parsed[v] / total for v in sorted(parsed)}


def _version(key: object) -> int:
    if isinstance(key, str) and key.isascii() and key.isdigit():
        key = int(key)
    if isinstance(key, bool) or not isinstance(key, int) or key < 1:
        raise InvalidInput(f"invalid version {key!r} in the split: expected a positive integer")
    return key


def primary(split: Mapping[int, float]) -> int:
    """Return the version with the largest weight (the oldest of equals): what split-unaware readers see."""
    return min(split, key=lambda v: (-split[v], v))


def to_json(split: Mapping[int, float]) -> dict[str, float]:
    """Return a split as stored and shown: {"4": 0.9, "5": 0.1}."""
    return {str(v): w for v, w in sorted(split.items())}


def from_json(data: Mapping[str, Any]) -> dict[int, float]:
    """Return a stored split as {version: weight}."""
    return {int(v): float(w) for v, w in data.items()}


def route_point(model: str, key: str | None) -> float:
    """Return where a request falls in [0, 1): a hash of model and key, or random without a key."""
    if key is None:
        return random.random()
    digest = hashlib.sha256(f"{model}|{key}".encode()).digest()
    return int.from_bytes(digest, "big") / _HASH_SPAN


class Router:
    """A split ready for the request path: cumulative weights and what each version stands for."""

    __slots__ = ("_bounds", "_targets", "split")

    @property
    def targets(self) -> list[Any]:
        """Return the targets, in the order of the split's versions."""
        return list(self._targets)

    def __init__(self, split: Mapping[int, float], targets: Sequence[Any] | None = None) -> None:
        """Route over `split` (normalised); `targets[i]` stands for its i-th version (default: itself)."""
        self.split = dict(sorted(split.items()))
        self._targets = list(self.split) if targets is None else list(targets)
        if len(self._targets) != len(self.split):
            raise ValueError("one target per version of the split")
        # The last bound is 1 exactly, whatever the rounding of the sum: every point finds a version.
        self._bounds = list(itertools.accumulate(self.split.values()))
        self._bounds[-1] = 1.0

    def pick(self, model: str, key: str | None) -> Any:
        """Return the target a request with routing `key` (None: random) goes to."""
        point = route_point(model, key)
        return self._targets[min(bisect.bisect_right(self._bounds, point), len(self._targets) - 1)]
