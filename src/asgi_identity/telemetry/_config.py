"""configure_telemetry(): the settings, checked at start-up, and the state they set up."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from opentelemetry import trace
from opentelemetry.metrics import MeterProvider

from asgi_identity import __version__, _privacy
from asgi_identity.identity import Identity
from asgi_identity.telemetry._counters import Counters
from asgi_identity.telemetry.names import ATTR_USER_HASH, ATTR_USER_ID, INSTRUMENTATION_SCOPE

if TYPE_CHECKING:
    from opentelemetry.util.types import AttributeValue

    from asgi_identity.telemetry._instruments import Cell


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


class Seen:
    """What one Identity object turns into, built at its first request and reused after."""

    __slots__ = ("identity", "request_cell", "span_attributes")

    def __init__(self, identity: Identity) -> None:
        # Held so that id(identity), the cache key, cannot be reused while the entry lives.
        self.identity = identity
        self.span_attributes: dict[str, AttributeValue] | None = None
        self.request_cell: Cell | None = None


# Verified tokens and API keys map to cached Identity objects, so a few thousand entries cover
# the identities in use; past that the cache starts afresh rather than tracking recency.
_MAX_SEEN: Final = 4096


class State:
    """Everything one configuration sets up; replaced whole by configure_telemetry()."""

    __slots__ = ("config", "counters", "hash_user", "privacy", "seen", "tracer", "user_attribute")

    def __init__(self, config: TelemetryConfig, privacy: _privacy.Privacy) -> None:
        self.config = config
        self.privacy = privacy
        self.hash_user = privacy.hash_user
        provider = config.tracer_provider
        self.tracer = (
            provider.get_tracer(INSTRUMENTATION_SCOPE, __version__)
            if provider is not None
            # A ProxyTracer when no SDK is set yet: it follows a provider installed later.
            else trace.get_tracer(INSTRUMENTATION_SCOPE, __version__)
        )
        self.user_attribute = ATTR_USER_HASH if config.pseudonymous else ATTR_USER_ID
        self.counters = Counters(
            config.meter_provider,
            enabled=config.metrics,
            max_users=config.max_users,
            hash_user=self.hash_user,
            user_attribute=self.user_attribute,
        )
        self.seen: dict[int, Seen] = {}

    def seen_entry(self, identity: Identity) -> Seen:
        entry = self.seen.get(id(identity))
        if entry is not None and entry.identity is identity:
            return entry
        if len(self.seen) >= _MAX_SEEN:
            self.seen.clear()
        entry = self.seen[id(identity)] = Seen(identity)
        return entry


#: The state in force; replaced whole, so read it as `_config.current` at each use.
current = State(TelemetryConfig(), _privacy.current)
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
    privacy = _privacy.Privacy(key, record_email=record_email)
    global current
    with _configure_lock:
        current = State(config, privacy)
        # Audit log records show a person the way telemetry does.
        _privacy.set_current(privacy)
    return config


def telemetry_config() -> TelemetryConfig:
    return current.config
