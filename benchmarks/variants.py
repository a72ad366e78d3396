"""Every app the harness measures, by name, each with the baseline it is compared with.

Our layers are imported inside their builders, so a layer that is missing or broken makes its
variants report "n/a" with the reason instead of stopping the run.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from asgi_identity.credentials.apikeys import APIKey
from asgi_identity.identity import Identity, set_identity
from asgi_identity.types import ASGIApp, Receive, Scope, Send

from . import peers
from ._fixtures import (
    ALLOWED_DOMAINS,
    API_KEY_SHA256,
    AUDIENCE,
    RATE_LIMIT,
    REQUEST_MODEL,
    TOKEN_LIMIT,
    USER_CLAIMS,
    Keys,
    issuer_url,
    starlette_app,
)

REDIS_URL = "127.0.0.1:6379"
MEMORY_STORAGE = "async+memory://"
REDIS_STORAGE = f"async+redis://{REDIS_URL}"

Builder = Callable[[Keys, str], ASGIApp]
Tokens = Literal["repeated", "new", "none"]


class Unavailable(Exception):
    """The variant cannot be built here (its module is not there yet, Redis is down): n/a."""


@dataclass(frozen=True)
class Variant:
    name: str
    build: Builder
    #: The variant this one is compared with; None for a baseline.
    baseline: str | None = None
    algorithm: str = "RS256"
    tokens: Tokens = "repeated"
    api_key: bool = False
    otel: bool = False
    redis: bool = False
    #: Also measured over HTTP (uvicorn on loopback).
    http: bool = False
    #: The parts ("inprocess", "http") in which it is measured for a 0.2 target (DESIGN.md
    #: "Performance"): what `--targets` runs there.
    targets: tuple[str, ...] = ()


def make_app(variant: Variant, keys: Keys) -> ASGIApp:
    """Build `variant`'s app, or raise Unavailable saying why it cannot be measured here."""
    if variant.redis and not redis_reachable():
        raise Unavailable(f"no Redis at {REDIS_URL}")
    try:
        app = variant.build(keys, variant.algorithm)
    except ImportError as exc:
        raise Unavailable(f"cannot import it yet ({exc})") from exc
    if variant.otel:
        from ._otel import RequestSpan, install_sdk

        install_sdk()
        app = RequestSpan(app)
    return app


def redis_reachable() -> bool:
    host, port = REDIS_URL.split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return True
    except OSError:
        return False


# --- our layers -------------------------------------------------------------------------------


def _identity_middleware(app: ASGIApp, keys: Keys, algorithm: str) -> ASGIApp:
    from asgi_identity.credentials.tokens import JWTIssuer
    from asgi_identity.middleware.identity import IdentityMiddleware

    issuer = JWTIssuer(
        issuer=issuer_url(algorithm), audience=AUDIENCE, public_key=keys.public_pems[algorithm]
    )
    key = APIKey(id="bench-app", sha256=API_KEY_SHA256, tenant="acme", group="pro")
    return IdentityMiddleware(app, issuers=[issuer], api_keys=[key])


def _rate_limit(app: ASGIApp, storage: str, *, token_quota: bool = True) -> ASGIApp:
    from asgi_identity.middleware.ratelimit import UserRateLimit

    tokens = TOKEN_LIMIT if token_quota else None
    return UserRateLimit(app, limits=RATE_LIMIT, tokens=tokens, storage=storage)


def _route_policy(app: ASGIApp) -> ASGIApp:
    from asgi_identity.middleware.policy import RoutePolicy, Rule

    # A model rule, so the policy reads the body's `model` on every chat completion.
    rule = Rule(
        id="chat-models",
        methods=["POST"],
        paths=["/v1/chat/*"],
        models=[f"{REQUEST_MODEL}*"],
        scopes=["chat:write"],
    )
    return RoutePolicy(app, rules=[rule], default="deny")


