"""What each version of a model did live: requests, online accuracy, confusion, shadow agreement, drift.

Read from the counters the recorder and feedback keep in `Keys.version_stats` (see
services/serving/recorder.py and shared/feedback.py). The online accuracy and the confusion are
the feedback window's (the last MNIST_FEEDBACK_WINDOW labels: `Keys.window_previous` and
`Keys.window_current` added up), their totals since the version first served beside them. The
drift score compares the live profile (``profile:<feature>:<bin>`` counters of the images the
version answered) with the training set's, stored in the version's metadata under ``"profile"``
(shared/drift.py); without that reference, or before any live image, drift is None.
"""

from __future__ import annotations

from typing import Any, cast

from shared import drift
from shared.errors import MnistError
from shared.registry import Registry, VersionRecord

#: Classes of the confusion matrix.
CLASSES = 10
#: Versions (of all models together) whose gauges /metrics shows, at most: its series stay bounded.
MAX_GAUGE_VERSIONS = 500


def drift_report(metadata: dict[str, Any], stats: dict[str, int], threshold: float) -> dict[str, Any] | None:
    """Return {score, features, threshold, images, drifted} of live against training, or None without both.

    `drifted` needs `drift.MIN_IMAGES` live images: fewer score high on sampling noise alone.
    """
    try:
        reference = drift.check(metadata.get("profile"))
    except ValueError:  # no reference (an imported model) or one of other bins
        return None
    live = drift.from_counters(cast(dict[str | bytes, str | bytes | int], stats))
    if drift.count(live) == 0 or drift.count(reference) == 0:
        return None
    features = drift.psi(reference, live)
    score = max(features.values())
    images = drift.count(live)
    return {
        "score": score,
        "features": features,
        "threshold": threshold,
        "images": images,
        "drifted": images >= drift.MIN_IMAGES and score > threshold,
    }


def feedback_report(counters: dict[str, int]) -> dict[str, Any]:
    """Return {feedback, online_accuracy (None without feedback), confusion [true][predicted]} of counters."""
    feedback = counters.get("feedback", 0)
    confusion = [[counters.get(f"confusion:{t}:{p}", 0) for p in range(CLASSES)] for t in range(CLASSES)]
    return {
        "feedback": feedback,
        "online_accuracy": counters.get("correct", 0) / feedback if feedback else None,
        "confusion": confusion,
    }


def version_report(
    record: VersionRecord, stats: dict[str, int], window: dict[str, int], threshold: float
) -> dict[str, Any]:
    """Return what the monitor shows of one version, from its record, its counters and its window's."""
    compared = stats.get("shadow_compared", 0)
    return {
        "requests": stats.get("requests", 0),
        **feedback_report(window),
        "total": feedback_report(stats),
        "shadow": {"compared": compared, "agreement": stats.get("shadow_agreed", 0) / compared}
        if compared
        else None,
        "drift": drift_report(record.metadata, stats, threshold),
    }


def _read_hashes(registry: Registry, names: list[str]) -> list[dict[str, int]]:
    """Return the counters of each hash in `names` (one pipeline)."""
    pipe = registry.redis.pipeline(transaction=False)
    for name in names:
        pipe.hgetall(name)
    return [{k.decode(): int(v) for k, v in raw.items()} for raw in pipe.execute()]


def _added(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    """Return the counters of `a` and `b` added up."""
    return {name: a.get(name, 0) + b.get(name, 0) for name in a.keys() | b.keys()}


def read_stats(registry: Registry, model: str, versions: list[int]) -> dict[int, dict[str, int]]:
    """Return the counters of each of `versions`, totals since it first served (one pipeline)."""
    found = _read_hashes(registry, [registry.keys.version_stats(model, v) for v in versions])
    return dict(zip(versions, found, strict=True))


def read_windows(registry: Registry, model: str, versions: list[int]) -> dict[int, dict[str, int]]:
    """Return each version's window counters (feedback, correct, confusion:…), in one pipeline."""
    names = []
    for version in versions:
        names += [registry.keys.window_previous(model, version), registry.keys.window_current(model, version)]
    found = _read_hashes(registry, names)
    return {v: _added(found[2 * i], found[2 * i + 1]) for i, v in enumerate(versions)}


def monitor(registry: Registry, model: str, threshold: float) -> dict[str, Any]:
    """Return {"model", "versions": {"<v>": report}} for every version of `model` (ModelNotFound: 404)."""
    records = registry.versions(model)
    versions = [r.version for r in records]
    stats, windows = read_stats(registry, model, versions), read_windows(registry, model, versions)
    reports = {
        str(v.version): version_report(v, stats[v.version], windows[v.version], threshold) for v in records
    }
    return {"model": model, "versions": reports}


def every_version(
    registry: Registry, threshold: float, limit: int = MAX_GAUGE_VERSIONS
) -> list[tuple[str, str, dict]]:
    """Return (model, version, report) of every model's versions, at most `limit` of them.

    A model deleted meanwhile, or whose records cannot be read, is left out.
    """
    rows: list[tuple[str, str, dict]] = []
    for model in registry.models():
        try:
            versions = monitor(registry, model, threshold)["versions"]
        except MnistError:
            continue
        for version, report in versions.items():
            if len(rows) >= limit:
                return rows
            rows.append((model, version, report))
    return rows
