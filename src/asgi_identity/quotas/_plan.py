"""The request plan: which windows an identity counts against, under which keys, worked out once."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from asgi_identity._http.peers import TrustedPeers
from asgi_identity._memo import Memo
from asgi_identity.credentials.apikeys import APIKey
from asgi_identity.identity import Identity
from asgi_identity.quotas._windows import (
    BucketBy,
    LimitSpec,
    Window,
    Windows,
    address_bucket,
    bucket_key,
    check_bucket_by,
    named_bucket,
    parse_limit,
    parse_tiers,
)
from asgi_identity.types import Scope

logger = logging.getLogger("asgi_identity")

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# Plans of the identities seen lately: at most 4096 and about 4 MiB of their keys; an identity
# whose names run past 4 kB is planned on every request.
_PLANS = 4096
_LARGEST_PLAN = 4096
_PLAN_BUDGET = 4 << 20


class Plan(NamedTuple):
    """What one identity's requests count against, worked out once per identity."""

    requests: Windows
    tokens: Windows
    request_ids: str  # the identifier limits' strategies key the request windows by
    request_keys: tuple[str, ...]  # the fixed-window counters, one per request window
    token_keys: tuple[str, ...]  # the token counters, one per token window
    windows: tuple[Window, ...]  # the request windows, then the token windows
    policies: tuple[bytes, ...]  # RateLimit-Policy for each prefix of `windows`, by its length


