"""Every OpenTelemetry name the package uses, and the hooks the layers call.

Only the OpenTelemetry API is imported: with no SDK installed every hook returns after a check or
two. Settings come from `configure_telemetry()`, called once at start-up (docs/telemetry.md).
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from functools import lru_cache
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

from opentelemetry import baggage, context, metrics, trace
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import Span, Status, StatusCode

from . import audit
from ._asgi import Scope
from .errors import IdentityError
from .identity import SCOPE_KEY, Identity

if TYPE_CHECKING:
    from opentelemetry.util.types import AttributeValue

# ------------------------------------------------------------------------------ attribute names

ATTR_USER_ID: Final = "user.id"
ATTR_ENDUSER_ID: Final = "enduser.id"
ATTR_USER_ROLES: Final = "user.roles"
ATTR_USER_EMAIL: Final = "user.email"
ATTR_USER_HASH: Final = "user.hash"
ATTR_SOURCE: Final = "asgi_identity.source"
ATTR_TENANT: Final = "asgi_identity.tenant"
ATTR_GROUP: Final = "asgi_identity.group"
ATTR_CLIENT_ID: Final = "asgi_identity.client_id"
ATTR_API_KEY_ID: Final = "asgi_identity.api_key.id"
ATTR_ISSUER: Final = "asgi_identity.issuer"
ATTR_ACTOR: Final = "asgi_identity.actor.id"
ATTR_ACTOR_CHAIN: Final = "asgi_identity.actor.chain"
ATTR_CONVERSATION: Final = "gen_ai.conversation.id"
ATTR_DECISION: Final = "asgi_identity.decision"
ATTR_DECISION_LAYER: Final = "asgi_identity.decision.layer"
ATTR_LAYER: Final = "asgi_identity.layer"
ATTR_MODE: Final = "asgi_identity.mode"
ATTR_OUTCOME: Final = "asgi_identity.outcome"
ATTR_DETAIL: Final = "asgi_identity.detail"
ATTR_ERROR_TYPE: Final = "error.type"
ATTR_TOKEN_TYPE: Final = "gen_ai.token.type"  # noqa: S105 - an attribute name
ATTR_USAGE_INPUT: Final = "gen_ai.usage.input_tokens"
ATTR_USAGE_OUTPUT: Final = "gen_ai.usage.output_tokens"
ATTR_URL: Final = "url.full"
ATTR_ALGORITHM: Final = "asgi_identity.jwt.algorithm"

EVENT_REJECTED: Final = "asgi_identity.rejected"
EVENT_OBSERVED: Final = "asgi_identity.would_reject"

SPAN_JWKS_FETCH: Final = "asgi_identity.jwks.fetch"
SPAN_VERIFY: Final = "asgi_identity.verify_token"

METRIC_REQUESTS: Final = "asgi_identity.requests"
METRIC_REJECTIONS: Final = "asgi_identity.rejections"
METRIC_RATE_LIMIT_HITS: Final = "asgi_identity.rate_limit.hits"
METRIC_AUTH_DURATION: Final = "asgi_identity.auth.duration"
METRIC_TOKENS: Final = "asgi_identity.tokens"
METRIC_JWKS_FETCHES: Final = "asgi_identity.jwks.fetches"

#: The value a user attribute takes once an instrument has seen `max_users` distinct users.
OVERFLOW: Final = "__overflow__"

#: Baggage keys that would name a person: never taken from a client, set only when enabled.
BAGGAGE_KEYS: Final = (
    ATTR_USER_ID,
    ATTR_ENDUSER_ID,
    ATTR_USER_HASH,
    ATTR_USER_EMAIL,
    ATTR_USER_ROLES,
    ATTR_TENANT,
    ATTR_GROUP,
    ATTR_CLIENT_ID,
)

_RATE_LIMIT_CODES: Final = frozenset({"rate_limited", "token_quota_exceeded"})
# Authentication runs from about a microsecond (cache hit) to seconds (a JWKS fetch).
_DURATION_BUCKETS: Final = (
    0.000005,
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)

_SCOPE_NAME: Final = "asgi_identity"


def _version() -> str:
    from . import __version__

    return __version__


# ------------------------------------------------------------------------------ configuration


@dataclass(frozen=True, slots=True)
class TelemetryConfig:
    """What `configure_telemetry()` was given; `telemetry_config()` returns the one in force."""

    record_email: bool = False
    pseudonymize_key: bytes | None = None
    max_users: int = 1000
    metrics: bool = True
    identity_in_baggage: bool = False
    tracer_provider: trace.TracerProvider | None = None
    meter_provider: MeterProvider | None = None

    @property
    def pseudonymous(self) -> bool:
        return self.pseudonymize_key is not None


class _DistinctValues:
    """Admits the first `limit` distinct values; later new ones become OVERFLOW.

    A value already admitted costs one set lookup and no lock; the lock is only taken to admit.
    """

    __slots__ = ("_limit", "_lock", "_seen")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def admit(self, value: str) -> str:
        if value in self._seen:
            return value
        with self._lock:
            if value in self._seen:
                return value
            if len(self._seen) >= self._limit:
                return OVERFLOW
            self._seen.add(value)
            return value

    def __len__(self) -> int:
        return len(self._seen)


try:  # the API's placeholder until an SDK provider is set; private, so guarded
    from opentelemetry.metrics import _internal as _metrics_internal
    from opentelemetry.metrics._internal import _ProxyMeterProvider

    _NOT_RECORDING_PROVIDERS: tuple[type, ...] = (_ProxyMeterProvider, metrics.NoOpMeterProvider)
except ImportError:  # pragma: no cover - a future API without it: always record
    _metrics_internal = None  # type: ignore[assignment]
    _NOT_RECORDING_PROVIDERS = ()


def _global_meter_provider_set() -> bool:
    # get_meter_provider() reads the environment on every call until a provider is set (about
    # a microsecond); the API's own global says the same for the cost of an attribute read.
    if _metrics_internal is not None and getattr(_metrics_internal, "_METER_PROVIDER", 0) is None:
        return False
    return not isinstance(metrics.get_meter_provider(), _NOT_RECORDING_PROVIDERS)


class _Instrument:
    """One instrument and the bounded user (and client) values it has seen."""

    __slots__ = ("clients", "instrument", "users")

    def __init__(self, instrument: Any, max_users: int) -> None:
        self.instrument = instrument
        self.users = _DistinctValues(max_users)
        self.clients = _DistinctValues(max_users)


class _State:
    __slots__ = (
        "_live",
        "auth_duration",
        "config",
        "hash_user",
        "jwks_fetches",
        "rate_limit_hits",
        "rejections",
        "requests",
        "tokens",
        "tracer",
        "user_attribute",
    )

    def __init__(self, config: TelemetryConfig) -> None:
        self.config = config
        provider = config.tracer_provider
        self.tracer = (
            provider.get_tracer(_SCOPE_NAME, _version())
            if provider is not None
            # A ProxyTracer when no SDK is set yet: it follows a provider installed later.
            else trace.get_tracer(_SCOPE_NAME, _version())
        )
        self.user_attribute = ATTR_USER_HASH if config.pseudonymous else ATTR_USER_ID
        key = config.pseudonymize_key
        if key is not None:

            @lru_cache(maxsize=4096)
            def hash_user(user_id: str) -> str:
                digest = hmac.new(key, user_id.encode("utf-8"), hashlib.sha256)
                return digest.hexdigest()[:32]

            self.hash_user: Any = hash_user
        else:
            self.hash_user = None
        # Given an explicit provider, it is live; the global one is checked until an SDK appears.
        self._live = config.meter_provider is not None
        meter = (
            config.meter_provider.get_meter(_SCOPE_NAME, _version())
            if config.meter_provider is not None
            else metrics.get_meter(_SCOPE_NAME, _version())
        )
        limit = config.max_users
        self.requests = _Instrument(
            meter.create_counter(
                METRIC_REQUESTS,
                unit="{request}",
                description="Requests seen by IdentityMiddleware, by authentication outcome",
            ),
            limit,
        )
        self.rejections = _Instrument(
            meter.create_counter(
                METRIC_REJECTIONS,
                unit="{request}",
                description="Requests refused (or, in observe mode, that would have been) by layer and code",
            ),
            limit,
        )
        self.rate_limit_hits = _Instrument(
            meter.create_counter(
                METRIC_RATE_LIMIT_HITS,
                unit="{request}",
                description="Requests over a rate limit or token quota",
            ),
            limit,
        )
        self.tokens = _Instrument(
            meter.create_counter(
                METRIC_TOKENS, unit="{token}", description="LLM tokens used, by user and tier"
            ),
            limit,
        )
        self.auth_duration = meter.create_histogram(
            METRIC_AUTH_DURATION,
            unit="s",
            description="Time spent authenticating a request",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self.jwks_fetches = meter.create_counter(
            METRIC_JWKS_FETCHES, unit="{fetch}", description="Key set fetches by outcome"
        )

    def metrics_on(self) -> bool:
        if self._live:
            return True
        if not self.config.metrics:
            return False
        if not _global_meter_provider_set():
            return False
        # A provider can be set only once, so once live always live.
        self._live = True
        return True

    def user_value(self, identity: Identity | None) -> str | None:
        if identity is None or identity.user_id is None:
            return None
        if self.hash_user is not None:
            return self.hash_user(identity.user_id)  # type: ignore[no-any-return]
        return identity.user_id

    def user_attributes(
        self, instrument: _Instrument, identity: Identity | None, attributes: dict[str, Any]
    ) -> dict[str, Any]:
        user = self.user_value(identity)
        if user is not None:
            attributes[self.user_attribute] = instrument.users.admit(user)
        return attributes


_state = _State(TelemetryConfig())
_configure_lock = threading.Lock()


def configure_telemetry(
    *,
    record_email: bool = False,
    pseudonymize_key: bytes | str | None = None,
    max_users: int = 1000,
    metrics: bool = True,
    identity_in_baggage: bool = False,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
) -> TelemetryConfig:
    """Set how the layers report to OpenTelemetry. Call once at start-up, before serving.

    - `record_email`: put `user.email` on spans (it is personal data; off by default).
    - `pseudonymize_key`: a secret; users then appear only as `user.hash` (HMAC-SHA256 of the
      user id, stable across restarts while the key stays the same) on spans and metrics.
    - `max_users`: distinct users each metric instrument records; later ones are counted
      under `"__overflow__"`.
    - `metrics`: False turns the metric instruments off (spans and audit stay).
    - `identity_in_baggage`: add the user (or its hash), tenant and group to outgoing W3C baggage.
    - `tracer_provider` / `meter_provider`: use these instead of the global providers.
    """
    key: bytes | None
    if pseudonymize_key is None:
        key = None
    elif isinstance(pseudonymize_key, str):
        key = pseudonymize_key.encode("utf-8")
    elif isinstance(pseudonymize_key, bytes):
        key = pseudonymize_key
    else:
        raise TypeError("configure_telemetry: pseudonymize_key must be bytes or str")
    if key is not None and len(key) < 16:
        raise ValueError(
            "configure_telemetry: pseudonymize_key must be at least 16 bytes, or the hashes "
            "can be reversed by trying user ids"
        )
    if key is not None and record_email:
        raise ValueError(
            "configure_telemetry: record_email=True would put the email next to the pseudonym; "
            "choose one"
        )
    if isinstance(max_users, bool) or not isinstance(max_users, int) or max_users < 1:
        raise ValueError(
            f"configure_telemetry: max_users must be a positive int, not {max_users!r}"
        )
    for name, value in (
        ("record_email", record_email),
        ("metrics", metrics),
        ("identity_in_baggage", identity_in_baggage),
    ):
        if not isinstance(value, bool):
            raise TypeError(f"configure_telemetry: {name} must be True or False, not {value!r}")
    config = TelemetryConfig(
        record_email=record_email,
        pseudonymize_key=key,
        max_users=max_users,
        metrics=metrics,
        identity_in_baggage=identity_in_baggage,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
    )
    global _state
    with _configure_lock:
        _state = _State(config)
    return config


def telemetry_config() -> TelemetryConfig:
    return _state.config


# ------------------------------------------------------------------------------ request hooks


def identity_attributes(identity: Identity) -> dict[str, AttributeValue]:
    """The span attributes that describe `identity` under the current settings."""
    state = _state
    attributes: dict[str, AttributeValue] = {ATTR_SOURCE: identity.source}
    user_id = identity.user_id
    if user_id is not None:
        if state.hash_user is not None:
            attributes[ATTR_USER_HASH] = state.hash_user(user_id)
        else:
            attributes[ATTR_USER_ID] = user_id
            attributes[ATTR_ENDUSER_ID] = user_id
    if identity.roles:
        attributes[ATTR_USER_ROLES] = sorted(identity.roles)
    if identity.email is not None and state.config.record_email:
        attributes[ATTR_USER_EMAIL] = identity.email
    if identity.tenant is not None:
        attributes[ATTR_TENANT] = identity.tenant
    if identity.group is not None:
        attributes[ATTR_GROUP] = identity.group
    if identity.client_id is not None:
        attributes[ATTR_CLIENT_ID] = identity.client_id
    if identity.api_key is not None:
        attributes[ATTR_API_KEY_ID] = identity.api_key.id
    if identity.issuer is not None:
        attributes[ATTR_ISSUER] = identity.issuer
    actor = identity.actor
    if actor is not None:
        attributes[ATTR_ACTOR] = actor.subject
        if actor.actor is not None:
            attributes[ATTR_ACTOR_CHAIN] = list(actor.chain)
    if identity.conversation_id is not None:
        attributes[ATTR_CONVERSATION] = identity.conversation_id
    return attributes


def on_identity(scope: Scope, identity: Identity) -> None:
    """IdentityMiddleware authenticated a request."""
    state = _state
    if state.metrics_on():
        requests = state.requests
        attributes: dict[str, Any] = {ATTR_OUTCOME: "authenticated", ATTR_SOURCE: identity.source}
        if identity.group is not None:
            attributes[ATTR_GROUP] = identity.group
        if identity.client_id is not None:
            attributes[ATTR_CLIENT_ID] = requests.clients.admit(identity.client_id)
        requests.instrument.add(1, state.user_attributes(requests, identity, attributes))
    span = trace.get_current_span()
    if span.is_recording():
        attributes = identity_attributes(identity)
        attributes[ATTR_DECISION] = "allow"
        span.set_attributes(attributes)
    audit.record_decision(scope, "IdentityMiddleware", "allow", None, identity)


def _count_refusal(
    state: _State, scope: Scope, layer: str, error: IdentityError, mode: str
) -> Identity | None:
    identity: Identity | None = scope.get(SCOPE_KEY)
    if not state.metrics_on():
        return identity
    code = error.code
    rejections = state.rejections
    attributes: dict[str, Any] = {ATTR_LAYER: layer, ATTR_ERROR_TYPE: code, ATTR_MODE: mode}
    rejections.instrument.add(1, state.user_attributes(rejections, identity, attributes))
    if code in _RATE_LIMIT_CODES:
        hits = state.rate_limit_hits
        attributes = {ATTR_ERROR_TYPE: code, ATTR_MODE: mode}
        if identity is not None and identity.group is not None:
            attributes[ATTR_GROUP] = identity.group
        hits.instrument.add(1, state.user_attributes(hits, identity, attributes))
    if identity is None and mode == "enforce":
        # Refused before an identity existed: IdentityMiddleware itself said no.
        state.requests.instrument.add(1, {ATTR_OUTCOME: "rejected", ATTR_ERROR_TYPE: code})
    return identity


def on_rejection(scope: Scope, layer: str, error: IdentityError) -> None:
    """A layer refused the request with `error`."""
    state = _state
    identity = _count_refusal(state, scope, layer, error, "enforce")
    span = trace.get_current_span()
    if span.is_recording():
        span.set_status(Status(StatusCode.ERROR, error.code))
        span.set_attributes(
            {ATTR_DECISION: "deny", ATTR_DECISION_LAYER: layer, ATTR_ERROR_TYPE: error.code}
        )
        event: dict[str, AttributeValue] = {ATTR_LAYER: layer, ATTR_ERROR_TYPE: error.code}
        if error.detail is not None:
            event[ATTR_DETAIL] = error.detail
        span.add_event(EVENT_REJECTED, event)
    audit.record_decision(scope, layer, "deny", error.code, identity, detail=error.detail)


def on_observed(scope: Scope, layer: str, error: IdentityError) -> None:
    """A layer in observe mode would have refused the request with `error`, and let it through."""
    state = _state
    identity = _count_refusal(state, scope, layer, error, "observe")
    span = trace.get_current_span()
    if span.is_recording():
        event: dict[str, AttributeValue] = {ATTR_LAYER: layer, ATTR_ERROR_TYPE: error.code}
        if error.detail is not None:
            event[ATTR_DETAIL] = error.detail
        span.add_event(EVENT_OBSERVED, event)
    audit.record_decision(scope, layer, "observe", error.code, identity, detail=error.detail)


def on_conversation(scope: Scope, conversation_id: str) -> None:
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute(ATTR_CONVERSATION, conversation_id)


def on_tokens(identity: Identity, input_tokens: int, output_tokens: int) -> None:
    """LLM tokens settled for `identity` (from the response's usage or reported by the app)."""
    state = _state
    if state.metrics_on():
        tokens = state.tokens
        base: dict[str, Any] = {}
        if identity.group is not None:
            base[ATTR_GROUP] = identity.group
        if identity.client_id is not None:
            base[ATTR_CLIENT_ID] = tokens.clients.admit(identity.client_id)
        state.user_attributes(tokens, identity, base)
        if input_tokens:
            tokens.instrument.add(input_tokens, {**base, ATTR_TOKEN_TYPE: "input"})
        if output_tokens:
            tokens.instrument.add(output_tokens, {**base, ATTR_TOKEN_TYPE: "output"})
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes({ATTR_USAGE_INPUT: input_tokens, ATTR_USAGE_OUTPUT: output_tokens})


# ------------------------------------------------------------------------------ authentication


@contextmanager
def jwks_fetch_span(issuer: str | None, url: str | None = None) -> Iterator[Span]:
    """A span around one key set fetch (not around a cache hit): exceptions mark it failed."""
    attributes: dict[str, AttributeValue] = {}
    if issuer is not None:
        attributes[ATTR_ISSUER] = issuer
    if url is not None:
        attributes[ATTR_URL] = url
    with _state.tracer.start_as_current_span(SPAN_JWKS_FETCH, attributes=attributes) as span:
        yield span


@contextmanager
def verify_span(issuer: str | None = None, algorithm: str | None = None) -> Iterator[Span]:
    """A span around a cold token verification (a cached token gets none)."""
    attributes: dict[str, AttributeValue] = {}
    if issuer is not None:
        attributes[ATTR_ISSUER] = issuer
    if algorithm is not None:
        attributes[ATTR_ALGORITHM] = algorithm
    with _state.tracer.start_as_current_span(SPAN_VERIFY, attributes=attributes) as span:
        yield span


def record_jwks_fetch(outcome: str, issuer: str | None = None, *, error: str | None = None) -> None:
    """Count one key set fetch (`outcome` "ok" or "error"); `error` also marks the fetch span."""
    state = _state
    if state.metrics_on():
        attributes = {ATTR_OUTCOME: outcome}
        if issuer is not None:
            attributes[ATTR_ISSUER] = issuer
        state.jwks_fetches.add(1, attributes)
    if error is not None:
        span = trace.get_current_span()
        if span.is_recording():
            span.set_status(Status(StatusCode.ERROR, error))


def record_auth_duration(seconds: float, outcome: str, issuer: str | None = None) -> None:
    """Record how long authenticating one request took; `outcome` e.g. "cached", "verified"."""
    state = _state
    if state.metrics_on():
        attributes = {ATTR_OUTCOME: outcome}
        if issuer is not None:
            attributes[ATTR_ISSUER] = issuer
        state.auth_duration.record(seconds, attributes)


# ------------------------------------------------------------------------------ baggage

_NO_BAGGAGE_CHANGE: Final[AbstractContextManager[None]] = nullcontext()


class _AttachedContext:
    __slots__ = ("_context", "_token")

    def __init__(self, ctx: context.Context) -> None:
        self._context = ctx
        self._token: object = None

    def __enter__(self) -> None:
        self._token = context.attach(self._context)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        context.detach(self._token)  # type: ignore[arg-type]


def outgoing_baggage(identity: Identity) -> AbstractContextManager[None]:
    """The baggage the app's outgoing calls carry while it handles this request.

    Identity keys a client put in its own `baggage` header are dropped (they never set
    identity, and must not reach services downstream as if verified). The verified identity is
    added only with `configure_telemetry(identity_in_baggage=True)`. Use it around the app call:
    `with outgoing_baggage(identity): await app(scope, receive, send)`.
    """
    enabled = _state.config.identity_in_baggage
    incoming: Mapping[str, object] = baggage.get_all()
    spoofed = [key for key in BAGGAGE_KEYS if key in incoming] if incoming else []
    if not enabled and not spoofed:
        return _NO_BAGGAGE_CHANGE
    ctx = context.get_current()
    for key in spoofed:
        ctx = baggage.remove_baggage(key, ctx)
    if enabled:
        for key, value in _baggage_entries(identity):
            ctx = baggage.set_baggage(key, value, ctx)
    return _AttachedContext(ctx)


def _baggage_entries(identity: Identity) -> Iterator[tuple[str, str]]:
    state = _state
    user = state.user_value(identity)
    if user is not None:
        yield state.user_attribute, user
    if identity.tenant is not None:
        yield ATTR_TENANT, identity.tenant
    if identity.group is not None:
        yield ATTR_GROUP, identity.group
