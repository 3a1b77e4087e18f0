"""Rollouts: start a canary on an alias, promote it or roll it back, each decision logged with its reason.

The rules are `shared.rollout`'s (the automatic rule uses the same); this module reads the
alias's state, asks them, and applies the answer through the registry. The automatic rule is
set, read and cleared here (…/rollout/rule); shared/rollout_rule.py runs it on a timer.
"""

from __future__ import annotations

from typing import Any

from services.api.schemas import (
    RolloutBodySchema,
    RolloutQuerySchema,
    RolloutSchema,
    RuleBodySchema,
    RuleSchema,
)
from services.web.auth import read_access, write_access
from services.web.blueprint import VALIDATION_STATUS, Blueprint
from services.web.context import services
from shared import rollout, rollout_rule, splits
from shared.errors import InvalidInput, RuleNotFound
from shared.registry import check_name

blp = Blueprint(
    "rollout", __name__, url_prefix="/v1/models", description="Canary rollouts and their decisions"
)


@blp.url_value_preprocessor
def _check_model(endpoint: str | None, values: dict[str, Any] | None) -> None:
    """Refuse an invalid model name (400) before the body is validated: the name is the first error."""
    if values and "model" in values:
        check_name(values["model"])


def _view(model: str, alias: str, limit: int) -> dict[str, Any]:
    state, decisions = rollout.read_state(services().registry, model, alias)
    return {
        "model": model,
        "alias": alias,
        "split": splits.to_json(state.split),
        "canary": state.canary.to_dict() if state.canary else None,
        "decisions": decisions[:limit],
    }


@blp.route("/<model>/rollout", methods=["GET"])
@read_access(blp)
@blp.arguments(RolloutQuerySchema, location="query", error_status_code=VALIDATION_STATUS)
@blp.response(200, RolloutSchema)
@blp.alt_response(400, response="BAD_REQUEST")
@blp.alt_response(404, response="NOT_FOUND")
def get_rollout(query: dict[str, Any], model: str) -> dict[str, Any]:
    """Return an alias's split, its running canary (or null) and the model's recent decisions."""
    alias = check_name(query["alias"], "alias")
    return _view(model, alias, query["limit"])


@blp.route("/<model>/rollout", methods=["POST"])
@write_access(blp)
@blp.arguments(RolloutBodySchema, error_status_code=VALIDATION_STATUS)
@blp.response(200, RolloutSchema, description="the alias's state after the decision")
@blp.alt_response(400, response="BAD_REQUEST", description="a missing or invalid version or weight")
@blp.alt_response(404, response="NOT_FOUND", description="no such model or version")
@blp.alt_response(409, response="CONFLICT", description="no canary to promote or roll back, or one running")
@blp.alt_response(415, response="UNSUPPORTED_MEDIA_TYPE")
def post_rollout(body: dict[str, Any], model: str) -> dict[str, Any]:
    """Start a canary ({action: canary, version, weight}), promote it or roll it back; log the reason."""
    alias = check_name(body["alias"], "alias")
    registry = services().registry
    state, _ = rollout.read_state(registry, model, alias)
    decision = rollout.decide(state, body["action"], version=body.get("version"), weight=body.get("weight"))
    rollout.apply(registry, model, decision, rollout.Actor.API, body["reason"])
    return _view(model, alias, 20)


def _rule_view(model: str, rule: rollout.Rule) -> dict[str, Any]:
    ctx = services()
    _, now = rollout_rule.verdict(ctx.registry, model, rule, ctx.settings.drift_threshold)
    return {"model": model, **rule.to_dict(), "now": now.to_dict()}


@blp.route("/<model>/rollout/rule", methods=["PUT"])
@write_access(blp)
@blp.arguments(RuleBodySchema, error_status_code=VALIDATION_STATUS)
@blp.response(200, RuleSchema, description="the rule, and what it would decide now")
@blp.alt_response(400, response="BAD_REQUEST")
@blp.alt_response(404, response="NOT_FOUND", description="no such model")
@blp.alt_response(415, response="UNSUPPORTED_MEDIA_TYPE")
def put_rule(body: dict[str, Any], model: str) -> dict[str, Any]:
    """Set the rule that promotes or rolls back the alias's canary by itself (off the request path)."""
    svc = services()
    rule = rollout.Rule(**body)
    # The rule counts the labels of the feedback window, which holds at least half of it.
    reachable = max(1, svc.settings.feedback_window // 2)
    if rule.min_feedback > reachable:
        raise InvalidInput(
            f"min_feedback is {rule.min_feedback}, but the feedback window (MNIST_FEEDBACK_WINDOW ="
            f" {svc.settings.feedback_window}) keeps only the last {reachable} to"
            f" {svc.settings.feedback_window} labels: at most {reachable}"
        )
    return _rule_view(model, rollout_rule.put(svc.registry, model, rule))


@blp.route("/<model>/rollout/rule", methods=["GET"])
@read_access(blp)
@blp.response(200, RuleSchema, description="the rule, and what it would decide now")
@blp.alt_response(400, response="BAD_REQUEST")
@blp.alt_response(404, response="NOT_FOUND", description="no such model, or it has no rule")
def get_rule(model: str) -> dict[str, Any]:
    """Return the model's automatic rule and what it would decide now (nothing is applied)."""
    rule = rollout_rule.get(services().registry, model)
    if rule is None:
        raise RuleNotFound(f"model {model!r} has no rollout rule")
    return _rule_view(model, rule)


@blp.route("/<model>/rollout/rule", methods=["DELETE"])
@write_access(blp)
@blp.response(204)
@blp.alt_response(400, response="BAD_REQUEST")
@blp.alt_response(404, response="NOT_FOUND", description="the model has no rule")
def delete_rule(model: str) -> None:
    """Remove the model's automatic rule: canaries are decided by hand only."""
    if not rollout_rule.delete(services().registry, model):
        raise RuleNotFound(f"model {model!r} has no rollout rule")
