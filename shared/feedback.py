"""Feedback labels: the true class of a logged request, counted once against the version that answered.

`Feedback.add` runs one Lua script per call: each request id is looked up in the prediction log's
index (shared/prediction_log.py); an id no longer (or never) indexed is *unknown*; an id that was
labelled already is *repeated* and counts nothing (``HSETNX`` on the feedback hash: the first
label wins, so a retried or replayed call never counts twice); any other adds to its version's
counters ``feedback``, ``correct`` and ``confusion:<true>:<predicted>`` twice over:

- in `Keys.version_stats`, the totals since the version first served;
- in its rolling window of the last W labels (`MNIST_FEEDBACK_WINDOW`), two generations of the
  same counters: `Keys.window_current` counts up to W/2 labels; the next label renames it to
  `Keys.window_previous` (dropping that one's) and starts a new one. The two together hold the
  last W/2 + 1 to W labels (fewer before the first W/2): two small hashes per version, whatever
  the traffic, and a window that moves in the same script that counts the label, once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import redis

from shared.config import DEFAULT_FEEDBACK_WINDOW
from shared.errors import InvalidInput
from shared.keys import Keys
from shared.prediction_log import generation_size
from shared.registry import check_name, split_around_version

#: Labels one call may carry.
MAX_LABELS = 1000
#: A request id as logged: a client's or a generated id, and for image i of a batch "/i".
LOGGED_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}(/[0-9]{1,5})?")

# KEYS: logged count, feedback labels. ARGV: index head, index tail, generation size, stats head,
# stats tail, current window head, tail, previous window head, tail, window generation size, then
# (id, label) pairs. Returns {accepted, unknown, repeated}.
_ADD = """
local half = tonumber(ARGV[3])
local window = tonumber(ARGV[10])
local logged = tonumber(redis.call('GET', KEYS[1]) or '0')
local current = -1
if logged > 0 then current = math.floor((logged - 1) / half) end
local accepted, unknown, repeated = 0, 0, 0
for i = 11, #ARGV, 2 do
  local id, label = ARGV[i], ARGV[i + 1]
  local found = false
  for gen = current, math.max(current - 1, 0), -1 do
    if gen >= 0 and not found then
      found = redis.call('HGET', ARGV[1] .. string.format('%d', gen) .. ARGV[2], id)
    end
  end
  if not found then
    unknown = unknown + 1
  elseif redis.call('HSETNX', KEYS[2], id, label) == 0 then
    repeated = repeated + 1
  else
    local version, predicted = string.match(found, '^(%d+) (%d+)$')
    local recent = ARGV[6] .. version .. ARGV[7]
    if tonumber(redis.call('HGET', recent, 'feedback') or '0') >= window then
      redis.call('RENAME', recent, ARGV[8] .. version .. ARGV[9])
    end
    for _, counters in ipairs({ARGV[4] .. version .. ARGV[5], recent}) do
      redis.call('HINCRBY', counters, 'feedback', 1)
      if predicted == label then redis.call('HINCRBY', counters, 'correct', 1) end
      redis.call('HINCRBY', counters, 'confusion:' .. label .. ':' .. predicted, 1)
    end
    accepted = accepted + 1
  end
end
return {accepted, unknown, repeated}
"""


@dataclass(frozen=True)
class Counted:
    """What one feedback call counted."""

    accepted: int
    unknown: int
    repeated: int


def window_generation(window: int) -> int:
    """Return the labels one generation of a `window`-label window counts (half of it, at least 1)."""
    return max(1, window // 2)


def check_labels(labels: list[tuple[str, int]]) -> None:
    """Refuse (400) more than MAX_LABELS labels, a malformed request id, or a label outside 0–9."""
    if not 1 <= len(labels) <= MAX_LABELS:
        raise InvalidInput(f"send from 1 to {MAX_LABELS} labels per call, got {len(labels)}")
    for i, (request_id, label) in enumerate(labels):
        if not isinstance(request_id, str) or not LOGGED_ID.fullmatch(request_id):
            raise InvalidInput(
                f"labels[{i}].request_id is not a request id (1–64 of A-Z a-z 0-9 . _ : -, then /<image>"
                " for an image of a batch)"
            )
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label <= 9:
            raise InvalidInput(f"labels[{i}].label must be a digit from 0 to 9")


class Feedback:
    """Counts feedback labels against the prediction log of every model under one `Keys` prefix."""

    def __init__(
        self, redis: redis.Redis, keys: Keys, log_maxlen: int, *, window: int = DEFAULT_FEEDBACK_WINDOW
    ) -> None:
        """Use `redis` (binary replies); `log_maxlen` is the log's, whose index is searched; `window` W."""
        self.redis = redis
        self.keys = keys
        self.log_maxlen = log_maxlen
        self.window = window
        self._add = redis.register_script(_ADD)

    def add(self, model: str, labels: list[tuple[str, int]]) -> Counted:
        """Count (request id, true label) pairs, each once; return what was accepted, unknown, repeated."""
        check_name(model)
        check_labels(labels)
        args: list[str | int] = [*split_around_version(self.keys.prediction_index, model)]
        args += [generation_size(self.log_maxlen)]
        for build in (self.keys.version_stats, self.keys.window_current, self.keys.window_previous):
            args += split_around_version(build, model)
        args += [window_generation(self.window)]
        for request_id, label in labels:
            args += [request_id, label]
        accepted, unknown, repeated = self._add(
            keys=[self.keys.logged_count(model), self.keys.feedback_labels(model)], args=args
        )
        return Counted(int(accepted), int(unknown), int(repeated))
