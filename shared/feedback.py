"""Feedback labels: the true class of a logged request, counted once against the version that answered.

`Feedback.add` runs one Lua script per call: each request id is looked up in the prediction log's
index (shared/prediction_log.py); an id no longer (or never) indexed is *unknown*; an id that was
labelled already is *repeated* and counts nothing (``HSETNX`` on the feedback hash: the first
label wins, so a retried or replayed call never counts twice); any other adds to its version's
counters in `Keys.version_stats`: ``feedback``, ``correct`` and ``confusion:<true>:<predicted>``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import redis

from shared.errors import InvalidInput
from shared.keys import Keys
from shared.prediction_log import generation_size
from shared.registry import _split_around_version, check_name

#: Labels one call may carry.
MAX_LABELS = 1000
#: A request id as logged: a client's or a generated id, and for image i of a batch "/i".
LOGGED_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}(/[0-9]{1,5})?")

# KEYS: logged count, feedback labels. ARGV: index head, index tail, generation size, stats head,
# stats tail, then (id, label) pairs. Returns {accepted, unknown, repeated}.
_ADD = """
local half = tonumber(ARGV[3])
local logged = tonumber(redis.call('GET', KEYS[1]) or '0')
local current = -1
if logged > 0 then current = math.floor((logged - 1) / half) end
local accepted, unknown, repeated = 0, 0, 0
for i = 6, #ARGV, 2 do
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
    local stats = ARGV[4] .. version .. ARGV[5]
    redis.call('HINCRBY', stats, 'feedback', 1)
    if predicted == label then redis.call('HINCRBY', stats, 'correct', 1) end
    redis.call('HINCRBY', stats, 'confusion:' .. label .. ':' .. predicted, 1)
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

    def __init__(self, redis: redis.Redis, keys: Keys, log_maxlen: int) -> None:
        """Use `redis` (binary replies); `log_maxlen` is the log's, whose index is searched."""
        self.redis = redis
        self.keys = keys
        self.log_maxlen = log_maxlen
        self._add = redis.register_script(_ADD)

    def add(self, model: str, labels: list[tuple[str, int]]) -> Counted:
        """Count (request id, true label) pairs, each once; return what was accepted, unknown, repeated."""
        check_name(model)
        check_labels(labels)
        index_head, index_tail = _split_around_version(self.keys.prediction_index, model)
        stats_head, stats_tail = _split_around_version(self.keys.version_stats, model)
        size = generation_size(self.log_maxlen)
        args: list[str | int] = [index_head, index_tail, size, stats_head, stats_tail]
        for request_id, label in labels:
            args += [request_id, label]
        accepted, unknown, repeated = self._add(
            keys=[self.keys.logged_count(model), self.keys.feedback_labels(model)], args=args
        )
        return Counted(int(accepted), int(unknown), int(repeated))
