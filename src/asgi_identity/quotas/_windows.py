"""Windows and tiers: limit strings, whose bucket a request counts in, and what a window answers."""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable, Mapping
from functools import lru_cache, partial
from typing import Literal, NamedTuple
from urllib.parse import quote

from limits import RateLimitItem, parse_many

from asgi_identity.identity import Identity
from asgi_identity.quotas.usage import MAX_TOKENS

#: Spelled in a limit string (or an API key's override) for "no limit at all".
UNLIMITED = "unlimited"

LimitSpec = str | None


class Window:
    """One window of a limit (`10/second`), with its name in the rate-limit headers."""

    __slots__ = ("_key_head", "_key_tail", "amount", "item", "name", "remaining_head", "seconds")

    def __init__(self, kind: str, item: RateLimitItem) -> None:
        self.item = item
        self.amount: int = item.amount
        self.seconds: int = item.get_expiry()
        unit = item.GRANULARITY.name
        every = unit if item.multiples == 1 else f"{item.multiples}{unit}"
        # e.g. "requests-minute", "tokens-day", "requests-10second"
        self.name = f"{kind}-{every}"
        # limits' own key around one identifier, split once so a request only concatenates.
        self._key_head, self._key_tail = item.key_for("\x00").split("\x00")
        self.remaining_head = f'"{self.name}";r='.encode()

    def storage_key(self, identifier: str) -> str:
        """The key limits' strategies use for `identifier` in this window (`item.key_for`)."""
        return self._key_head + identifier + self._key_tail

    def __repr__(self) -> str:
        return f"Window({self.name!r}, {self.amount})"


Windows = tuple[Window, ...] | None


#: Where a request left one window, as the `RateLimit` header says it: (window, remaining, seconds
#: until it frees up). A plain tuple, not a NamedTuple: the memory path builds one per window per
#: request, and a NamedTuple costs five times as much to build.
WindowState = tuple[Window, int, int]


class Decision(NamedTuple):
    """What the storage answers about one request (limits' `WindowStats`, for several windows)."""

    states: tuple[WindowState, ...]  # the windows counted, in order: the RateLimit header
    refused: WindowState | None  # the window that said no, if one did (also the last state)
    #: Set when the storage could not answer: "open" goes on without counting or headers,
    #: "closed" answers 503. Decided by the storage adapter's failure policy, not by the layer.
    outage: Literal["open", "closed"] | None


_tuple_new = tuple.__new__


def decided(states: tuple[WindowState, ...], refused: WindowState | None = None) -> Decision:
    """`Decision(states, refused, None)`, built without NamedTuple's Python-level `__new__`
    (the same object, at a third of the cost: every request counted in memory builds one)."""
    return _tuple_new(Decision, (states, refused, None))


#: Nothing to count (no request windows): admitted, nothing to say.
NOTHING_COUNTED = Decision((), None, None)


def parse_limit(spec: LimitSpec, kind: str, where: str) -> Windows:
    """Windows of `spec` (`"10/second;1000/day"`), shortest first; None means unlimited."""
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == UNLIMITED):
        return None
    if not isinstance(spec, str):
        raise TypeError(f"UserRateLimit: {where} must be a limit string or None, not {spec!r}")
    try:
        items = parse_many(spec)
    except ValueError:
        raise ValueError(
            f"UserRateLimit: {where} {spec!r} is not a limit; write e.g. '60/minute' or "
            "'10/second;1000/day' (None or 'unlimited' for no limit)"
        ) from None
    windows = sorted((Window(kind, item) for item in items), key=lambda w: w.seconds)
    names = [w.name for w in windows]
    if len(set(names)) != len(names):
        raise ValueError(f"UserRateLimit: {where} {spec!r} names the same window twice")
    for window in windows:
        if window.amount <= 0:
            raise ValueError(f"UserRateLimit: {where} {spec!r} has a window of zero")
        if window.amount > MAX_TOKENS:
            # Counters are 64-bit on Redis: a quota this large could be overrun into a value
            # the storage rejects. Above it, say "unlimited".
            raise ValueError(
                f"UserRateLimit: {where} {spec!r} is above {MAX_TOKENS} a window; "
                "use 'unlimited' (or None) for no limit"
            )
    return tuple(windows)


