"""The request plan: worked out once per person, anew when what it depends on changes."""

from __future__ import annotations

from typing import Any

from _ratelimit_support import llm_app
from asgi_identity.credentials.apikeys import APIKey, hash_api_key
from asgi_identity.identity import Identity
from asgi_identity.middleware.ratelimit import UserRateLimit
from asgi_identity.types import Scope


def test_a_new_identity_object_for_the_same_person_reuses_the_plan() -> None:
    """Header identities are built anew on every request; the same person still hits the cache,
    and anything the limits depend on (tier, key record) still gets a plan of its own."""
    limiter = UserRateLimit(llm_app(), limits="10/second;1000/day", tokens="100000/day")

    def bob(**extra: Any) -> Identity:
        return Identity(
            source="header",
            user_id="bob@acme.com",
            email="bob@acme.com",
            domain="acme.com",
            **extra,
        )

    scope: Scope = {"type": "http", "headers": []}
    plan = limiter._planner.plan(bob(), scope)
    assert limiter._planner.plan(bob(), scope) is plan
    assert limiter._planner.plan(bob(group="pro"), scope) is not plan
    key = APIKey(id="k1", sha256=hash_api_key("secret"), rate_limit="1/second")
    with_key = limiter._planner.plan(bob(api_key=key), scope)
    assert with_key is not plan
    assert with_key.requests is not None
    assert with_key.requests[0].amount == 1
