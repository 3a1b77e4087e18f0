"""Rollout decisions: the pure rules (shared/rollout.py), and the API over the app's test app_client."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from shared import rollout
from shared.errors import InvalidInput, RolloutConflict
from shared.rollout import Action, Canary, State
from tests.app_fixtures import publish_two
from tests.live_fixtures import StackEnv


def decision(action: str, version: int | None, alias: str = "production") -> dict[str, Any]:
    """Return a decision as `Registry.decisions` lists it."""
    return {"action": action, "version": version, "alias": alias}


# --- the pure rules --------------------------------------------------------------------------------
def test_the_canary_is_the_newest_decision_of_the_alias_while_its_split_stands() -> None:
    split = {4: 0.8, 5: 0.2}
    canary = rollout.state_of("production", split, [decision("canary", 5)])
    assert canary.canary == Canary(version=5, weight=0.2, base=4)
    # Another alias's decision does not hide it; a newer split or a plain alias ends it.
    newer_elsewhere = [decision("rollback", 5, alias="staging"), decision("canary", 5)]
    assert rollout.state_of("production", split, newer_elsewhere).canary == canary.canary
    assert (
        rollout.state_of("production", split, [decision("split", None), decision("canary", 5)]).canary is None
    )
    assert rollout.state_of("production", {4: 1.0}, [decision("canary", 5)]).canary is None
    assert rollout.state_of("production", split, []).canary is None


def test_canary_promote_rollback() -> None:
    plain = State("production", {4: 1.0}, None)
    start = rollout.decide(plain, "canary", version=5, weight=0.2)
    assert (start.action, start.version, start.split) == (Action.CANARY, 5, {4: 0.8, 5: 0.2})
    running = State("production", {4: 0.8, 5: 0.2}, Canary(5, 0.2, 4))
    ramp = rollout.decide(running, "canary", version=5, weight=0.5)
    assert ramp.split == {4: 0.5, 5: 0.5}
    assert rollout.decide(running, "promote").split == {5: 1.0}
    back = rollout.decide(running, "rollback")
    assert (back.action, back.version, back.split) == (Action.ROLLBACK, 5, {4: 1.0})


@pytest.mark.parametrize(
    ("state", "action", "options", "error", "why"),
    [
        (State("p", {4: 1.0}, None), "promote", {}, RolloutConflict, "runs no canary"),
        (State("p", {4: 1.0}, None), "rollback", {}, RolloutConflict, "runs no canary"),
        (State("p", {}, None), "canary", {"version": 5, "weight": 0.2}, RolloutConflict, "names no version"),
        (
            State("p", {3: 0.5, 4: 0.5}, None),
            "canary",
            {"version": 5, "weight": 0.2},
            RolloutConflict,
            "split of 2",
        ),
        (
            State("p", {4: 0.8, 5: 0.2}, Canary(5, 0.2, 4)),
            "canary",
            {"version": 6, "weight": 0.2},
            RolloutConflict,
            "v5",
        ),
        (State("p", {4: 1.0}, None), "canary", {"version": 4, "weight": 0.2}, InvalidInput, "serves already"),
        (State("p", {4: 1.0}, None), "canary", {"weight": 0.2}, InvalidInput, "needs the version"),
        (State("p", {4: 1.0}, None), "canary", {"version": 5}, InvalidInput, "needs its weight"),
        (State("p", {4: 1.0}, None), "canary", {"version": 5, "weight": 1.0}, InvalidInput, "0 < weight < 1"),
        (State("p", {4: 1.0}, None), "canary", {"version": 5, "weight": 0}, InvalidInput, "0 < weight < 1"),
        (
            State("p", {4: 1.0}, None),
            "canary",
            {"version": 5, "weight": float("nan")},
            InvalidInput,
            "weight",
        ),
        (
            State("p", {4: 0.8, 5: 0.2}, Canary(5, 0.2, 4)),
            "promote",
            {"version": 5},
            InvalidInput,
            "no version",
        ),
        (State("p", {4: 1.0}, None), "split", {}, InvalidInput, "PUT"),
        (State("p", {4: 1.0}, None), "launch", {}, InvalidInput, "unknown action"),
    ],
)
def test_refused_decisions(state: State, action: str, options: dict[str, Any], error: type, why: str) -> None:
    with pytest.raises(error, match=why):
        rollout.decide(state, action, **options)


# --- the API -----------------------------------------------------------------------------------------
def test_a_canary_through_the_api(app_client: FlaskClient, app_env: StackEnv) -> None:
    base, canary = publish_two(app_client, app_env, "roll")
    url = "/v1/models/roll/rollout"
    state = app_client.get(url).get_json()
    assert state == {
        "model": "roll",
        "alias": "production",
        "split": {str(base): 1.0},
        "canary": None,
        "decisions": [],
    }

    r = app_client.post(
        url,
        json={"action": "canary", "version": canary, "weight": 0.25, "reason": "v5 is new"},
        headers=app_env.auth,
    )
    assert r.status_code == 200, r.get_json()
    state = r.get_json()
    assert state["split"] == {str(base): 0.75, str(canary): 0.25}
    assert state["canary"] == {"version": canary, "weight": 0.25, "base": base}
    (first,) = state["decisions"]
    assert (first["action"], first["version"], first["actor"], first["reason"]) == (
        "canary",
        canary,
        "api",
        "v5 is new",
    )
    assert app_client.get("/v1/models/roll").get_json()["splits"] == {"production": state["split"]}
    # The predictions follow the split at once (this process reloads on first use).
    versions = {
        app_client.post(
            "/v1/models/roll:predict", json={"instances": [[0] * 784]}, headers={"X-Routing-Key": str(i)}
        ).get_json()["model_version"]
        for i in range(100)
    }
    assert versions == {base, canary}

    again = app_client.post(
        url, json={"action": "canary", "version": base + 100, "weight": 0.5}, headers=app_env.auth
    )
    assert again.status_code == 409 and "promote or roll it back first" in again.get_json()["message"]
    r = app_client.post(url, json={"action": "rollback", "reason": "worse"}, headers=app_env.auth)
    assert r.status_code == 200
    assert r.get_json()["split"] == {str(base): 1.0} and r.get_json()["canary"] is None
    assert app_client.post(url, json={"action": "promote"}, headers=app_env.auth).status_code == 409

    app_client.post(url, json={"action": "canary", "version": canary, "weight": 0.1}, headers=app_env.auth)
    r = app_client.post(url, json={"action": "promote", "reason": "better"}, headers=app_env.auth)
    assert r.get_json()["split"] == {str(canary): 1.0}
    assert app_client.get("/v1/models/roll/aliases/production").get_json()["version"] == canary
    actions = [(d["action"], d["reason"]) for d in app_client.get(url).get_json()["decisions"]]
    assert actions == [("promote", "better"), ("canary", ""), ("rollback", "worse"), ("canary", "v5 is new")]
    assert len(app_client.get(url + "?limit=2").get_json()["decisions"]) == 2


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"action": "canary", "version": 99, "weight": 0.2}, 404),
        ({"action": "canary", "version": 2, "weight": 2}, 400),
        ({"action": "canary", "version": "2", "weight": 0.2}, 400),
        ({"action": "canary", "weight": 0.2}, 400),
        ({"action": "launch"}, 400),
        ({"action": "promote", "alias": "1"}, 400),
        ({"action": "promote", "extra": 1}, 400),
        ({"action": "rollback"}, 409),
        ({"action": "canary", "version": 2, "weight": 0.2, "alias": "staging"}, 409),
    ],
)
def test_bad_rollouts_are_refused(
    app_client: FlaskClient, app_env: StackEnv, body: dict[str, Any], status: int
) -> None:
    publish_two(app_client, app_env, "badroll")
    r = app_client.post("/v1/models/badroll/rollout", json=body, headers=app_env.auth)
    assert r.status_code == status, r.get_json()
    assert app_client.get("/v1/models/badroll/rollout").get_json()["decisions"] == []


def test_rollout_needs_the_token_and_a_model(app_client: FlaskClient, app_env: StackEnv) -> None:
    body = {"action": "promote"}
    assert app_client.post("/v1/models/none/rollout", json=body).status_code == 401
    assert app_client.post("/v1/models/none/rollout", json=body, headers=app_env.auth).status_code == 404
    assert app_client.get("/v1/models/none/rollout").status_code == 404
    assert app_client.get("/v1/models/none/rollout?alias=1").status_code == 400


def test_a_decision_on_a_state_that_changed_meanwhile_is_refused(
    app_client: FlaskClient, app_env: StackEnv
) -> None:
    base, canary = publish_two(app_client, app_env, "race")
    registry = app_client.application.extensions["mnist"].registry
    state, _ = rollout.read_state(registry, "race", "production")
    decision = rollout.decide(state, "canary", version=canary, weight=0.2)
    # Another decider moves the alias between the read and the write (the rule, another user).
    registry.set_alias("race", "production", canary)
    with pytest.raises(RolloutConflict, match="changed meanwhile"):
        rollout.apply(registry, "race", decision, rollout.Actor.RULE, "too late")
    assert registry.routes("race") == ({"production": canary}, {}) and registry.decisions("race") == []
    rollout.apply(
        registry,
        "race",
        rollout.decide(
            rollout.read_state(registry, "race", "production")[0], "canary", version=base, weight=0.2
        ),
        rollout.Actor.RULE,
    )
    assert registry.decisions("race")[0]["actor"] == "rule"
