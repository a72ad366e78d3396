"""IdentityMiddleware: who is calling? The one layer that reads credentials."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Collection, Iterable, Sequence

from asgi_identity import telemetry
from asgi_identity._http.headers import MAX_HEADER_VALUE
from asgi_identity._http.peers import IPNetwork, TrustedPeers
from asgi_identity._http.target import PathPolicy
from asgi_identity.credentials._forwarded import IdentityAuth, IdentityUser, forwarded_headers
from asgi_identity.credentials._header_values import (
    bearer_value,
    header_email,
    header_group_value,
)
from asgi_identity.credentials._presented import (
    HeaderReader,
    Presented,
    cookie_name,
    header_name,
)
from asgi_identity.credentials.apikeys import APIKey, APIKeyStore, StaticAPIKeyStore
from asgi_identity.credentials.email import EmailAddress
from asgi_identity.credentials.tokens import JWTIssuer, TokenVerifier, looks_like_jwt
from asgi_identity.errors import ErrorRenderer, IdentityError
from asgi_identity.identity import Identity, set_identity
from asgi_identity.middleware._layer import LayerPolicy, Mode
from asgi_identity.middleware.conversation import ConversationTags
from asgi_identity.telemetry import events
from asgi_identity.types import (
    AnyASGIApp,
    AnyReceive,
    AnyScope,
    AnySend,
    Message,
    Receive,
    Scope,
    Send,
)

logger = logging.getLogger("asgi_identity")

LAYER = "IdentityMiddleware"
AUTHORIZATION = "authorization"
# Derived identities (token + key, key alone) kept; emptied when full, no eviction bookkeeping.
_DERIVED_CACHE_SIZE = 4096


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
        self._verifier = self._build_verifier(issuers, token_verifier)
        self._store = self._build_store(keys, api_key_store)
        self._trusted = TrustedPeers(
            trusted_header_networks, option="IdentityMiddleware: trusted_header_networks"
        )
        self._allow_anonymous = bool(allow_anonymous)
        if (
            self._verifier is None
            and self._store is None
            and not self._trusted
            and not self._allow_anonymous
        ):
            raise ValueError(
                "IdentityMiddleware has no way to identify a caller: configure issuers=, "
                "api_keys= (or api_key_store=), trusted_header_networks=, or allow_anonymous=True"
            )
        if not isinstance(max_header_bytes, int) or max_header_bytes < 256:
            raise ValueError("IdentityMiddleware: max_header_bytes must be an int of at least 256")
        if not isinstance(startup_timeout, int | float) or startup_timeout < 0:
            raise ValueError("IdentityMiddleware: startup_timeout must be a number of seconds >= 0")
        self._startup_timeout = float(startup_timeout)

        self._groups = self._build_groups(groups, default_group, keys)
        self._default_group = default_group

        prefix = header_name("forward_prefix", forward_prefix)
        self._prefix = prefix
        self._forward = bool(forward_headers)
        self._sanitize = bool(sanitize)
        self._token_header = header_name("token_header", token_header)
        self._bearer_scheme_required = self._token_header == b"authorization"
        email = header_name("email_header", email_header)
        group = header_name("group_header", group_header) if group_header is not None else None
        api_key = header_name("api_key_header", api_key_header)
        conversation = (
            header_name("conversation_header", conversation_header)
            if conversation_header is not None
            else None
        )
        self._conversation_header = conversation
        names = [self._token_header, email, api_key] + [h for h in (group, conversation) if h]
        if len(set(names)) != len(names):
            raise ValueError(
                "IdentityMiddleware: token_header, api_key_header, email_header, group_header "
                "and conversation_header must be different headers"
            )
        if self._token_header.startswith(prefix) or api_key.startswith(prefix):
            raise ValueError(
                f"IdentityMiddleware: token and API key headers cannot start with the forwarding "
                f"prefix {forward_prefix!r}: those headers are removed from every request"
            )
        self._email_header_name = email_header
        self._reader = HeaderReader(
            token_header=self._token_header,
            # Without keys configured, the API key header is not ours to read (the app may use
            # it), but sanitize still strips it: the user asked that keys never reach the app.
            api_key_header=api_key if self._store is not None or self._sanitize else None,
            email_header=email,
            group_header=group,
            token_cookie=cookie_name(token_cookie) if token_cookie is not None else None,
            conversation_header=conversation,
            prefix=prefix,
            sanitize=self._sanitize,
            max_bytes=max_header_bytes,
        )
        self._anonymous = Identity(source="anonymous", group=default_group)
        self._warming: asyncio.Task[None] | None = None
        self._derived_cache: dict[
            tuple[int, int, str | None], tuple[Identity | None, APIKey | None, Identity]
        ] = {}
        self._forward_cache: dict[int, tuple[Identity, list[tuple[bytes, bytes]]]] = {}
        self._forward_by_value: dict[tuple[object, ...], list[tuple[bytes, bytes]]] = {}
        self._conversations = ConversationTags()

    # -- configuration -------------------------------------------------------------------------

    @staticmethod
    def _build_verifier(
        issuers: Sequence[JWTIssuer], verifier: TokenVerifier | None
    ) -> TokenVerifier | None:
        if isinstance(issuers, JWTIssuer):
            raise TypeError("IdentityMiddleware: issuers must be a list of JWTIssuer, not one")
        issuers = list(issuers)
        for issuer in issuers:
            if not isinstance(issuer, JWTIssuer):
                raise TypeError(
                    f"IdentityMiddleware: issuers must be JWTIssuer instances, not "
                    f"{type(issuer).__name__}"
                )
        if verifier is not None:
            if issuers:
                raise ValueError("IdentityMiddleware: pass issuers= or token_verifier=, not both")
            return verifier
        return TokenVerifier(issuers) if issuers else None

    @staticmethod
    def _build_store(records: list[APIKey], store: APIKeyStore | None) -> APIKeyStore | None:
        for record in records:
            if not isinstance(record, APIKey):
                raise TypeError(
                    f"IdentityMiddleware: api_keys must be APIKey records, not "
                    f"{type(record).__name__} (store digests, see hash_api_key)"
                )
        if store is not None:
            if records:
                raise ValueError("IdentityMiddleware: pass api_keys= or api_key_store=, not both")
            if not isinstance(store, APIKeyStore):
                raise TypeError(
                    "IdentityMiddleware: api_key_store must have an async lookup(digest) method"
                )
            return store
        return StaticAPIKeyStore(records) if records else None

    @staticmethod
    def _build_groups(
        groups: Collection[str] | None, default: str | None, keys: list[APIKey]
    ) -> frozenset[str] | None:
        if groups is None:
            if default is not None and not isinstance(default, str):
                raise TypeError("IdentityMiddleware: default_group must be a string")
            return None
        if isinstance(groups, str):
            raise TypeError("IdentityMiddleware: groups must be a list of group names")
        allowed = frozenset(groups)
        if not allowed or not all(isinstance(g, str) and g for g in allowed):
            raise ValueError("IdentityMiddleware: groups must be non-empty strings")
        if default is not None and default not in allowed:
            raise ValueError(f"IdentityMiddleware: default_group {default!r} is not one of groups")
        for key in keys:
            if key.group is not None and key.group not in allowed:
                raise ValueError(
                    f"IdentityMiddleware: API key {key.id!r} has group {key.group!r}, "
                    "which is not one of groups"
                )
        return allowed

    # -- requests ------------------------------------------------------------------------------

    async def __call__(self, scope: AnyScope, receive: AnyReceive, send: AnySend) -> None:
        if scope["type"] not in ("http", "websocket"):
            if scope["type"] == "lifespan" and self._verifier is not None:
                await self.app(scope, self._warming_receive(receive), self._closing_send(send))
            else:
                await self.app(scope, receive, send)
            return

        view = await self._policy.view(scope, receive, send)
        if view is None:
            return
        presented: Presented | None = None
        if self._policy.skips(view):
            presented = self._reader.unread(scope["headers"])
            identity = self._anonymous
        else:
            try:
                presented = self._reader.read(scope["headers"])
                view.conversation_header = self._conversation_header
                view.conversation_ids = presented.conversations
                identity = await self._identify(scope, presented)
            except IdentityError as error:
                if await self._policy.refuse(error, scope, receive, send):
                    return
                # Observe mode: carry on as anonymous, still without any spoofable header nor
                # (when sanitizing) any API key; read() may have been what refused.
                if presented is None:
                    presented = self._reader.unread(scope["headers"])
                identity = self._conversations.tag(self._anonymous, view.conversation_ids)
            else:
                # The identity is final before any decision is recorded: every audit record and
                # span of the request carries its conversation.
                identity = self._conversations.tag(identity, presented.conversations)
                events.authenticated(scope, identity)

        headers = self._reader.kept(presented)
        if self._sanitize and presented.bearer_is_key:
            headers = self._without_key_bearer(headers)
        if self._forward:
            scope["headers"] = [*headers, *self._forwarded(identity)]
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

    def _forwarded(self, identity: Identity) -> list[tuple[bytes, bytes]]:
        # Identities repeat (cached tokens, keys): encode each one's headers once.
        hit = self._forward_cache.get(id(identity))
        # The entry holds the identity itself, so its id cannot be reused while cached.
        if hit is not None and hit[0] is identity:
            return hit[1]
        # A new token of a person seen before (a refresh) is a new Identity with the same values.
        values = (
            identity.source,
            identity.user_id,
            identity.email,
            identity.group,
            identity.tenant,
            identity.roles,
            identity.client_id,
        )
        encoded = self._forward_by_value.get(values)
        if encoded is None:
            encoded = forwarded_headers(identity, self._prefix)
            if len(self._forward_by_value) >= _DERIVED_CACHE_SIZE:
                self._forward_by_value.clear()
            self._forward_by_value[values] = encoded
        if len(self._forward_cache) >= _DERIVED_CACHE_SIZE:
            self._forward_cache.clear()
        self._forward_cache[id(identity)] = (identity, encoded)
        return encoded

    def _without_key_bearer(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        token_header = self._token_header
        return [(n, v) for n, v in headers if n.lower() != token_header]

    async def _identify(self, scope: Scope, presented: Presented) -> Identity:
        token, bearer_key = self._classify(presented)
        api_key: bytes | None = None
        if presented.api_keys and self._store is not None:
            if len(presented.api_keys) > 1 or bearer_key is not None:
                raise IdentityError(
                    "ambiguous_credentials", "The request carries more than one API key."
                )
            api_key = presented.api_keys[0]
        elif bearer_key is not None:
            api_key = bearer_key

        record: APIKey | None = None
        if api_key is not None:
            record = await self._lookup(api_key)

        email: EmailAddress | None = None
        header_group: str | None = None
        if (presented.emails or presented.groups) and (
            (record is not None and record.header_identity)
            or (bool(self._trusted) and self._trusted.trusts_client(scope.get("client")))
        ):
            email = header_email(presented.emails, self._email_header_name)
            header_group = header_group_value(presented.groups)

        if token is not None:
            assert self._verifier is not None
            identity = presented.verified or await self._verifier.verify(token)
            group = identity.group or header_group or (record.group if record else None)
            group = self._check_group(group or self._default_group)
            if record is None and group == identity.group:
                return identity
            return self._derived(identity, record, group)

        group = self._check_group(
            header_group or (record.group if record else None) or self._default_group
        )
        if email is not None:
            return Identity(
                source="header",
                user_id=email.address,
                email=email.address,
                domain=email.domain,
                tenant=record.tenant if record else None,
                group=group,
                client_id=record.id if record else None,
                api_key=record,
            )
        if record is not None:
            return self._derived(None, record, group)
        if self._allow_anonymous:
            return (
                self._anonymous
                if group == self._default_group
                else Identity(source="anonymous", group=group)
            )
        raise IdentityError(
            "missing_credentials",
            "No credentials: send a bearer token in the Authorization header or an API key.",
        )

    def _derived(
        self, token: Identity | None, record: APIKey | None, group: str | None
    ) -> Identity:
        """The identity of a token and/or key with `group`, built once per combination.

        The verifier hands out the same Identity for a token it has seen (still checking `exp`), so
        a repeated token-and-key pair costs a dictionary lookup here instead of a new Identity.
        """
        cache_key = (id(token), id(record), group)
        hit = self._derived_cache.get(cache_key)
        # The entry holds the objects themselves, so their ids cannot be reused while cached.
        if hit is not None and hit[0] is token and hit[1] is record:
            return hit[2]
        if token is None:
            assert record is not None
            derived = Identity(
                source="api_key",
                tenant=record.tenant,
                group=group,
                client_id=record.id,
                api_key=record,
            )
        elif record is None:
            derived = token.replace(group=group)
        else:
            derived = token.replace(
                api_key=record,
                client_id=record.id,
                tenant=record.tenant or token.tenant,
                group=group,
            )
        if len(self._derived_cache) >= _DERIVED_CACHE_SIZE:
            self._derived_cache.clear()
        self._derived_cache[cache_key] = (token, record, derived)
        return derived

    def _classify(self, presented: Presented) -> tuple[str | None, bytes | None]:
        """(the JWT, an API key sent as a bearer value) from the token header or cookie."""
        if len(presented.tokens) > 1:
            raise IdentityError(
                "ambiguous_credentials",
                f"The request carries more than one {self._token_header.decode()} header.",
            )
        if presented.tokens:
            # An explicit header wins over a cookie the browser sends on its own.
            value = bearer_value(presented.tokens[0], scheme_required=self._bearer_scheme_required)
            if self._verifier is not None:
                # A token verified before (and not expired) is a JWT: one lookup settles both.
                presented.verified = self._verifier.cached(value)
                if presented.verified is not None:
                    return value, None
            if looks_like_jwt(value):
                return self._jwt_or_refuse(value), None
            if self._store is not None:
                presented.bearer_is_key = True
                return None, value.encode("ascii")
            raise IdentityError("invalid_token", "The bearer token is malformed.")
        if presented.cookie_tokens:
            if len(presented.cookie_tokens) > 1:
                raise IdentityError(
                    "ambiguous_credentials", "The request carries the token cookie twice."
                )
            value = bearer_value(presented.cookie_tokens[0], scheme_required=False)
            if not looks_like_jwt(value):
                raise IdentityError("invalid_token", "The token cookie is malformed.")
            return self._jwt_or_refuse(value), None
        return None, None

    def _jwt_or_refuse(self, token: str) -> str:
        if self._verifier is None:
            raise IdentityError("invalid_token", "This server does not accept bearer tokens.")
        return token

    async def _lookup(self, key: bytes) -> APIKey:
        assert self._store is not None
        record = await self._store.lookup(hashlib.sha256(key).digest())
        if record is None:
            raise IdentityError("invalid_api_key", "Invalid API key.")
        return record

    def _check_group(self, group: str | None) -> str | None:
        if group is not None and self._groups is not None and group not in self._groups:
            # Never echo the value: it may come from a client.
            raise IdentityError(
                "invalid_group", "The request's group is not one of the allowed groups."
            )
        return group

    # -- lifespan ------------------------------------------------------------------------------

    def _warming_receive(self, receive: Receive) -> Receive:
        async def receive_and_warm() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._warming = asyncio.ensure_future(self._warm())
                # Wait a little so the first requests find the keys; never hold start-up hostage
                # to an identity provider that is down: the fetch goes on in the background.
                await asyncio.wait({self._warming}, timeout=self._startup_timeout)
            return message

        return receive_and_warm

    def _closing_send(self, send: Send) -> Send:
        async def send_and_close(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                await self._close()
            await send(message)

        return send_and_close

    async def _warm(self) -> None:
        assert self._verifier is not None
        try:
            await self._verifier.startup()
        except Exception:
            logger.warning(
                "IdentityMiddleware could not fetch the identity providers' keys at start-up; "
                "it will retry on the first request",
                exc_info=True,
            )

    async def _close(self) -> None:
        assert self._verifier is not None
        warming = self._warming
        if warming is not None and not warming.done():
            warming.cancel()
            await asyncio.gather(warming, return_exceptions=True)
        try:
            await self._verifier.aclose()
        except Exception:
            logger.warning("IdentityMiddleware could not close its token verifier", exc_info=True)
