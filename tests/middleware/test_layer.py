"""What every layer promises alike: lifespan and unknown scope types reach the app untouched."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from asgi_identity import (
    ConversationTagger,
    DomainAllowlist,
    EnforceIdentity,
    IdentityMiddleware,
    RoutePolicy,
    UserRateLimit,
)
from asgi_identity.types import ASGIApp, Message, Receive, Scope, Send

LAYERS: dict[str, Callable[[ASGIApp], Any]] = {
    "IdentityMiddleware": lambda app: IdentityMiddleware(app, allow_anonymous=True),
    "EnforceIdentity": EnforceIdentity,
    "DomainAllowlist": lambda app: DomainAllowlist(app, domains=["acme.com"]),
    "RoutePolicy": lambda app: RoutePolicy(app, rules=[]),
    "UserRateLimit": UserRateLimit,
    "ConversationTagger": ConversationTagger,
}


@pytest.mark.parametrize("layer", list(LAYERS))
@pytest.mark.parametrize("scope_type", ["lifespan", "custom"])
async def test_non_request_scopes_reach_the_app_with_no_identity_and_nothing_sent(
    layer: str, scope_type: str
) -> None:
    seen: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)

    async def receive() -> Message:
        raise AssertionError("the layer must not read the app's messages")

    async def send(message: Message) -> None:
        raise AssertionError("the layer must not answer on its own")

    scope: Scope = {"type": scope_type, "asgi": {"version": "3.0"}}
    await LAYERS[layer](app)(scope, receive, send)
    assert seen == [scope]
    assert "identity" not in scope
