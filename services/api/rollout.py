"""Rollouts: start a canary on an alias, promote it or roll it back, each decision logged with its reason.

The rules are `shared.rollout`'s (the automatic rule uses the same); this module reads the
alias's state, asks them, and applies the answer through the registry.
"""

from __future__ import annotations

from typing import Any

from services.api.schemas import RolloutBodySchema, RolloutQuerySchema, RolloutSchema
from services.web.auth import read_access, write_access
from services.web.blueprint import VALIDATION_STATUS, Blueprint
from services.web.context import services
from shared import rollout, splits
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
