"""IdentityMiddleware: who is calling? The one layer that reads credentials.

It is also the outermost layer of the package: it reads the request once into the view every
later layer reads (docs/request-reading.md), and publishes the identity once, conversation id
included, before any decision is recorded.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Sequence

from asgi_identity import telemetry
from asgi_identity._http.headers import MAX_HEADER_VALUE, Headers
from asgi_identity._http.lifespan import LifespanHooks
from asgi_identity._http.peers import IPNetwork, TrustedPeers
from asgi_identity._http.target import PathPolicy
from asgi_identity.credentials._cross_site import CrossSiteCheck
from asgi_identity.credentials._forwarded import ForwardedHeaders, IdentityAuth, IdentityUser
from asgi_identity.credentials._options import build_groups, build_store, build_verifier
from asgi_identity.credentials._presented import HeaderReader, Presented, cookie_name, header_name
from asgi_identity.credentials._resolve import Resolver
from asgi_identity.credentials.apikeys import APIKey, APIKeyStore
from asgi_identity.credentials.tokens import JWTIssuer, TokenVerifier
from asgi_identity.errors import ErrorRenderer, IdentityError
from asgi_identity.identity import set_identity
from asgi_identity.middleware._key_policy import KeyPolicy
from asgi_identity.middleware._layer import LayerPolicy, Mode
from asgi_identity.middleware.conversation import ConversationTags
from asgi_identity.telemetry import events
from asgi_identity.types import AnyASGIApp, AnyReceive, AnyScope, AnySend

logger = logging.getLogger("asgi_identity")

LAYER = "IdentityMiddleware"
AUTHORIZATION = "authorization"


class IdentityMiddleware:
    """Authenticates every request from a JWT, an API key or a trusted email header.

    See docs/identity.md for the options and how credentials combine.
    """

    def __init__(
        self,
        app: AnyASGIApp,
        *,
        issuers: Sequence[JWTIssuer] = (),
        api_keys: Iterable[APIKey] = (),
        api_key_store: APIKeyStore | None = None,
        trusted_header_networks: Iterable[str | IPNetwork] = (),
        allow_anonymous: bool = False,
        forward_headers: bool = True,
        forward_prefix: str = "x-user-",
        sanitize: bool = False,
        groups: Collection[str] | None = None,
        default_group: str | None = None,
        group_header: str | None = "x-user-group",
        token_header: str = AUTHORIZATION,
        token_cookie: str | None = None,
        allowed_origins: Iterable[str] = (),
        api_key_header: str = "x-api-key",
        email_header: str = "x-user-email",
        max_header_bytes: int = MAX_HEADER_VALUE,
        token_verifier: TokenVerifier | None = None,
        startup_timeout: float = 5.0,
        mode: Mode = "enforce",
        exclude_paths: Iterable[str] = (),
        allow_preflight: bool = True,
        renderer: ErrorRenderer | None = None,
        path_policy: PathPolicy = "refuse",
        conversation_header: str | None = "x-conversation-id",
    ) -> None:
        if not callable(app):
            raise TypeError("IdentityMiddleware: app must be an ASGI application")
        self.app = app
        self._policy = LayerPolicy(
            LAYER,
            mode=mode,
            exclude_paths=exclude_paths,
            allow_preflight=allow_preflight,
            renderer=renderer,
            path_policy=path_policy,
        )
        if isinstance(api_keys, APIKey):
            raise TypeError("IdentityMiddleware: api_keys must be a list of APIKey, not one")
        keys = list(api_keys)
        verifier = build_verifier(issuers, token_verifier)
        store = build_store(keys, api_key_store)
        trusted = TrustedPeers(
            trusted_header_networks, option="IdentityMiddleware: trusted_header_networks"
        )
        if verifier is None and store is None and not trusted and not allow_anonymous:
            raise ValueError(
                "IdentityMiddleware has no way to identify a caller: configure issuers=, "
                "api_keys= (or api_key_store=), trusted_header_networks=, or allow_anonymous=True"
            )
        if not isinstance(max_header_bytes, int) or max_header_bytes < 256:
            raise ValueError("IdentityMiddleware: max_header_bytes must be an int of at least 256")
        if not isinstance(startup_timeout, int | float) or startup_timeout < 0:
            raise ValueError("IdentityMiddleware: startup_timeout must be a number of seconds >= 0")

        prefix = header_name("forward_prefix", forward_prefix)
        self._token_header = token = header_name("token_header", token_header)
        email = header_name("email_header", email_header)
        group = header_name("group_header", group_header) if group_header is not None else None
        api_key = header_name("api_key_header", api_key_header)
        conversation = (
            header_name("conversation_header", conversation_header)
            if conversation_header is not None
            else None
        )
        names = [token, email, api_key] + [h for h in (group, conversation) if h]
        if len(set(names)) != len(names):
            raise ValueError(
                "IdentityMiddleware: token_header, api_key_header, email_header, group_header "
                "and conversation_header must be different headers"
            )
        if token.startswith(prefix) or api_key.startswith(prefix):
            raise ValueError(
                f"IdentityMiddleware: token and API key headers cannot start with the forwarding "
                f"prefix {forward_prefix!r}: those headers are removed from every request"
            )
        self._conversation_header = conversation
        if isinstance(allowed_origins, str):
            raise TypeError("IdentityMiddleware: allowed_origins must be a list of origins")
        origins = list(allowed_origins)
        cross_site = CrossSiteCheck(origins)
        if origins and token_cookie is None:
            raise ValueError(
                "IdentityMiddleware: allowed_origins applies to the token cookie; set "
                "token_cookie= too, or drop allowed_origins"
            )
        self._sanitize = bool(sanitize)
        self._reader = HeaderReader(
            token_header=token,
            # Without keys configured, the API key header is not ours to read (the app may use
            # it), but sanitize still strips it: the user asked that keys never reach the app.
            api_key_header=api_key if store is not None or self._sanitize else None,
            email_header=email,
            group_header=group,
            token_cookie=cookie_name(token_cookie) if token_cookie is not None else None,
            conversation_header=conversation,
            prefix=prefix,
            sanitize=self._sanitize,
            max_bytes=max_header_bytes,
        )
        self._resolver = Resolver(
            verifier=verifier,
            store=store,
            trusted=trusted,
            allow_anonymous=bool(allow_anonymous),
            groups=build_groups(groups, default_group, keys),
            default_group=default_group,
            token_header=token,
            email_header_name=email_header,
            cross_site=cross_site if token_cookie is not None else None,
        )
        self._verifier = verifier
        # An API key's allowed_domains / enforce_identity=True, when no later layer applies them.
        key_policy = KeyPolicy(app, keys) if store is not None else None
        self._key_policy = key_policy if key_policy is not None and key_policy.active else None
        self._forwarded = ForwardedHeaders(prefix) if forward_headers else None
        self._conversations = ConversationTags()
        self._lifespan = (
            LifespanHooks(LAYER, self._warm, self._close, float(startup_timeout))
            if verifier is not None
            else None
        )

    async def __call__(self, scope: AnyScope, receive: AnyReceive, send: AnySend) -> None:
        if scope["type"] not in ("http", "websocket"):
            if scope["type"] == "lifespan" and self._lifespan is not None:
                hooks = self._lifespan
                await self.app(scope, hooks.receive(receive), hooks.send(send))
            else:
                await self.app(scope, receive, send)
            return

        view = await self._policy.view(scope, receive, send)
        if view is None:
            return
        reader = self._reader
        presented: Presented | None = None
        if self._policy.skips(view):
            presented = reader.unread(scope["headers"])
            identity = self._resolver.anonymous
        else:
            try:
                presented = reader.read(scope["headers"])
                view.headers_read(presented.content_length, presented.preflight)
                view.conversation_header = self._conversation_header
                view.conversation_ids = presented.conversations
                identity = await self._resolver.identify(scope, presented)
            except IdentityError as error:
                if await self._policy.refuse(error, scope, receive, send):
                    return
                # Observe mode: carry on as anonymous, still without any spoofable header nor
                # (when sanitizing) any API key; read() may have been what refused.
                if presented is None:
                    presented = reader.unread(scope["headers"])
                identity = self._conversations.tag(self._resolver.anonymous, view.conversation_ids)
            else:
                # The identity is final before any decision is recorded: every audit record and
                # span of the request carries its conversation.
                identity = self._conversations.tag(identity, presented.conversations)
                events.authenticated(scope, identity)
                if self._key_policy is not None and identity.api_key is not None:
                    refused = self._key_policy.check(identity)
                    if refused is not None and await self._policy.refuse(
                        refused, scope, receive, send
                    ):
                        return

        headers = reader.kept(presented)
        if self._sanitize and presented.bearer_is_key:
            headers = self._without_key_bearer(headers)
        if self._forwarded is not None:
            scope["headers"] = [*headers, *self._forwarded.of(identity)]
        elif headers is not presented.headers:
            scope["headers"] = headers
        set_identity(scope, identity)
        # New per request: a handler may change them, and that must not reach the next request.
        if "user" not in scope:
            scope["user"] = IdentityUser(identity)
        if "auth" not in scope:
            scope["auth"] = IdentityAuth(identity)
        # Drops identity keys a client put in its `baggage`; adds the verified ones if enabled.
        with telemetry.outgoing_baggage(identity):
            await self.app(scope, receive, send)

    def _without_key_bearer(self, headers: Headers) -> Headers:
        token_header = self._token_header
        return [(n, v) for n, v in headers if n.lower() != token_header]

    # -- lifespan: the key sets are fetched before the first request, and closed at the end ----

    async def _warm(self) -> None:
        assert self._verifier is not None
        try:
            await self._verifier.startup()
        except Exception:
            # Never hold start-up hostage to an identity provider that is down.
            logger.warning(
                "IdentityMiddleware could not fetch the identity providers' keys at start-up; "
                "it will retry on the first request",
                exc_info=True,
            )

    async def _close(self) -> None:
        assert self._verifier is not None
        try:
            await self._verifier.aclose()
        except Exception:
            logger.warning("IdentityMiddleware could not close its token verifier", exc_info=True)
