"""An OpenAI-compatible gateway in FastAPI, behind the whole asgi-identity stack.

Run it against your identity provider:

    GATEWAY_ISSUER=https://login.acme.com/ GATEWAY_ALLOWED_DOMAINS=acme.com \\
        uvicorn --factory examples.fastapi.app:create_app

or run `python -m examples.fastapi` (`make demo`) for a self-contained demo.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from asgi_identity import (
    ClaimMap,
    ConversationTagger,
    DomainAllowlist,
    EnforceIdentity,
    IdentityMiddleware,
    JWTIssuer,
    RoutePolicy,
    UserRateLimit,
    get_rate_limiter,
)
from asgi_identity.integrations.fastapi import CurrentIdentity

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


def add_identity_stack(app: FastAPI, settings: Settings) -> None:
    """The layers, in the order of the flow.

    `add_middleware` puts the middleware added *last* outermost, so they are added from the app
    outwards: ConversationTagger first, IdentityMiddleware last. The request meets them as
    IdentityMiddleware, EnforceIdentity, DomainAllowlist, RoutePolicy, UserRateLimit,
    ConversationTagger.
    """
    public = list(settings.public_paths)
    app.add_middleware(ConversationTagger, header="x-conversation-id")
    app.add_middleware(
        UserRateLimit,
        limits=settings.rate_limit,
        groups=settings.tier_limits,
        tokens=settings.token_quota,
        group_tokens=settings.tier_tokens,
        token_paths=[CHAT_PATH],
        storage=settings.rate_limit_storage,
        exclude_paths=public,
    )
    # Before the limiter: a request the policy refuses spends none of the caller's quota.
    policy = route_policy_options(settings, CHAT_PATH)
    if policy is not None:
        app.add_middleware(RoutePolicy, **policy)
    if settings.allowed_domains:
        app.add_middleware(DomainAllowlist, domains=settings.allowed_domains, exclude_paths=public)
    app.add_middleware(EnforceIdentity, required=True, exclude_paths=public)
    issuer = JWTIssuer(
        issuer=settings.issuer,
        audience=settings.audience,
        jwks_url=settings.jwks_url,
        discovery=settings.jwks_url is None,
        # Tokens name the user's tier in `tier` and their organization in `org`.
        claims=ClaimMap(group="tier", tenant="org"),
    )
    app.add_middleware(
        IdentityMiddleware,
        issuers=[issuer],
        api_keys=settings.api_keys,
        groups=list(settings.tier_limits),
        default_group=settings.default_tier,
        exclude_paths=public,
    )
    # Outermost: the server span every layer annotates with the user, decision and usage.
    span_middleware, span_options = server_span_middleware()
    app.add_middleware(span_middleware, **span_options)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    upstream = (
        Upstream(settings.upstream_base_url, settings.upstream_api_key, settings.upstream_timeout)
        if settings.upstream_base_url
        else None
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if upstream is not None:
            await upstream.aclose()

    app = FastAPI(title="asgi-identity example gateway", lifespan=lifespan)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    if settings.published_jwks is not None:
        jwks = dict(settings.published_jwks)
        discovery = {
            "issuer": settings.issuer,
            "jwks_uri": settings.issuer.rstrip("/") + "/.well-known/jwks.json",
        }

        @app.get("/.well-known/jwks.json")
        async def published_key_set() -> dict[str, Any]:
            return jwks

        @app.get("/.well-known/openid-configuration")
        async def published_discovery() -> dict[str, Any]:
            return discovery

    @app.get("/v1/models")
    async def list_models(identity: CurrentIdentity) -> Any:
        if upstream is None:
            return models_body(settings.builtin_models)
        try:
            return await upstream.models()
        except (UpstreamError, httpx.HTTPError) as exc:
            status, body = upstream_failure(exc)
            return JSONResponse(body, status_code=status)

    @app.get("/v1/me")
    async def me(request: Request, identity: CurrentIdentity) -> dict[str, Any]:
        # CurrentIdentity is Annotated[Identity, Depends(current_identity)]: the verified caller.
        limiter = get_rate_limiter(request)
        return {**identity_view(identity), "usage": usage_view(await limiter.usage(identity))}

    @app.post(CHAT_PATH)
    async def chat_completions(request: Request, identity: CurrentIdentity) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse(BadRequest("the request body is not JSON").body(), 400)
        try:
            chat = parse_chat_request(body, settings.model)
        except BadRequest as exc:
            return JSONResponse(exc.body(), 400)

        if upstream is not None:
            try:
                if chat.stream:
                    chunks = await upstream.stream(body, identity)
                    return StreamingResponse(chunks, media_type="text/event-stream")
                return JSONResponse(await upstream.complete(body, identity))
            except (UpstreamError, httpx.HTTPError) as exc:
                status, error = upstream_failure(exc)
                return JSONResponse(error, status_code=status)

        if chat.model not in settings.builtin_models:
            error = BadRequest(f"model {chat.model!r} does not exist", "model").body()
            error["error"]["code"] = "model_not_found"
            return JSONResponse(error, 404)
        completion = complete(chat)
        if chat.stream:
            events: Iterator[bytes] = completion_events(completion)
            return StreamingResponse(events, media_type="text/event-stream")
        return JSONResponse(completion_body(completion))

    add_identity_stack(app, settings)
    return app
