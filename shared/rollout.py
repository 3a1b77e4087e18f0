"""Rollout decisions: canary, promote, roll back. Pure rules over an alias's state, no I/O.

An alias's rollout state is its split (``{version: weight}``; a plain alias is ``{v: 1.0}``)
and the decisions recorded for it. A canary is running when the split names two versions and
the newest decision for the alias is a canary of one of them: that version is the canary, the
other the base. `decide` turns an action into the split that follows, or refuses it; the API and
the automatic rule apply what it returns with `Registry.set_split`, which records the decision in
the same script, and only if the alias is still as the decision saw it (two deciders, a user and
the rule, cannot both act on one state). `apply` and `read_state` take the registry as an
argument: this module imports no Redis.

The automatic rule (`Rule`, `judge`) watches a running canary: once the canary and its base each
have `min_feedback` feedback labels, it rolls the canary back when its online accuracy is below
the base's by more than `max_accuracy_drop` or its drift score is above `max_drift`, and promotes
it otherwise. `judge` is pure; shared/rollout_rule.py stores rules and runs them on a timer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, cast

from shared.errors import InvalidInput, RolloutConflict

if TYPE_CHECKING:
    from shared.registry import Registry

#: Decisions read to find an alias's newest one (the stream holds every alias's).
SCANNED_DECISIONS = 200
#: Most feedback labels a rule may ask for (a bound that still reads as a number).
MAX_MIN_FEEDBACK = 10**9
#: Slack of the rule's comparisons: exactly the allowed drop is allowed, whatever the float rounding.
_SLACK = 1e-9


class Action(StrEnum):
    """What a decision does; `split` is a hand-made split (PUT …/aliases/<alias> with versions)."""

    CANARY = "canary"
    PROMOTE = "promote"
    ROLLBACK = "rollback"
    SPLIT = "split"


class Actor(StrEnum):
    """Who decided: a user through the API, or the automatic rule."""

    API = "api"
    RULE = "rule"


@dataclass(frozen=True)
class Canary:
    """A running canary: `version` gets `weight` of the alias's traffic, `base` the rest."""

    version: int
    weight: float
    base: int

    def to_dict(self) -> dict[str, Any]:
        """Return the canary as the API shows it."""
        return {"version": self.version, "weight": self.weight, "base": self.base}


@dataclass(frozen=True)
class State:
    """An alias's rollout state: its split now (empty if the alias is not set) and its canary."""

    alias: str
    split: dict[int, float]
    canary: Canary | None


@dataclass(frozen=True)
class Decision:
    """What to do: the alias's split after `action` (about `version`), decided on the split `before`."""

    action: Action
    alias: str
    version: int
    split: dict[int, float]
    before: dict[int, float]


def state_of(alias: str, split: dict[int, float], decisions: list[dict[str, Any]]) -> State:
    """Return an alias's state from its split now and the model's decisions (newest first)."""
    newest = next((d for d in decisions if d.get("alias") == alias), None)
    canary = None
    if newest is not None and newest.get("action") == Action.CANARY and len(split) == 2:
        version = newest.get("version")
        if version in split:
            (base,) = set(split) - {version}
            canary = Canary(version, split[version], base)
    return State(alias, dict(split), canary)


def decide(state: State, action: str, *, version: int | None = None, weight: float | None = None) -> Decision:
    """Return the decision `action` takes in `state`; InvalidInput (400) or RolloutConflict (409) if refused.

    canary: the alias must name one version (the base), or run a canary of `version` already (its
    weight then changes); it becomes {base: 1 - weight, version: weight}. promote: the canary
    alone. rollback: the base alone.
    """
    try:
        act = Action(action)
    except ValueError:
        raise InvalidInput(f"unknown action {action!r}: canary, promote or rollback") from None
    if act == Action.CANARY:
        return _canary(state, version, weight)
    if act == Action.SPLIT:
        raise InvalidInput('a split is set with PUT …/aliases/<alias> {"versions": …}, not as a rollout')
    if version is not None or weight is not None:
        raise InvalidInput(f"{act} takes no version or weight: it acts on the running canary")
    if state.canary is None:
        raise RolloutConflict(f"{state.alias!r} runs no canary: nothing to {act}")
    keep = state.canary.version if act == Action.PROMOTE else state.canary.base
    return Decision(act, state.alias, state.canary.version, {keep: 1.0}, state.split)


def _canary(state: State, version: int | None, weight: float | None) -> Decision:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InvalidInput("a canary needs the version to send traffic to (a positive integer)")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
        raise InvalidInput("a canary needs its weight, the share of the traffic: 0 < weight < 1")
    if not 0 < weight < 1:
        raise InvalidInput(f"the weight is the canary's share of the traffic: 0 < weight < 1, got {weight}")
    if state.canary is not None:
        if state.canary.version != version:
            raise RolloutConflict(
                f"{state.alias!r} runs a canary of v{state.canary.version}: promote or roll it back first"
            )
        base = state.canary.base
    elif len(state.split) == 1:
        (base,) = state.split
    elif not state.split:
        raise RolloutConflict(f"{state.alias!r} names no version: set it to the base version first")
    else:
        raise RolloutConflict(
            f"{state.alias!r} is a split of {len(state.split)} versions, not one base version"
        )
    if version == base:
        raise InvalidInput(f"v{version} is what {state.alias!r} serves already: a canary is another version")
    return Decision(Action.CANARY, state.alias, version, {base: 1.0 - weight, version: weight}, state.split)


