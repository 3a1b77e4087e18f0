"""The model registry on Redis: versioned, checksummed weight blobs, aliases and change events.

Every write that names a version is one Lua script, so a reader never sees a version number whose
blob and record are not already stored, and every change is announced on `Keys.events()` as JSON
``{"event": "published"|"alias"|"deleted", "model", "version", "alias"?, "previous"?, "split"?}``.

An alias names one version (the aliases hash) or several with weights, a traffic split
(`shared.splits`): then the splits hash holds the weights and the aliases hash the split's
primary version (its heaviest), so that whatever reads aliases alone (evaluation, V2 metadata,
an older predictor) still finds one version there. A rollout decision is appended to the model's
decisions stream by the same script that moves the alias.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, NoReturn, cast

import orjson
import redis
import redis.client
from redis.commands.core import Script

from shared import splits as traffic
from shared.errors import (
    AliasNotFound,
    CorruptModel,
    InvalidInput,
    ModelNotFound,
    RolloutConflict,
    VersionInUse,
    VersionNotFound,
)
from shared.keys import Keys
from shared.redis_conn import write_durably
from shared.spec import valid_name

#: The alias predictions use when no version is asked for.
PRODUCTION = "production"
#: Unaliased versions kept per model by default (see `Settings.retention`).
DEFAULT_RETENTION = 20
#: Rollout decisions kept per model (approximately: the stream is trimmed with MAXLEN ~).
DECISIONS_MAXLEN = 1000
#: Fields of a decision the caller gives; the registry adds `alias` and `split` (the state after).
DECISION_FIELDS = ("action", "version", "reason", "actor")
#: Bytes at the head of a stored record read to find its sha256 (`publish` writes the version,
#: the model name, at most 64 characters, and the sha256 first: about 180 bytes).
RECORD_HEAD_BYTES = 256
_HEAD_SHA256 = re.compile(rb'^\{"version":\d+,"model":"[^"]*","sha256":"([0-9a-f]{64})"')

# Status codes the scripts return instead of raising, mapped to domain errors by `_raise`.
_OK, _NO_MODEL, _NO_VERSION, _NO_ALIAS, _IN_USE, _CHANGED = 0, -1, -2, -3, -4, -5

# Publish. KEYS: counter, versions, latest, models[, published]. ARGV: model, blob head, blob
# tail, record head, record tail, blob, record JSON without its opening brace, channel.
# The blob and record are written before anything names the version: a script that fails
# half-way (e.g. out of memory) keeps its earlier writes, and an orphan blob is harmless.
_PUBLISH = """
if KEYS[5] then
  local done = redis.call('GET', KEYS[5])
  -- Written again so that a WAIT after this call covers the version (see `publish`).
  if done then redis.call('SET', KEYS[5], done) return {tonumber(done), 0} end
end
local v = redis.call('INCR', KEYS[1])
local vs = string.format('%d', v)
redis.call('SET', ARGV[2] .. vs .. ARGV[3], ARGV[6])
redis.call('SET', ARGV[4] .. vs .. ARGV[5], '{"version":' .. vs .. ',' .. ARGV[7])
redis.call('ZADD', KEYS[2], v, vs)
local cur = tonumber(redis.call('GET', KEYS[3]))
if not cur or v > cur then redis.call('SET', KEYS[3], vs) end
redis.call('SADD', KEYS[4], ARGV[1])
if KEYS[5] then redis.call('SET', KEYS[5], vs) end
redis.call('PUBLISH', ARGV[8], cjson.encode({event='published', model=ARGV[1], version=v}))
return {v, 1}
"""

# Shared by both deleting scripts. KEYS: versions, latest, models, aliases, splits. ARGV: model,
# blob head, blob tail, record head, record tail, channel, the script-specific argument, then the
# head and tail of each of the version's counter keys (deleted with it: stats, feedback windows).
# The name goes first and the data second, the reverse of publishing, for the same reason.
_DROP = """
local function drop(vs)
  redis.call('ZREM', KEYS[1], vs)
  if redis.call('GET', KEYS[2]) == vs then
    local top = redis.call('ZREVRANGE', KEYS[1], 0, 0)
    if top[1] then redis.call('SET', KEYS[2], top[1]) else redis.call('DEL', KEYS[2]) end
  end
  if redis.call('ZCARD', KEYS[1]) == 0 then redis.call('SREM', KEYS[3], ARGV[1]) end
  redis.call('DEL', ARGV[2] .. vs .. ARGV[3], ARGV[4] .. vs .. ARGV[5])
  for i = 8, #ARGV - 1, 2 do redis.call('DEL', ARGV[i] .. vs .. ARGV[i + 1]) end
  redis.call('PUBLISH', ARGV[6],
    cjson.encode({event='deleted', model=ARGV[1], version=tonumber(vs)}))