def parse_tiers(tiers: Mapping[str, LimitSpec], kind: str, option: str) -> dict[str, Windows]:
    if not isinstance(tiers, Mapping):
        raise TypeError(f"UserRateLimit: {option} must map a group name to a limit")
    return {
        str(group): parse_limit(spec, kind, f"{option}[{group!r}]") for group, spec in tiers.items()
    }


def _part(value: str) -> str:
    # Percent-encoding everything but unreserved characters makes the joined key injective:
    # "/" never appears inside a part, so ("a/b",) and ("a", "b") stay apart. Short values (ids,
    # emails) are remembered; a long one would hold three times its length.
    return _quoted(value) if len(value) <= 256 else quote(value, safe="")


_quoted = lru_cache(maxsize=4096)(partial(quote, safe=""))


def bucket_key(identity: Identity, address: str | None) -> tuple[str, ...] | None:
    """The parts naming whose bucket a request counts against, None when nobody can be named.

    Namespaced by identity source; JWT subjects also by issuer (two issuers may reuse a `sub`).
    Emails are compared in lower case, as parse_email normalizes them.
    """
    source = identity.source
    if source == "anonymous":
        return None if address is None else ("anonymous", _part(address))
    if source == "jwt" and identity.user_id is not None:
        return ("jwt", _part(identity.issuer or ""), _part(identity.user_id))
    if identity.user_id is not None:
        return (source, "id", _part(identity.user_id))
    if identity.email is not None:
        return (source, "email", _part(identity.email.lower()))
    if identity.client_id is not None:
        return (source, "client", _part(identity.client_id))
    return None


#: Whose bucket a person counts in: "user_id" (per credential path), "email", or a callable
#: naming it (None: the user-id bucket).
BucketBy = Literal["user_id", "email"] | Callable[[Identity], str | None]


def check_bucket_by(bucket_by: object) -> None:
    if isinstance(bucket_by, str):
        if bucket_by not in ("user_id", "email"):
            raise ValueError("UserRateLimit: bucket_by must be 'user_id', 'email' or a callable")
    elif not callable(bucket_by):
        raise TypeError("UserRateLimit: bucket_by must be 'user_id', 'email' or a callable")


def named_bucket(identity: Identity, bucket_by: BucketBy) -> tuple[str, ...] | None:
    """The bucket `bucket_by` names for a non-anonymous identity, None for the user-id bucket.

    By email, whatever the credential path (a token, a backend's X-User-Email): one person, one
    bucket. Only an address that is vouched for joins it: a token's with `email_verified: true`,
    or one a trusted backend asserted. A token that says nothing about it, or says it is
    unverified, keeps its own bucket: anyone could write that address.
    """
    if bucket_by == "user_id":
        return None
    if bucket_by == "email":
        email = identity.email
        if email is None or not (identity.email_verified is True or identity.source == "header"):
            return None
        return ("email", _part(email.lower()))
    assert callable(bucket_by)
    name = bucket_by(identity)
    if name is None:
        return None
    if not isinstance(name, str):
        raise TypeError(f"UserRateLimit: bucket_by returned {type(name).__name__}, not a str")
    return ("named", _part(name))


def address_bucket(address: str, ipv6_prefix: int) -> str:
    """An anonymous client's bucket: its IPv4 address, or the IPv6 network of `ipv6_prefix` bits
    around its address (a subscriber is given a whole /64 and may send from any address in it)."""
    if ":" not in address:
        return address
    try:
        parsed = ipaddress.IPv6Address(address)
    except ValueError:
        return address  # not an address (a trusted proxy's odd hop): its own bucket
    return str(ipaddress.IPv6Network((parsed, ipv6_prefix), strict=False))


def per_window(window: Window) -> str:
    """How a window reads in a message: "minute", "10 minutes"."""
    unit = window.item.GRANULARITY.name
    return unit if window.item.multiples == 1 else f"{window.item.multiples} {unit}s"


def seconds_until(reset: float, now: float) -> int:
    return max(0, math.ceil(reset - now))
