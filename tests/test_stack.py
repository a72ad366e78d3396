"""identity_stack() / stack_layers(): the whole chain in DESIGN.md's order, in one call."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from litestar import Litestar, get
from litestar import Request as LitestarRequest
from litestar.middleware import DefineMiddleware
from starlette.applications import Starlette
from starlette.requests import Request as StarletteRequest
from starlette.responses import JSONResponse
from starlette.routing import Route

from _asgi import http_client, make_scope, request
from asgi_identity import APIKey, ClaimMap, Rule, TokenVerifier, get_identity, hash_api_key
from asgi_identity.credentials.tokens import JWTIssuer
from asgi_identity.middleware import (
    ConversationTagger,
    DomainAllowlist,
    EnforceIdentity,
    IdentityMiddleware,
)
from asgi_identity.middleware.ratelimit import UserRateLimit
from asgi_identity.stack import identity_stack, stack_layers
from asgi_identity.testing import LocalIssuer

KEY = "sk-ai-stack-test-key"


def _options(issuer: LocalIssuer) -> dict[str, Any]:
    return {
        "identity": {
            "issuers": [JWTIssuer(issuer=issuer.issuer, audience="gateway", jwks=issuer.jwks)],
            "api_keys": [APIKey(id="backend", sha256=hash_api_key(KEY))],
        },
        "domains": {"domains": ["acme.com"]},
        "rate_limit": {"limits": "2/minute"},
        "exclude_paths": ["/health"],
    }


async def _whoami(request: StarletteRequest) -> JSONResponse:
    identity = get_identity(request)
    return JSONResponse(
        {
            "user": identity.user_id,
            "source": identity.source,
            "conversation": identity.conversation_id,
        }
    )


def _starlette() -> Starlette:
    return Starlette(routes=[Route("/whoami", _whoami), Route("/health", _whoami)])


async def _call_all(app: Any, issuer: LocalIssuer) -> list[tuple[int, Any]]:
    alice = issuer.mint(sub="alice", email="alice@acme.com")
    mallory = issuer.mint(sub="mallory", email="mallory@evil.com")
    async with http_client(app, base_url="http://test") as client:
        requests = [
            client.get("/whoami"),
            client.get("/whoami", headers={"x-api-key": KEY}),
            client.get("/whoami", headers={"authorization": f"Bearer {mallory}"}),
            client.get(
                "/whoami",
                headers={"authorization": f"Bearer {alice}", "x-conversation-id": "conv-1"},
            ),
            client.get("/whoami", headers={"authorization": f"Bearer {alice}"}),
            client.get("/whoami", headers={"authorization": f"Bearer {alice}"}),
            client.get("/health"),
        ]
        results = []
        for request in requests:
            response = await request
            body = response.json()
            results.append((response.status_code, body.get("error", {}).get("code") or body))
        return results


EXPECTED = [
    (401, "missing_credentials"),  # IdentityMiddleware
    (403, "identity_required"),  # EnforceIdentity: a key alone is not a person
    (403, "domain_not_allowed"),  # DomainAllowlist
    (200, {"user": "alice", "source": "jwt", "conversation": "conv-1"}),  # ConversationTagger
    (200, {"user": "alice", "source": "jwt", "conversation": None}),
    (429, "rate_limited"),  # UserRateLimit: the third of 2/minute
    (200, {"user": None, "source": "anonymous", "conversation": None}),  # excluded everywhere
]


async def test_identity_stack_refuses_at_each_layer_in_order(issuer: LocalIssuer) -> None:
    app = identity_stack(_starlette(), **_options(issuer))
    assert await _call_all(app, issuer) == EXPECTED


async def test_stack_layers_with_fastapi_add_middleware(issuer: LocalIssuer) -> None:
    app = FastAPI()

    @app.get("/whoami")
    @app.get("/health")
    async def whoami(request: Request) -> dict[str, Any]:
        identity = get_identity(request)
        return {
            "user": identity.user_id,
            "source": identity.source,
            "conversation": identity.conversation_id,
        }

    for cls, options in reversed(stack_layers(**_options(issuer))):
        app.add_middleware(cls, **options)
    assert await _call_all(app, issuer) == EXPECTED


async def test_stack_layers_with_litestar_define_middleware(issuer: LocalIssuer) -> None:
    @get(["/whoami", "/health"], sync_to_thread=False)
    def whoami(request: LitestarRequest[Any, Any, Any]) -> dict[str, Any]:
        identity = get_identity(request)
        return {
            "user": identity.user_id,
            "source": identity.source,
            "conversation": identity.conversation_id,
        }

    layers = stack_layers(**_options(issuer))
    app = Litestar(
        [whoami], middleware=[DefineMiddleware(cls, **options) for cls, options in layers]
    )
    assert await _call_all(app, issuer) == EXPECTED


def test_layers_come_outermost_first_and_omitted_layers_are_left_out(issuer: LocalIssuer) -> None:
    layers = stack_layers(**_options(issuer))
    assert [cls for cls, _ in layers] == [
        IdentityMiddleware,
        EnforceIdentity,
        DomainAllowlist,
        UserRateLimit,
        ConversationTagger,
    ]
    assert all(options["exclude_paths"] == ["/health"] for _, options in layers)
    bare = stack_layers(identity={"allow_anonymous": True}, enforce=None, conversation=False)
    assert [cls for cls, _ in bare] == [IdentityMiddleware]


def test_a_layer_given_something_else_than_options_is_refused() -> None:
    with pytest.raises(TypeError, match="rate_limit takes a mapping of options"):
        stack_layers(identity={}, rate_limit="60/minute")  # type: ignore[arg-type]


async def test_identity_stack_normalizes_paths_and_reads_its_conversation_header_first(
    issuer: LocalIssuer,
) -> None:
    app = identity_stack(
        _starlette(),
        identity=_options(issuer)["identity"],
        conversation={"header": "x-thread-id"},
        path_policy="normalize",
    )
    scope_path = "/health/../whoami"
    alice = issuer.mint(sub="alice", email="alice@acme.com")
    # Driven directly: httpx would remove the dot-segments before sending.
    scope = make_scope(
        path=scope_path,
        server=("test", 80),
        headers=[(b"authorization", f"Bearer {alice}".encode()), (b"x-thread-id", b"t-9")],
    )
    sent = (
        await request(app, scope=scope, messages=[{"type": "http.request", "body": b""}])
    ).messages
    assert sent[0]["status"] == 200
    assert (b"x-thread-id", b"t-9") in sent[0]["headers"]
    # The app routed the canonical path (not the excluded /health) with the tagged identity.
    assert json.loads(sent[1]["body"]) == {"user": "alice", "source": "jwt", "conversation": "t-9"}


# -- groups nobody can set -----------------------------------------------------------------------

TIERS = {"groups": {"free": "10/minute", "pro": "600/minute"}}
PRO_RULES = {
    "rules": [
        Rule(id="gpt-4o-pro", models=["gpt-4o*"], groups=["pro"]),
        Rule(id="gpt-4o", effect="deny", models=["gpt-4o*"]),
    ],
    "default": "allow",
}


def _issuer(claims: ClaimMap | str = "default") -> JWTIssuer:
    return JWTIssuer(
        issuer="https://login.acme.test/",
        audience="gateway",
        jwks_url="https://idp.test/jwks",
        claims=claims,
    )


@pytest.mark.parametrize(
    ("identity", "rate_limit", "policy", "warns"),
    [
        # Something reads the group, and nothing can set it: the README's 0.1 stack.
        ({"issuers": [_issuer()]}, TIERS, PRO_RULES, True),
        ({"issuers": [_issuer()]}, TIERS, None, True),
        ({"issuers": [_issuer()]}, {"group_tokens": {"pro": None}}, None, True),
        ({"issuers": [_issuer()]}, None, PRO_RULES, True),
        ({"issuers": [_issuer("auth0")]}, TIERS, None, True),
        ({"api_keys": [APIKey(id="app", sha256=hash_api_key(KEY))]}, TIERS, None, True),
        (
            {"trusted_header_networks": ["10.0.0.0/8"], "group_header": None},
            TIERS,
            None,
            True,
        ),
        # Something can set it.
        ({"issuers": [_issuer(ClaimMap(group="tier"))]}, TIERS, PRO_RULES, False),
        ({"issuers": [_issuer()], "default_group": "free"}, TIERS, PRO_RULES, False),
        (
            {"api_keys": [APIKey(id="app", sha256=hash_api_key(KEY), group="pro")]},
            TIERS,
            None,
            False,
        ),
        (
            {"api_keys": [APIKey(id="bot", sha256=hash_api_key(KEY), header_identity=True)]},
            TIERS,
            None,
            False,
        ),
        ({"trusted_header_networks": ["10.0.0.0/8"]}, TIERS, None, False),
        ({"token_verifier": TokenVerifier([_issuer()])}, TIERS, None, False),
        # Nothing reads it.
        ({"issuers": [_issuer()]}, {"limits": "60/minute"}, None, False),
        ({"issuers": [_issuer()]}, None, {"rules": [Rule(id="r", models=["x"])]}, False),
    ],
)
def test_tier_limits_or_group_rules_nobody_can_be_given_warn_once_at_start_up(
    caplog: pytest.LogCaptureFixture,
    identity: dict[str, Any],
    rate_limit: dict[str, Any] | None,
    policy: dict[str, Any] | None,
    warns: bool,
) -> None:
    with caplog.at_level(logging.WARNING, logger="asgi_identity"):
        identity_stack(_starlette(), identity=identity, rate_limit=rate_limit, policy=policy)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    if not warns:
        assert warnings == []
        return
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "IdentityMiddleware gives no identity a group" in message
    assert "ClaimMap(group=" in message
    if rate_limit is not None:
        assert "UserRateLimit has limits for the groups" in message
    if policy is not None:
        assert "RoutePolicy has rules on groups (gpt-4o-pro)" in message


def test_group_rules_in_a_policy_file_are_seen_too(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    rules = tmp_path / "policy.toml"
    rules.write_text('[[rules]]\nid = "pro-only"\nmodels = ["gpt-4o*"]\ngroups = ["pro"]\n')
    with caplog.at_level(logging.WARNING, logger="asgi_identity"):
        stack_layers(identity={"issuers": [_issuer()]}, policy={"rules_file": str(rules)})
    assert [
        "RoutePolicy has rules on groups (pro-only)" in r.getMessage() for r in caplog.records
    ] == [True]
