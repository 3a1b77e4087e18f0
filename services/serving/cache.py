"""The model cache: versions held in memory, hot-reloaded from the registry without a restart.

- Un-pinned requests (no version, no alias) get the model's *default*: the `production` alias
  when set, else the latest version. It is answered from memory, without a Redis round trip;
  the first request of a model loads it synchronously.
- An alias may be a traffic split (`shared.splits`): `route` picks the version of each request
  from the weights held in memory (sticky by routing key, else random), never asking Redis.
  Every version of the default's split is loaded, checked and warmed up before the split
  serves; `get` (metadata, evaluation) answers with the split's primary.
- Pinned versions load on first use and stay, least recently used first out
  (`Settings.model_cache_size` of them). Alias routes read an alias → version map that events
  and polls keep fresh; when Redis is away the map held in memory answers.
- Two daemon threads keep defaults fresh: one listens to the registry's pub/sub events, one
  polls every `Settings.poll_interval` seconds (events are fire-and-forget: a predictor that was
  disconnected misses them) and the listener re-subscribes after Redis comes back. They read
  through `watcher`, a registry on connections of their own: the requests' connections are
  bounded per process (services/app.py), and the threads must neither take nor wait for them.
- A new version is fetched (`Registry.get_blob` checks its sha256), parsed, warmed up on a small
  batch, and only then swapped in by rebinding one dict entry: requests in flight keep the
  reference they already hold and finish on the old model. A blob that fails its checksum or
  does not parse is refused, the previous version keeps serving, and `status()` says why.
- What is held is known by number and sha256. A Redis that lost its data hands out version
  numbers again, for other weights: defaults compare both at every refresh, pinned versions are
  checked against `Registry.checksums` at every `published` event and poll, and one whose number
  now names other bytes is dropped (`_verify_pinned`).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
import time
import zlib
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import redis

from services.serving.metrics import MODEL_VERSION, RELOAD_SECONDS, RELOADS
from shared import mlp, serialization
from shared import shadow as shadows
from shared.config import Settings
from shared.errors import (
    AliasNotFound,
    CorruptModel,
    InvalidInput,
    MnistError,
    ServiceUnavailable,
)
from shared.registry import PRODUCTION, Registry, check_name, check_version, parse_event
from shared.splits import Router

log = logging.getLogger(__name__)

#: Rows in each chunk of a batch whose forward pass is split across threads (at least).
MIN_CHUNK_ROWS = 256
#: Cores this process may run on: the default number of forward-pass threads.
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
#: Images in the warm-up batch run on every version before it serves.
WARMUP_IMAGES = 8
#: Seconds before a refused (corrupt) version is fetched again, unless an event names the model.
REFUSED_RETRY_SECONDS = 30.0
#: Seconds the event listener blocks waiting for a message before checking for stop().
LISTEN_TIMEOUT = 0.5
#: Seconds between pub/sub reconnection attempts, doubling up to the poll interval.
RECONNECT_BACKOFF = 0.1
#: Load locks: a model's loads are serialized on one of these (bounded, whatever names arrive).
LOCK_STRIPES = 16

#: What a Redis that is down or unreachable raises.
REDIS_ERRORS = (redis.RedisError, OSError)
_UNREACHABLE = "{model} is not in memory and the registry does not answer ({exc})"


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """One version in memory, verified and warmed up; immutable, so threads share it freely.

    `params` are float32 and C-contiguous, in the model file's layout ([W1 (out, in), b1, …]):
    `x @ W.T` runs as one sgemm with a transpose flag, as fast as a transposed copy (measured).
    """

    model: str
    version: int
    sha256: str
    params: list[np.ndarray]
    meta: dict[str, Any]
    loaded_at: float = field(default_factory=time.time)

    def predict_proba(self, x: np.ndarray, threads: int = 1) -> np.ndarray:
        """Return class probabilities (N, 10) of rows x (N, 784): float32 in 0–1, or uint8 pixels.

        A batch of at least 2 × MIN_CHUNK_ROWS images is split into chunks run on up to
        `threads` threads (0: one per core). The server runs BLAS single-threaded
        (OPENBLAS_NUM_THREADS=1, so that small requests do not contend), and NumPy releases the
        GIL in BLAS calls and ufuncs: the chunks then use every core, as a multi-threaded BLAS
        call would in-process.
        """
        threads = threads or CORES
        chunks = min(threads, len(x) // MIN_CHUNK_ROWS)
        if chunks < 2:
            return self._forward(x)
        out = np.empty((len(x), mlp.CLASSES), dtype=np.float32)
        bounds = np.linspace(0, len(x), chunks + 1).astype(int).tolist()

        def run(lo: int, hi: int) -> None:
            out[lo:hi] = self._forward(x[lo:hi])

        pool = _forward_pool(threads)
        for future in [pool.submit(run, lo, hi) for lo, hi in itertools.pairwise(bounds)]:
            future.result()
        return out

    def _forward(self, x: np.ndarray) -> np.ndarray:
        return mlp.predict_proba(self.params, mlp.scale_pixels(x) if x.dtype == np.uint8 else x)

    def describe(self) -> dict[str, Any]:
        """Return what status() reports about this version."""
        return {
            "version": self.version,
            "sha256": self.sha256,
            "loaded_at": datetime.fromtimestamp(self.loaded_at, UTC).isoformat(timespec="milliseconds"),
        }


_pools: dict[tuple[int, int], ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _forward_pool(threads: int) -> ThreadPoolExecutor:
    """Return this process's pool of `threads` forward-pass threads (a forked worker makes its own)."""
    key = (os.getpid(), threads)
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            pool = _pools[key] = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="forward")
        return pool


