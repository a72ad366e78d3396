"""The current span: what an identity puts on it, and the spans and timings of authentication."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final

from opentelemetry import context, trace
from opentelemetry.trace import Span, Status, StatusCode

from asgi_identity.identity import Identity
from asgi_identity.telemetry import _config
from asgi_identity.telemetry.names import (
    ATTR_ACTOR,
    ATTR_ACTOR_CHAIN,
    ATTR_API_KEY_ID,
    ATTR_CLIENT_ID,
    ATTR_CONVERSATION,
    ATTR_ENDUSER_ID,
    ATTR_GROUP,
    ATTR_ISSUER,
    ATTR_OUTCOME,
    ATTR_SOURCE,
    ATTR_TENANT,
    ATTR_URL,
    ATTR_USER_EMAIL,
    ATTR_USER_HASH,
    ATTR_USER_ID,
    ATTR_USER_ROLES,
    SPAN_JWKS_FETCH,
    SPAN_VERIFY,
)

if TYPE_CHECKING:
    from opentelemetry.util.types import AttributeValue

_SPAN_KEY: str | None
try:  # the context key the current span lives under; private, so guarded
    from opentelemetry.trace.propagation import _SPAN_KEY
except ImportError:  # pragma: no cover - a future API without it
    _SPAN_KEY = None


def recording_span() -> Span | None:
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
    state = _config.current
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


# ------------------------------------------------------------------------------ authentication

_NO_SPAN: Final[Span] = trace.INVALID_SPAN


def _no_tracer() -> bool:
    # With no SDK the API's proxy tracer still builds a context and a non-recording span for
    # every call (about 15 us on a new token); the API's own global says "no SDK yet" for the
    # cost of an attribute read. A provider given to configure_telemetry() always counts.
    return (
        _config.current.config.tracer_provider is None
        and getattr(trace, "_TRACER_PROVIDER", 0) is None
    )


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
    with _config.current.tracer.start_as_current_span(
        SPAN_JWKS_FETCH, attributes=attributes
    ) as span:
        yield span


@contextmanager
def verify_span() -> Iterator[Span]:
    """A span around a cold token verification (a cached token gets none)."""
    if _no_tracer():
        yield _NO_SPAN
        return
    with _config.current.tracer.start_as_current_span(SPAN_VERIFY) as span:
        yield span


def record_jwks_fetch(outcome: str, issuer: str | None = None, *, error: str | None = None) -> None:
    """Count one key set fetch (`outcome` "ok" or "error"); `error` also marks the fetch span."""
    counters = _config.current.counters
    if counters.metrics_on():
        attributes = {ATTR_OUTCOME: outcome}
        if issuer is not None:
            attributes[ATTR_ISSUER] = issuer
        counters.jwks_fetches.add(1, attributes)
    if error is not None:
        span = trace.get_current_span()
        if span.is_recording():
            span.set_status(Status(StatusCode.ERROR, error))


def record_auth_duration(seconds: float, outcome: str, issuer: str | None = None) -> None:
    """Record how long one cold token verification took; `outcome` "verified" or "invalid".

    Cached tokens are not timed: their cost is a dictionary lookup.
    """
    counters = _config.current.counters
    if counters.metrics_on():
        attributes = {ATTR_OUTCOME: outcome}
        if issuer is not None:
            attributes[ATTR_ISSUER] = issuer
        counters.auth_duration.record(seconds, attributes)
