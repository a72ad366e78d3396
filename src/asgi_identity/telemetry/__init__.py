"""Every OpenTelemetry name the package uses, and the hooks the layers call.

Only the OpenTelemetry API is imported: with no SDK installed every hook returns after a check or
two. Settings come from `configure_telemetry()`, called once at start-up (docs/telemetry.md).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

from opentelemetry import baggage, context, metrics, trace
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
from opentelemetry.trace import Span, Status, StatusCode

from asgi_identity import _privacy, audit
from asgi_identity.errors import IdentityError
from asgi_identity.identity import SCOPE_KEY, Identity
from asgi_identity.types import Scope

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
    from asgi_identity import __version__

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


class _NoGlobals:
    # A future API without the private global: never "no SDK yet", so metrics_on() decides.
    _METER_PROVIDER = object()


_metrics_globals: Any = (
    _metrics_internal if hasattr(_metrics_internal, "_METER_PROVIDER") else _NoGlobals
)


def _global_meter_provider_set() -> bool:
    # get_meter_provider() reads the environment on every call until a provider is set (about
    # a microsecond); the API's own global says the same for the cost of an attribute read.
    if _metrics_internal is not None and getattr(_metrics_internal, "_METER_PROVIDER", 0) is None:
        return False
    return not isinstance(metrics.get_meter_provider(), _NOT_RECORDING_PROVIDERS)


class _Cell:
    """The running total of one attribute set of one counter."""

    __slots__ = ("attributes", "value")

    def __init__(self, attributes: dict[str, str]) -> None:
        self.attributes = attributes
        self.value = 0


class _Tally:
    """A counter summed here and handed to the SDK when it collects (an observable counter).

    A synchronous `Counter.add` makes the SDK clean, validate and hash the attributes on every
    call, tens of microseconds per request under load; adding to a total we keep costs a lock
    and an integer add. The SDK reads the totals through the callback at each collection, so
    exporters see the same monotonic sums.
    """

    __slots__ = ("_cells", "_lock")

    def __init__(self) -> None:
        self._cells: dict[tuple[tuple[str, str], ...], _Cell] = {}
        self._lock = threading.Lock()

    def cell(self, attributes: dict[str, str]) -> _Cell:
        key = tuple(sorted(attributes.items()))
        found = self._cells.get(key)
        if found is None:
            with self._lock:
                found = self._cells.setdefault(key, _Cell(attributes))
        return found

    def add(self, cell: _Cell, amount: int) -> None:
        with self._lock:
            cell.value += amount

    def observe(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            totals = [(cell.value, cell.attributes) for cell in self._cells.values()]
        return [Observation(value, attributes) for value, attributes in totals if value]


class _Instruments:
    """The instruments of one meter provider, made once: re-registering an observable counter
    keeps its first callbacks, so the totals live as long as the provider, like the SDK's own
    series do (reconfiguring restarts only the per-user bounds)."""

    __slots__ = (
        "auth_duration",
        "jwks_fetches",
        "rate_limit_hits",
        "rejections",
        "requests",
        "tokens",
    )

    def __init__(self, provider: MeterProvider | None) -> None:
        meter = (
            provider.get_meter(_SCOPE_NAME, _version())
            if provider is not None
            # A proxy when no SDK is set yet: it follows a provider installed later.
            else metrics.get_meter(_SCOPE_NAME, _version())
        )
        self.requests = _Tally()
        self.rejections = _Tally()
        self.rate_limit_hits = _Tally()
        self.tokens = _Tally()
        for name, tally, unit, description in (
            (
                METRIC_REQUESTS,
                self.requests,
                "{request}",
                "Requests seen by IdentityMiddleware, by authentication outcome",
            ),
            (
                METRIC_REJECTIONS,
                self.rejections,
                "{request}",
                "Requests refused (or, in observe mode, that would have been) by layer and code",
            ),
            (
                METRIC_RATE_LIMIT_HITS,
                self.rate_limit_hits,
                "{request}",
                "Requests over a rate limit or token quota",
            ),
            (METRIC_TOKENS, self.tokens, "{token}", "LLM tokens used, by user and tier"),
        ):
            meter.create_observable_counter(
                name, callbacks=[tally.observe], unit=unit, description=description
            )
        # Recorded only on the cold path (a new token, a key set fetch): plain instruments.
        self.auth_duration = meter.create_histogram(
            METRIC_AUTH_DURATION,
            unit="s",
            description="Time spent authenticating a request",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self.jwks_fetches = meter.create_counter(
            METRIC_JWKS_FETCHES, unit="{fetch}", description="Key set fetches by outcome"
        )


_global_instruments: _Instruments | None = None
_provider_instruments: weakref.WeakKeyDictionary[Any, _Instruments] = weakref.WeakKeyDictionary()
_held_instruments: dict[int, tuple[MeterProvider, _Instruments]] = {}
_instruments_lock = threading.Lock()


def _instruments_for(provider: MeterProvider | None) -> _Instruments:
    global _global_instruments
    with _instruments_lock:
        if provider is None:
            if _global_instruments is None:
                _global_instruments = _Instruments(None)
            return _global_instruments
        try:
            found = _provider_instruments.get(provider)
            if found is None:
                found = _provider_instruments[provider] = _Instruments(provider)
        except TypeError:  # a provider that cannot be weakly referenced: kept for good
            held = _held_instruments.get(id(provider))
            if held is None or held[0] is not provider:
                held = _held_instruments[id(provider)] = (provider, _Instruments(provider))
            found = held[1]
        return found


class _Instrument:
    """One counter and the bounded user (and client) values it has seen under this config."""

    __slots__ = ("clients", "tally", "users")

    def __init__(self, tally: _Tally, max_users: int) -> None:
        self.tally = tally
        self.users = _DistinctValues(max_users)
        self.clients = _DistinctValues(max_users)


class _Seen:
    """What one Identity object turns into, built at its first request and reused after."""

    __slots__ = ("identity", "request_cell", "span_attributes")

    def __init__(self, identity: Identity) -> None:
        # Held so that id(identity), the cache key, cannot be reused while the entry lives.
        self.identity = identity
        self.span_attributes: dict[str, AttributeValue] | None = None
        self.request_cell: _Cell | None = None


# Verified tokens and API keys map to cached Identity objects, so a few thousand entries cover
# the identities in use; past that the cache starts afresh rather than tracking recency.
_MAX_SEEN: Final = 4096


class _State:
    __slots__ = (
        "_live",
        "auth_duration",
        "config",
        "hash_user",
        "jwks_fetches",
        "privacy",
        "rate_limit_hits",
        "rejections",
        "requests",
        "seen",
        "token_cells",
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
        self.privacy = _privacy.Privacy(config.pseudonymize_key, record_email=config.record_email)
        self.hash_user = self.privacy.hash_user
        # Given an explicit provider, it is live; the global one is checked until an SDK appears.
        self._live = config.metrics and config.meter_provider is not None
        instruments = _instruments_for(config.meter_provider)
        limit = config.max_users
        self.requests = _Instrument(instruments.requests, limit)
        self.rejections = _Instrument(instruments.rejections, limit)
        self.rate_limit_hits = _Instrument(instruments.rate_limit_hits, limit)
        self.tokens = _Instrument(instruments.tokens, limit)
        self.auth_duration = instruments.auth_duration
        self.jwks_fetches = instruments.jwks_fetches
        self.seen: dict[int, _Seen] = {}
        self.token_cells: dict[tuple[str | None, str | None, str | None], tuple[_Cell, _Cell]] = {}

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

    def metrics_off(self) -> bool:
        """metrics_on() negated, with the common answers in two attribute reads."""
        if self._live:
            return False
        if _metrics_globals._METER_PROVIDER is None:  # no SDK set yet
            return True
        return not self.metrics_on()

    def seen_entry(self, identity: Identity) -> _Seen:
        entry = self.seen.get(id(identity))
        if entry is not None and entry.identity is identity:
            return entry
        if len(self.seen) >= _MAX_SEEN:
            self.seen.clear()
        entry = self.seen[id(identity)] = _Seen(identity)
        return entry

    def user_value(self, identity: Identity | None) -> str | None:
        if identity is None or identity.user_id is None:
            return None
        if self.hash_user is not None:
            return self.hash_user(identity.user_id)
        return identity.user_id

    def user_attributes(
        self, instrument: _Instrument, identity: Identity | None, attributes: dict[str, str]
    ) -> dict[str, str]:
        user = self.user_value(identity)
        if user is not None:
            attributes[self.user_attribute] = instrument.users.admit(user)
        return attributes

    def request_cell(self, identity: Identity) -> _Cell:
        requests = self.requests
        attributes = {ATTR_OUTCOME: "authenticated", ATTR_SOURCE: identity.source}
        if identity.group is not None:
            attributes[ATTR_GROUP] = identity.group
        if identity.client_id is not None:
            attributes[ATTR_CLIENT_ID] = requests.clients.admit(identity.client_id)
        return requests.tally.cell(self.user_attributes(requests, identity, attributes))

    def token_cells_of(self, identity: Identity) -> tuple[_Cell, _Cell]:
        # Keyed by value, not by object: usage reported by the app comes with the identity
        # ConversationTagger made for this one request.
        key = (identity.user_id, identity.group, identity.client_id)
        cells = self.token_cells.get(key)
        if cells is not None:
            return cells
        tokens = self.tokens
        base: dict[str, str] = {}
        if identity.group is not None:
            base[ATTR_GROUP] = identity.group
        if identity.client_id is not None:
            base[ATTR_CLIENT_ID] = tokens.clients.admit(identity.client_id)
        self.user_attributes(tokens, identity, base)
        cells = (
            tokens.tally.cell({**base, ATTR_TOKEN_TYPE: "input"}),
            tokens.tally.cell({**base, ATTR_TOKEN_TYPE: "output"}),
        )
        if len(self.token_cells) >= _MAX_SEEN:
            self.token_cells.clear()
        self.token_cells[key] = cells
        return cells


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
        # Audit log records show a person the way telemetry does.
        _privacy.set_current(_state.privacy)
    return config


def telemetry_config() -> TelemetryConfig:
    return _state.config


# ------------------------------------------------------------------------------ request hooks

_SPAN_KEY: str | None
try:  # the context key the current span lives under; private, so guarded
    from opentelemetry.trace.propagation import _SPAN_KEY
except ImportError:  # pragma: no cover - a future API without it
    _SPAN_KEY = None


def _recording_span() -> Span | None:
    """The current span if it records, else None (trace.get_current_span() minus a call)."""
    span: Any
    if _SPAN_KEY is None:  # pragma: no cover
        span = trace.get_current_span()
    else:
        span = context.get_value(_SPAN_KEY)
        if span is None:
            return None
    return span if span.is_recording() else None


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
        attributes[ATTR_USER_ROLES] = tuple(sorted(identity.roles))
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
            attributes[ATTR_ACTOR_CHAIN] = tuple(actor.chain)
    if identity.conversation_id is not None:
        attributes[ATTR_CONVERSATION] = identity.conversation_id
    return attributes


def on_identity(scope: Scope, identity: Identity) -> None:
    """IdentityMiddleware authenticated a request."""
    state = _state
    entry: _Seen | None = None
    if not state.metrics_off():
        entry = state.seen_entry(identity)
        cell = entry.request_cell
        if cell is None:
            cell = entry.request_cell = state.request_cell(identity)
        state.requests.tally.add(cell, 1)
    span = _recording_span()
    if span is not None:
        if entry is None:
            entry = state.seen_entry(identity)
        attributes = entry.span_attributes
        if attributes is None:
            attributes = identity_attributes(identity)
            attributes[ATTR_DECISION] = "allow"
            entry.span_attributes = attributes
        # One call with a dict built once per identity: the SDK still checks each value.
        span.set_attributes(attributes)
    audit.record_decision(scope, "IdentityMiddleware", "allow", None, identity)


def _count_refusal(
    state: _State, scope: Scope, layer: str, error: IdentityError, mode: str
) -> Identity | None:
    identity: Identity | None = scope.get(SCOPE_KEY)
    if state.metrics_off():
        return identity
    code = error.code
    rejections = state.rejections
    attributes = {ATTR_LAYER: layer, ATTR_ERROR_TYPE: code, ATTR_MODE: mode}
    rejections.tally.add(
        rejections.tally.cell(state.user_attributes(rejections, identity, attributes)), 1
    )
    if code in _RATE_LIMIT_CODES:
        hits = state.rate_limit_hits
        attributes = {ATTR_ERROR_TYPE: code, ATTR_MODE: mode}
        if identity is not None and identity.group is not None:
            attributes[ATTR_GROUP] = identity.group
        hits.tally.add(hits.tally.cell(state.user_attributes(hits, identity, attributes)), 1)
    if identity is None and mode == "enforce":
        # Refused before an identity existed: IdentityMiddleware itself said no.
        requests = state.requests.tally
        requests.add(requests.cell({ATTR_OUTCOME: "rejected", ATTR_ERROR_TYPE: code}), 1)
    return identity


def on_rejection(scope: Scope, layer: str, error: IdentityError) -> None:
    """A layer refused the request with `error`."""
    state = _state
    identity = _count_refusal(state, scope, layer, error, "enforce")
    span = _recording_span()
    if span is not None:
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
    span = _recording_span()
    if span is not None:
        event: dict[str, AttributeValue] = {ATTR_LAYER: layer, ATTR_ERROR_TYPE: error.code}
        if error.detail is not None:
            event[ATTR_DETAIL] = error.detail
        span.add_event(EVENT_OBSERVED, event)
    audit.record_decision(scope, layer, "observe", error.code, identity, detail=error.detail)


def on_conversation(scope: Scope, conversation_id: str) -> None:
    # Its own call: the id differs per request, so it cannot join the cached identity dict.
    span = _recording_span()
    if span is not None:
        span.set_attribute(ATTR_CONVERSATION, conversation_id)


def on_tokens(identity: Identity, input_tokens: int, output_tokens: int) -> None:
    """LLM tokens settled for `identity` (from the response's usage or reported by the app)."""
    state = _state
    # A counter only goes up: a negative count from a confused upstream is not subtracted.
    if (input_tokens > 0 or output_tokens > 0) and not state.metrics_off():
        cell_in, cell_out = state.token_cells_of(identity)
        tally = state.tokens.tally
        if input_tokens > 0:
            tally.add(cell_in, input_tokens)
        if output_tokens > 0:
            tally.add(cell_out, output_tokens)
    span = _recording_span()
    if span is not None:
        span.set_attributes({ATTR_USAGE_INPUT: input_tokens, ATTR_USAGE_OUTPUT: output_tokens})


# ------------------------------------------------------------------------------ authentication


_NO_SPAN: Final[Span] = trace.INVALID_SPAN


def _no_tracer() -> bool:
    # With no SDK the API's proxy tracer still builds a context and a non-recording span for
    # every call (about 15 us on a new token); the API's own global says "no SDK yet" for the
    # cost of an attribute read. A provider given to configure_telemetry() always counts.
    return _state.config.tracer_provider is None and getattr(trace, "_TRACER_PROVIDER", 0) is None


@contextmanager
def jwks_fetch_span(issuer: str | None, url: str | None = None) -> Iterator[Span]:
    """A span around one key set fetch (not around a cache hit): exceptions mark it failed."""
    attributes: dict[str, AttributeValue] = {}
    if issuer is not None:
        attributes[ATTR_ISSUER] = issuer
    if url is not None:
        attributes[ATTR_URL] = url
    if _no_tracer():
        yield _NO_SPAN
        return
    with _state.tracer.start_as_current_span(SPAN_JWKS_FETCH, attributes=attributes) as span:
        yield span


@contextmanager
def verify_span() -> Iterator[Span]:
    """A span around a cold token verification (a cached token gets none)."""
    if _no_tracer():
        yield _NO_SPAN
        return
    with _state.tracer.start_as_current_span(SPAN_VERIFY) as span:
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
    """Record how long one cold token verification took; `outcome` "verified" or "invalid".

    Cached tokens are not timed: their cost is a dictionary lookup.
    """
    state = _state
    if state.metrics_on():
        attributes = {ATTR_OUTCOME: outcome}
        if issuer is not None:
            attributes[ATTR_ISSUER] = issuer
        state.auth_duration.record(seconds, attributes)


# ------------------------------------------------------------------------------ baggage

_NO_BAGGAGE_CHANGE: Final[AbstractContextManager[None]] = nullcontext()
# The context key the API keeps baggage under (private, so looked up guarded).
_BAGGAGE_KEY: Final[str | None] = getattr(baggage, "_BAGGAGE_KEY", None)


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
    incoming: Mapping[str, object] | None = (
        # The baggage dict itself, without the read-only view get_all() wraps it in.
        context.get_value(_BAGGAGE_KEY)  # type: ignore[assignment]
        if _BAGGAGE_KEY is not None
        else baggage.get_all()
    )
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
