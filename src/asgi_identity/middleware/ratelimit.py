"""UserRateLimit: per-user and per-tier limits in requests and LLM tokens, in memory or on Redis."""

from __future__ import annotations

import asyncio
import inspect
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any, Literal, NamedTuple, TypeVar
from weakref import WeakKeyDictionary

from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import STRATEGIES, RateLimiter
from limits.storage import MemoryStorage as InProcessStorage
from limits.storage import storage_from_string
from limits.strategies import STRATEGIES as IN_PROCESS_STRATEGIES
from limits.strategies import RateLimiter as InProcessRateLimiter

from asgi_identity._http.body import DEFAULT_MAX_BODY, BodyError
from asgi_identity._http.headers import with_response_headers
from asgi_identity._http.view import RequestView
from asgi_identity.credentials.apikeys import APIKey
from asgi_identity.errors import ErrorRenderer, IdentityError
from asgi_identity.identity import Identity, require_identity
from asgi_identity.middleware._layer import LayerPolicy
from asgi_identity.quotas._ledger import Reservation, TokenLedger, TokenRefusal, UsageMeter
from asgi_identity.quotas._windows import (
    LimitSpec,
    SweptMemoryStorage,
    TrustedProxies,
    Window,
    bucket_key,
    parse_limit,
    parse_tiers,
    per_window,
    policy_header,
    ratelimit_header,
    seconds_until,
)
from asgi_identity.quotas.usage import TokenUsage
from asgi_identity.telemetry import events
from asgi_identity.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("asgi_identity")

T = TypeVar("T")

#: Where the limiter puts itself (`request.state.rate_limiter`) and the request's token reservation.
STATE_KEY = "rate_limiter"
_RESERVATION_KEY = "asgi_identity.token_reservation"

_ANONYMOUS = ("by_address", "refuse", "unlimited")
_ON_STORAGE_ERROR = ("open", "closed")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})

Windows = tuple[Window, ...] | None

# Typed as factories: the mapping's value type is the abstract base class.
_STRATEGIES: Mapping[str, Callable[[Storage], RateLimiter]] = STRATEGIES
_IN_PROCESS_STRATEGIES: Mapping[str, Callable[[InProcessStorage], InProcessRateLimiter]] = (
    IN_PROCESS_STRATEGIES
)

# Counting in this process needs no I/O, so limits' synchronous memory storage does it without the
# async one's per-call lock, expiry task and await. One twin per async memory storage object:
# limiters given the same object (Litestar's per-route copies) keep sharing their counters.
_IN_PROCESS_TWINS: WeakKeyDictionary[MemoryStorage, SweptMemoryStorage] = WeakKeyDictionary()
# Bucket keys and limits of the identities seen lately; emptied when full.
_PLAN_CACHE_SIZE = 4096


def _in_process_twin(storage: MemoryStorage) -> SweptMemoryStorage:
    twin = _IN_PROCESS_TWINS.get(storage)
    if twin is None:
        twin = _IN_PROCESS_TWINS[storage] = SweptMemoryStorage()
    return twin


if sys.version_info >= (3, 11):

    async def _within(call: Awaitable[T], seconds: float) -> T:
        # asyncio.timeout() cancels in place; wait_for() would wrap every call in a task.
        async with asyncio.timeout(seconds):
            return await call

else:  # pragma: no cover - Python 3.10

    async def _within(call: Awaitable[T], seconds: float) -> T:
        return await asyncio.wait_for(call, seconds)


class _Plan(NamedTuple):
    """What one identity's requests count against, worked out once per identity."""

    requests: Windows
    tokens: Windows
    request_ids: str  # the identifier limits' strategies key the request windows by
    request_keys: tuple[str, ...]  # the fixed-window counters, one per request window
    token_keys: tuple[str, ...]  # the token counters, one per token window
    windows: tuple[Window, ...]  # the request windows, then the token windows
    policies: tuple[bytes, ...]  # RateLimit-Policy for each prefix of `windows`, by its length


class WindowUsage(NamedTuple):
    """Where one identity stands in one window (`await limiter.usage(identity)`)."""

    kind: Literal["requests", "tokens"]
    name: str
    limit: int
    used: int
    remaining: int
    reset: float  # Unix time at which the window frees up
    window: int  # its length in seconds


