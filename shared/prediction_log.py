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
from enum import StrEnum
from typing import Any, cast

import numpy as np
import redis

from shared.errors import InvalidInput
from shared.keys import Keys
from shared.registry import check_name, split_around_version


class Kind(StrEnum):
    """What an entry logs: the answer that was served, or a shadow version's, never returned."""

    LIVE = "live"
    SHADOW = "shadow"


#: Pixels and classes of an image.
PIXELS, CLASSES = 784, 10
#: Entries a read returns at most.
MAX_LIMIT = 1000
#: Entries a read looks at, at most, to find `limit` of one version (then it says where to go on).
MAX_SCAN = 10_000
#: A stream entry id: milliseconds, a dash, a sequence number.
_ENTRY_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")

# Log a batch. KEYS: stream, logged count, feedback labels. ARGV: maxlen, index head, index tail,
# generation size, n, then the rows' fields packed: ids ("\n"-joined), versions (" "-joined),
# labels (one digit each), kinds ("l" live | "s" shadow, one each), probabilities (40 bytes
# each), pixels (784 bytes each). A few large arguments, not thirteen per entry: packing each
# command's arguments costs the client far more than these loops cost Redis. Live entries are
# indexed; a generation that starts drops the one two before it, with the feedback of its ids.
_LOG = """
local n = tonumber(ARGV[5])
local half = tonumber(ARGV[4])
local ids, versions = {}, {}
for id in string.gmatch(ARGV[6], '[^\\n]+') do ids[#ids + 1] = id end
for v in string.gmatch(ARGV[7], '%d+') do versions[#versions + 1] = v end
local labels, kinds, probabilities, pixels = ARGV[8], ARGV[9], ARGV[10], ARGV[11]
if #ids ~= n or #versions ~= n or #labels ~= n or #kinds ~= n or #probabilities ~= 40 * n
    or #pixels ~= 784 * n then
  return redis.error_reply('malformed log batch')
end
local live = 0
for i = 1, n do
  if string.byte(kinds, i) == 108 then live = live + 1 end
end
local position = 0
if live > 0 then position = redis.call('INCRBY', KEYS[2], live) - live end
for i = 1, n do
  local label = string.sub(labels, i, i)
  local kind = 'shadow'
  if string.byte(kinds, i) == 108 then kind = 'live' end
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'id', ids[i], 'version', versions[i],
    'label', label, 'kind', kind, 'probabilities', string.sub(probabilities, 40 * i - 39, 40 * i),
    'pixels', string.sub(pixels, 784 * i - 783, 784 * i))
  if kind == 'live' then
    local gen = math.floor(position / half)
    if position % half == 0 and gen >= 2 then
      local old = ARGV[2] .. string.format('%d', gen - 2) .. ARGV[3]
      local gone = redis.call('HKEYS', old)
      for j = 1, #gone, 1000 do
        redis.call('HDEL', KEYS[3], unpack(gone, j, math.min(j + 999, #gone)))
      end
      redis.call('UNLINK', old)
    end
    redis.call('HSET', ARGV[2] .. string.format('%d', gen) .. ARGV[3], ids[i], versions[i] .. ' ' .. label)
    position = position + 1
  end
end
return n
"""


@dataclass(frozen=True)
class Rows:
    """Answers to log, one row per image (n rows)."""

    ids: list[str]  # request ids (image i of a batch: "<id>/<i>")
    versions: np.ndarray  # (n,) the version that answered
    labels: np.ndarray  # (n,) predicted classes 0–9
    kinds: bytes  # n bytes: b"l" live, b"s" shadow
    probabilities: np.ndarray  # (n, 10) float32
    pixels: np.ndarray  # (n, 784) uint8

    def __len__(self) -> int:
        return len(self.ids)

    def part(self, lo: int, hi: int) -> Rows:
        """Return rows lo to hi (excluded)."""
        return Rows(
            self.ids[lo:hi],
            self.versions[lo:hi],
            self.labels[lo:hi],
            self.kinds[lo:hi],
            self.probabilities[lo:hi],
            self.pixels[lo:hi],
        )

    @staticmethod
    def join(parts: list[Rows]) -> Rows:
        """Return the rows of `parts`, in order."""
        return Rows(
            [i for p in parts for i in p.ids],
            np.concatenate([p.versions for p in parts]) if parts else np.zeros(0, np.int64),
            np.concatenate([p.labels for p in parts]) if parts else np.zeros(0, np.int64),
            b"".join(p.kinds for p in parts),
            np.concatenate([p.probabilities for p in parts]) if parts else np.zeros((0, CLASSES), np.float32),
            np.concatenate([p.pixels for p in parts]) if parts else np.zeros((0, PIXELS), np.uint8),
        )


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
        self._log = redis.register_script(_LOG)

    # --- writing (the recorder, in its pipeline) --------------------------------------------------
    def add(self, pipe: redis.client.Pipeline, model: str, rows: Rows) -> None:
        """Queue on `pipe` the script that logs `rows` (and indexes the live ones); nothing if empty."""
        n = len(rows)
        if not n:
            return
        head, tail = split_around_version(self.keys.prediction_index, model)
        self._log(
            keys=[
                self.keys.prediction_log(model),
                self.keys.logged_count(model),
                self.keys.feedback_labels(model),
            ],
            args=[
                self.maxlen,
                head,
                tail,
                generation_size(self.maxlen),
                n,
                "\n".join(rows.ids),
                " ".join(map(str, rows.versions.tolist())),
                (np.asarray(rows.labels, dtype=np.uint8) + ord("0")).tobytes(),
                rows.kinds,
                np.ascontiguousarray(rows.probabilities, dtype="<f4").tobytes(),
                np.ascontiguousarray(rows.pixels, dtype=np.uint8).tobytes(),
            ],
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
