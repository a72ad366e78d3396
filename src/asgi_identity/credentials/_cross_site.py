"""Cross-site requests carrying the token cookie: a browser sends the cookie on its own, so an
unsafe request from another site (a `text/plain` form POST needs no CORS preflight) must not be
authenticated by it. Fetch Metadata (`Sec-Fetch-Site`) and `Origin` tell such requests apart.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final
from urllib.parse import urlsplit

from asgi_identity.credentials._presented import Presented
from asgi_identity.errors import IdentityError
from asgi_identity.types import Scope

SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_WEB_SCHEMES: Final = {"http": "http", "https": "https", "ws": "http", "wss": "https"}


def _origin(scheme: str, host: str, port: int | None) -> str:
    default = _DEFAULT_PORTS[scheme]
    return f"{scheme}://{host}" if port in (None, default) else f"{scheme}://{host}:{port}"


def normalize_origin(value: str) -> str:
    """`scheme://host[:port]` in lower case without a default port; ValueError otherwise."""
    parts = urlsplit(value.strip())
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{value!r} has an invalid port") from None
    if (
        scheme not in _DEFAULT_PORTS
        or not parts.hostname
        or parts.username is not None
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    ):
        raise ValueError(f"{value!r} is not an origin such as 'https://app.example.com'")
    return _origin(scheme, parts.hostname.lower(), port)


def _presented_origin(value: bytes) -> str | None:
    # What a browser sends is already serialized; anything else (`null`, garbage) matches nothing.
    try:
        return normalize_origin(value.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None


class CrossSiteCheck:
    """Refuses a cookie-borne token on an unsafe request that comes from another site."""

    __slots__ = ("_allowed", "_error")

    def __init__(self, allowed_origins: Iterable[str]) -> None:
        if isinstance(allowed_origins, str):
            raise TypeError("IdentityMiddleware: allowed_origins must be a list of origins")
        try:
            self._allowed = frozenset(normalize_origin(origin) for origin in allowed_origins)
        except (ValueError, AttributeError) as exc:
            raise ValueError(f"IdentityMiddleware: allowed_origins: {exc}") from None
        self._error = IdentityError(
            "cross_site_request",
            "A token cookie is not accepted on a cross-site request; send the token in the "
            "Authorization header instead.",
            detail="token cookie on an unsafe cross-site request",
        )

    def refuse(self, scope: Scope, presented: Presented) -> None:
        """Raise IdentityError when the request's token cookie must not be used."""
        # A WebSocket handshake is a GET, but what follows is not "safe": check it always
        # (cross-site WebSocket hijacking).
        if scope["type"] == "http" and scope.get("method") in SAFE_METHODS:
            return
        origins = presented.origins
        if len(origins) == 1:
            origin = _presented_origin(origins[0])
            if origin is not None and (origin in self._allowed or origin == _own(scope, presented)):
                return
        sites = {site.strip().lower() for site in presented.fetch_sites}
        # The browser itself says the request comes from this very origin (the scheme seen by
        # the app may differ behind a TLS-terminating proxy; the browser's word does not).
        if sites == {b"same-origin"} and len(origins) <= 1:
            return
        if b"cross-site" in sites or origins:
            raise self._error
        # No browser signal at all: not a browser, or one too old to send Origin on a POST.


def _own(scope: Scope, presented: Presented) -> str | None:
    """The request's own origin, from its scheme and Host header."""
    scheme = _WEB_SCHEMES.get(scope.get("scheme") or "http")
    if scheme is None or len(presented.hosts) != 1:
        return None
    try:
        return normalize_origin(f"{scheme}://{presented.hosts[0].decode('ascii')}")
    except (UnicodeDecodeError, ValueError):
        return None
