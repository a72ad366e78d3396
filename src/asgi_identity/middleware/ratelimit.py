"""UserRateLimit: per-user and per-tier limits in requests and LLM tokens, in memory or on Redis."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

from limits.aio.storage import Storage

from asgi_identity._http.body import DEFAULT_MAX_BODY
from asgi_identity._http.view import RequestView
from asgi_identity.errors import ErrorRenderer, IdentityError
from asgi_identity.identity import Identity, require_identity
from asgi_identity.middleware._layer import LayerPolicy, Mode
from asgi_identity.quotas._estimate import check_estimate_options, token_estimate
from asgi_identity.quotas._guard import RateLimitUnavailable
from asgi_identity.quotas._headers import ANONYMOUS_REFUSED, RateLimitHeaders, unavailable
from asgi_identity.quotas._ledger import Reservation, UsageMeter
from asgi_identity.quotas._plan import Planner
from asgi_identity.quotas._readers import WindowUsage, read_usage, report_usage
from asgi_identity.quotas._storage import open_quotas, shared_quotas
from asgi_identity.quotas._stream_usage import ask_for_usage
from asgi_identity.quotas._windows import BucketBy, LimitSpec, Windows
from asgi_identity.types import (
    AnyASGIApp,
    AnyReceive,
    AnyScope,
    AnySend,
    Message,
    Receive,
    Send,
)

__all__ = ["STATE_KEY", "RateLimitUnavailable", "UserRateLimit", "WindowUsage", "get_rate_limiter"]

#: Where the limiter puts itself: `request.state.rate_limiter`.
STATE_KEY = "rate_limiter"

Anonymous = Literal["by_address", "refuse", "unlimited"]
Strategy = Literal["fixed-window", "moving-window", "sliding-window-counter"]
_ANONYMOUS = ("by_address", "refuse", "unlimited")


class UserRateLimit:
    """Limits per verified identity and tier, in requests and LLM tokens (see docs/rate-limits.md)."""

    def __init__(
        self,
        app: AnyASGIApp,
        *,
        limits: LimitSpec = "60/minute",
        groups: Mapping[str, LimitSpec] | None = None,
        tokens: LimitSpec = None,
        group_tokens: Mapping[str, LimitSpec] | None = None,
        storage: str | Storage = "async+memory://",
        strategy: Strategy = "fixed-window",
        key_prefix: str = "asgi-identity",
        anonymous: Anonymous = "by_address",
        trusted_proxies: Iterable[str] = (),
        bucket_by: BucketBy = "user_id",
        ipv6_prefix: int = 64,
        on_storage_error: Literal["open", "closed"] = "open",
        storage_timeout: float = 1.0,
        storage_cooldown: float = 1.0,
        default_max_tokens: int = 4096,
        token_paths: Iterable[str] | None = None,
        max_body: int = DEFAULT_MAX_BODY,
        ensure_stream_usage: bool = False,
        headers: bool = True,
        mode: Mode = "enforce",
        exclude_paths: Iterable[str] = (),
        allow_preflight: bool = True,
        renderer: ErrorRenderer | None = None,
    ) -> None:
        self.app = app
        self.policy = LayerPolicy(
            "UserRateLimit",
            mode=mode,
            exclude_paths=exclude_paths,
            allow_preflight=allow_preflight,
            renderer=renderer,
        )
        self.headers = headers
        self._headers = RateLimitHeaders(headers)
        self._planner = Planner(
            limits=limits,
            groups=groups or {},
            tokens=tokens,
            group_tokens=group_tokens or {},
            key_prefix=key_prefix,
            trusted_proxies=trusted_proxies,
            token_paths=token_paths,
            policy=self._headers.policy,
            ipv6_prefix=ipv6_prefix,
            bucket_by=bucket_by,
        )
        self._quotas = open_quotas(
            storage,
            strategy=strategy,
            headers=headers,
            on_storage_error=on_storage_error,
            storage_timeout=storage_timeout,
            storage_cooldown=storage_cooldown,
        )
        # Copies of this limiter in one app (one per route in Litestar) share one adapter: the
        # configuration they are recognised by. A storage object is shared as given.
        self._sharing: tuple[object, ...] | None = None
        if isinstance(storage, str):
            self._sharing = (storage, strategy, headers, on_storage_error, storage_timeout,
                             storage_cooldown, key_prefix, limits, _items(groups), tokens,
                             _items(group_tokens))  # fmt: skip
        self._owner: object = None
        self.strategy, self.key_prefix = strategy, key_prefix
        self.on_storage_error = on_storage_error
        self.storage_timeout = float(storage_timeout)
        self.storage_cooldown = float(storage_cooldown)
        if anonymous not in _ANONYMOUS:
            raise ValueError(f"UserRateLimit: anonymous must be one of {_ANONYMOUS}")
        self.anonymous = anonymous
        check_estimate_options(default_max_tokens, max_body)
        self.default_max_tokens, self.max_body = default_max_tokens, max_body
        self.ensure_stream_usage = bool(ensure_stream_usage)
        self._unavailable = unavailable(self.storage_cooldown)

    @property
    def storage(self) -> Storage:
        """The `limits` storage the counters are kept in."""
        return self._quotas.storage

    @property
    def storage_errors(self) -> int:
        """Storage calls that failed or timed out (and requests decided without the storage)."""
        return self._quotas.storage_errors

    def limits_for(self, identity: Identity) -> tuple[Windows, Windows]:
        """(request windows, token windows) that apply to `identity`; None means unlimited."""
        return self._planner.limits_for(identity)

    async def __call__(self, scope: AnyScope, receive: AnyReceive, send: AnySend) -> None:
        # (a) What this layer does not count: other scopes, excluded paths, anonymous by option.
        if scope["type"] not in ("http", "websocket"):
            if scope["type"] == "lifespan":
                send = self._closing_on_shutdown(send)
            await self.app(scope, receive, send)
            return
        view = await self.policy.view(scope, receive, send)
        if view is None:
            return
        if self.policy.skips(view):
            await self.app(scope, receive, send)
            return
        if self._sharing is not None and scope.get("app") is not self._owner:
            self._owner = scope.get("app")
            if self._owner is not None:
                self._quotas = shared_quotas(self._owner, self._sharing, self._quotas)
        identity = require_identity(scope, "UserRateLimit")
        state = scope.get("state")
        if state is None:
            scope["state"] = state = {}
        state[STATE_KEY] = self
        if identity.source == "anonymous" and self.anonymous != "by_address":
            refused = self.anonymous == "refuse"
            if refused and await self.policy.refuse(ANONYMOUS_REFUSED, scope, receive, send):
                return
            await self.app(scope, receive, send)
            return

        # (b) The plan: which windows, under which keys.
        plan = self._planner.plan(identity, scope)
        tokens = plan.tokens
        meters_tokens = tokens is not None and self._planner.meters_tokens(scope)
        if plan.requests is None and not meters_tokens:
            await self.app(scope, receive, send)
            return

        # (c) The quotas' decision: the request windows, then the token reservation.
        quotas, headers = self._quotas, self._headers
        decision = await quotas.count_requests(plan)
        refused_by = decision.refused
        if refused_by is not None:
            error = headers.rate_limited(decision.states, refused_by)
            if await self.policy.refuse(error, scope, receive, send):
                return
        reservation: Reservation | None = None
        if meters_tokens and decision.outage is None:
            assert tokens is not None
            # The body is read before the ledger is asked, and the app is given the receive
            # that replays it whatever the ledger does: failing open must not lose the body.
            receive, estimate = await self._estimate_tokens(view, receive)
            if isinstance(estimate, IdentityError):
                if await self.policy.refuse(estimate, scope, receive, send):
                    return
                estimate = None
            if estimate is not None:
                reservation = Reservation(identity, tokens, plan.token_keys)
                decision = await quotas.reserve_tokens(reservation, estimate, decision.states)
                refused_by = decision.refused
                if refused_by is not None:
                    error = headers.token_quota_exceeded(decision.states, refused_by, estimate)
                    if await self.policy.refuse(error, scope, receive, send):
                        return
        if decision.outage is not None:
            closed = decision.outage == "closed"
            if closed and await self.policy.refuse(self._unavailable, scope, receive, send):
                return
            # Failing open: the request goes on without headers (there is nothing true to say).
            reservation = None

        # (d) Admitted: the RateLimit headers on the response, through the one responder.
        if self.headers and decision.states and scope["type"] == "http":
            responder = view.responder
            send = responder.wrap(send)
            responder.headers += headers.for_response(plan.windows, plan.policies, decision.states)
        if reservation is None:
            await self.app(scope, receive, send)
            return
        # (e) Metered: the reservation is settled from the response's usage.
        if self.ensure_stream_usage:
            await ask_for_usage(view)
        await self._metered(view, receive, send, reservation)

    async def _estimate_tokens(
        self, view: RequestView, receive: Receive
    ) -> tuple[Receive, int | IdentityError | None]:
        """(a receive replaying the body, the tokens to reserve or why the body is refused)."""
        fields, receive = await view.fields(receive, self.max_body)
        size = max(view.body_size, view.content_length or 0)
        return receive, token_estimate(fields, size, self.default_max_tokens)

    async def _metered(
        self, view: RequestView, receive: Receive, send: Send, reservation: Reservation
    ) -> None:
        scope = view.scope
        reservation.attach(scope)
        meter = UsageMeter(reservation, scope)
        responder = view.responder
        send = responder.wrap(send)
        responder.watchers.append(meter.watch)
        try:
            await self.app(scope, receive, send)
        finally:
            if not reservation.settled:
                reservation.settled = True
                # Usage reported after the last chunk (or a response cut short) still counts.
                meter.report()
                # In memory this never suspends; on a storage it is shielded from a client
                # that disconnects (and an outage is logged there): the accounting is never
                # cut half-way.
                await self._quotas.settle(reservation, meter.outcome())

    def _closing_on_shutdown(self, send: Send) -> Send:
        async def send_closing(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                await self.aclose()
            await send(message)

        return send_closing

    async def aclose(self) -> None:
        """Finish pending settlements and close the storage's connections (done at shutdown)."""
        await self._quotas.aclose()

    # -- the app's API --------------------------------------------------------------------------

    async def report_usage(
        self, who: Any, *, input_tokens: int = 0, output_tokens: int = 0
    ) -> None:
        """Charge tokens the app counted itself.

        `who` is a request (or scope) inside this layer, whose reservation it settles instead
        of the response's `usage`, or an Identity to charge directly (e.g. from a background job).
        """
        await report_usage(self._quotas, self._planner, who, input_tokens, output_tokens)

    async def usage(self, identity: Identity, *, address: str | None = None) -> list[WindowUsage]:
        """Where `identity` stands in each of its windows (requests first, then tokens).

        `address` is the client address, for anonymous identities. RateLimitUnavailable when the
        storage does not answer.
        """
        return await read_usage(self._quotas, self._planner, identity, address)


def _items(tiers: Mapping[str, LimitSpec] | None) -> tuple[tuple[str, LimitSpec], ...]:
    return tuple(sorted((tiers or {}).items()))


def get_rate_limiter(request_or_scope: Any) -> UserRateLimit:
    """The UserRateLimit a request passed through (from a handler: `get_rate_limiter(request)`)."""
    scope = (
        request_or_scope
        if isinstance(request_or_scope, Mapping)
        else getattr(request_or_scope, "scope", None)
    )
    if scope is None:
        raise TypeError("get_rate_limiter() takes a request or an ASGI scope")
    limiter = (scope.get("state") or {}).get(STATE_KEY)
    if not isinstance(limiter, UserRateLimit):
        raise LookupError("this request did not pass through UserRateLimit")
    return limiter