def read_state(registry: Registry, model: str, alias: str) -> tuple[State, list[dict[str, Any]]]:
    """Return an alias's state and the model's recent decisions (newest first), read from `registry`."""
    aliases, splits = registry.routes(model)
    split = splits.get(alias) or ({aliases[alias]: 1.0} if alias in aliases else {})
    decisions = registry.decisions(model, count=SCANNED_DECISIONS)
    return state_of(alias, split, decisions), decisions


def apply(registry: Registry, model: str, decision: Decision, actor: Actor, reason: str = "") -> None:
    """Move the alias as `decision` says, recording it (with `actor` and `reason`) in the same script.

    Only if the alias is still as the decision saw it: else RolloutConflict (409), nothing written.
    """
    record = {
        "action": decision.action.value,
        "version": decision.version,
        "reason": reason,
        "actor": actor.value,
    }
    registry.set_split(model, decision.alias, decision.split, decision=record, expect=decision.before)


@dataclass(frozen=True)
class Rule:
    """When to promote or roll back an alias's canary by itself (see the module docstring)."""

    min_feedback: int
    max_accuracy_drop: float
    max_drift: float | None = None
    enabled: bool = True
    alias: str = "production"

    def __post_init__(self) -> None:
        """Refuse a rule that cannot be applied (InvalidInput)."""
        minimum = self.min_feedback
        if isinstance(minimum, bool) or not isinstance(minimum, int) or not 1 <= minimum <= MAX_MIN_FEEDBACK:
            raise InvalidInput(f"min_feedback is labels: 1 to {MAX_MIN_FEEDBACK}, got {minimum!r}")
        if not _number(self.max_accuracy_drop) or not 0 <= self.max_accuracy_drop <= 1:
            raise InvalidInput(f"max_accuracy_drop is from 0 to 1, got {self.max_accuracy_drop!r}")
        if self.max_drift is not None and (not _number(self.max_drift) or self.max_drift <= 0):
            raise InvalidInput(f"max_drift is a drift score (PSI) above 0, or null, got {self.max_drift!r}")
        if not isinstance(self.enabled, bool):
            raise InvalidInput("enabled is true or false")

    def to_dict(self) -> dict[str, Any]:
        """Return the rule as stored and shown."""
        return {
            "alias": self.alias,
            "min_feedback": self.min_feedback,
            "max_accuracy_drop": self.max_accuracy_drop,
            "max_drift": self.max_drift,
            "enabled": self.enabled,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Rule:
        """Return the rule `data` describes (what `to_dict` wrote); InvalidInput if it is none."""
        try:
            return cls(
                min_feedback=data["min_feedback"],
                max_accuracy_drop=data["max_accuracy_drop"],
                max_drift=data.get("max_drift"),
                enabled=data.get("enabled", True),
                alias=data.get("alias", "production"),
            )
        except (KeyError, TypeError):
            raise InvalidInput("a rule names min_feedback and max_accuracy_drop") from None


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Observed:
    """What a version did live: feedback labels, the share of them it answered right, its drift score."""

    version: int
    feedback: int
    correct: int
    drift: float | None = None

    @property
    def accuracy(self) -> float | None:
        """Return the online accuracy, or None before any feedback."""
        return self.correct / self.feedback if self.feedback else None


@dataclass(frozen=True)
class Verdict:
    """What the rule decides: promote, roll back, or nothing yet (`action` None), and why in figures."""

    action: Action | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """Return the verdict as the API shows it."""
        return {"action": self.action.value if self.action else None, "reason": self.reason}


def judge(rule: Rule, canary: Canary | None, seen: dict[int, Observed]) -> Verdict:
    """Return what `rule` decides about `canary` given what each version did (`seen`, by version)."""
    if not rule.enabled:
        return Verdict(None, "the rule is disabled")
    if canary is None:
        return Verdict(None, f"{rule.alias!r} runs no canary")
    new = seen.get(canary.version, Observed(canary.version, 0, 0))
    old = seen.get(canary.base, Observed(canary.base, 0, 0))
    for one in (new, old):
        if one.feedback < rule.min_feedback:
            waiting = f"waiting: v{one.version} has {one.feedback} of {rule.min_feedback} feedback labels"
            return Verdict(None, waiting)
    new_accuracy, old_accuracy = cast(float, new.accuracy), cast(float, old.accuracy)
    drop = old_accuracy - new_accuracy
    figures = (
        f"canary v{new.version} online accuracy {new_accuracy:.4f} over {new.feedback} labels,"
        f" v{old.version} {old_accuracy:.4f} over {old.feedback}"
    )
    if drop > rule.max_accuracy_drop + _SLACK:
        return Verdict(
            Action.ROLLBACK, f"{figures}: {drop:.4f} worse, more than the {rule.max_accuracy_drop} allowed"
        )
    drift = ""
    if rule.max_drift is not None:
        if new.drift is not None and new.drift > rule.max_drift + _SLACK:
            return Verdict(
                Action.ROLLBACK, f"{figures}; drift score {new.drift:.4f} above the {rule.max_drift} allowed"
            )
        drift = (
            f"; drift score {new.drift:.4f} within {rule.max_drift}"
            if new.drift is not None
            else "; no drift score (no reference profile)"
        )
    return Verdict(Action.PROMOTE, f"{figures}: not worse by more than {rule.max_accuracy_drop}{drift}")
