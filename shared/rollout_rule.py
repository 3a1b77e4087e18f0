"""The automatic rollout rule: stored per model, evaluated on a timer, off the request path.

A model's rule (`shared.rollout.Rule`, JSON in `Keys.rollout_rule(model)`) watches one alias.
`RuleTimer` runs in every web process of the API role (not the predictor role) and wakes every
`MNIST_ROLLOUT_INTERVAL` seconds; whichever process first takes the lock (`SET NX PX`, held
for 0.9 of the interval and never released, so it rate-limits) evaluates every model's rule, so
several processes or hosts evaluate once per interval between them. Each evaluation reads the
alias's state and its canary's and base's counters (`Keys.version_stats`, as `/monitor` shows
them), asks `rollout.judge`, and applies a promote or rollback with `rollout.apply`, actor
``rule``, the verdict's figures as the reason. A user's decision in between makes the rule's a
RolloutConflict, and nothing is written.
"""

from __future__ import annotations

import logging
import secrets
import threading

import orjson
import redis

from shared import drift, rollout
from shared.errors import InvalidInput, MnistError, RolloutConflict
from shared.monitor import drift_report, read_stats, read_windows
from shared.registry import Registry, check_name
from shared.rollout import Observed, Rule, Verdict

log = logging.getLogger(__name__)

#: Share of the interval the lock is held: a process that won it wakes again after it expired.
LOCK_SHARE = 0.9


def put(registry: Registry, model: str, rule: Rule) -> Rule:
    """Store `rule` as the model's (which must have a version: 404), replacing any before."""
    check_name(model)
    check_name(rule.alias, "alias")
    registry.require_model(model)
    registry.redis.set(registry.keys.rollout_rule(model), orjson.dumps(rule.to_dict()))
    return rule


def get(registry: Registry, model: str) -> Rule | None:
    """Return the model's rule, or None; one that does not parse counts as none."""
    raw = registry.redis.get(registry.keys.rollout_rule(check_name(model)))
    if raw is None:
        return None
    try:
        return Rule.from_dict(orjson.loads(raw))
    except (orjson.JSONDecodeError, AttributeError, InvalidInput):
        return None


def delete(registry: Registry, model: str) -> bool:
    """Remove the model's rule; return whether it had one."""
    return bool(registry.redis.delete(registry.keys.rollout_rule(check_name(model))))


def observe(registry: Registry, model: str, versions: list[int], threshold: float) -> dict[int, Observed]:
    """Return what each of `versions` did live: feedback and correct answers over the feedback
    window (MNIST_FEEDBACK_WINDOW: the recent labels, as the monitor shows them), drift score (or None)."""
    stats = read_stats(registry, model, versions)
    windows = read_windows(registry, model, versions)
    seen = {}
    for version in versions:
        report = drift_report(registry.record(model, version).metadata, stats[version], threshold)
        seen[version] = Observed(
            version,
            windows[version].get("feedback", 0),
            windows[version].get("correct", 0),
            report["score"] if report and report["images"] >= drift.MIN_IMAGES else None,
        )
    return seen


def verdict(registry: Registry, model: str, rule: Rule, threshold: float) -> tuple[rollout.State, Verdict]:
    """Return the alias's state and what `rule` decides about it now (nothing is written)."""
    state, _ = rollout.read_state(registry, model, rule.alias)
    canary = state.canary
    seen = observe(registry, model, [canary.version, canary.base], threshold) if canary else {}
    return state, rollout.judge(rule, canary, seen)


def run(registry: Registry, model: str, rule: Rule, threshold: float) -> Verdict:
    """Evaluate `rule` on the model and apply its promote or rollback; return the verdict."""
    state, found = verdict(registry, model, rule, threshold)
    if found.action is None:
        return found
    decision = rollout.decide(state, found.action)
    try:
        rollout.apply(registry, model, decision, rollout.Actor.RULE, found.reason)
    except RolloutConflict:
        return Verdict(None, f"{rule.alias!r} changed while the rule decided; looking again next time")
    log.info("rollout rule: %s %s v%d: %s", found.action, model, decision.version, found.reason)
    return found


def run_all(registry: Registry, threshold: float) -> dict[str, Verdict]:
    """Evaluate every model's rule once; return each model's verdict (a failing model is skipped)."""
    models = registry.models()
    pipe = registry.redis.pipeline(transaction=False)
    for model in models:
        pipe.get(registry.keys.rollout_rule(model))
    verdicts = {}
    for model, raw in zip(models, pipe.execute(), strict=True):
        if raw is None:
            continue
        try:
            verdicts[model] = run(registry, model, Rule.from_dict(orjson.loads(raw)), threshold)
        except (MnistError, orjson.JSONDecodeError, AttributeError) as exc:
            log.warning("rollout rule of %s not evaluated: %s", model, exc)
    return verdicts


class RuleTimer:
    """A daemon thread that runs `run_all` every `interval` s, in one process at a time (the lock)."""

    def __init__(self, registry: Registry, interval: float, threshold: float) -> None:
        """Evaluate the rules of `registry` every `interval` s, drift judged against `threshold`."""
        self.registry = registry
        self.interval = interval
        self.threshold = threshold
        self._token = secrets.token_hex(8)  # who holds the lock, for whoever reads it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread; calling again does nothing."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="rollout-rule", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and wait for it (tests)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    def tick(self) -> dict[str, Verdict] | None:
        """Evaluate every rule if this process takes the lock; return the verdicts, or None."""
        millis = max(1, int(self.interval * LOCK_SHARE * 1000))
        if not self.registry.redis.set(self.registry.keys.rollout_lock(), self._token, nx=True, px=millis):
            return None
        return run_all(self.registry, self.threshold)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.tick()
            except (redis.RedisError, OSError, MnistError) as exc:  # Redis away: try again next time
                log.warning("rollout rules not evaluated: %s", exc)
