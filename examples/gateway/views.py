"""JSON views both gateways answer with: the caller, their usage, upstream failures."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import httpx

from asgi_identity import Identity
from asgi_identity.middleware.ratelimit import WindowUsage

from .upstream import UpstreamError


def identity_view(identity: Identity) -> dict[str, Any]:
    """What `/v1/me` shows: who the gateway thinks you are (never a credential)."""
    return {
        "source": identity.source,
        "user_id": identity.user_id,
        "email": identity.email,
        "email_verified": identity.email_verified,
        "domain": identity.domain,
        "name": identity.name,
        "tenant": identity.tenant,
        "group": identity.group,
        "roles": sorted(identity.roles),
        "scopes": sorted(identity.scopes),
        "actor": list(identity.actor.chain) if identity.actor else None,
        "client_id": identity.client_id,
        "api_key": identity.api_key.id if identity.api_key else None,
        "issuer": identity.issuer,
        "conversation_id": identity.conversation_id,
    }


def usage_view(windows: Iterable[WindowUsage]) -> list[dict[str, Any]]:
    return [window._asdict() for window in windows]


def upstream_failure(exc: UpstreamError | httpx.HTTPError) -> tuple[int, dict[str, Any]]:
    """The status and body to answer when the upstream fails.

    The upstream's own client errors (a bad request, a rate limit) reach the user as they are;
    its authentication failures and outages are the gateway's problem, so they become a 502 and
    never read as if the user's credentials were wrong.
    """
    if isinstance(exc, UpstreamError) and exc.status in (400, 404, 413, 422, 429):
        return exc.status, exc.body
    message = (
        f"The upstream model provider answered {exc.status}."
        if isinstance(exc, UpstreamError)
        else "The upstream model provider could not be reached."
    )
    return 502, {"error": {"message": message, "type": "upstream_error", "code": "upstream_error"}}
