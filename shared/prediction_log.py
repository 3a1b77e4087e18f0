"""The prediction log: a Redis stream per model, bounded, and the index feedback finds its predictions in.

One entry per image, fields (bytes): `id` (the request id; image i of a batch of several is
``<request id>/<i>``), `version`, `label` (the predicted class), `kind` (`live` | `shadow`),
`probabilities` (10 float32, little-endian) and `pixels` (784 uint8, row-major). The entry id is
Redis's own, its milliseconds the time. The stream keeps about `maxlen` entries (``XADD MAXLEN ~``).

Feedback needs the version and label of a request id without scanning the stream: live entries
are also written to an index, request id → "version label", in generations of `maxlen // 2`
entries; two generations are kept, so the index holds at most `maxlen` ids, all of them newer than
the stream's oldest. When a generation is dropped, the feedback labels of its ids go with it:
the feedback hash never holds more ids than the index.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import redis

from shared.errors import InvalidInput
from shared.keys import Keys
from shared.registry import _split_around_version, check_name

#: Kinds of entries: the answer that was served, or a shadow version's answer that was not.
LIVE, SHADOW = "live", "shadow"
#: Pixels and classes of an image.
PIXELS, CLASSES = 784, 10
#: Entries a read returns at most.
MAX_LIMIT = 1000
#: Entries a read looks at, at most, to find `limit` of one version (then it says where to go on).
MAX_SCAN = 10_000
#: A stream entry id: milliseconds, a dash, a sequence number.
_ENTRY_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")

# Index live entries. KEYS: logged count, feedback labels. ARGV: index head, index tail,
# generation size, then (id, "version label") pairs. A generation that starts drops the one two
# before it, and the feedback labels of its ids.
_INDEX = """
local half = tonumber(ARGV[3])
local n = (#ARGV - 3) / 2
local before = redis.call('INCRBY', KEYS[1], n) - n
for i = 0, n - 1 do
  local position = before + i
  local gen = math.floor(position / half)
  if position % half == 0 and gen >= 2 then
    local old = ARGV[1] .. string.format('%d', gen - 2) .. ARGV[2]
    local ids = redis.call('HKEYS', old)
    for j = 1, #ids, 1000 do
      redis.call('HDEL', KEYS[2], unpack(ids, j, math.min(j + 999, #ids)))
    end
    redis.call('UNLINK', old)
  end
  redis.call('HSET', ARGV[1] .. string.format('%d', gen) .. ARGV[2], ARGV[4 + 2 * i], ARGV[5 + 2 * i])
end
return before + n
"""


@dataclass(frozen=True)
class Entry:
    """One image's answer as logged."""

    request_id: str
    version: int
    label: int
    kind: str
    probabilities: np.ndarray  # (10,) float32
    pixels: np.ndarray  # (784,) uint8

    def fields(self) -> dict[str, bytes]:
        """Return the stream entry's fields."""
        return {
            "id": self.request_id.encode(),
            "version": b"%d" % self.version,
            "label": b"%d" % self.label,
            "kind": self.kind.encode(),
            "probabilities": np.ascontiguousarray(self.probabilities, dtype="<f4").tobytes(),
            "pixels": np.ascontiguousarray(self.pixels, dtype=np.uint8).tobytes(),
        }


def generation_size(maxlen: int) -> int:
    """Return the index's generation size for a log of `maxlen` entries (at least 1)."""
    return max(1, maxlen // 2)


class PredictionLog:
    """Writes and reads the prediction logs of every model under one `Keys` prefix."""

    def __init__(self, redis: redis.Redis, keys: Keys, maxlen: int) -> None:
        """Use `redis` (binary replies) and keep about `maxlen` entries per model."""
        if maxlen < 1:
            raise ValueError(f"the log's maximum length must be at least 1, got {maxlen}")
        self.redis = redis
        self.keys = keys
        self.maxlen = maxlen
        self._index = redis.register_script(_INDEX)

    # --- writing (the recorder, in its pipeline) --------------------------------------------------
    def add(self, pipe: redis.client.Pipeline, model: str, entries: list[Entry]) -> None:
        """Queue the XADDs of `entries` and the indexing of the live ones on `pipe`."""
        stream = self.keys.prediction_log(model)
        live: list[bytes | str] = []
        for entry in entries:
            pipe.xadd(stream, entry.fields(), maxlen=self.maxlen, approximate=True)  # type: ignore[arg-type]
            if entry.kind == LIVE:
                live += [entry.request_id, b"%d %d" % (entry.version, entry.label)]
        if live:
            head, tail = _split_around_version(self.keys.prediction_index, model)
            self._index(
                keys=[self.keys.logged_count(model), self.keys.feedback_labels(model)],
                args=[head, tail, generation_size(self.maxlen), *live],
                client=pipe,
            )

    # --- reading ----------------------------------------------------------------------------------
    def read(
        self,
        model: str,
        *,
        version: int | None = None,
        since: int | None = None,
        until: int | None = None,
        before: str | None = None,
        limit: int = 100,
        pixels: bool = False,
    ) -> dict[str, Any]:
        """Return the newest entries first, at most `limit`, of `version` (or all), between two times.

        `since` and `until` are Unix times in milliseconds, both included; `before` is the `next`
        of a previous read (an entry id, excluded). At most MAX_SCAN entries are looked at per
        read; `next` is where the following read goes on, None once the range is exhausted.
        """
        check_name(model)
        if not 1 <= limit <= MAX_LIMIT:
            raise InvalidInput(f"limit must be from 1 to {MAX_LIMIT}, got {limit}")
        stream = self.keys.prediction_log(model)
        high = "+" if until is None else f"{until}-{2**64 - 1}"
        if before is not None:
            if not _ENTRY_ID.fullmatch(before):
                raise InvalidInput(f"before must be an entry id such as 1733471234567-0, got {before[:40]!r}")
            high = f"({before}" if until is None or _ms(before) <= until else high
        low = "-" if since is None else f"{since}-0"
        found: list[dict[str, Any]] = []
        scanned, last = 0, None
        page = limit if version is None else max(limit, 500)
        while len(found) < limit and scanned < MAX_SCAN:
            count = min(page, MAX_SCAN - scanned)
            batch = cast(
                list[tuple[bytes, dict[bytes, bytes]]], self.redis.xrevrange(stream, high, low, count)
            )
            if not batch:
                return {"model": model, "predictions": found, "next": None}
            for entry_id, fields in batch:
                scanned += 1
                last = entry_id.decode()
                if version is None or int(fields[b"version"]) == version:
                    found.append(_shown(last, fields, pixels))
                    if len(found) == limit:
                        break
            high = f"({last}"
        more = last is not None and bool(self.redis.xrevrange(stream, max=high, min=low, count=1))
        return {"model": model, "predictions": found, "next": last if more else None}


def _ms(entry_id: str) -> int:
    return int(entry_id.partition("-")[0])


def _shown(entry_id: str, fields: dict[bytes, bytes], pixels: bool) -> dict[str, Any]:
    """Return one entry as the API shows it."""
    shown: dict[str, Any] = {
        "entry": entry_id,
        "request_id": fields[b"id"].decode(),
        "time": _ms(entry_id),
        "version": int(fields[b"version"]),
        "kind": fields[b"kind"].decode(),
        "label": int(fields[b"label"]),
        "probabilities": np.frombuffer(fields[b"probabilities"], dtype="<f4").tolist(),
    }
    if pixels:
        shown["pixels"] = list(fields[b"pixels"])
    return shown
