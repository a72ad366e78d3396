"""The gateway's route policy: the premium model is for the premium tiers only.

The rules are evaluated in order and the first match decides (docs/route-policy.md): the
exception for the premium tiers comes before the refusal for everyone else, and every request the
rules do not mention is allowed (`default="allow"`), since the other layers already decided who
may call the gateway at all.
"""

from __future__ import annotations

from typing import Any

from asgi_identity import Rule

from .settings import Settings

POLICY_VERSION = "example-1"


def premium_model_rules(settings: Settings, chat_path: str) -> list[Rule]:
    if settings.premium_model is None:
        return []
    model = settings.premium_model
    return [
        Rule(
            id="premium-model-tiers",
            methods=["POST"],
            paths=[chat_path],
            models=[model],
            groups=settings.premium_tiers,
        ),
        Rule(
            id="premium-model",
            effect="deny",
            methods=["POST"],
            models=[model],
            message=f"This model is available on the {' and '.join(settings.premium_tiers)} "
            "tier only.",
        ),
    ]


def route_policy_options(settings: Settings, chat_path: str) -> dict[str, Any] | None:
    """RoutePolicy's keyword options, or None when the gateway restricts no model."""
    rules = premium_model_rules(settings, chat_path)
    if not rules:
        return None
    return {
        "rules": rules,
        "default": "allow",
        "version": POLICY_VERSION,
        "exclude_paths": list(settings.public_paths),
    }
