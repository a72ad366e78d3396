"""DomainAllowlist: only emails in the listed domains count as identity."""

from __future__ import annotations

from collections.abc import Collection, Iterable

from asgi_identity.credentials.email import (
    MAX_EMAIL_LENGTH,
    domain_listed,
    normalize_domain_pattern,
    parse_email,
)
from asgi_identity.errors import ErrorRenderer, IdentityError
from asgi_identity.identity import Identity, require_identity
from asgi_identity.middleware._layer import LayerPolicy, Mode
from asgi_identity.types import AnyASGIApp, AnyReceive, AnyScope, AnySend

DOMAIN_NOT_ALLOWED_MESSAGE = "This email domain is not allowed."
NO_EMAIL_MESSAGE = "An email address in an allowed domain is required."
EMAIL_UNVERIFIED_MESSAGE = "This email address has not been verified."
_PARSED_CACHE_SIZE = 4096


class _Malformed(str):
    """Why an email is not a plain address, kept in the parse cache in place of its domain."""

    __slots__ = ()


class DomainAllowlist:
    """Refuse people whose email is unverified or, where a list applies, outside the listed domains.

    The list that applies to a request is its API key's `allowed_domains` when the key sets one
    (an empty one allows any domain), else `domains`. Requests that name no person (a bare API
    key, anonymous) pass: whether a person is required is EnforceIdentity's decision.
    """

    __slots__ = (
        "_no_email",
        "_parsed",
        "_unverified",
        "_verify_issuers",
        "app",
        "domains",
        "policy",
    )

    def __init__(
        self,
        app: AnyASGIApp,
        *,
        domains: Iterable[str] = (),
        require_verified_email: bool | Iterable[str] = False,
        mode: Mode = "enforce",
        exclude_paths: Iterable[str] = (),
        allow_preflight: bool = True,
        renderer: ErrorRenderer | None = None,
    ) -> None:
        if isinstance(domains, str):
            raise TypeError("DomainAllowlist: domains must be a list of domains, not a string")
        self.app = app
        self.domains: frozenset[str] = frozenset(normalize_domain_pattern(d) for d in domains)
        # True: every token must say email_verified=true. A list of issuers: only their tokens.
        self._verify_issuers: bool | frozenset[str]
        if isinstance(require_verified_email, bool):
            self._verify_issuers = require_verified_email
        elif isinstance(require_verified_email, str):
            raise TypeError(
                "DomainAllowlist: require_verified_email must be True, False or a list of issuers"
            )
        else:
            self._verify_issuers = frozenset(require_verified_email)
        self.policy = LayerPolicy(
            "DomainAllowlist",
            mode=mode,
            exclude_paths=exclude_paths,
            allow_preflight=allow_preflight,
            renderer=renderer,
        )
        self._no_email = IdentityError(
            "domain_not_allowed", NO_EMAIL_MESSAGE, detail="identity has no email address"
        )
        self._unverified = IdentityError("email_unverified", EMAIL_UNVERIFIED_MESSAGE)
        self._parsed: dict[str, str] = {}

    def _allowed_domains(self, identity: Identity) -> Collection[str]:
        key = identity.api_key
        if key is not None and key.allowed_domains is not None:
            return key.allowed_domains
        return self.domains

    def _domain_of(self, email: object) -> str:
        # The same people call again and again: parse each address once, in a bounded cache
        # that is simply emptied when full (no eviction order to maintain per request).
        cached = self._parsed.get(email) if isinstance(email, str) else None
        if cached is not None:
            return cached
        try:
            result: str = parse_email(email).domain
        except ValueError as exc:
            # The reason, not the exception: a cached exception would keep its frames alive.
            result = _Malformed(exc)
        # Longer values are refused by their length alone; never let them fill the cache.
        if isinstance(email, str) and len(email) <= MAX_EMAIL_LENGTH:
            if len(self._parsed) >= _PARSED_CACHE_SIZE:
                self._parsed.clear()
            self._parsed[email] = result
        return result

    def _must_be_verified(self, identity: Identity) -> bool:
        # A trusted backend asserting X-User-Email vouches for it; only tokens carry the claim.
        if identity.source != "jwt":
            return False
        if isinstance(self._verify_issuers, bool):
            return self._verify_issuers
        return identity.issuer in self._verify_issuers

    def check(self, identity: Identity) -> IdentityError | None:
        """The error this layer would refuse `identity` with, or None when it is acceptable."""
        if not identity.has_user:
            return None
        if identity.email is not None and (
            identity.email_verified is False
            or (identity.email_verified is None and self._must_be_verified(identity))
        ):
            return self._unverified
        allowed = self._allowed_domains(identity)
        if not allowed:
            return None
        if identity.email is None:
            return self._no_email
        # IdentityMiddleware has already parsed and normalized the address; only an identity the
        # app built itself may come without its domain.
        domain = identity.domain
        if domain is None:
            domain = self._domain_of(identity.email)
            if isinstance(domain, _Malformed):
                return IdentityError(
                    "domain_not_allowed",
                    DOMAIN_NOT_ALLOWED_MESSAGE,
                    detail=f"malformed email: {domain}",
                )
        if domain_listed(domain, allowed):
            return None
        return IdentityError(
            "domain_not_allowed", DOMAIN_NOT_ALLOWED_MESSAGE, detail=f"domain {domain} not listed"
        )

    async def __call__(self, scope: AnyScope, receive: AnyReceive, send: AnySend) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        view = await self.policy.view(scope, receive, send)
        if view is None:
            return
        if self.policy.skips(view):
            await self.app(scope, receive, send)
            return
        error = self.check(require_identity(scope, "DomainAllowlist"))
        if error is not None and await self.policy.refuse(error, scope, receive, send):
            return
        await self.app(scope, receive, send)