end
local function aliased()
  local used = {}
  for _, x in ipairs(redis.call('HVALS', KEYS[4])) do used[x] = true end
  for _, split in ipairs(redis.call('HVALS', KEYS[5])) do
    for vs, _ in pairs(cjson.decode(split)) do used[vs] = true end
  end
  return used
end
"""

# Delete one version. ARGV[7]: the version. The counter is kept so numbers are never reused
# (predictors cache by model and version).
_DELETE = (
    _DROP
    + """
if redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 0 then return -1 end
if not redis.call('ZSCORE', KEYS[1], ARGV[7]) then return -2 end
if aliased()[ARGV[7]] then return -4 end
drop(ARGV[7])
return 0
"""
)

# Retention. ARGV[7]: how many unaliased versions to keep. Returns the deleted versions.
_RETAIN = (
    _DROP
    + """
local used = aliased()
local latest = redis.call('GET', KEYS[2])
local free = {}
for _, vs in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if not used[vs] then table.insert(free, vs) end
end
local gone = {}
for i = 1, #free - tonumber(ARGV[7]) do
  if free[i] ~= latest then
    drop(free[i])
    table.insert(gone, tonumber(free[i]))
  end
end
return gone
"""
)

# The tail of both alias scripts' ARGV, from `first`: the alias's version and split expected now
# ('*': whatever they are; '': none), then the decisions stream's MAXLEN and, when KEYS[5] (the
# stream) is given, the decision's field/value pairs. `expected` runs before any write.
_DECIDE = """
local function expected(first)
  if ARGV[first] == '*' then return true end
  local alias = redis.call('HGET', KEYS[2], ARGV[2]) or ''
  local split = redis.call('HGET', KEYS[4], ARGV[2]) or ''
  return alias == ARGV[first] and split == ARGV[first + 1]
end
local function decide(first)
  if not KEYS[5] then return end
  local args = {'XADD', KEYS[5], 'MAXLEN', '~', ARGV[first + 2], '*'}
  for i = first + 3, #ARGV do table.insert(args, ARGV[i]) end
  redis.call(unpack(args))
end
"""

# Set or move an alias to one version, clearing its split. KEYS: versions, aliases, models,
# splits[, decisions]. ARGV: model, alias, version, channel, then the tail of _DECIDE.
_SET_ALIAS = (
    _DECIDE
    + """
if redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 0 then return -1 end
if not redis.call('ZSCORE', KEYS[1], ARGV[3]) then return -2 end
if not expected(5) then return -5 end
local prev = redis.call('HGET', KEYS[2], ARGV[2])
local was_split = redis.call('HDEL', KEYS[4], ARGV[2]) == 1
decide(5)
if prev == ARGV[3] and not was_split then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('PUBLISH', ARGV[4], cjson.encode({event='alias', model=ARGV[1], alias=ARGV[2],
  version=tonumber(ARGV[3]), previous=prev and tonumber(prev) or cjson.null}))
return 0
"""
)

# Make an alias a split. KEYS: versions, aliases, models, splits[, decisions]. ARGV: model,
# alias, split JSON, primary version, channel, then the tail of _DECIDE. Returns {status, version}.
_SET_SPLIT = (
    _DECIDE
    + """
if redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 0 then return {-1, 0} end
for vs, _ in pairs(cjson.decode(ARGV[3])) do
  if not redis.call('ZSCORE', KEYS[1], vs) then return {-2, tonumber(vs)} end
end
if not expected(6) then return {-5, 0} end
local prev = redis.call('HGET', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[4])
redis.call('HSET', KEYS[4], ARGV[2], ARGV[3])
decide(6)
redis.call('PUBLISH', ARGV[5], cjson.encode({event='alias', model=ARGV[1], alias=ARGV[2],
  version=tonumber(ARGV[4]), previous=prev and tonumber(prev) or cjson.null, split=cjson.decode(ARGV[3])}))