def prepare(model: str, version: int, sha256: str, blob: bytes) -> LoadedModel:
    """Return the LoadedModel of a verified blob, warmed up; InvalidInput if it is not a model."""
    params, meta = serialization.model_from_bytes(blob, f"{model} v{version}")
    params = [np.ascontiguousarray(p, dtype=np.float32) for p in params]
    loaded = LoadedModel(model, version, sha256, params, meta)
    # The warm-up pays first-call costs (BLAS buffers, page faults) before any request does,
    # and refuses a model whose output is not a distribution.
    rng = np.random.default_rng(version)
    sample = mlp.scale_pixels(rng.integers(0, 256, (WARMUP_IMAGES, mlp.INPUT_SIZE), dtype=np.uint8))
    probs = loaded.predict_proba(sample)
    if probs.shape != (WARMUP_IMAGES, mlp.CLASSES) or not np.isfinite(probs).all():
        raise InvalidInput(f"{model} v{version}: the warm-up produced no finite probabilities")
    return loaded


class ModelCache:
    """Models held in memory for predictions, kept in step with the registry (see module doc)."""

    def __init__(self, registry: Registry, settings: Settings, *, watcher: Registry | None = None) -> None:
        """Serve from `registry` (the background threads from `watcher`, if given); load nothing yet."""
        self.registry = registry
        self.watcher = watcher
        self.settings = settings
        self._defaults: dict[str, LoadedModel] = {}
        self._pinned: OrderedDict[tuple[str, int], LoadedModel] = OrderedDict()
        self._aliases: dict[str, dict[str, int]] = {}
        self._splits: dict[str, dict[str, Router]] = {}  # model -> split alias -> its versions' numbers
        self._routes: dict[str, Router] = {}  # model -> its default's split, over LoadedModels
        self._followed: set[tuple[str, str]] = set()  # (model, alias) pairs requests used
        self._shadows: dict[str, shadows.Shadow | None] = {}  # model -> its shadow, as last read
        self._errors: dict[str, str] = {}  # model -> why its default could not move
        self._refused: dict[tuple[str, int], tuple[float, str]] = {}  # -> (monotonic time, why)
        self._registry_error: str | None = None
        self._lock = threading.Lock()  # guards _pinned and _threads
        self._stripes = [threading.Lock() for _ in range(LOCK_STRIPES)]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # --- requests ---------------------------------------------------------------------------------
    def get(self, model: str, version: int | None = None, alias: str | None = None) -> LoadedModel:
        """Return the version to answer with: `version`, else `alias`, else the default.

        Raises ModelNotFound / VersionNotFound / AliasNotFound (404), InvalidInput (400), and
        ServiceUnavailable (503) when the version is not in memory and cannot be loaded.
        """
        if version is not None and alias is not None:
            raise InvalidInput("ask for a version or an alias, not both")
        if version is not None:
            return self._version(model, version)
        if alias is not None:
            return self._version(model, self._alias_version(model, alias))
        loaded = self._defaults.get(model)  # the hot path: one dict read, no lock, no Redis
        if loaded is not None:
            return loaded
        check_name(model)
        with self._stripe(model):
            loaded = self._defaults.get(model)
            if loaded is None:
                try:
                    loaded = self._refresh_default(model, self.registry)
                except CorruptModel as exc:
                    self._errors[model] = f"{exc.message}; nothing to serve"
                    raise ServiceUnavailable(f"{model} {exc.message}") from None
                except REDIS_ERRORS as exc:
                    raise ServiceUnavailable(_UNREACHABLE.format(model=model, exc=exc)) from None
        return loaded

    def route(self, model: str, alias: str | None = None, routing_key: str | None = None) -> LoadedModel:
        """Return the version a request answers with: `alias`'s or the default's, picked from a split.

        The pick is sticky for one `routing_key` (None: random); nothing is read from Redis once
        the model (and the alias) are held. Raises as `get` does.
        """
        if alias is None:
            router = self._routes.get(model)  # the hot path: dict reads and a hash
            if router is not None:
                return router.pick(model, routing_key)
            loaded = self.get(model)
            router = self._routes.get(model)  # the first load may have found a split
            return loaded if router is None else router.pick(model, routing_key)
        version = self._alias_version(model, alias)
        split = self._splits.get(model, {}).get(alias)
        if split is not None:
            version = split.pick(model, routing_key)
        return self._version(model, version)

    def shadow(self, model: str) -> shadows.Shadow | None:
        """Return the model's shadow as last read; the first call for a model reads it now.

        Called off the request path only (the recorder's thread): the first read, and the shadow
        version's load, must not wait for the next poll, or a fresh process would leave its first
        requests unshadowed.
        """
        if model not in self._shadows:
            self._refresh_shadow(model)
            self._shadows.setdefault(model, None)  # followed from now on: the poll and events read it
        return self._shadows[model]

    def held(self, model: str) -> list[int]:
        """Return the versions of `model` held in memory (default, its split's and pinned), sorted."""
        with self._lock:
            versions = {v for (m, v) in self._pinned if m == model}
        default = self._defaults.get(model)
        if default is not None:
            versions.add(default.version)
        router = self._routes.get(model)
        if router is not None:
            versions.update(router.split)
        return sorted(versions)

    def status(self) -> dict[str, dict[str, Any]]:
        """Return, per model served, the default version held, its checksum and the last error."""
        out: dict[str, dict[str, Any]] = {}
        for model in sorted(set(self._defaults) | set(self._errors)):
            default = self._defaults.get(model)
            entry: dict[str, Any] = default.describe() if default else {"version": None}
            error = self._errors.get(model)
            if self._registry_error:
                held = f"serving v{default.version} from memory" if default else "nothing to serve"
                error = "; ".join(filter(None, [error, f"{self._registry_error}: {held}"]))
            entry["error"] = error
            entry["pinned"] = [v for v in self.held(model) if not default or v != default.version]
            if model in self._aliases:
                entry["aliases"] = dict(self._aliases[model])
            router = self._routes.get(model)
            if router is not None:
                entry["split"] = {str(v): w for v, w in router.split.items()}
            out[model] = entry
        return out

    # --- background -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the event listener and the poller (daemon threads); calling again does nothing."""
        with self._lock:
            if self._threads:
                return
            self._stop.clear()
            self._threads = [
                threading.Thread(target=self._listen, name="model-events", daemon=True),
                threading.Thread(target=self._poll, name="model-poll", daemon=True),
            ]
            for thread in self._threads:
                thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the background threads and wait for them (tests)."""
        self._stop.set()
        with self._lock:
            threads, self._threads = self._threads, []
        for thread in threads:
            thread.join(timeout)

    def refresh(self) -> None:
        """Bring every default, pinned version and alias map held in step with the registry now (a poll)."""
        for model in list(self._defaults) + [m for m in list(self._errors) if m not in self._defaults]:
            self._refresh_quietly(model)
        self._verify_pinned(self._watching())
        for model in list(self._aliases):
            self._refresh_aliases(model)
        for model in list(self._shadows):
            self._refresh_shadow(model)

    # --- loading ----------------------------------------------------------------------------------
    def _stripe(self, model: str) -> threading.Lock:
        return self._stripes[zlib.crc32(model.encode()) % LOCK_STRIPES]

    def _watching(self) -> Registry:
        """Return the registry the background threads read."""
        return self.watcher or self.registry

    def _refresh_default(self, model: str, source: Registry) -> LoadedModel:
        """Resolve the model's default in `source` and swap it in if it changed; hold the stripe."""
        target = source.resolve(model)
        split = source.splits(model).get(PRODUCTION)
        if split is not None and target in split:
            return self._refresh_split(model, split, source)
        sha256 = source.checksum(model, target)
        current = self._defaults.get(model)
        if current is not None and current.version == target and current.sha256 == sha256:
            self._routes.pop(model, None)  # a split cleared by an alias to its own primary
            self._errors.pop(model, None)
            return current
        loaded = self._cached(model, target, sha256) or self._load(model, target, source)
        self._defaults[model] = loaded  # the swap: requests holding the old one finish on it
        self._routes.pop(model, None)
        self._errors.pop(model, None)
        MODEL_VERSION.labels(model).set(loaded.version)
        if current is not None:
            log.info("%s: now serving v%d (was v%d)", model, loaded.version, current.version)
        return loaded

    def _refresh_split(self, model: str, split: dict[int, float], source: Registry) -> LoadedModel:
        """Load every version of the default's split, then swap the split in; return its primary."""
        sums = source.checksums(model, split)
        for version in split:
            if version not in sums:
                source.checksum(model, version)  # raises VersionNotFound: deleted meanwhile
        current = self._routes.get(model)
        held = [t.sha256 for t in current.targets] if current is not None else []
        if current is not None and current.split == split and held == [sums[v] for v in split]:
            self._errors.pop(model, None)
            return self._defaults[model]
        loaded = [self._cached(model, v, sums[v]) or self._load(model, v, source) for v in split]
        router = Router(split, loaded)
        primary = max(loaded, key=lambda m: (split[m.version], -m.version))
        previous = self._defaults.get(model)
        self._routes[model] = router  # the swap: routed requests follow the new weights from now on
        self._defaults[model] = primary
        self._errors.pop(model, None)
        MODEL_VERSION.labels(model).set(primary.version)
        if current is None or current.split != split:
            shown = ", ".join(f"v{v} {w:.0%}" for v, w in split.items())
            was = f"v{previous.version}" if previous else "nothing"
            log.info("%s: now serving the split %s (was %s)", model, shown, was)
        return primary

    def _cached(self, model: str, version: int, sha256: str) -> LoadedModel | None:
        """Return the version if this process holds it with that sha256 (default, split or pinned)."""
        router = self._routes.get(model)
        for candidate in [self._defaults.get(model), *(router.targets if router is not None else [])]:
            if candidate is not None and candidate.version == version and candidate.sha256 == sha256:
                return candidate
        with self._lock:
            hit = self._pinned.get((model, version))
        return hit if hit is not None and hit.sha256 == sha256 else None

    def _load(self, model: str, version: int, source: Registry) -> LoadedModel:
        """Fetch, verify, parse and warm up one version from `source`; CorruptModel if it must be refused."""
        refused = self._refused.get((model, version))
        if refused and time.monotonic() - refused[0] < REFUSED_RETRY_SECONDS:
            raise CorruptModel(refused[1])
        started = time.perf_counter()
        try:
            blob, record = source.get_blob(model, version)
            loaded = prepare(model, version, record.sha256, blob)
        except (CorruptModel, InvalidInput) as exc:
            RELOADS.labels(model, "corrupt").inc()
            why = f"v{version} refused: {exc.message}"
            self._refused[(model, version)] = (time.monotonic(), why)
            log.error("%s: %s", model, why)
            raise CorruptModel(why) from None
        except (MnistError, *REDIS_ERRORS):
            RELOADS.labels(model, "error").inc()
            raise
        self._refused.pop((model, version), None)
        RELOADS.labels(model, "ok").inc()
        RELOAD_SECONDS.labels(model).observe(time.perf_counter() - started)
        return loaded

    def _version(self, model: str, version: int, source: Registry | None = None) -> LoadedModel:
        """Return a pinned version from memory, loading it on first use (from `source`, else `registry`)."""
        check_name(model)
        check_version(version)
        default = self._defaults.get(model)
        if default is not None and default.version == version:
            return default
        router = self._routes.get(model)
        if router is not None and version in router.split:
            return router.targets[list(router.split).index(version)]
        key = (model, version)
        with self._lock:
            hit = self._pinned.get(key)
            if hit is not None:
                self._pinned.move_to_end(key)
                return hit
        with self._stripe(model):
            with self._lock:
                hit = self._pinned.get(key)
            if hit is None:
                try:
                    hit = self._load(model, version, source or self.registry)
                except CorruptModel as exc:
                    raise ServiceUnavailable(f"{model} {exc.message}") from None
                except REDIS_ERRORS as exc:
                    raise ServiceUnavailable(_UNREACHABLE.format(model=model, exc=exc)) from None
                self._remember(hit)
        return hit

    def _remember(self, loaded: LoadedModel) -> None:
        with self._lock:
            self._pinned[(loaded.model, loaded.version)] = loaded
            while len(self._pinned) > max(self.settings.model_cache_size, 1):
                self._pinned.popitem(last=False)

    def _verify_pinned(self, source: Registry, model: str | None = None) -> None:
        """Drop the pinned versions (of `model`, or all) whose number `source` gives other bytes now.

        A Redis that lost its data counts versions from 1 again, for other weights: a number held
        here is compared by sha256 with the registry's record of it. A number the registry no
        longer knows keeps serving from memory, as everything does while Redis is away.
        """
        with self._lock:
            held = [(m, v, loaded.sha256) for (m, v), loaded in self._pinned.items() if model in (None, m)]
        for name in sorted({m for m, _, _ in held}):
            mine = [(v, sha256) for m, v, sha256 in held if m == name]
            try:
                current = source.checksums(name, [v for v, _ in mine])
            except MnistError:  # an unreadable record: nothing to compare with, keep what is held
                continue
            for version, sha256 in mine:
                now = current.get(version)
                if now is None or now == sha256:
                    continue
                with self._lock:
                    hit = self._pinned.get((name, version))
                    if hit is not None and hit.sha256 == sha256:
                        del self._pinned[(name, version)]
                log.warning(
                    "%s: v%d in memory (sha256 %.12s) is not the registry's v%d any more (%.12s): dropped",
                    name, version, sha256, version, now,
                )  # fmt: skip

    def _alias_version(self, model: str, alias: str) -> int:
        """Return the version an alias names, from the map in memory or, if it lacks it, Redis."""
        check_name(model)
        check_name(alias, "alias")
        aliases = self._aliases.get(model)
        if aliases is None or alias not in aliases:
            try:
                aliases = self._fetch_aliases(model, self.registry)
            except REDIS_ERRORS as exc:
                if aliases is None:
                    raise ServiceUnavailable(f"the registry does not answer ({exc})") from None
        if alias not in aliases:
            raise AliasNotFound(f"model {model!r} has no alias {alias!r}")
        self._followed.add((model, alias))
        return aliases[alias]

    def _fetch_aliases(self, model: str, source: Registry) -> dict[str, int]:
        aliases, splits = source.routes(model)
        self._splits[model] = {alias: Router(split) for alias, split in splits.items()}
        self._aliases[model] = aliases
        return aliases

    # --- keeping up -------------------------------------------------------------------------------
    def _refresh_quietly(self, model: str) -> None:
        """Refresh a default from the watcher: failures are recorded, the old version serves on."""
        try:
            with self._stripe(model):
                self._refresh_default(model, self._watching())
        except CorruptModel as exc:
            held = self._defaults.get(model)
            self._errors[model] = f"{exc.message}; " + (
                f"still serving v{held.version}" if held else "nothing to serve"
            )
        except MnistError as exc:  # gone from the registry (deleted, or a Redis that lost its data)
            self._errors[model] = f"{exc.message}; serving what is held in memory"

    def _refresh_aliases(self, model: str) -> None:
        """Reload a model's alias map; warm the versions followed aliases now name."""
        try:
            aliases = self._fetch_aliases(model, self._watching())
        except MnistError:
            return
        splits = self._splits.get(model, {})
        for m, alias in list(self._followed):
            if m != model or alias not in aliases:
                continue
            for version in splits[alias].split if alias in splits else [aliases[alias]]:
                try:
                    self._version(model, version, self._watching())
                except MnistError as exc:
                    log.warning("%s: cannot preload alias %s -> v%d: %s", model, alias, version, exc)

    def _refresh_shadow(self, model: str) -> None:
        """Read the model's shadow setting; load and warm its version before the recorder needs it."""
        try:
            found = shadows.read(self._watching(), model)
        except REDIS_ERRORS:
            return  # the setting held in memory stays
        if found is not None:
            try:
                self._version(model, found.version, self._watching())
            except MnistError as exc:
                log.warning("%s: cannot preload shadow v%d: %s", model, found.version, exc)
        self._shadows[model] = found

    def _on_event(self, event: dict[str, Any]) -> None:
        """Apply one registry event to what this process holds."""
        model = event.get("model")
        if not isinstance(model, str):
            return
        kind, version = event.get("event"), event.get("version")
        if kind == "deleted" and isinstance(version, int):
            with self._lock:
                self._pinned.pop((model, version), None)
        if kind == "published":
            # A number handed out again, after Redis lost its data?
            self._verify_pinned(self._watching(), model)
        if kind == "alias" and model in self._aliases:
            self._refresh_aliases(model)
        if kind == "shadow" and model in self._shadows:
            self._refresh_shadow(model)
            return
        if model in self._defaults or model in self._errors:
            for key in [k for k in list(self._refused) if k[0] == model]:
                self._refused.pop(key, None)
            self._refresh_quietly(model)

    def _listen(self) -> None:
        backoff = RECONNECT_BACKOFF
        while not self._stop.is_set():
            pubsub = None
            try:
                pubsub = self._watching().subscribe()
                self.refresh()  # whatever happened while (re)connecting was not announced to us
                backoff = RECONNECT_BACKOFF
                while not self._stop.is_set():
                    event = parse_event(pubsub.get_message(timeout=LISTEN_TIMEOUT))
                    if event is not None:
                        self._on_event(event)
            except REDIS_ERRORS as exc:
                log.warning("registry events: %s; reconnecting in %.1f s", exc, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, max(self.settings.poll_interval, RECONNECT_BACKOFF))
            except Exception:  # the thread's boundary: a bad event must not stop hot reloads
                log.exception("registry events: unexpected error")
                self._stop.wait(backoff)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(*REDIS_ERRORS):
                        pubsub.close()

    def _poll(self) -> None:
        self._preload()
        while not self._stop.wait(self.settings.poll_interval):
            try:
                self._watching().redis.ping()
                self.refresh()
                self._registry_error = None
            except REDIS_ERRORS as exc:
                if self._registry_error is None:
                    log.warning("registry unreachable (%s): serving what is in memory", exc)
                self._registry_error = f"registry unreachable ({type(exc).__name__})"
            except Exception:  # the thread's boundary: polling must go on
                log.exception("registry poll: unexpected error")

    def _preload(self) -> None:
        """Load the default model at start-up, when it exists, so its first request is not slow."""
        try:
            self.get(self.settings.default_model)
        except (MnistError, *REDIS_ERRORS) as exc:
            log.info("no model preloaded (%s)", getattr(exc, "message", exc))