def _enforce(app: ASGIApp) -> ASGIApp:
    from asgi_identity.middleware.enforce import EnforceIdentity

    return EnforceIdentity(app)


def _domains(app: ASGIApp) -> ASGIApp:
    from asgi_identity.middleware.domains import DomainAllowlist

    return DomainAllowlist(app, domains=ALLOWED_DOMAINS)


def _conversations(app: ASGIApp) -> ASGIApp:
    from asgi_identity.middleware.conversation import ConversationTagger

    return ConversationTagger(app)


def _stack(keys: Keys, algorithm: str, storage: str, *, token_quota: bool = True) -> ASGIApp:
    # Every layer, in the order of DESIGN.md's flow: the first layer a request meets is built last.
    app: ASGIApp = starlette_app()
    app = _conversations(app)
    app = _rate_limit(app, storage, token_quota=token_quota)
    app = _route_policy(app)
    app = _domains(app)
    app = _enforce(app)
    return _identity_middleware(app, keys, algorithm)


def full_stack_memory(keys: Keys, algorithm: str) -> ASGIApp:
    return _stack(keys, algorithm, MEMORY_STORAGE)


def full_stack_memory_no_token_quota(keys: Keys, algorithm: str) -> ASGIApp:
    return _stack(keys, algorithm, MEMORY_STORAGE, token_quota=False)


def full_stack_redis(keys: Keys, algorithm: str) -> ASGIApp:
    return _stack(keys, algorithm, REDIS_STORAGE)


def identity_alone(keys: Keys, algorithm: str) -> ASGIApp:
    return _identity_middleware(starlette_app(), keys, algorithm)


