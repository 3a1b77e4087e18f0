"""Rollout decisions: canary, promote, roll back. Pure rules over an alias's state, no I/O.

An alias's rollout state is its split (``{version: weight}``; a plain alias is ``{v: 1.0}``)
and the decisions recorded for it. A canary is running when the split names two versions and
the newest decision for the alias is a canary of one of them: that version is the canary, the
other the base. `decide` turns an action into the split that follows, or refuses it; the API and
the automatic rule apply what it returns with `Registry.set_split`, which records the decision in
the same script, and only if the alias is still as the decision saw it (two deciders, a user and
the rule, cannot both act on one state). `apply` and `read_state` take the registry as an
argument: this module imports no Redis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from shared.errors import InvalidInput, RolloutConflict

if TYPE_CHECKING:
    from shared.registry import Registry

#: Decisions read to find an alias's newest one (the stream holds every alias's).
SCANNED_DECISIONS = 200


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
