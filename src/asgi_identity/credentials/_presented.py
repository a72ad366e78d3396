"""Reading credentials from request headers, trusting peers, and forwarding identity downstream.

IdentityMiddleware's private helpers: one pass over the headers, parsed once-configured names,
and the encoding of identity for `x-user-*` headers.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from urllib.parse import quote

from asgi_identity._http.headers import Headers
from asgi_identity.credentials.email import EmailAddress, parse_email
from asgi_identity.errors import IdentityError
from asgi_identity.identity import Identity

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

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


class TrustedNetworks:
    """Peers allowed to assert identity in headers, parsed once (as uvicorn's proxy headers do).

    A peer without an address (a Unix socket) is never trusted: list its networks explicitly.
    """

    __slots__ = ("_networks",)

    def __init__(self, networks: Iterable[str | IPNetwork]) -> None:
        if isinstance(networks, str):
            raise TypeError(
                "IdentityMiddleware: trusted_header_networks must be a list of networks, "
                "not a string"
            )
        parsed: list[IPNetwork] = []
        for network in networks:
            if isinstance(network, ipaddress.IPv4Network | ipaddress.IPv6Network):
                parsed.append(network)
                continue
            if not isinstance(network, str):
                raise TypeError(
                    f"IdentityMiddleware: trusted network {network!r} must be a string like "
                    "'10.0.0.0/8' or an ipaddress network"
                )
            if network.strip() == "*":
                # Trusting every peer lets anyone on the internet claim any email address.
                raise ValueError(
                    "IdentityMiddleware: '*' is not accepted in trusted_header_networks; "
                    "list the networks of the backends that send X-User-Email"
                )
            try:
                parsed.append(ipaddress.ip_network(network.strip(), strict=False))
            except ValueError:
                raise ValueError(
                    f"IdentityMiddleware: trusted network {network!r} is not an IP address "
                    "or network"
                ) from None
        self._networks = tuple(parsed)

    def __bool__(self) -> bool:
        return bool(self._networks)

    def trusts(self, client: object) -> bool:
        if not self._networks or not client:
            return False
        try:
            address = ipaddress.ip_address(client[0])  # type: ignore[index]
        except (ValueError, TypeError, IndexError):
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._networks)


class Presented:
    """What one request carries, from a single pass over its headers."""

    __slots__ = (
        "api_keys",
        "bearer_is_key",
        "conversations",
        "cookie_tokens",
        "dropped",
        "emails",
        "groups",
        "headers",
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
        #: The request's headers as received, and whether any of them must not reach the app.
        self.headers = headers
        self.dropped = False


# What a header is to HeaderReader, decided once per distinct header name.
_KEEP, _DROP, _TOKEN, _API_KEY, _EMAIL, _GROUP, _COOKIE, _CONVERSATION = range(8)
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
        kinds: dict[bytes, int] = {}
        if token_cookie is not None and not b"cookie".startswith(prefix):
            kinds[b"cookie"] = _COOKIE
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


# RFC 6750 allows only visible ASCII in a bearer credential; a regex keeps the check cheap.
_VISIBLE_ASCII = re.compile(rb"[\x21-\x7e]+")


def bearer_value(raw: bytes, *, scheme_required: bool) -> str:
    """The credential in `Bearer <value>` (RFC 6750); IdentityError invalid_token when malformed."""
    value = raw.strip()
    scheme, sep, rest = value.partition(b" ")
    if sep and scheme.lower() == b"bearer":
        value = rest.strip()
    elif scheme_required:
        raise IdentityError(
            "invalid_token", "The Authorization header must be 'Bearer <credential>'."
        )
    if not _VISIBLE_ASCII.fullmatch(value):
        raise IdentityError("invalid_token", "The bearer credential is empty or malformed.")
    return value.decode("ascii")


def header_email(values: Sequence[bytes], header: str) -> EmailAddress | None:
    """The one address a trusted sender put in the email header, normalized; None if absent."""
    if not values:
        return None
    if len(values) > 1:
        raise IdentityError(
            "ambiguous_credentials", f"The request carries more than one {header} header."
        )
    try:
        return parse_email(values[0].decode("utf-8").strip())
    except (UnicodeDecodeError, ValueError) as exc:
        # parse_email says what is wrong without repeating the value.
        reason = "it is not valid UTF-8" if isinstance(exc, UnicodeDecodeError) else str(exc)
        raise IdentityError(
            "invalid_request", f"The {header} header is not a plain email address: {reason}."
        ) from None


MAX_GROUP_LENGTH = 128


def header_group_value(values: Sequence[bytes]) -> str | None:
    """The one group a trusted sender put in the group header; None if absent."""
    if not values:
        return None
    if len(values) > 1:
        raise IdentityError(
            "ambiguous_credentials", "The request carries more than one group header."
        )
    try:
        group = values[0].decode("utf-8").strip()
    except UnicodeDecodeError:
        group = ""
    if (
        not group
        or len(group) > MAX_GROUP_LENGTH
        or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in group)
    ):
        raise IdentityError("invalid_group", "The group header is empty or malformed.")
    return group


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
