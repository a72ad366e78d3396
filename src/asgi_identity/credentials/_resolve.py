"""Who a request's credentials name: a JWT, an API key, a trusted email header, or nobody.

IdentityMiddleware reads the headers in one pass; this turns what they present into one
Identity, with the rules of docs/identity.md (a present but invalid credential is a 401, never
a fall-back; two values for one credential are a 400).
"""

from __future__ import annotations

import hashlib

from asgi_identity._http.peers import TrustedPeers
from asgi_identity.credentials._cross_site import CrossSiteCheck
from asgi_identity.credentials._header_values import bearer_value, header_email, header_group_value
from asgi_identity.credentials._presented import Presented
from asgi_identity.credentials.apikeys import APIKey, APIKeyStore
from asgi_identity.credentials.email import EmailAddress
from asgi_identity.credentials.tokens import TokenVerifier, looks_like_jwt
from asgi_identity.errors import IdentityError
from asgi_identity.identity import Identity
from asgi_identity.types import Scope

# Derived identities (token + key, key alone) kept; emptied when full, no eviction bookkeeping.
_DERIVED_CACHE_SIZE = 4096


class Resolver:
    """Turns the credentials one request presents into its Identity."""

    __slots__ = (
        "_allow_anonymous",
        "_anonymous",
        "_bearer_scheme_required",
        "_cross_site",
        "_default_group",
        "_derived_cache",
        "_email_header_name",
        "_groups",
        "_store",
        "_token_header",
        "_trusted",
        "_verifier",
    )

    def __init__(
        self,
        *,
        verifier: TokenVerifier | None,
        store: APIKeyStore | None,
        trusted: TrustedPeers,
        allow_anonymous: bool,
        groups: frozenset[str] | None,
        default_group: str | None,
        token_header: bytes,
        email_header_name: str,
        cross_site: CrossSiteCheck | None = None,
    ) -> None:
        self._verifier = verifier
        self._store = store
        self._trusted = trusted
        self._allow_anonymous = allow_anonymous
        self._groups = groups
        self._default_group = default_group
        self._token_header = token_header
        self._bearer_scheme_required = token_header == b"authorization"
        self._email_header_name = email_header_name
        self._cross_site = cross_site
        self._anonymous = Identity(source="anonymous", group=default_group)
        self._derived_cache: dict[
            tuple[int, int, str | None], tuple[Identity | None, APIKey | None, Identity]
        ] = {}

    @property
    def anonymous(self) -> Identity:
        return self._anonymous

    async def identify(self, scope: Scope, presented: Presented) -> Identity:
        token, bearer_key = self._classify(scope, presented)
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

    def _classify(self, scope: Scope, presented: Presented) -> tuple[str | None, bytes | None]:
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
            if self._cross_site is not None:
                self._cross_site.refuse(scope, presented)
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
