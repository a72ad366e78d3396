"""Identity handed on: the `x-user-*` headers for the app or an upstream, and Starlette's
`request.user` / `request.auth`."""

from __future__ import annotations

import re
from urllib.parse import quote

from asgi_identity._http.headers import Headers
from asgi_identity._memo import Memo
from asgi_identity.identity import Identity

# Forwarded values are percent-encoded (UTF-8) when they hold anything beyond plain printable
# ASCII, and always for `%` and `,`, so a comma-joined list splits back exactly, and a value can
# never smuggle a header or a second list item. Plain values pass unchanged.
_FORWARD_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in "%,")


_PLAIN = re.compile(r"[!-$&-+\--~]*")


def forward_value(value: str) -> bytes:
    if _PLAIN.fullmatch(value):
        return value.encode("ascii")
    return quote(value, safe=_FORWARD_SAFE).encode("ascii")


def forwarded_headers(identity: Identity, prefix: bytes) -> Headers:
    """The `<prefix>*` headers that carry `identity` to the app or an upstream.

    IdentityMiddleware caches the result by the fields read here: read a new one, key it there too.
    """
    headers: Headers = [(prefix + b"source", identity.source.encode("ascii"))]
    if identity.user_id:
        headers.append((prefix + b"id", forward_value(identity.user_id)))
    if identity.email:
        headers.append((prefix + b"email", forward_value(identity.email)))
    if identity.group:
        headers.append((prefix + b"group", forward_value(identity.group)))
    if identity.tenant:
        headers.append((prefix + b"tenant", forward_value(identity.tenant)))
    if identity.roles:
        roles = b",".join(forward_value(role) for role in sorted(identity.roles))
        headers.append((prefix + b"roles", roles))
    if identity.client_id:
        headers.append((prefix + b"client-id", forward_value(identity.client_id)))
    return headers


class IdentityUser:
    """`request.user` for Starlette-style apps (`is_authenticated`, `display_name`)."""

    __slots__ = ("identity",)

    def __init__(self, identity: Identity) -> None:
        self.identity = identity

    @property
    def is_authenticated(self) -> bool:
        return self.identity.source != "anonymous"

    @property
    def display_name(self) -> str:
        identity = self.identity
        return identity.name or identity.email or identity.user_id or identity.client_id or ""

    @property
    def identity_source(self) -> str:
        return self.identity.source

    def __repr__(self) -> str:
        return f"IdentityUser({self.identity.subject!r}, source={self.identity.source!r})"


class IdentityAuth:
    """`request.auth` for Starlette-style apps: `.scopes` as `@requires()` expects them.

    Like Starlette's own backends, an authenticated request also carries the `authenticated` scope.
    """

    __slots__ = ("_scopes", "identity")

    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        self._scopes: list[str] | None = None

    @property
    def scopes(self) -> list[str]:
        # Built on first use: most requests never look.
        if self._scopes is None:
            identity = self.identity
            scopes = sorted(identity.scopes)
            if identity.source != "anonymous" and "authenticated" not in identity.scopes:
                scopes.insert(0, "authenticated")
            self._scopes = scopes
        return self._scopes


# Encoded header sets kept; emptied when full, no eviction bookkeeping. Bounded in bytes too: the
# values are claims, which a token may make as long as its size limit allows.
_FORWARD_CACHE_SIZE = 4096
_FORWARD_CACHE_BYTES = 4 * 1024 * 1024


class ForwardedHeaders:
    """The `<prefix>*` headers of each identity, encoded once: identities repeat (the verifier
    hands out the same object for a token it has seen; a refresh gives one with the same values)."""

    __slots__ = ("_by_identity", "_by_value", "prefix")

    def __init__(self, prefix: bytes) -> None:
        self.prefix = prefix
        self._by_identity: dict[int, tuple[Identity, Headers]] = {}
        self._by_value: Memo[tuple[object, ...], Headers] = Memo(
            entries=_FORWARD_CACHE_SIZE, largest=64 * 1024, budget=_FORWARD_CACHE_BYTES
        )

    def of(self, identity: Identity) -> Headers:
        hit = self._by_identity.get(id(identity))
        # The entry holds the identity itself, so its id cannot be reused while cached.
        if hit is not None and hit[0] is identity:
            return hit[1]
        # The fields forwarded_headers() reads.
        values = (
            identity.source,
            identity.user_id,
            identity.email,
            identity.group,
            identity.tenant,
            identity.roles,
            identity.client_id,
        )
        encoded = self._by_value.get(values)
        if encoded is None:
            encoded = forwarded_headers(identity, self.prefix)
            # The key's strings and the encoded headers, about twice the encoded size.
            self._by_value.put(values, encoded, 2 * sum(len(v) for _, v in encoded))
        by_identity = self._by_identity
        if len(by_identity) >= _FORWARD_CACHE_SIZE:
            by_identity.clear()
        by_identity[id(identity)] = (identity, encoded)
        return encoded
