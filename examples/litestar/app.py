"""The example gateway in Litestar, behind the whole asgi-identity stack.

    GATEWAY_ISSUER=https://login.acme.com/ GATEWAY_ALLOWED_DOMAINS=acme.com \\
        uvicorn --factory examples.litestar.app:create_app

`python -m examples.litestar` runs the same self-contained demo as `make demo`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from limits.storage import storage_from_string
from litestar import Litestar, Request, Response, get, post
from litestar.di import NamedDependency, Provide
from litestar.middleware import DefineMiddleware
from litestar.response import Stream

from asgi_identity import (
    ClaimMap,
    ConversationTagger,
    DomainAllowlist,
    EnforceIdentity,
    Identity,
    IdentityMiddleware,
    JWTIssuer,
    RoutePolicy,
    TokenVerifier,
    UserRateLimit,
    get_identity,
    get_rate_limiter,
)

from ..gateway.model import (
    BadRequest,
    complete,
    completion_body,
    completion_events,
    models_body,
    parse_chat_request,
)
from ..gateway.observability import server_span_middleware
from ..gateway.policy import route_policy_options
from ..gateway.settings import Settings
from ..gateway.upstream import Upstream, UpstreamError
from ..gateway.views import identity_view, upstream_failure, usage_view

CHAT_PATH = "/v1/chat/completions"


async def current_identity(request: Request[Any, Any, Any]) -> Identity:
    """The caller, as IdentityMiddleware verified it; injected as `identity`."""
    return get_identity(request)


CurrentIdentity = NamedDependency[Identity]


def identity_middleware(settings: Settings) -> list[DefineMiddleware]:
    """The layers in the order of the flow: in Litestar the first listed runs first.

    Litestar builds a middleware stack for every route. So that all routes share one key-set
    cache (and fetch the key set once), the verifier is built once here and handed to every
    copy. Identical UserRateLimit copies share their counters by themselves; the storage is
    built once here too, so every copy holds the one object whatever the URI.
    """
    public = list(settings.public_paths)
    issuer = JWTIssuer(
        issuer=settings.issuer,
        audience=settings.audience,
        jwks_url=settings.jwks_url,
        discovery=settings.jwks_url is None,
        claims=ClaimMap(group="tier", tenant="org"),
    )
    verifier = TokenVerifier([issuer])
    storage = storage_from_string(settings.rate_limit_storage)
    stack = [
        DefineMiddleware(
            IdentityMiddleware,
            token_verifier=verifier,
            api_keys=settings.api_keys,
            groups=list(settings.tier_limits),
            default_group=settings.default_tier,
            exclude_paths=public,
        ),
        DefineMiddleware(EnforceIdentity, required=True, exclude_paths=public),
    ]
    if settings.allowed_domains:
        stack.append(
            DefineMiddleware(
                DomainAllowlist, domains=settings.allowed_domains, exclude_paths=public
            )
        )
    # Before the limiter: a request the policy refuses spends none of the caller's quota.
    policy = route_policy_options(settings, CHAT_PATH)
    if policy is not None:
        stack.append(DefineMiddleware(RoutePolicy, **policy))
    stack += [
        DefineMiddleware(
            UserRateLimit,
            limits=settings.rate_limit,
            groups=settings.tier_limits,
            tokens=settings.token_quota,
            group_tokens=settings.tier_tokens,
            token_paths=[CHAT_PATH],
            storage=storage,
            exclude_paths=public,
        ),
        DefineMiddleware(ConversationTagger, header="x-conversation-id"),
    ]
    return stack


def _json_error(body: dict[str, Any], status: int) -> Response[dict[str, Any]]:
    return Response(body, status_code=status, media_type="application/json")


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or Settings.from_env()
    upstream = (
        Upstream(settings.upstream_base_url, settings.upstream_api_key, settings.upstream_timeout)
        if settings.upstream_base_url
        else None
    )

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        yield
        if upstream is not None:
            await upstream.aclose()

    @get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @get("/v1/models")
    async def list_models(identity: CurrentIdentity) -> Any:
        if upstream is None:
            return models_body(settings.builtin_models)
        try:
            return await upstream.models()
        except (UpstreamError, httpx.HTTPError) as exc:
            status, error = upstream_failure(exc)
            return _json_error(error, status)

    @get("/v1/me")
    async def me(request: Request[Any, Any, Any], identity: CurrentIdentity) -> dict[str, Any]:
        limiter = get_rate_limiter(request)
        return {**identity_view(identity), "usage": usage_view(await limiter.usage(identity))}

    @post(CHAT_PATH, status_code=200)
    async def chat_completions(
        request: Request[Any, Any, Any], identity: CurrentIdentity
    ) -> Response[Any]:
        try:
            body = await request.json()
        except Exception:  # Litestar raises its own error types for a body that is not JSON
            return _json_error(BadRequest("the request body is not JSON").body(), 400)
        try:
            chat = parse_chat_request(body, settings.model)
        except BadRequest as exc:
            return _json_error(exc.body(), 400)

        if upstream is not None:
            try:
                if chat.stream:
                    chunks = await upstream.stream(body, identity)
                    return Stream(chunks, media_type="text/event-stream")
                return _json_error(await upstream.complete(body, identity), 200)
            except (UpstreamError, httpx.HTTPError) as exc:
                status, error = upstream_failure(exc)
                return _json_error(error, status)

        if chat.model not in settings.builtin_models:
            error = BadRequest(f"model {chat.model!r} does not exist", "model").body()
            error["error"]["code"] = "model_not_found"
            return _json_error(error, 404)
        completion = complete(chat)
        if chat.stream:
            events: Iterator[bytes] = completion_events(completion)
            return Stream(events, media_type="text/event-stream")
        return _json_error(completion_body(completion), 200)

    handlers: list[Any] = [healthz, list_models, me, chat_completions]
    if settings.published_jwks is not None:
        jwks = dict(settings.published_jwks)
        discovery = {
            "issuer": settings.issuer,
            "jwks_uri": settings.issuer.rstrip("/") + "/.well-known/jwks.json",
        }

        @get("/.well-known/jwks.json")
        async def published_key_set() -> dict[str, Any]:
            return jwks

        @get("/.well-known/openid-configuration")
        async def published_discovery() -> dict[str, Any]:
            return discovery

        handlers += [published_key_set, published_discovery]

    span_middleware, span_options = server_span_middleware()
    return Litestar(
        route_handlers=handlers,
        dependencies={"identity": Provide(current_identity)},
        middleware=[
            DefineMiddleware(span_middleware, **span_options),
            *identity_middleware(settings),
        ],
        lifespan=[lifespan],
    )