class Planner:
    """Limits per identity, tier and API key, the storage keys they count under, and the cache."""

    __slots__ = (
        "_bad_overrides",
        "_group_requests",
        "_group_tokens",
        "_overrides",
        "_plans",
        "_policy",
        "_proxies",
        "_requests",
        "_token_everywhere",
        "_token_exact",
        "_token_prefixes",
        "_tokens",
        "bucket_by",
        "ipv6_prefix",
        "key_prefix",
    )

    def __init__(
        self,
        *,
        limits: LimitSpec,
        groups: Mapping[str, LimitSpec],
        tokens: LimitSpec,
        group_tokens: Mapping[str, LimitSpec],
        key_prefix: str,
        trusted_proxies: Iterable[str],
        token_paths: Iterable[str] | None,
        policy: Callable[[tuple[Window, ...]], bytes],
        ipv6_prefix: int = 64,
        bucket_by: BucketBy = "user_id",
    ) -> None:
        self._requests = parse_limit(limits, "requests", "limits")
        self._group_requests = parse_tiers(groups, "requests", "groups")
        self._tokens = parse_limit(tokens, "tokens", "tokens")
        self._group_tokens = parse_tiers(group_tokens, "tokens", "group_tokens")
        # API keys carry their own overrides as strings; each distinct one is parsed once.
        self._overrides: dict[tuple[str, str], Windows] = {}
        self._bad_overrides: set[tuple[str, str]] = set()
        if not key_prefix or "/" in key_prefix:
            raise ValueError("UserRateLimit: key_prefix must be a non-empty string without '/'")
        self.key_prefix = key_prefix
        self._proxies = TrustedPeers(
            trusted_proxies, option="UserRateLimit: trusted_proxies", allow_any=True
        )
        if isinstance(token_paths, str):
            raise TypeError("UserRateLimit: token_paths must be a list of paths, not a string")
        paths = None if token_paths is None else tuple(token_paths)
        self._token_exact = frozenset(p for p in paths or () if not p.endswith("/"))
        self._token_prefixes = tuple(p for p in paths or () if p.endswith("/"))
        self._token_everywhere = paths is None
        self._policy = policy
        if isinstance(ipv6_prefix, bool) or not isinstance(ipv6_prefix, int):
            raise TypeError("UserRateLimit: ipv6_prefix must be a prefix length (0 to 128)")
        if not 0 <= ipv6_prefix <= 128:
            raise ValueError("UserRateLimit: ipv6_prefix must be from 0 to 128")
        self.ipv6_prefix = ipv6_prefix
        check_bucket_by(bucket_by)
        self.bucket_by = bucket_by
        self._plans: Memo[tuple[Any, ...], tuple[APIKey | None, Plan]] = Memo(
            entries=_PLANS, largest=_LARGEST_PLAN, budget=_PLAN_BUDGET
        )

    def _override(self, spec: str, kind: str, fallback: Windows) -> Windows:
        key = (kind, spec)
        if key in self._overrides:
            return self._overrides[key]
        if key in self._bad_overrides:
            return fallback
        try:
            windows = parse_limit(spec, kind, "API key limit")
        except (TypeError, ValueError) as exc:
            # A key record comes from the app's store at run time; a bad one must not 500.
            logger.error("%s; using the tier's limit for this key", exc)
            self._bad_overrides.add(key)
            return fallback
        self._overrides[key] = windows
        return windows

    def limits_for(self, identity: Identity) -> tuple[Windows, Windows]:
        """(request windows, token windows) that apply to `identity`; None means unlimited."""
        group = identity.group
        requests = self._group_requests.get(group, self._requests) if group else self._requests
        tokens = self._group_tokens.get(group, self._tokens) if group else self._tokens
        key = identity.api_key
        if key is not None:
            if key.rate_limit is not None:
                requests = self._override(key.rate_limit, "requests", requests)
            if key.token_limit is not None:
                tokens = self._override(key.token_limit, "tokens", tokens)
        return requests, tokens

    def parts(
        self, identity: Identity, scope: Scope | None, address: str | None = None
    ) -> tuple[str, ...]:
        """Whose bucket: the identity, or for an anonymous request its client's address (from
        the request, or `address`), IPv6 addresses by their network of `ipv6_prefix` bits."""
        if identity.source != "anonymous":
            named = named_bucket(identity, self.bucket_by)
            if named is not None:
                return named
        else:
            if scope is not None:
                forwarded = [v for k, v in scope["headers"] if k.lower() == b"x-forwarded-for"]
                address = self._proxies.client_address(scope.get("client"), forwarded)
            if address is not None:
                address = address_bucket(address, self.ipv6_prefix)
        return bucket_key(identity, address) or (identity.source, "unknown")

    def request_ids(self, parts: tuple[str, ...]) -> str:
        return "/".join((self.key_prefix, "requests", *parts))

    def token_key(self, parts: tuple[str, ...], window: Window) -> str:
        return "/".join((self.key_prefix, "tokens", *parts, str(window.seconds)))

    def plan(self, identity: Identity, scope: Scope) -> Plan:
        # Keyed by what the plan depends on, not by the Identity object: header identities are
        # new objects on every request. Anonymous buckets depend on the address.
        anonymous = identity.source == "anonymous"
        if not anonymous:
            api_key = identity.api_key
            cache_key = (
                identity.source,
                identity.issuer,
                identity.user_id,
                identity.email,
                identity.client_id,
                identity.group,
                id(api_key),
                # What bucket_by reads: the email's check, or the name a callable gives.
                identity.email_verified
                if isinstance(self.bucket_by, str)
                else named_bucket(identity, self.bucket_by),
            )
            hit = self._plans.get(cache_key)
            # The entry holds the key record itself, so its id cannot be reused while cached.
            if hit is not None and hit[0] is api_key:
                return hit[1]
        requests, tokens = self.limits_for(identity)
        parts = self.parts(identity, scope)
        ids = self.request_ids(parts)
        windows = (*(requests or ()), *(tokens or ()))
        plan = Plan(
            requests,
            tokens,
            ids,
            tuple(window.storage_key(ids) for window in requests or ()),
            tuple(self.token_key(parts, window) for window in tokens or ()),
            windows,
            tuple(self._policy(windows[:n]) for n in range(len(windows) + 1)),
        )
        if not anonymous:
            # The names in the key, and the storage keys made of them (escaped, once per window).
            size = sum(len(value) for value in cache_key if isinstance(value, str))
            size += sum(map(len, plan.request_keys)) + sum(map(len, plan.token_keys)) + len(ids)
            self._plans.put(cache_key, (api_key, plan), size)
        return plan

    def meters_tokens(self, scope: Scope) -> bool:
        """Whether this request may be an LLM call whose tokens count (token_paths, method)."""
        if scope["type"] != "http" or scope.get("method") not in _BODY_METHODS:
            return False
        if self._token_everywhere:
            return True
        path: str = scope.get("path", "")
        return path in self._token_exact or bool(
            self._token_prefixes and path.startswith(self._token_prefixes)
        )
