"""The recorder: what every prediction leaves behind, written off the request path.

`PredictionService.predict` hands each answer and its pixels to `Recorder.record`, which only
appends them to a bounded in-process queue (`MNIST_RECORDER_QUEUE` images): a full queue drops
them and counts them (`mnist_recorder_dropped_total{reason="queue_full"}`), a request never waits.
One daemon thread per process (started after gunicorn's fork, with the model cache's threads)
sleeps until something is queued, gathers for `FLUSH_SECONDS` (less once the queue is half
full), takes its oldest `DRAIN_IMAGES` images (a larger answer in slices, the rest left first in
the queue), and for each model:

- counts the images per version (``requests``) in `Keys.version_stats`, those the full queue
  dropped included (counted in memory, written with the next drain), and the live drift
  profile (``profile:<feature>:<bin>``, shared/drift.py) of a sample of them
  (`MNIST_DRIFT_SAMPLE`: the score compares shares of images per bin, which a random sample
  estimates, at a tenth of the cost by default);
- logs a sample (`MNIST_LOG_SAMPLE`) of the images in the model's prediction log
  (shared/prediction_log.py);
- runs the model's shadow version, if it has one, on its sample of the images: the shadow's
  answers are logged (kind ``shadow``; the shadow's sample is their sample) and its agreement
  with the served labels counted (``shadow_compared``, ``shadow_agreed`` in the shadow's stats);

all of one batch (at most `BATCH_ENTRIES` log entries) in one pipeline. When Redis does not
answer, the batch is dropped and counted (``reason="redis"``): predictions go on from memory.

The thread spends at most `MNIST_RECORDER_SHARE` of its time writing: after a drain that took t
seconds (Redis's work included: the pipeline waits for its replies) it pauses `pause_after(t)`
before the next, while the queue fills and then drops what overflows. Under a load heavier than
that share can write (every image of 10,000-image batches logged and shadowed: a drain costs more
than the request), recording is what gives, never the predictions (docs/rollout.md, overhead).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, defaultdict, deque
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import redis

from services.serving.cache import REDIS_ERRORS, ModelCache
from services.serving.metrics import DROPPED, LOGGED, SHADOWED, child
from shared import drift
from shared.config import Settings
from shared.errors import MnistError
from shared.keys import Keys
from shared.prediction_log import Kind, PredictionLog, Rows

if TYPE_CHECKING:
    from services.serving.service import Prediction

log = logging.getLogger(__name__)

#: Seconds between two drains of the queue (sooner when it is half full).
FLUSH_SECONDS = 0.1
#: Log entries written per pipeline (one script: Redis runs nothing else meanwhile, ~1 ms), at most.
BATCH_ENTRIES = 500
#: Images the thread takes from the queue per drain, at most (a large answer is taken in slices): a
#: drain holds the GIL for most of its time, and one of 10,000 images logged and shadowed stalls the
#: request threads for longer than serving them took.
DRAIN_IMAGES = 1000
#: Seconds between two warnings about the same failure (Redis away, a shadow that cannot load).
WARN_EVERY = 30.0
#: Smallest MNIST_RECORDER_SHARE taken (a pause of 99 times the drain's time).
MIN_SHARE = 0.01


def item_id(request_id: str, index: int, count: int) -> str:
    """Return the logged id of image `index` of a request of `count` images."""
    return request_id if count == 1 else f"{request_id}/{index}"


def pause_after(elapsed: float, share: float) -> float:
    """Return the seconds to pause after a drain of `elapsed` s so that drains take `share` of the time."""
    if share >= 1.0:
        return 0.0
    return elapsed * (1.0 / max(share, MIN_SHARE) - 1.0)


def as_uint8(pixels: np.ndarray) -> np.ndarray:
    """Return pixel rows as uint8 0–255 (float rows are 0–1, as the forward pass reads them)."""
    if pixels.dtype == np.uint8:
        return pixels
    return np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8)


class _Part(NamedTuple):
    """Images `start` to `start + len(pixels)` of one answer, waiting to be recorded."""

    prediction: Prediction
    pixels: np.ndarray
    start: int = 0

    @property
    def probabilities(self) -> np.ndarray:
        """Return this part's rows of the answer's probabilities."""
        return self.prediction.probabilities[self.start : self.start + len(self.pixels)]

    def split(self, n: int) -> tuple[_Part, _Part]:
        """Return the first `n` images of this part and the rest (views: nothing is copied)."""
        first = _Part(self.prediction, self.pixels[:n], self.start)
        return first, _Part(self.prediction, self.pixels[n:], self.start + n)


class _Stacked:
    """The images of several answers (or parts of them) of one model as one batch: pixels, labels,
    versions, ids."""

    def __init__(self, group: list[_Part]) -> None:
        raws = [part.pixels for part in group]
        if len(raws) == 1:  # a large batch alone: no copy
            self.pixels = as_uint8(raws[0])
        elif len({raw.dtype for raw in raws}) == 1:
            self.pixels = as_uint8(np.concatenate(raws))
        else:  # uint8 and float rows mixed: each converted as it is
            self.pixels = np.concatenate([as_uint8(raw) for raw in raws])
        self.predictions = [part.prediction for part in group]
        counts = np.array([len(raw) for raw in raws])
        # Each image's id needs its index in its whole answer, and that answer's size.
        self.totals = [len(part.prediction.probabilities) for part in group]
        self.probabilities = np.concatenate([part.probabilities for part in group])
        self.labels = self.probabilities.argmax(axis=1)
        self.versions = np.repeat([p.version for p in self.predictions], counts)
        self.owner = np.repeat(np.arange(len(group)), counts)  # the part each image belongs to
        self.index = np.arange(len(self.pixels)) - np.repeat(
            np.cumsum(counts) - counts - [part.start for part in group], counts
        )

    def __len__(self) -> int:
        return len(self.pixels)

    def rows(self, rows: np.ndarray, kind: bytes) -> Rows:
        """Return the log rows of images `rows` (indices into the batch)."""
        ids = [
            item_id(self.predictions[owner].request_id, index, self.totals[owner])
            for owner, index in zip(self.owner[rows].tolist(), self.index[rows].tolist(), strict=True)
        ]
        return Rows(
            ids,
            self.versions[rows],
            self.labels[rows],
            kind * len(rows),
            self.probabilities[rows],
            self.pixels[rows],
        )


class Recorder:
    """The bounded queue of answers to record, and the thread that writes them (see module doc)."""

    def __init__(self, redis: redis.Redis, keys: Keys, settings: Settings, cache: ModelCache) -> None:
        """Write through `redis` (a client of its own: not the requests' connections); record nothing yet."""
        self.redis = redis
        self.keys = keys
        self.cache = cache
        self.capacity = max(settings.recorder_queue, 0)
        self.sample = min(max(settings.log_sample, 0.0), 1.0)
        self.drift_sample = min(max(settings.drift_sample, 0.0), 1.0)
        self.share = settings.recorder_share
        self.log = PredictionLog(redis, keys, settings.log_maxlen)
        self._queue: deque[_Part] = deque()
        self._images = 0
        self._unrecorded: Counter[tuple[str, int]] = Counter()  # dropped images per (model, version)
        self._lock = threading.Lock()
        self._wake = threading.Event()  # something is queued
        self._urgent = threading.Event()  # the queue is half full: drain now
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rng = np.random.default_rng()
        self._warned: dict[str, float] = {}

    # --- the request path -------------------------------------------------------------------------
    def record(self, prediction: Prediction, pixels: np.ndarray) -> None:
        """Queue an answer and its pixels (n, 784) for recording; drop and count them if the queue is full."""
        n = len(pixels)
        with self._lock:
            full = self._images + n > self.capacity
            if full:
                self._unrecorded[prediction.model, prediction.version] += n
            else:
                first = not self._queue
                self._queue.append(_Part(prediction, pixels))
                self._images += n
                urgent = self._images * 2 > self.capacity
        if full:
            child(DROPPED, "queue_full").inc(n)
            self._wake.set()  # the next drain writes their count, even with nothing queued
            return
        # Only the first answer of a batch wakes the thread: an idle process has no thread polling.
        if first:
            self._wake.set()
        if urgent:
            self._urgent.set()

    def pending(self) -> int:
        """Return the images waiting to be recorded."""
        return self._images

    # --- the thread -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the writing thread (a daemon); calling again does nothing."""
        with self._lock:
            if self._thread is not None:
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread after a last drain, and wait for it (tests)."""
        self._stop.set()
        self._wake.set()
        self._urgent.set()
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            self._urgent.wait(FLUSH_SECONDS)  # gather a batch
            self._urgent.clear()
            started = time.monotonic()
            try:
                self.drain(DRAIN_IMAGES)
            except Exception:  # the thread's boundary: recording must go on
                log.exception("recorder: unexpected error")
            if self._images:
                self._wake.set()  # more queued than one drain takes: go on after the pause
            self._stop.wait(pause_after(time.monotonic() - started, self.share))  # stop: at once
        self.drain()

    def drain(self, limit: int | None = None) -> int:
        """Write what is queued now, or its oldest images up to `limit`; return the images taken.

        An answer larger than what the drain has room for is split: its first images are written
        now, the rest stays first in the queue for the next drain.
        """
        with self._lock:
            if limit is None:
                parts, self._queue, taken = list(self._queue), deque(), self._images
            else:
                parts, taken = [], 0
                while self._queue and taken < limit:
                    part = self._queue.popleft()
                    if len(part.pixels) > limit - taken:
                        part, rest = part.split(limit - taken)
                        self._queue.appendleft(rest)
                    parts.append(part)
                    taken += len(part.pixels)
            self._images -= taken
            unrecorded, self._unrecorded = self._unrecorded, Counter()
        self._count_unrecorded(unrecorded)
        by_model: dict[str, list[_Part]] = defaultdict(list)
        for part in parts:
            by_model[part.prediction.model].append(part)
        for model, group in by_model.items():
            try:
                self._write(model, group)
            except REDIS_ERRORS as exc:
                child(DROPPED, "redis").inc(sum(len(part.pixels) for part in group))
                self._warn("redis", "recorder: Redis did not take the records (%s): dropped", exc)
        return taken

    # --- writing ----------------------------------------------------------------------------------
    def _count_unrecorded(self, unrecorded: Counter[tuple[str, int]]) -> None:
        """Add the images the full queue dropped to their versions' ``requests`` (kept if Redis fails)."""
        if not unrecorded:
            return
        pipe = self.redis.pipeline(transaction=False)
        for (model, version), count in unrecorded.items():
            pipe.hincrby(self.keys.version_stats(model, version), "requests", count)
        try:
            pipe.execute()
        except REDIS_ERRORS:
            with self._lock:
                self._unrecorded.update(unrecorded)  # one counter per version: bounded

    def _write(self, model: str, group: list[_Part]) -> None:
        """Count, log and shadow one model's answers: one pipeline per BATCH_ENTRIES log entries.

        The answers are stacked first and sampled once: per-answer NumPy calls would cost more than
        the writing itself for one-image requests (about 30 µs each).
        """
        batch = _Stacked(group)
        pipe = self.redis.pipeline(transaction=False)
        versions, counts = np.unique(batch.versions, return_counts=True)
        for version, count in zip(versions.tolist(), counts.tolist(), strict=True):
            pipe.hincrby(self.keys.version_stats(model, version), "requests", count)
        rows = self._sampled(len(batch), self.drift_sample)
        for version in np.unique(batch.versions[rows]).tolist():
            mine = rows[batch.versions[rows] == version]
            profile = drift.profile(batch.pixels[mine], batch.labels[mine])
            for name, count in drift.counters(profile).items():
                pipe.hincrby(self.keys.version_stats(model, version), name, count)
        logged: list[Rows] = []
        rows = self._sampled(len(batch), self.sample)
        if len(rows):
            logged.append(batch.rows(rows, b"l"))
        shadow = self.cache.shadow(model)
        shadowed: list[Rows] = []  # the served answers of the images the shadow answers too
        if shadow is not None:
            rows = self._sampled(len(batch), shadow.sample)
            rows = rows[batch.versions[rows] != shadow.version]
            if len(rows):
                shadowed.append(batch.rows(rows, b"s"))
        if shadowed and shadow is not None:
            logged += self._shadow(model, shadow.version, Rows.join(shadowed), pipe)
        entries = Rows.join(logged)
        for lo in range(0, max(len(entries), 1), BATCH_ENTRIES):
            self.log.add(pipe, model, entries.part(lo, lo + BATCH_ENTRIES))
            pipe.execute()
            pipe = self.redis.pipeline(transaction=False)
        live = entries.kinds.count(b"l")
        if live:
            child(LOGGED, model, Kind.LIVE.value).inc(live)
        if len(entries) > live:
            child(LOGGED, model, Kind.SHADOW.value).inc(len(entries) - live)

    def _shadow(self, model: str, version: int, served: Rows, pipe: redis.client.Pipeline) -> list[Rows]:
        """Run the shadow version on the `served` rows; count agreement on `pipe`; return its rows to log."""
        try:
            loaded = self.cache.get(model, version=version)
        except MnistError as exc:
            why = exc.message
            self._warn(f"shadow:{model}", "recorder: shadow %s v%d cannot run: %s", model, version, why)
            return []
        probabilities = loaded.predict_proba(served.pixels)
        labels = probabilities.argmax(axis=1)
        stats = self.keys.version_stats(model, version)
        pipe.hincrby(stats, "shadow_compared", len(labels))
        pipe.hincrby(stats, "shadow_agreed", int(np.count_nonzero(labels == served.labels)))
        child(SHADOWED, model).inc(len(labels))
        versions = np.full(len(labels), version)
        return [Rows(served.ids, versions, labels, served.kinds, probabilities, served.pixels)]

    def _sampled(self, n: int, share: float) -> np.ndarray:
        """Return the indices of a random `share` of n rows."""
        if share >= 1.0:
            return np.arange(n)
        if share <= 0.0:
            return np.arange(0)
        return np.flatnonzero(self._rng.random(n) < share)

    def _warn(self, what: str, message: str, *args: object) -> None:
        """Log a warning about `what` at most once per WARN_EVERY seconds."""
        now = time.monotonic()
        if now - self._warned.get(what, -WARN_EVERY) >= WARN_EVERY:
            self._warned[what] = now
            log.warning(message, *args)
