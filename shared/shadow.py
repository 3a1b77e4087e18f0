"""Shadow versions: a version that answers a sample of a model's live requests off the request path.

Its answers are logged (kind ``shadow``) and compared with the served ones, never returned. The
setting is a hash in `Keys.shadow(model)`; setting or clearing it publishes a ``shadow`` event on
the registry's channel, and predictors also read it at every poll (services/serving/cache.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import orjson

from shared.errors import InvalidInput
from shared.registry import Registry, check_name, check_version


@dataclass(frozen=True)
class Shadow:
    """A model's shadow: the version, and the share (0–1) of live images it also answers."""

    version: int
    sample: float

    def to_dict(self) -> dict[str, float | int]:
        """Return the shadow as the API shows it."""
        return {"version": self.version, "sample": self.sample}


def read(registry: Registry, model: str) -> Shadow | None:
    """Return the model's shadow, or None; a hash that does not parse counts as none."""
    raw = registry.redis.hgetall(registry.keys.shadow(model))
    try:
        return Shadow(int(raw[b"version"]), float(raw[b"sample"]))
    except (KeyError, ValueError):
        return None


def check_sample(sample: object) -> float:
    """Return `sample` if it is a number from 0 to 1, else raise InvalidInput."""
    if isinstance(sample, bool) or not isinstance(sample, int | float) or not 0 <= sample <= 1:
        raise InvalidInput("sample must be a number from 0 to 1 (the share of live images shadowed)")
    if not math.isfinite(sample):
        raise InvalidInput("sample must be finite")
    return float(sample)


def set_shadow(registry: Registry, model: str, version: int, sample: float) -> Shadow:
    """Make `version` (which must exist: 404) the model's shadow for `sample` of its live images."""
    check_name(model)
    shadow = Shadow(check_version(version), check_sample(sample))
    registry.record(model, version)  # ModelNotFound / VersionNotFound
    key = registry.keys.shadow(model)
    event = orjson.dumps({"event": "shadow", "model": model, "version": version, "sample": shadow.sample})
    pipe = registry.redis.pipeline()  # MULTI/EXEC: never a half-written shadow
    pipe.delete(key)
    pipe.hset(key, mapping={"version": version, "sample": repr(shadow.sample)})
    pipe.publish(registry.keys.events(), event)
    pipe.execute()
    return shadow


def clear_shadow(registry: Registry, model: str) -> bool:
    """Remove the model's shadow; return whether it had one."""
    check_name(model)
    pipe = registry.redis.pipeline()
    pipe.delete(registry.keys.shadow(model))
    pipe.publish(registry.keys.events(), orjson.dumps({"event": "shadow", "model": model, "version": None}))
    existed, _ = pipe.execute()
    return bool(existed)