class RateLimitUnavailable(RuntimeError):
    """The rate-limit storage did not answer within `storage_timeout` (or is in its cool-down)."""


class UserRateLimit:
    """Limits per verified identity and tier, in requests and LLM tokens (see docs/rate-limits.md)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        limits: LimitSpec = "60/minute",
        groups: Mapping[str, LimitSpec] | None = None,
        tokens: LimitSpec = None,
        group_tokens: Mapping[str, LimitSpec] | None = None,
        storage: str | Storage = "async+memory://",
        strategy: str = "fixed-window",
        key_prefix: str = "asgi-identity",
        anonymous: str = "by_address",
        trusted_proxies: Iterable[str] = (),
        on_storage_error: str = "open",
        storage_timeout: float = 1.0,
        storage_cooldown: float = 1.0,
        default_max_tokens: int = 4096,
        token_paths: Iterable[str] | None = None,
        max_body: int = DEFAULT_MAX_BODY,
        headers: bool = True,
        mode: str = "enforce",
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
        self._requests = parse_limit(limits, "requests", "limits")
        self._group_requests = parse_tiers(groups or {}, "requests", "groups")
        self._tokens = parse_limit(tokens, "tokens", "tokens")
        self._group_tokens = parse_tiers(group_tokens or {}, "tokens", "group_tokens")
        # API keys carry their own overrides as strings; each distinct one is parsed once.
        self._overrides: dict[tuple[str, str], Windows] = {}
        self._bad_overrides: set[tuple[str, str]] = set()

        if strategy not in STRATEGIES:
            raise ValueError(
                f"UserRateLimit: strategy must be one of {sorted(STRATEGIES)}, not {strategy!r}"
            )
        built: object = storage
        if isinstance(storage, str):
            try:
                built = storage_from_string(storage)
            except Exception as exc:
                raise ValueError(f"UserRateLimit: storage {storage!r}: {exc}") from None
        if not isinstance(built, Storage):
            raise TypeError(
                "UserRateLimit: storage must be an async storage URI ('async+memory://', "
                "'async+redis://host:6379') or a limits.aio.storage.Storage"
            )
        self.storage: Storage = built
        # Memory storage answers without I/O; a timeout there would only cost a task per call.
        self._in_process = isinstance(built, MemoryStorage)
        try:
            self._limiter: RateLimiter = _STRATEGIES[strategy](built)
        except NotImplementedError:
            raise ValueError(
                f"UserRateLimit: the {strategy!r} strategy is not supported by "
                f"{type(storage).__name__}"
            ) from None
        # Only limits' own class: a subclass may count differently, so it keeps the async path.
        self._memory: SweptMemoryStorage | None = None
        self._memory_limiter: InProcessRateLimiter | None = None
        if type(built) is MemoryStorage:
            self._memory = _in_process_twin(built)
            self._memory_limiter = _IN_PROCESS_STRATEGIES[strategy](self._memory)
        self.strategy = strategy
        self._fixed = strategy == "fixed-window"

        if not key_prefix or "/" in key_prefix:
            raise ValueError("UserRateLimit: key_prefix must be a non-empty string without '/'")
        self.key_prefix = key_prefix
        if anonymous not in _ANONYMOUS:
            raise ValueError(f"UserRateLimit: anonymous must be one of {_ANONYMOUS}")
        self.anonymous = anonymous
        self._proxies = TrustedProxies(trusted_proxies)
        if on_storage_error not in _ON_STORAGE_ERROR:
            raise ValueError("UserRateLimit: on_storage_error must be 'open' or 'closed'")
        self.on_storage_error = on_storage_error
        if not storage_timeout > 0 or storage_cooldown < 0:
            raise ValueError("UserRateLimit: storage_timeout must be > 0, storage_cooldown >= 0")
        self.storage_timeout = float(storage_timeout)
        self.storage_cooldown = float(storage_cooldown)
        if (
            not isinstance(default_max_tokens, int)
            or isinstance(default_max_tokens, bool)
            or default_max_tokens < 0
        ):
            raise ValueError("UserRateLimit: default_max_tokens must be an integer >= 0")
        self.default_max_tokens = default_max_tokens
        if isinstance(token_paths, str):
            raise TypeError("UserRateLimit: token_paths must be a list of paths, not a string")
        paths = None if token_paths is None else tuple(token_paths)
        self._token_exact = frozenset(p for p in paths or () if not p.endswith("/"))
        self._token_prefixes = tuple(p for p in paths or () if p.endswith("/"))
        self._token_everywhere = paths is None
        if isinstance(max_body, bool) or not isinstance(max_body, int) or max_body <= 0:
            raise ValueError("UserRateLimit: max_body must be a positive number of bytes")
        self.max_body = max_body
        self.headers = headers

        #: Storage calls that failed or timed out (and requests decided without the storage).
        self.storage_errors = 0
        self._tokens_ledger = TokenLedger(self.storage, self._call, key_prefix, self._memory)
        self._policies: dict[tuple[Window, ...], bytes] = {}
        self._plans: dict[tuple[Any, ...], tuple[APIKey | None, _Plan]] = {}
        self._refuse_anonymous = IdentityError(
            "missing_credentials",
            "Anonymous requests are not accepted: send a bearer token or an API key.",
            detail="anonymous request refused by UserRateLimit(anonymous='refuse')",
        )
        self._down_until = 0.0
        self._settling: set[asyncio.Task[None]] = set()
        self._storage_calls: set[asyncio.Future[Any]] = set()
        self._retry_unavailable = str(max(1, round(self.storage_cooldown)))

    # -- configuration lookups ---------------------------------------------------------------

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

    def _parts(self, identity: Identity, scope: Scope | None) -> tuple[str, ...]:
        address = None
        if identity.source == "anonymous" and scope is not None:
            address = self._proxies.client_address(scope)
        return bucket_key(identity, address) or (identity.source, "unknown")

    def _plan(self, identity: Identity, scope: Scope) -> _Plan:
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
            )
            hit = self._plans.get(cache_key)
            # The entry holds the key record itself, so its id cannot be reused while cached.
            if hit is not None and hit[0] is api_key:
                return hit[1]
        requests, tokens = self.limits_for(identity)
        parts = self._parts(identity, scope)
        ids = "/".join((self.key_prefix, "requests", *parts))
        ledger = self._tokens_ledger
        windows = (*(requests or ()), *(tokens or ()))
        plan = _Plan(
            requests,
            tokens,
            ids,
            tuple(window.storage_key(ids) for window in requests or ()),
            tuple(ledger.key(parts, window) for window in tokens or ()),
            windows,
            tuple(self._policy_header(windows[:n]) for n in range(len(windows) + 1)),
        )
        if not anonymous:
            if len(self._plans) >= _PLAN_CACHE_SIZE:
                self._plans.clear()
            self._plans[cache_key] = (api_key, plan)
        return plan

    def _meters_tokens(self, scope: Scope) -> bool:
        if scope["type"] != "http" or scope.get("method") not in _BODY_METHODS:
            return False
        if self._token_everywhere:
            return True
        path: str = scope.get("path", "")
        return path in self._token_exact or bool(
            self._token_prefixes and path.startswith(self._token_prefixes)
        )

    # -- storage, bounded ----------------------------------------------------------------------

    def _storage_usable(self) -> bool:
        if self._down_until and time.monotonic() < self._down_until:
            self.storage_errors += 1
            return False
        return True

    def _call(self, call: Awaitable[T]) -> Awaitable[T]:
        """One storage call, bounded by storage_timeout; RateLimitUnavailable when it fails."""
        if self._in_process:
            return call  # memory: no I/O to wait for, nothing that can go away
        return self._bounded(call)

    async def _bounded(self, call: Awaitable[T]) -> T:
        # limits' Redis counter is two commands (INCRBY, then EXPIRE for a new key): cancelled
        # between them, it would be left with no expiry and its owner limited for good. The
        # timeout stops the wait; the call itself runs to its end in its own task.
        task = asyncio.ensure_future(call)
        self._storage_calls.add(task)
        task.add_done_callback(self._storage_call_done)
        try:
            return await _within(asyncio.shield(task), self.storage_timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.storage_errors += 1
            self._down_until = time.monotonic() + self.storage_cooldown
            reason = "timed out" if isinstance(exc, asyncio.TimeoutError) else repr(exc)
            logger.warning(
                "rate-limit storage unavailable (%s); failing %s for %.1fs",
                reason,
                self.on_storage_error,
                self.storage_cooldown,
            )
            raise RateLimitUnavailable(reason) from None

    def _storage_call_done(self, task: asyncio.Future[Any]) -> None:
        self._storage_calls.discard(task)
        if not task.cancelled():
            # Retrieved, so a call that failed after its caller gave up is not reported as an
            # exception nobody looked at (the caller already logged the storage as unavailable).
            task.exception()

    # -- the request path ----------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
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
        identity = require_identity(scope, "UserRateLimit")
        state = scope.get("state")
        if state is None:
            scope["state"] = state = {}
        state[STATE_KEY] = self

        if identity.source == "anonymous" and self.anonymous != "by_address":
            refused = self.anonymous == "refuse"
            if refused and await self.policy.refuse(self._refuse_anonymous, scope, receive, send):
                return
            await self.app(scope, receive, send)
            return

        plan = self._plan(identity, scope)
        requests, tokens = plan.requests, plan.tokens
        meters_tokens = tokens is not None and self._meters_tokens(scope)
        if requests is None and not meters_tokens:
            await self.app(scope, receive, send)
            return
        states: list[tuple[Window, int, int]] = []
        reservation: Reservation | None = None
        try:
            if not self._storage_usable():
                raise RateLimitUnavailable("in cool-down after a storage error")
            if requests is not None:
                refusal = await self._hit_requests(plan, requests, states)
                if refusal is not None and await self.policy.refuse(refusal, scope, receive, send):
                    return
            if meters_tokens:
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
                    short = await self._tokens_ledger.reserve(reservation, estimate, states)
                    if short is not None and await self.policy.refuse(
                        self._token_error(short, states), scope, receive, send
                    ):
                        return
        except RateLimitUnavailable:
            if self.on_storage_error == "closed":
                error = IdentityError(
                    "rate_limit_unavailable",
                    "Rate limiting is temporarily unavailable; try again shortly.",
                    headers=[("Retry-After", self._retry_unavailable)],
                    detail="rate-limit storage unavailable, failing closed",
                )
                if await self.policy.refuse(error, scope, receive, send):
                    return
            # Failing open: the request goes on without headers (there is nothing true to say).
            states = []
            reservation = None

        if self.headers and states and scope["type"] == "http":
            extra = [
                (b"ratelimit-policy", self._request_policy(plan, states)),
                (b"ratelimit", ratelimit_header(states)),
            ]
        else:
            extra = []
        if reservation is None:
            await self.app(scope, receive, with_response_headers(send, extra))
            return
        await self._metered(scope, receive, send, reservation, extra)

    async def _hit_requests(
        self,
        plan: _Plan,
        windows: tuple[Window, ...],
        states: list[tuple[Window, int, int]],
    ) -> IdentityError | None:
        # Shortest window first: a burst refused by the per-second window does not eat into the
        # daily budget; a request refused by the daily window was counted by the short ones only.
        memory = self._memory
        now = time.time()
        for index, window in enumerate(windows):
            if self._fixed:
                # The counter's new value says everything the headers need: one call, not two.
                key = plan.request_keys[index]
                if memory is not None:
                    count, reset = memory.count(key, window.seconds, 1, now)
                    admitted = count <= window.amount
                    retry = seconds_until(reset, now)
                else:
                    count = await self._call(self.storage.incr(key, window.seconds))
                    admitted = count <= window.amount
                    if self.headers or not admitted:
                        reset = await self._call(self.storage.get_expiry(key))
                        retry = seconds_until(reset, time.time())
                if self.headers or not admitted:
                    states.append((window, window.amount - count, retry))
            else:
                admitted = await self._hit(window, plan.request_ids)
                if self.headers or not admitted:
                    reset, remaining = await self._window_stats(window, plan.request_ids)
                    retry = seconds_until(reset, time.time())
                    states.append((window, remaining, retry))
            if not admitted:
                return IdentityError(
                    "rate_limited",
                    f"Rate limit exceeded: {window.amount} requests per "
                    f"{per_window(window)}. Try again in {max(1, retry)} seconds.",
                    headers=self._error_headers(states, retry),
                    detail=f"{window.name} limit of {window.amount} reached",
                )
        return None

    async def _hit(self, window: Window, ids: str) -> bool:
        if self._memory_limiter is not None:
            return self._memory_limiter.hit(window.item, ids)
        admitted: bool = await self._call(self._limiter.hit(window.item, ids))
        return admitted

    async def _window_stats(self, window: Window, ids: str) -> tuple[float, int]:
        """(when the window frees up, requests remaining) for `ids` in `window`."""
        if self._memory_limiter is not None:
            reset, remaining = self._memory_limiter.get_window_stats(window.item, ids)
        else:
            reset, remaining = await self._call(self._limiter.get_window_stats(window.item, ids))
        return reset, remaining

    def _request_policy(self, plan: _Plan, states: list[tuple[Window, int, int]]) -> bytes:
        # The states are some request windows then some token windows, each kind in order: they
        # are a prefix of plan.windows exactly when the last one is where that prefix ends (no
        # later token window follows a request window that refused, in observe mode).
        count = len(states)
        if states[-1][0] is plan.windows[count - 1]:
            return plan.policies[count]
        return self._policy_header(tuple(window for window, _, _ in states))

    def _policy_header(self, windows: tuple[Window, ...]) -> bytes:
        value = self._policies.get(windows)
        if value is None:
            # A handful of distinct window sets exist (one per tier and kind): cache them all.
            value = self._policies[windows] = policy_header(windows)
        return value

    def _error_headers(
        self, states: list[tuple[Window, int, int]], retry: int
    ) -> list[tuple[str, str]]:
        headers = [("Retry-After", str(max(1, retry)))]
        if self.headers:
            windows = tuple(window for window, _, _ in states)
            headers.append(("RateLimit-Policy", self._policy_header(windows).decode()))
            headers.append(("RateLimit", ratelimit_header(states).decode()))
        return headers

    async def _estimate_tokens(
        self, view: RequestView, receive: Receive
    ) -> tuple[Receive, int | IdentityError | None]:
        """(a receive replaying the body, the tokens to reserve: None for no LLM call, an
        IdentityError for a body that cannot be given one meaning)."""
        fields, receive = await view.fields(receive, self.max_body)
        if isinstance(fields, BodyError):
            if not fields.too_large:
                return receive, IdentityError("invalid_request", str(fields))
            # Too large to read is not "not an LLM call": padding a prompt past max_body must
            # not make it free. Reserve the default and settle from the response as usual.
            size = max(view.body_size, view.content_length or 0)
            return receive, self.default_max_tokens + size // 4
        if fields.problem is not None:
            return receive, IdentityError("invalid_request", fields.problem)
        if not fields.is_object:
            return receive, None  # no body, or not an object: not an LLM call
        # Everything that may be generated: the output cap for each of n (or best_of)
        # completions, plus the input at about four bytes a token.
        cap = self.default_max_tokens if fields.output_cap is None else fields.output_cap
        completions = max(fields.n or 1, fields.best_of or 1)
        return receive, cap * completions + view.body_size // 4

    def _token_error(
        self, refusal: TokenRefusal, states: list[tuple[Window, int, int]]
    ) -> IdentityError:
        window, per = refusal.window, per_window(refusal.window)
        if refusal.spent:
            message = (
                f"Token quota exceeded: {window.amount} tokens per {per}. "
                f"Try again in {max(1, refusal.retry)} seconds."
            )
        else:
            message = (
                f"This request may use up to {refusal.estimate} tokens but {refusal.left} remain "
                f"in the quota of {window.amount} tokens per {per}; lower max_tokens or try "
                "again later."
            )
        return IdentityError(
            "token_quota_exceeded",
            message,
            headers=self._error_headers(states, refusal.retry),
            detail=f"{window.name} quota of {window.amount} reached",
        )

    async def _metered(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        reservation: Reservation,
        extra: list[tuple[bytes, bytes]],
    ) -> None:
        scope["state"][_RESERVATION_KEY] = reservation
        meter = UsageMeter(send, extra)
        try:
            await self.app(scope, receive, meter.send)
        finally:
            if not reservation.settled:
                reservation.settled = True
                charge, found = meter.outcome(reservation)
                if self._memory is not None:
                    # Counting in memory never suspends, so nothing can cancel it half-way.
                    if found is not None:
                        identity = reservation.identity
                        events.llm_tokens(identity, found.input_tokens, found.output_tokens)
                    TokenLedger.settle_in_memory(self._memory, reservation, charge)
                else:
                    task = asyncio.ensure_future(self._settle(reservation, charge, found))
                    self._settling.add(task)
                    task.add_done_callback(self._settling.discard)
                    # Shielded: a client that disconnects must not cancel the accounting.
                    await asyncio.shield(task)

    async def _settle(
        self, reservation: Reservation, charge: int, found: TokenUsage | None
    ) -> None:
        if found is not None:
            events.llm_tokens(reservation.identity, found.input_tokens, found.output_tokens)
        try:
            await self._tokens_ledger.settle(reservation, charge)
        except RateLimitUnavailable:
            logger.warning(
                "could not settle %d tokens: rate-limit storage unavailable",
                charge - reservation.estimate,
            )

    def _closing_on_shutdown(self, send: Send) -> Send:
        async def send_closing(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                await self.aclose()
            await send(message)

        return send_closing

    async def aclose(self) -> None:
        """Finish pending settlements and close the storage's connections (done at shutdown)."""
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)
        if self._storage_calls:
            # Calls their callers gave up on get one more timeout to finish, then are dropped.
            _, late = await asyncio.wait(self._storage_calls, timeout=self.storage_timeout)
            for task in late:
                task.cancel()
        client = getattr(getattr(self.storage, "bridge", None), "storage", None)
        pool = getattr(client, "connection_pool", None)
        if pool is not None:
            closing = pool.disconnect()
            if inspect.isawaitable(closing):  # redis-py's pool closes asynchronously
                await closing

    # -- the app's API --------------------------------------------------------------------------

    async def report_usage(
        self, who: Any, *, input_tokens: int = 0, output_tokens: int = 0
    ) -> None:
        """Charge tokens the app counted itself.

        `who` is a request (or scope) inside this layer, whose reservation it settles instead
        of the response's `usage`, or an Identity to charge directly (e.g. from a background job).
        """
        used = TokenUsage(int(input_tokens), int(output_tokens))
        if used.input_tokens < 0 or used.output_tokens < 0:
            raise ValueError("report_usage: token counts must be >= 0")
        scope: Scope | None = None
        if isinstance(who, Identity):
            identity = who
        else:
            scope = who if isinstance(who, MutableMapping) else getattr(who, "scope", None)
            if scope is None:
                raise TypeError("report_usage() takes a request, an ASGI scope or an Identity")
            reservation = (scope.get("state") or {}).get(_RESERVATION_KEY)
            if isinstance(reservation, Reservation) and not reservation.settled:
                # Reports add up: an agent making several LLM calls in one request reports each.
                earlier = reservation.reported
                if earlier is not None:
                    used = TokenUsage(
                        earlier.input_tokens + used.input_tokens,
                        earlier.output_tokens + used.output_tokens,
                    )
                reservation.reported = used
                return
            identity = require_identity(scope, "report_usage()")
        _, windows = self.limits_for(identity)
        events.llm_tokens(identity, used.input_tokens, used.output_tokens)
        if windows is None or used.total_tokens == 0:
            return
        await self._tokens_ledger.charge(self._parts(identity, scope), windows, used.total_tokens)

    async def usage(self, identity: Identity, *, address: str | None = None) -> list[WindowUsage]:
        """Where `identity` stands in each of its windows (requests first, then tokens).

        `address` is the client address, for anonymous identities. RateLimitUnavailable when the
        storage does not answer.
        """
        requests, tokens = self.limits_for(identity)
        parts = bucket_key(identity, address) or (identity.source, "unknown")
        ids = "/".join((self.key_prefix, "requests", *parts))
        result: list[WindowUsage] = []
        for window in requests or ():
            reset, remaining = await self._window_stats(window, ids)
            remaining = max(0, min(window.amount, remaining))
            result.append(
                WindowUsage(
                    "requests",
                    window.name,
                    window.amount,
                    window.amount - remaining,
                    remaining,
                    reset,
                    window.seconds,
                )
            )
        for window in tokens or ():
            used, reset = await self._tokens_ledger.used(parts, window)
            result.append(
                WindowUsage(
                    "tokens",
                    window.name,
                    window.amount,
                    used,
                    max(0, window.amount - used),
                    reset,
                    window.seconds,
                )
            )
        return result


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