return {0, 0}
"""
)

# Remove an alias and its split. KEYS: aliases, models, splits. ARGV: model, alias, channel.
_DELETE_ALIAS = """
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 0 then return -1 end
local prev = redis.call('HGET', KEYS[1], ARGV[2])
if not prev then return -3 end
redis.call('HDEL', KEYS[1], ARGV[2])
redis.call('HDEL', KEYS[3], ARGV[2])
redis.call('PUBLISH', ARGV[3], cjson.encode({event='alias', model=ARGV[1], alias=ARGV[2],
  version=cjson.null, previous=tonumber(prev)}))
return 0
"""


@dataclass(frozen=True)
class VersionRecord:
    """What the registry knows about one version besides its bytes."""

    model: str
    version: int
    sha256: str
    size: int
    created_at: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the record as a JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_json(cls, raw: bytes | str) -> VersionRecord:
        """Parse a stored record."""
        data = orjson.loads(raw)
        return cls(
            model=data["model"],
            version=int(data["version"]),
            sha256=data["sha256"],
            size=int(data["size"]),
            created_at=data["created_at"],
            metadata=data.get("metadata") or {},
        )


def check_name(name: object, what: str = "model") -> str:
    """Return `name` if it is a safe model or alias name, else raise InvalidInput."""
    if not valid_name(name):
        raise InvalidInput(
            f"invalid {what} name {name!r}: use 1-64 of a-z 0-9 . _ - starting with a letter or digit",
            {what: ["invalid name"]},
        )
    if what == "alias" and name.isdigit():
        raise InvalidInput(f"alias {name!r} is all digits: it would read as a version number")
    return name


def check_version(version: object) -> int:
    """Return `version` if it is a positive int, else raise InvalidInput."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InvalidInput(f"invalid version {version!r}: expected a positive integer")
    return version


def parse_event(message: dict[str, Any] | None) -> dict[str, Any] | None:
    """Return the event of a pub/sub message, or None for anything else (subscribe notices)."""
    if not message or message.get("type") != "message":
        return None
    return orjson.loads(message["data"])


def split_around_version(build: Callable[[str, int], str], model: str) -> tuple[str, str]:
    """Return (head, tail) with build(model, v) == head + str(v) + tail, for the Lua scripts."""
    # The scripts learn the version from INCR, so they assemble per-version key names from
    # the parts keys.py renders around it; the names themselves stay defined in one place.
    one, two = build(model, 1), build(model, 2)
    head = os.path.commonprefix([one, two])
    tail = os.path.commonprefix([one[::-1], two[::-1]])[::-1]
    if build(model, 4096) != f"{head}4096{tail}":
        raise RuntimeError(f"cannot find the version in key {one!r}")
    return head, tail


def _text(raw: bytes | str) -> str:
    """Return a Redis reply as text."""
    return raw.decode() if isinstance(raw, bytes) else raw


def _int(raw: bytes | str | None) -> int | None:
    """Return a Redis integer reply, or None."""
    return None if raw is None else int(raw)


