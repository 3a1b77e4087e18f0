"""The automatic rollout rule: its pure verdicts (shared/rollout.py), its routes, its timer on real Redis."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from shared import rollout, rollout_rule
from shared.errors import InvalidInput, RolloutConflict
from shared.registry import Registry
from shared.rollout import Action, Canary, Observed, Rule
from shared.rollout_rule import RuleTimer
from tests.app_fixtures import publish_two
from tests.live_fixtures import StackEnv, wait_for

RULE = Rule(min_feedback=100, max_accuracy_drop=0.02, max_drift=0.25)
CANARY = Canary(version=5, weight=0.2, base=4)


def seen(new: tuple[int, int, float | None], old: tuple[int, int]) -> dict[int, Observed]:
    """Return the canary's (feedback, correct, drift) and the base's (feedback, correct) as observed."""
    return {5: Observed(5, *new), 4: Observed(4, *old)}


# --- the pure verdicts -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("rule", "observed", "action", "says"),
    [
        # Not enough labels, on either side: nothing yet.
        (RULE, seen((99, 99, 0.0), (500, 400)), None, "waiting: v5 has 99 of 100 feedback labels"),
        (RULE, seen((100, 100, 0.0), (20, 20)), None, "waiting: v4 has 20 of 100 feedback labels"),
        (RULE, {}, None, "waiting: v5 has 0 of 100"),
        # Worse by more than allowed: rollback, the figures in the reason.
        (
            RULE,
            seen((100, 50, 0.0), (400, 360)),
            Action.ROLLBACK,
            "canary v5 online accuracy 0.5000 over 100 labels, v4 0.9000 over 400: 0.4000 worse,"
            " more than the 0.02 allowed",
        ),
        # Exactly the allowed drop, or better: promote.
        (RULE, seen((100, 88, 0.1), (100, 90)), Action.PROMOTE, "not worse by more than 0.02"),
        (RULE, seen((100, 99, 0.1), (100, 90)), Action.PROMOTE, "drift score 0.1000 within 0.25"),
        # Drift above the bound: rollback even when accurate.
        (RULE, seen((100, 99, 0.4), (100, 90)), Action.ROLLBACK, "drift score 0.4000 above the 0.25 allowed"),
        # No reference profile (an imported version): drift is not judged.
        (RULE, seen((100, 99, None), (100, 90)), Action.PROMOTE, "no drift score (no reference profile)"),
        # Without max_drift, drift is ignored.
        (
            Rule(min_feedback=100, max_accuracy_drop=0.02),
            seen((100, 99, 9.0), (100, 90)),
            Action.PROMOTE,
            "not worse by more than 0.02",
        ),
        (
            Rule(min_feedback=100, max_accuracy_drop=0.02, enabled=False),
            seen((100, 0, 0.0), (100, 90)),
            None,
            "disabled",
        ),
    ],
)
def test_judge(rule: Rule, observed: dict[int, Observed], action: Action | None, says: str) -> None:
    verdict = rollout.judge(rule, CANARY, observed)
    assert verdict.action == action
    assert says in verdict.reason


def test_judge_without_a_canary_decides_nothing() -> None:
    assert rollout.judge(RULE, None, {}).to_dict() == {
        "action": None,
        "reason": "'production' runs no canary",
    }


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"min_feedback": 0, "max_accuracy_drop": 0.02}, "min_feedback"),
        ({"min_feedback": True, "max_accuracy_drop": 0.02}, "min_feedback"),
        ({"min_feedback": 10, "max_accuracy_drop": 1.5}, "max_accuracy_drop"),
        ({"min_feedback": 10, "max_accuracy_drop": float("nan")}, "max_accuracy_drop"),
        ({"min_feedback": 10, "max_accuracy_drop": 0.1, "max_drift": 0}, "max_drift"),
        ({"min_feedback": 10, "max_accuracy_drop": 0.1, "enabled": "yes"}, "enabled"),
        ({"min_feedback": 10}, "names min_feedback and max_accuracy_drop"),
    ],
)
def test_a_rule_that_cannot_apply_is_refused(fields: dict[str, Any], says: str) -> None:
    with pytest.raises(InvalidInput, match=says):
        Rule.from_dict(fields)


def test_a_rule_round_trips() -> None:
    assert Rule.from_dict(RULE.to_dict()) == RULE


# --- the routes --------------------------------------------------------------------------------------
BODY = {"min_feedback": 100, "max_accuracy_drop": 0.02, "max_drift": 0.25}


def test_put_get_delete_the_rule(app_client: FlaskClient, app_env: StackEnv) -> None:
    publish_two(app_client, app_env, "ruled")
    url = "/v1/models/ruled/rollout/rule"
    assert app_client.get(url).status_code == 404
    r = app_client.put(url, json=BODY, headers=app_env.auth)
    assert r.status_code == 200, r.get_json()
    assert r.get_json() == {
        "model": "ruled",
        **BODY,
        "enabled": True,
        "alias": "production",
        "now": {"action": None, "reason": "'production' runs no canary"},
    }
    assert app_client.get(url).get_json()["min_feedback"] == 100
    assert app_client.delete(url).status_code == 401  # a write needs the token
    assert app_client.delete(url, headers=app_env.auth).status_code == 204
    assert app_client.delete(url, headers=app_env.auth).status_code == 404
    assert app_client.get(url).get_json()["message"] == "model 'ruled' has no rollout rule"


@pytest.mark.parametrize(
    ("model", "body", "status"),
    [
        ("ruled", {**BODY, "min_feedback": 0}, 400),
        # more labels than the feedback window (1000 by default) is sure to hold: never reached
        ("ruled", {**BODY, "min_feedback": 501}, 400),
        ("ruled", {**BODY, "max_accuracy_drop": -0.1}, 400),
        ("ruled", {**BODY, "max_drift": 0}, 400),
        ("ruled", {**BODY, "window": 3}, 400),
        ("ruled", {**BODY, "alias": "no such/alias"}, 400),
        ("ruled", {"max_accuracy_drop": 0.1}, 400),
        ("nobody", BODY, 404),
        ("bad name!", BODY, 400),
    ],
)
def test_invalid_rules_are_refused(
    app_client: FlaskClient, app_env: StackEnv, model: str, body: dict[str, Any], status: int
) -> None:
    publish_two(app_client, app_env, "ruled")
    r = app_client.put(f"/v1/models/{model}/rollout/rule", json=body, headers=app_env.auth)
    assert r.status_code == status, r.get_json()
    assert r.get_json()["code"] == status and r.get_json()["message"]


# --- the rule applied, on real Redis ------------------------------------------------------------------
def canary_with_counts(
    app_client: FlaskClient, app_env: StackEnv, new: tuple[int, int], old: tuple[int, int]
) -> tuple[Registry, int, int]:
    """Canary the second of two versions at 20 %; give each version's feedback window (feedback, correct)."""
    base, canary = publish_two(app_client, app_env, "ruled")
    r = app_client.post(
        "/v1/models/ruled/rollout",
        json={"action": "canary", "version": canary, "weight": 0.2},
        headers=app_env.auth,
    )
    assert r.status_code == 200, r.get_json()
    registry: Registry = app_client.application.extensions["mnist"].registry
    for version, (feedback, correct) in ((canary, new), (base, old)):
        registry.redis.hset(
            registry.keys.window_current("ruled", version), mapping={"feedback": feedback, "correct": correct}
        )
    return registry, base, canary


