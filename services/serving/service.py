"""The one prediction path: resolve a model's version, run the forward pass, count the images.

v1, V2 and evaluation are protocol handlers over `PredictionService`: they decode their bodies
into pixel rows and render its answers, and whatever must hold for every prediction (a limit, a
metric, a routing rule) is written here once. A request names a model and a version, an alias, or
neither: then the model's default answers (its `production` alias when set, else its latest
version), from memory, without a Redis round trip (see `cache.ModelCache`). When that alias is a
traffic split, each request is routed to one of its versions by its routing key (the same key,
the same version) or at random, and the answer names the version that computed it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.serving.cache import REDIS_ERRORS, LoadedModel, ModelCache
from services.serving.metrics import IMAGES, child
from services.serving.recorder import Recorder
from shared.config import Settings
from shared.errors import ServiceUnavailable
from shared.registry import Registry, check_name, check_version


@dataclass(frozen=True)
class Prediction:
    """What one forward pass answered: the model and version that computed it, probabilities (n, 10),
    and the request's id (image i of a batch of several is logged as ``<request_id>/<i>``)."""

    model: str
    version: int
    probabilities: np.ndarray
    request_id: str

    @property
    def labels(self) -> np.ndarray:
        """Return the most probable class of each image (n,)."""
        return self.probabilities.argmax(axis=1)


def new_request_id() -> str:
    """Return a fresh request id: 16 random bytes in hex."""
    return secrets.token_hex(16)


class PredictionService:
    """Models resolved, held and run for one process; one per app (`Services.predictions`)."""

    def __init__(self, registry: Registry, settings: Settings, *, watcher: Registry | None = None) -> None:
        """Serve the versions of `registry`; nothing loads until asked, or until `start()`.

        `watcher`, the same registry on connections of its own, serves the hot-reload threads.
        """
        self.registry = registry
        self.settings = settings
        self.cache = ModelCache(registry, settings, watcher=watcher)
        # The recorder writes on the watcher's connections: never on the requests' bounded pool.
        self.recorder = Recorder((watcher or registry).redis, registry.keys, settings, self.cache)

    def model(self, name: str, version: int | None = None, alias: str | None = None) -> LoadedModel:
        """Return the version that answers for `name`: `version`, else `alias`, else the default.

        Raises ModelNotFound / VersionNotFound / AliasNotFound (404), InvalidInput (400), and
        ServiceUnavailable (503) when the version is not in memory and cannot be loaded.
        """
        return self.cache.get(name, version=version, alias=alias)

    def predict(
        self,
        name: str,
        pixels: np.ndarray,
        *,
        version: int | None = None,
        alias: str | None = None,
        routing_key: str | None = None,
        request_id: str | None = None,
    ) -> Prediction:
        """Classify pixel rows (n, 784), uint8 0–255 or float32 0–1, with the version that answers.

        Without `version`, a split (the default's or `alias`'s) picks the version by `routing_key`.
        The answer carries `request_id` (a new one when None) and is handed to the recorder,
        which only queues it: the log, the counters and the shadow are written off this path.
        """
        if version is not None:
            loaded = self.cache.get(name, version=version, alias=alias)
        else:
            loaded = self.cache.route(name, alias, routing_key)
        probabilities = loaded.predict_proba(pixels, self.settings.forward_threads)
        child(IMAGES, loaded.model).inc(len(probabilities))
        answer = Prediction(loaded.model, loaded.version, probabilities, request_id or new_request_id())
        self.recorder.record(answer, pixels)
        return answer

    def versions(self, name: str, version: int | None = None) -> list[int]:
        """Return the model's versions (or `[version]` once it is known to exist), oldest first.

        When Redis does not answer, the versions held in memory answer instead; ServiceUnavailable
        when those do not hold what is asked.
        """
        check_name(name)
        try:
            if version is None:
                return [record.version for record in self.registry.versions(name)]
            self.registry.record(name, check_version(version))
            return [version]
        except REDIS_ERRORS:
            held = self.cache.held(name)
            if not held or (version is not None and version not in held):
                raise ServiceUnavailable(
                    f"the registry does not answer and {name} is not in memory"
                ) from None
            return held if version is None else [version]

    def status(self) -> dict[str, dict[str, Any]]:
        """Return, per model served, the default version held, its checksum and the last error."""
        return self.cache.status()

    def start(self) -> None:
        """Start following the registry (hot reload) and recording; calling again does nothing."""
        self.cache.start()
        self.recorder.start()

    def stop(self) -> None:
        """Stop following the registry and recording, after a last write of what is queued (tests)."""
        self.cache.stop()
        self.recorder.stop()