class Registry:
    """Versions, aliases and events of every model, stored under one `Keys` prefix."""

    def __init__(
        self,
        redis: redis.Redis,
        keys: Keys,
        *,
        retention: int = DEFAULT_RETENTION,
        min_replicas: int = 0,
        replica_timeout: int = 0,
    ) -> None:
        """Use `redis` (binary replies: decode_responses=False) and the names of `keys`.

        With `min_replicas`, `publish` and the alias moves (`set_alias`, `set_split`,
        `delete_alias`, and so every rollout decision) return only once that many replicas hold
        what they wrote (Redis WAIT, at most `replica_timeout` ms), else raise ReplicationTimeout.
        """
        if redis.get_connection_kwargs().get("decode_responses"):
            raise ValueError("the registry stores bytes: use a Redis client without decode_responses")
        if retention < 0:
            raise ValueError(f"retention must be >= 0, got {retention}")
        self.redis = redis
        self.keys = keys
        self.retention = retention
        self.min_replicas = min_replicas
        self.replica_timeout = replica_timeout
        self._publish = redis.register_script(_PUBLISH)
        self._delete = redis.register_script(_DELETE)
        self._retain = redis.register_script(_RETAIN)
        self._set_alias = redis.register_script(_SET_ALIAS)
        self._set_split = redis.register_script(_SET_SPLIT)
        self._delete_alias = redis.register_script(_DELETE_ALIAS)

    # --- writing ---------------------------------------------------------------------------------
    def publish(self, model: str, blob: bytes, metadata: dict, *, job_id: str | None = None) -> int:
        """Store `blob` as the model's next version and return it; once per `job_id`."""
        check_name(model)
        if not isinstance(blob, (bytes, bytearray, memoryview)) or len(blob) == 0:
            raise InvalidInput("a model blob must be non-empty bytes")
        if not isinstance(metadata, dict):
            raise InvalidInput("metadata must be a JSON object")
        blob = bytes(blob)
        # The version (the script's), model and sha256 come first: `checksums` reads only that head.
        record = {
            "model": model,
            "sha256": hashlib.sha256(blob).hexdigest(),
            "size": len(blob),
            "created_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "metadata": metadata,
        }
        try:
            body = orjson.dumps(record)[1:]  # the script puts '{"version":N,' in front
        except TypeError as exc:
            raise InvalidInput(f"metadata is not JSON-serializable: {exc}") from exc
        keys = [
            self.keys.version_counter(model),
            self.keys.versions(model),
            self.keys.latest(model),
            self.keys.models(),
        ]
        if job_id is not None:
            if not isinstance(job_id, str) or not job_id or len(job_id) > 200:
                raise InvalidInput(f"invalid job id {job_id!r}")
            keys.append(self.keys.published(job_id))
        args: list[str | bytes] = [model, *self._version_parts(model), blob, body, self.keys.events()]
        # A retry of a publish that timed out waiting for replicas finds the job's version (the
        # script returns it, created 0, and rewrites the job's marker: WAIT counts only the writes
        # of its own connection) and waits again: the same version, now durable, never a second.
        ((version, created),) = write_durably(
            self.redis,
            self.min_replicas,
            self.replica_timeout,
            f"model {model!r}'s new version",
            lambda pipe: self._publish(keys=keys, args=args, client=pipe),
        )
        if created:
            self.apply_retention(model)
        return int(version)

    def set_alias(
        self,
        model: str,
        alias: str,
        version: int,
        *,
        decision: dict[str, Any] | None = None,
        expect: dict[int, float] | None = None,
    ) -> None:
        """Point `alias` at `version` alone, creating or moving it and clearing its split.

        With `decision` ({action, version, reason, actor}), append it to the model's decisions in
        the same script. With `expect` (the alias's split now: {} unset, {v: 1.0} one version),
        move it only if that is still so, else RolloutConflict: a decision taken on what was read.
        """
        check_name(model)
        check_name(alias, "alias")
        check_version(version)
        keys, tail = self._decision_parts(model, alias, {version: 1.0}, decision, expect)
        status = self._durably(
            self._set_alias,
            keys,
            [model, alias, version, self.keys.events(), *tail],
            f"alias {model}/{alias}",
        )
        self._raise(status, model, version=version, alias=alias)

    def set_split(
        self,
        model: str,
        alias: str,
        weights: dict[Any, Any],
        *,
        decision: dict[str, Any] | None = None,
        expect: dict[int, float] | None = None,
    ) -> dict[int, float]:
        """Make `alias` a traffic split {version: weight}, normalised and returned (one version: plain).

        Every version must exist; the weights are checked by `shared.splits.normalize`.
        `decision` and `expect` as for `set_alias`.
        """
        check_name(model)
        check_name(alias, "alias")
        split = traffic.normalize(weights)
        if len(split) == 1:
            self.set_alias(model, alias, next(iter(split)), decision=decision, expect=expect)
            return split
        keys, tail = self._decision_parts(model, alias, split, decision, expect)
        primary = traffic.primary(split)
        status, missing = self._durably(
            self._set_split,
            keys,
            [model, alias, orjson.dumps(traffic.to_json(split)), primary, self.keys.events(), *tail],
            f"split {model}/{alias}",
        )
        self._raise(int(status), model, version=int(missing), alias=alias)
        return split

    def _decision_parts(
        self,
        model: str,
        alias: str,
        split: dict[int, float],
        decision: dict[str, Any] | None,
        expect: dict[int, float] | None,
    ) -> tuple[list[str], list[Any]]:
        """Return the KEYS of the alias scripts, and the ARGV tail: `expect`, and `decision` (if any)."""
        keys = [self.keys.versions(model), self.keys.aliases(model), self.keys.models()]
        keys.append(self.keys.splits(model))
        if expect is None:
            tail: list[Any] = ["*", ""]
        elif len(expect) > 1:  # as the script stores it: the same bytes
            tail = [traffic.primary(expect), orjson.dumps(traffic.to_json(expect))]
        else:
            tail = [next(iter(expect), ""), ""]
        tail.append(DECISIONS_MAXLEN)
        if decision is None:
            return keys, tail
        fields: dict[str, Any] = {f: decision.get(f) for f in DECISION_FIELDS}
        fields.update(alias=alias, split=orjson.dumps(traffic.to_json(split)).decode())
        for name, value in fields.items():
            tail += [name, "" if value is None else str(value)]
        return [*keys, self.keys.decisions(model)], tail

    def delete_alias(self, model: str, alias: str) -> None:
        """Remove `alias`; the version it named stays."""
        check_name(model)
        check_name(alias, "alias")
        status = self._durably(
            self._delete_alias,
            [self.keys.aliases(model), self.keys.models(), self.keys.splits(model)],
            [model, alias, self.keys.events()],
            f"alias {model}/{alias} deleted",
        )
        self._raise(status, model, alias=alias)

    def _durably(self, script: Script, keys: list[str], args: list[Any], what: str) -> Any:
        """Run one of the alias scripts; with `min_replicas`, return once that many replicas hold it.

        An alias move, a split or a rollout decision is as much the registry's state as a version:
        a failover right after it must not bring the previous alias back. ReplicationTimeout when
        the replicas are late: the move is made on the primary, not yet durable.
        """
        if self.min_replicas <= 0:
            return script(keys=keys, args=args)
        (reply,) = write_durably(
            self.redis,
            self.min_replicas,
            self.replica_timeout,
            what,
            lambda pipe: script(keys=keys, args=args, client=pipe),
        )
        return reply

    def delete_version(self, model: str, version: int) -> None:
        """Delete a version's name, blob and record at once; VersionInUse while aliased."""
        check_name(model)
        check_version(version)
        status = self._delete(
            keys=self._drop_keys(model),
            args=[
                model,
                *self._version_parts(model),
                self.keys.events(),
                version,
                *self._counter_parts(model),
            ],
        )
        self._raise(status, model, version=version)

    def apply_retention(self, model: str) -> list[int]:
        """Delete the oldest unaliased versions beyond `retention`, never the latest; return them."""
        check_name(model)
        gone = self._retain(
            keys=self._drop_keys(model),
            args=[
                model,
                *self._version_parts(model),
                self.keys.events(),
                self.retention,
                *self._counter_parts(model),
            ],  # fmt: skip
        )
        return [int(v) for v in gone]

    # --- reading ---------------------------------------------------------------------------------
    def get_blob(self, model: str, version: int) -> tuple[bytes, VersionRecord]:
        """Return a version's bytes and record, after checking the bytes against its sha256."""
        check_name(model)
        check_version(version)
        pipe = self.redis.pipeline()  # MULTI/EXEC: blob and record from the same moment
        pipe.get(self.keys.record(model, version))
        pipe.get(self.keys.blob(model, version))
        raw, blob = pipe.execute()
        if raw is None:
            self._missing(model, version)
        record = self._parse(model, version, raw)
        if blob is None:
            raise CorruptModel(f"{model} v{version}: the record exists but the blob is missing")
        if len(blob) != record.size or hashlib.sha256(blob).hexdigest() != record.sha256:
            raise CorruptModel(f"{model} v{version}: the blob does not match its sha256")
        return blob, record

    def record(self, model: str, version: int) -> VersionRecord:
        """Return a version's record (metadata, sha256, size) without its blob."""
        check_name(model)
        check_version(version)
        raw = self.redis.get(self.keys.record(model, version))
        if raw is None:
            self._missing(model, version)
        return self._parse(model, version, raw)

    def checksums(self, model: str, versions: Iterable[int]) -> dict[int, str]:
        """Return the sha256 of each of `versions` that has a record; one round trip, a few bytes each.

        Model caches compare it with what they hold: a Redis that lost its data hands out version
        numbers again, for other weights.
        """
        check_name(model)
        numbers = [check_version(v) for v in versions]
        pipe = self.redis.pipeline(transaction=False)
        for v in numbers:
            pipe.getrange(self.keys.record(model, v), 0, RECORD_HEAD_BYTES - 1)
        found: dict[int, str] = {}
        for v, head in zip(numbers, pipe.execute(), strict=True):
            if not head:  # no record (GETRANGE of a missing key is empty)
                continue
            match = _HEAD_SHA256.match(head)
            if match:
                found[v] = match.group(1).decode()
                continue
            try:  # a record laid out otherwise: read it whole
                found[v] = self.record(model, v).sha256
            except (ModelNotFound, VersionNotFound):
                continue  # deleted meanwhile
        return found

    def checksum(self, model: str, version: int) -> str:
        """Return a version's sha256 (ModelNotFound / VersionNotFound when it has no record)."""
        found = self.checksums(model, [version]).get(version)
        if found is None:
            self._missing(model, version)
        return found

    def resolve(self, model: str, *, version: int | None = None, alias: str | None = None) -> int:
        """Return the version asked for: `version`, else `alias`, else production, else latest."""
        check_name(model)
        if version is not None and alias is not None:
            raise InvalidInput("ask for a version or an alias, not both")
        pipe = self.redis.pipeline()
        pipe.sismember(self.keys.models(), model)
        if version is not None:
            pipe.zscore(self.keys.versions(model), check_version(version))
        else:
            pipe.hget(self.keys.aliases(model), check_name(PRODUCTION if alias is None else alias, "alias"))
            pipe.get(self.keys.latest(model))
        known, *found = pipe.execute()
        if not known:
            raise ModelNotFound(f"model {model!r} has no published version")
        if version is not None:
            if found[0] is None:
                raise VersionNotFound(f"model {model!r} has no version {version}")
            return version
        named, latest = (_int(x) for x in found)
        if named is not None:
            return named
        if alias is not None:
            raise AliasNotFound(f"model {model!r} has no alias {alias!r}")
        if latest is None:
            raise ModelNotFound(f"model {model!r} has no published version")
        return latest

    def models(self) -> list[str]:
        """Return the names of models with at least one version, sorted."""
        return sorted(_text(m) for m in self.redis.smembers(self.keys.models()))

    def versions(self, model: str) -> list[VersionRecord]:
        """Return the records of a model's versions, oldest first."""
        check_name(model)
        members = cast("list[bytes]", self.redis.zrange(self.keys.versions(model), 0, -1))
        numbers = [int(v) for v in members]
        if not numbers:
            self.require_model(model)
            return []
        raws = self.redis.mget([self.keys.record(model, v) for v in numbers])
        # A version deleted between the two reads is simply no longer listed.
        return [self._parse(model, v, raw) for v, raw in zip(numbers, raws, strict=True) if raw is not None]

    def latest(self, model: str) -> int | None:
        """Return the model's highest complete version, or None if it has none."""
        check_name(model)
        return _int(self.redis.get(self.keys.latest(model)))

    def aliases(self, model: str) -> dict[str, int]:
        """Return the model's aliases as alias -> version."""
        return self.routes(model)[0]

    def splits(self, model: str) -> dict[str, dict[int, float]]:
        """Return the model's traffic splits as alias -> {version: weight}."""
        return self.routes(model)[1]

    def routes(self, model: str) -> tuple[dict[str, int], dict[str, dict[int, float]]]:
        """Return the model's aliases (a split's primary for a split) and its splits, read at once."""
        check_name(model)
        pipe = self.redis.pipeline()
        pipe.sismember(self.keys.models(), model)
        pipe.hgetall(self.keys.aliases(model))
        pipe.hgetall(self.keys.splits(model))
        known, raw_aliases, raw_splits = pipe.execute()
        if not known:
            raise ModelNotFound(f"model {model!r} has no published version")
        aliases = {_text(a): int(v) for a, v in sorted(raw_aliases.items())}
        found = {}
        for alias, raw in sorted(raw_splits.items()):
            try:
                found[_text(alias)] = traffic.from_json(orjson.loads(raw))
            except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
                continue  # not written by set_split: the alias's primary serves alone
        return aliases, found

    def decisions(self, model: str, count: int = 20) -> list[dict[str, Any]]:
        """Return the model's last `count` rollout decisions, newest first, each with its id and time."""
        check_name(model)
        entries = self.redis.xrevrange(self.keys.decisions(model), count=count)
        found = []
        for entry_id, raw in cast("list[tuple[bytes, dict[bytes, bytes]]]", entries):
            fields = {_text(k): _text(v) for k, v in raw.items()}
            millis = int(_text(entry_id).partition("-")[0])
            try:
                split = traffic.from_json(orjson.loads(fields.get("split") or "{}"))
            except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
                split = {}
            version = fields.get("version", "")
            found.append(
                {
                    "id": _text(entry_id),
                    "time": datetime.fromtimestamp(millis / 1000, UTC).isoformat(timespec="milliseconds"),
                    "action": fields.get("action", ""),
                    "version": int(version) if version.isdigit() else None,
                    "alias": fields.get("alias", ""),
                    "reason": fields.get("reason", ""),
                    "actor": fields.get("actor", ""),
                    "split": traffic.to_json(split),
                }
            )
        return found

    def published_by(self, job_id: str) -> int | None:
        """Return the version a training job published, or None if it has not."""
        return _int(self.redis.get(self.keys.published(job_id)))

    def confirm_published(self, job_id: str, version: int) -> None:
        """Wait until `min_replicas` replicas hold the job's version; ReplicationTimeout if not in time."""
        # Rewriting the marker gives this connection a write to WAIT for, after the version's own
        # writes in the replication stream: once a replica has it, it has the version too.
        write_durably(
            self.redis,
            self.min_replicas,
            self.replica_timeout,
            f"version {version} of job {job_id}",
            lambda pipe: pipe.set(self.keys.published(job_id), version),
        )

    def subscribe(self) -> redis.client.PubSub:
        """Return a PubSub subscribed to the registry's events (read them with `parse_event`)."""
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(self.keys.events())
        return pubsub

    # --- helpers ---------------------------------------------------------------------------------
    def _version_parts(self, model: str) -> list[str]:
        """Return blob head, blob tail, record head, record tail for the scripts."""
        return [
            *split_around_version(self.keys.blob, model),
            *split_around_version(self.keys.record, model),
        ]

    def _counter_parts(self, model: str) -> list[str]:
        """Return the head and tail of each per-version counter key, for the deleting scripts."""
        builds = (self.keys.version_stats, self.keys.window_current, self.keys.window_previous)
        return [part for build in builds for part in split_around_version(build, model)]

    def _drop_keys(self, model: str) -> list[str]:
        """Return the KEYS of the deleting scripts."""
        return [
            self.keys.versions(model),
            self.keys.latest(model),
            self.keys.models(),
            self.keys.aliases(model),
            self.keys.splits(model),
        ]

    def require_model(self, model: str) -> None:
        """Raise ModelNotFound unless the model has a published version."""
        if not self.redis.sismember(self.keys.models(), model):
            raise ModelNotFound(f"model {model!r} has no published version")

    def _missing(self, model: str, version: int) -> NoReturn:
        """Raise the error for a version without a record."""
        self.require_model(model)
        raise VersionNotFound(f"model {model!r} has no version {version}")

    @staticmethod
    def _parse(model: str, version: int, raw: bytes | str) -> VersionRecord:
        """Parse a stored record, or raise CorruptModel."""
        try:
            return VersionRecord.from_json(raw)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise CorruptModel(f"{model} v{version}: unreadable record ({exc})") from exc

    @staticmethod
    def _raise(status: int, model: str, *, version: int | None = None, alias: str = "") -> None:
        """Turn a script's status code into the domain error it stands for."""
        if status == _NO_MODEL:
            raise ModelNotFound(f"model {model!r} has no published version")
        if status == _NO_VERSION:
            raise VersionNotFound(f"model {model!r} has no version {version}")
        if status == _NO_ALIAS:
            raise AliasNotFound(f"model {model!r} has no alias {alias!r}")
        if status == _IN_USE:
            raise VersionInUse(f"{model} v{version} is aliased: move or delete the alias first")
        if status == _CHANGED:
            raise RolloutConflict(f"{model}: alias {alias!r} changed meanwhile: read it again, then decide")
