"""Reading credentials from request headers, and trusting peers.

IdentityMiddleware's private helpers: one pass over the headers and once-configured names. The
values found are read by `_header_values`; identity is forwarded by `_forwarded`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from asgi_identity._http.headers import Headers
from asgi_identity.errors import IdentityError
from asgi_identity.identity import Identity

_TOKEN_CHARS = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+")
_COOKIE_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")


def header_name(option: str, value: object) -> bytes:
    """A configured header name, validated and normalized (lower case, `_` read as `-`)."""
    if not isinstance(value, str):
        raise TypeError(f"IdentityMiddleware: {option} must be a header name (str)")
    name = value.strip().lower().replace("_", "-")
    if not _TOKEN_CHARS.fullmatch(name):
        raise ValueError(f"IdentityMiddleware: {option}={value!r} is not a valid header name")
    return name.encode("ascii")


def cookie_name(value: object) -> bytes:
    if not isinstance(value, str) or not _COOKIE_NAME.fullmatch(value):
        raise ValueError(f"IdentityMiddleware: token_cookie={value!r} is not a valid cookie name")
    return value.encode("ascii")


class Presented:
    """What one request carries, from a single pass over its headers."""

    __slots__ = (
        "api_keys",
        "bearer_is_key",
        "content_length",
        "conversations",
        "cookie_tokens",
        "dropped",
        "emails",
        "fetch_sites",
        "groups",
        "headers",
        "hosts",
        "origins",
        "preflight",
        "tokens",
        "verified",
    )

    def __init__(self, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
        self.bearer_is_key = False
        # The identity of a token the verifier has seen and still holds (set by IdentityMiddleware).
        self.verified: Identity | None = None
        # Tuples, grown only when a value is found: most requests carry one credential or none.
        self.tokens: tuple[bytes, ...] = ()
        self.api_keys: tuple[bytes, ...] = ()
        self.emails: tuple[bytes, ...] = ()
        self.groups: tuple[bytes, ...] = ()
        self.cookie_tokens: tuple[bytes, ...] = ()
        self.conversations: tuple[bytes, ...] = ()
        # Read only with a token cookie: where a request comes from (`_cross_site`).
        self.origins: tuple[bytes, ...] = ()
        self.fetch_sites: tuple[bytes, ...] = ()
        self.hosts: tuple[bytes, ...] = ()
        self.content_length: bytes | None = None
        self.preflight = False
        #: The request's headers as received, and whether any of them must not reach the app.
        self.headers = headers
        self.dropped = False


# What a header is to HeaderReader, decided once per distinct header name.
(
    _KEEP,
    _DROP,
    _TOKEN,
    _API_KEY,
    _EMAIL,
    _GROUP,
    _COOKIE,
    _CONVERSATION,
    _LENGTH,
    _PREFLIGHT,
    _ORIGIN,
    _FETCH_SITE,
    _HOST,
) = range(13)
# Header names remembered with their kind; beyond this many, a name is worked out each time, so
# a client sending endless made-up names cannot grow the memory.
_MAX_REMEMBERED_NAMES = 512


class HeaderReader:
    """Splits the request headers into credentials and the headers the app may see."""

    __slots__ = (
        "_cookie",
        "_dropping",
        "_kinds",
        "_max_bytes",
        "_names",
        "_prefix",
    )

    def __init__(
        self,
        *,
        token_header: bytes,
        api_key_header: bytes | None,
        email_header: bytes,
        group_header: bytes | None,
        token_cookie: bytes | None,
        conversation_header: bytes | None = None,
        prefix: bytes,
        sanitize: bool,
        max_bytes: int,
    ) -> None:
        self._cookie = token_cookie
        self._prefix = prefix
        self._max_bytes = max_bytes
        # One dictionary lookup per header instead of a comparison with every name.
        # The headers every later layer may ask about are picked out in the same pass.
        kinds: dict[bytes, int] = {
            b"content-length": _LENGTH,
            b"access-control-request-method": _PREFLIGHT,
        }
        if token_cookie is not None and not b"cookie".startswith(prefix):
            kinds[b"cookie"] = _COOKIE
            # Where the request comes from decides whether the cookie may be used.
            kinds.update({b"origin": _ORIGIN, b"sec-fetch-site": _FETCH_SITE, b"host": _HOST})
        if group_header is not None:
            kinds[group_header] = _GROUP
        kinds[email_header] = _EMAIL
        if api_key_header is not None:
            kinds[api_key_header] = _API_KEY
        kinds[token_header] = _TOKEN
        if conversation_header is not None:
            kinds[conversation_header] = _CONVERSATION
        self._kinds = kinds
        # Identity assertions never reach the app as sent (it reads the verified identity), nor
        # anything with the forwarding prefix; API keys neither when sanitizing.
        self._dropping = frozenset({_DROP, _EMAIL, _GROUP} | ({_API_KEY} if sanitize else set()))
        # Raw header name (as the server sent it) -> its kind: the same few names come on every
        # request, so the normalizing and prefix test run once per name, not once per header.
        self._names: dict[bytes, int] = {}

    def _kind(self, raw_name: bytes) -> int:
        kind = self._names.get(raw_name)
        if kind is not None:
            return kind
        # Identity headers are read only in their exact spelling (ASGI servers send names in
        # lower case). A twin spelled with `_` is what some proxies merge into the real one, so
        # it is stripped and never read; so is anything with the forwarding prefix.
        name = raw_name.lower()
        kind = self._kinds.get(name)
        if kind is None:
            twin = name.replace(b"_", b"-")
            kind = _DROP if twin in self._kinds or twin.startswith(self._prefix) else _KEEP
        if len(self._names) < _MAX_REMEMBERED_NAMES:
            self._names[raw_name] = kind
        return kind

    def read(self, headers: Iterable[tuple[bytes, bytes]]) -> Presented:
        found = Presented(headers)
        names = self._names
        dropping = self._dropping
        for raw_name, value in headers:
            kind = names.get(raw_name)
            if kind is None:
                kind = self._kind(raw_name)
            if kind == _KEEP:
                continue
            if kind in dropping:
                found.dropped = True
            if kind == _TOKEN:
                self._check_size(raw_name, value, "invalid_token")
                found.tokens += (value,)
            elif kind == _API_KEY:
                self._check_size(raw_name, value, "invalid_api_key")
                found.api_keys += (value,)
            elif kind == _EMAIL:
                # Their size is checked only if they are trusted (an address has its own limit).
                found.emails += (value,)
            elif kind == _GROUP:
                found.groups += (value,)
            elif kind == _COOKIE:  # read for the token cookie and kept for the app
                found.cookie_tokens += self._read_cookie(value)
            elif kind == _CONVERSATION:  # kept for the app
                found.conversations += (value,)
            elif kind == _LENGTH:  # kept for the app
                found.content_length = value
            elif kind == _PREFLIGHT:  # kept for the app
                found.preflight = True
            elif kind == _ORIGIN:  # kept for the app
                found.origins += (value,)
            elif kind == _FETCH_SITE:  # kept for the app
                found.fetch_sites += (value,)
            elif kind == _HOST:  # kept for the app
                found.hosts += (value,)
        return found

    def unread(self, headers: Iterable[tuple[bytes, bytes]]) -> Presented:
        """A request whose credentials are not read (an excluded path, a preflight, a refused
        request let through in observe mode): `kept()` still drops what it drops for any other."""
        found = Presented(headers)
        found.dropped = True
        return found

    def kept(self, presented: Presented) -> Headers:
        """The headers the app may see: a new list, or the request's own when nothing is dropped."""
        headers = presented.headers
        if not presented.dropped and isinstance(headers, list):
            return headers
        dropping = self._dropping
        return [(name, value) for name, value in headers if self._kind(name) not in dropping]

    def _check_size(self, name: bytes, value: bytes, code: str) -> None:
        # A present but unusable credential is a 401 like any invalid one; never echo it.
        if len(value) > self._max_bytes:
            raise IdentityError(
                code,
                f"The {name.decode('latin-1')} header is too large "
                f"(longer than {self._max_bytes} bytes).",
            )

    def _read_cookie(self, header: bytes) -> tuple[bytes, ...]:
        assert self._cookie is not None
        found: tuple[bytes, ...] = ()
        for pair in header.split(b";"):
            name, sep, value = pair.strip().partition(b"=")
            if sep and name == self._cookie:
                value = value.strip()
                if len(value) >= 2 and value[:1] == b'"' and value[-1:] == b'"':
                    value = value[1:-1]
                if len(value) > self._max_bytes:
                    raise IdentityError(
                        "invalid_token",
                        f"The token cookie is too large (longer than {self._max_bytes} bytes).",
                    )
                found += (value,)
        return found