class PresetIdentity:
    """Stands in for IdentityMiddleware, so that a later layer can be measured alone."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.identity = Identity(
            source="jwt",
            user_id=USER_CLAIMS["sub"],
            email=USER_CLAIMS["email"],
            email_verified=True,
            domain="acme.com",
            name=USER_CLAIMS["name"],
            group="pro",
            scopes=frozenset(USER_CLAIMS["scope"].split()),
            issuer=issuer_url("RS256"),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            set_identity(scope, self.identity)
        await self.app(scope, receive, send)


def _alone(layer: Callable[[ASGIApp], ASGIApp]) -> Builder:
    def build(keys: Keys, algorithm: str) -> ASGIApp:
        return PresetIdentity(layer(starlette_app()))

    return build


def bare_starlette(keys: Keys, algorithm: str) -> ASGIApp:
    return starlette_app()


def preset_identity(keys: Keys, algorithm: str) -> ASGIApp:
    return PresetIdentity(starlette_app())


# --- the registry -----------------------------------------------------------------------------

BARE = "bare Starlette"
BARE_FASTAPI = "bare FastAPI"
PRESET = "bare Starlette + preset identity (stand-in)"
SPAN_BARE = "bare Starlette + request span [OTel SDK]"
# The four in-process targets: a repeated or a new token, with or without a token quota.
FULL_REPEATED = "full stack, memory, repeated token, with token quota"
FULL_REPEATED_NO_QUOTA = "full stack, memory, repeated token, no token quota"
FULL_NEW = "full stack, memory, new RS256 token, with token quota"
FULL_NEW_NO_QUOTA = "full stack, memory, new RS256 token, no token quota"
FULL_REDIS = "full stack, Redis, repeated token"
FULL_REPEATED_OTEL = "full stack, memory, repeated token [OTel SDK]"
FULL_NEW_OTEL = "full stack, memory, new RS256 token [OTel SDK]"
HAND_WRITTEN = "hand-written stack: AuthenticationMiddleware + slowapi + asgi-correlation-id"
HAND_WRITTEN_OTEL = "hand-written stack [OTel SDK]"
IN_PROCESS, HTTP = ("inprocess",), ("http",)
BOTH = IN_PROCESS + HTTP


def _identity_variants() -> list[Variant]:
    found = []
    for algorithm in ("RS256", "ES256", "EdDSA"):
        for tokens in ("repeated", "new"):
            found.append(
                Variant(
                    f"IdentityMiddleware alone, {algorithm}, {tokens} token",
                    identity_alone,
                    BARE,
                    algorithm=algorithm,
                    tokens=tokens,
                )
            )
    found.append(
        Variant(
            "IdentityMiddleware alone, API key only",
            identity_alone,
            BARE,
            tokens="none",
            api_key=True,
        )
    )
    return found


VARIANTS: tuple[Variant, ...] = (
    Variant(BARE, bare_starlette, http=True, targets=BOTH),
    Variant(BARE_FASTAPI, peers.bare_fastapi),
    Variant(PRESET, preset_identity, BARE),
    *_identity_variants(),
    Variant("EnforceIdentity alone", _alone(_enforce), PRESET),
    Variant("DomainAllowlist alone", _alone(_domains), PRESET),
    Variant(
        "UserRateLimit alone, memory",
        _alone(lambda app: _rate_limit(app, MEMORY_STORAGE)),
        PRESET,
    ),
    Variant("RoutePolicy alone, model rule", _alone(_route_policy), PRESET),
    Variant("ConversationTagger alone", _alone(_conversations), PRESET),
    Variant(FULL_REPEATED, full_stack_memory, BARE, http=True, targets=BOTH),
    Variant(FULL_REPEATED_NO_QUOTA, full_stack_memory_no_token_quota, BARE, targets=IN_PROCESS),
    Variant(FULL_NEW, full_stack_memory, BARE, tokens="new", http=True, targets=IN_PROCESS),
    Variant(
        FULL_NEW_NO_QUOTA,
        full_stack_memory_no_token_quota,
        BARE,
        tokens="new",
        targets=IN_PROCESS,
    ),
    Variant("full stack, memory, API key + repeated token", full_stack_memory, BARE, api_key=True),
    Variant(FULL_REDIS, full_stack_redis, BARE, redis=True, http=True, targets=HTTP),
    Variant(
        "Starlette AuthenticationMiddleware + pyjwt (RS256)", peers.starlette_authentication, BARE
    ),
    Variant("FastAPI Depends + pyjwt (RS256)", peers.fastapi_depends, BARE_FASTAPI),
    Variant("slowapi (SlowAPIASGIMiddleware, memory)", peers.slowapi_asgi, BARE),
    Variant("slowapi (SlowAPIMiddleware, a BaseHTTPMiddleware)", peers.slowapi_base_http, BARE),
    Variant("asgi-correlation-id", peers.correlation_id, BARE),
    Variant(HAND_WRITTEN, peers.hand_written_stack, BARE, http=True),
    # Installing the SDK is global and for good, so these run after everything above.
    Variant(SPAN_BARE, bare_starlette, otel=True, http=True),
    Variant(FULL_REPEATED_OTEL, full_stack_memory, SPAN_BARE, otel=True, http=True),
    Variant(FULL_NEW_OTEL, full_stack_memory, SPAN_BARE, tokens="new", otel=True),
    Variant(HAND_WRITTEN_OTEL, peers.hand_written_stack, SPAN_BARE, otel=True),
)
BY_NAME = {variant.name: variant for variant in VARIANTS}


def select(names_containing: str | None, *, target: str | None = None) -> list[Variant]:
    """The variants whose name contains the text (any case), with the baselines they need.

    `target` ("inprocess" or "http"): only those measured there for a 0.2 target.
    """
    chosen = [v for v in VARIANTS if target is None or target in v.targets]
    if names_containing:
        chosen = [v for v in chosen if names_containing.lower() in v.name.lower()]
    wanted = {v.name for v in chosen}
    for name in list(wanted):
        baseline = BY_NAME[name].baseline
        while baseline is not None:
            wanted.add(baseline)
            baseline = BY_NAME[baseline].baseline
    return [v for v in VARIANTS if v.name in wanted]