def test_the_timer_rolls_a_worse_canary_back_once(app_client: FlaskClient, app_env: StackEnv) -> None:
    registry, base, canary = canary_with_counts(app_client, app_env, new=(200, 100), old=(800, 760))
    assert app_client.put("/v1/models/ruled/rollout/rule", json=BODY, headers=app_env.auth).get_json()[
        "now"
    ] == {
        "action": "rollback",
        "reason": f"canary v{canary} online accuracy 0.5000 over 200 labels, v{base} 0.9500 over 800:"
        " 0.4500 worse, more than the 0.02 allowed",
    }
    first, second = RuleTimer(registry, 60, 0.25), RuleTimer(registry, 60, 0.25)
    verdicts = first.tick()
    assert verdicts is not None and verdicts["ruled"].action == Action.ROLLBACK
    assert second.tick() is None  # the lock: another process does not decide in this interval
    state = app_client.get("/v1/models/ruled/rollout").get_json()
    assert state["split"] == {str(base): 1.0} and state["canary"] is None
    newest = state["decisions"][0]
    assert (newest["action"], newest["version"], newest["actor"]) == ("rollback", canary, "rule")
    assert newest["reason"] == verdicts["ruled"].reason
    # Nothing left to decide: the rule waits for the next canary.
    registry.redis.delete(registry.keys.rollout_lock())
    assert first.tick() == {"ruled": rollout.Verdict(None, "'production' runs no canary")}


def test_the_timer_thread_promotes_a_canary_as_good(app_client: FlaskClient, app_env: StackEnv) -> None:
    registry, _, canary = canary_with_counts(app_client, app_env, new=(150, 140), old=(600, 560))
    app_client.put("/v1/models/ruled/rollout/rule", json=BODY, headers=app_env.auth)
    timer = RuleTimer(registry, 0.1, 0.25)
    timer.start()
    try:
        state = wait_for(
            lambda: (s := app_client.get("/v1/models/ruled/rollout").get_json())["canary"] is None and s,
            10,
            "the rule's promotion",
        )
    finally:
        timer.stop()
    assert state["split"] == {str(canary): 1.0}
    assert state["decisions"][0]["actor"] == "rule" and "not worse" in state["decisions"][0]["reason"]


def test_a_disabled_rule_or_a_hand_decision_wins(app_client: FlaskClient, app_env: StackEnv) -> None:
    registry, _, canary = canary_with_counts(app_client, app_env, new=(200, 100), old=(800, 760))
    app_client.put("/v1/models/ruled/rollout/rule", json={**BODY, "enabled": False}, headers=app_env.auth)
    assert rollout_rule.run_all(registry, 0.25)["ruled"].reason == "the rule is disabled"
    assert app_client.get("/v1/models/ruled/rollout").get_json()["canary"] is not None
    # A decision taken on a state that changed meanwhile is refused, nothing written.
    rule = Rule.from_dict(BODY)
    state, verdict = rollout_rule.verdict(registry, "ruled", rule, 0.25)
    app_client.post("/v1/models/ruled/rollout", json={"action": "promote"}, headers=app_env.auth)
    with pytest.raises(RolloutConflict):
        rollout.apply(
            registry, "ruled", rollout.decide(state, "rollback"), rollout.Actor.RULE, verdict.reason
        )
    assert [d["actor"] for d in registry.decisions("ruled")][:2] == ["api", "api"]
    assert registry.aliases("ruled")["production"] == canary
