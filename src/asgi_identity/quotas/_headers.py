"""The RateLimit / RateLimit-Policy header values (IETF httpapi draft) and the refusals that carry them."""

from __future__ import annotations

from collections.abc import Iterable

from asgi_identity.errors import IdentityError
from asgi_identity.quotas._windows import Window, WindowState, per_window

ANONYMOUS_REFUSED = IdentityError(
    "missing_credentials",
    "Anonymous requests are not accepted: send a bearer token or an API key.",
    detail="anonymous request refused by UserRateLimit(anonymous='refuse')",
)


def unavailable(cooldown: float) -> IdentityError:
    """The 503 of a storage that fails closed, back after its cool-down."""
    return IdentityError(
        "rate_limit_unavailable",
        "Rate limiting is temporarily unavailable; try again shortly.",
        headers=[("Retry-After", str(max(1, round(cooldown))))],
        detail="rate-limit storage unavailable, failing closed",
    )


def policy_header(windows: Iterable[Window]) -> bytes:
    """`RateLimit-Policy`: `"requests-minute";q=60;w=60, ...`."""
    return ", ".join(f'"{w.name}";q={w.amount};w={w.seconds}' for w in windows).encode()


def ratelimit_header(states: Iterable[WindowState]) -> bytes:
    """`RateLimit`: `"requests-minute";r=59;t=30, ...` from (window, remaining, seconds to reset)."""
    return b", ".join([b"%s%d;t=%d" % (w.remaining_head, max(0, r), t) for w, r, t in states])


class RateLimitHeaders:
    """The header values of one UserRateLimit, with the RateLimit-Policy of each window set cached.

    A handful of distinct window sets exist (one per tier and kind): every one is kept.
    """

    __slots__ = ("_policies", "enabled")

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._policies: dict[tuple[Window, ...], bytes] = {}

    def policy(self, windows: tuple[Window, ...]) -> bytes:
        value = self._policies.get(windows)
        if value is None:
            value = self._policies[windows] = policy_header(windows)
        return value

    def for_response(
        self,
        windows: tuple[Window, ...],
        policies: tuple[bytes, ...],
        states: tuple[WindowState, ...],
    ) -> list[tuple[bytes, bytes]]:
        """What an admitted response adds; `policies` is the plan's policy of each prefix of
        `windows`, by its length."""
        # The states are some request windows then some token windows, each kind in order: they
        # are a prefix of the plan's windows exactly when the last one is where that prefix ends
        # (no later token window follows a request window that refused, in observe mode).
        count = len(states)
        if states[-1][0] is windows[count - 1]:
            policy = policies[count]
        else:
            policy = self.policy(tuple(window for window, _, _ in states))
        return [(b"ratelimit-policy", policy), (b"ratelimit", ratelimit_header(states))]

    def for_refusal(self, states: tuple[WindowState, ...], retry: int) -> list[tuple[str, str]]:
        headers = [("Retry-After", str(max(1, retry)))]
        if self.enabled:
            windows = tuple(window for window, _, _ in states)
            headers.append(("RateLimit-Policy", self.policy(windows).decode()))
            headers.append(("RateLimit", ratelimit_header(states).decode()))
        return headers

    def rate_limited(self, states: tuple[WindowState, ...], refused: WindowState) -> IdentityError:
        window, _, retry = refused
        return IdentityError(
            "rate_limited",
            f"Rate limit exceeded: {window.amount} requests per "
            f"{per_window(window)}. Try again in {max(1, retry)} seconds.",
            headers=self.for_refusal(states, retry),
            detail=f"{window.name} limit of {window.amount} reached",
        )

    def token_quota_exceeded(
        self, states: tuple[WindowState, ...], refused: WindowState, estimate: int
    ) -> IdentityError:
        window, left, retry = refused
        per = per_window(window)
        if left <= 0:
            message = (
                f"Token quota exceeded: {window.amount} tokens per {per}. "
                f"Try again in {max(1, retry)} seconds."
            )
        else:
            message = (
                f"This request may use up to {estimate} tokens but {left} remain "
                f"in the quota of {window.amount} tokens per {per}; lower max_tokens or try "
                "again later."
            )
        return IdentityError(
            "token_quota_exceeded",
            message,
            headers=self.for_refusal(states, retry),
            detail=f"{window.name} quota of {window.amount} reached",
        )
