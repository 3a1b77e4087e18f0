"""What each version of a model did live: requests, online accuracy, confusion, shadow agreement, drift.

Read from the counters the recorder and feedback keep in `Keys.version_stats` (see
services/serving/recorder.py and shared/feedback.py). The drift score compares the live profile
(``profile:<feature>:<bin>`` counters of the images the version answered) with the training set's,
stored in the version's metadata under ``"profile"`` (shared/drift.py); without that reference,
or before any live image, drift is None.
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
    """Return {score, features, threshold, drifted} of live against training, or None without both."""
    try:
        reference = drift.check(metadata.get("profile"))
    except ValueError:  # no reference (an imported model) or one of other bins
        return None
    live = drift.from_counters(cast(dict[str | bytes, str | bytes | int], stats))
    if drift.count(live) == 0 or drift.count(reference) == 0:
        return None
    features = drift.psi(reference, live)
    score = max(features.values())
    return {"score": score, "features": features, "threshold": threshold, "drifted": score > threshold}


def version_report(record: VersionRecord, stats: dict[str, int], threshold: float) -> dict[str, Any]:
    """Return what the monitor shows of one version, from its record and its counters."""
    feedback = stats.get("feedback", 0)
    confusion = [[stats.get(f"confusion:{t}:{p}", 0) for p in range(CLASSES)] for t in range(CLASSES)]
    compared = stats.get("shadow_compared", 0)
    return {
        "requests": stats.get("requests", 0),
        "feedback": feedback,
        "online_accuracy": stats.get("correct", 0) / feedback if feedback else None,
        "confusion": confusion,
        "shadow": {"compared": compared, "agreement": stats.get("shadow_agreed", 0) / compared}
        if compared
        else None,
        "drift": drift_report(record.metadata, stats, threshold),
    }


def read_stats(registry: Registry, model: str, versions: list[int]) -> dict[int, dict[str, int]]:
    """Return the counters of each of `versions` (one pipeline)."""
    pipe = registry.redis.pipeline(transaction=False)
    for version in versions:
        pipe.hgetall(registry.keys.version_stats(model, version))
    return {
        version: {k.decode(): int(v) for k, v in raw.items()}
        for version, raw in zip(versions, pipe.execute(), strict=True)
    }


def monitor(registry: Registry, model: str, threshold: float) -> dict[str, Any]:
    """Return {"model", "versions": {"<v>": report}} for every version of `model` (ModelNotFound: 404)."""
    records = registry.versions(model)
    stats = read_stats(registry, model, [r.version for r in records])
    return {
        "model": model,
        "versions": {str(r.version): version_report(r, stats[r.version], threshold) for r in records},
    }


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
