"""What the layers report: the one place a decision reaches OpenTelemetry and the audit.

Every function runs on the request path: with no SDK and no audit sink each one returns after
a check or two.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from opentelemetry.trace import Status, StatusCode

from asgi_identity.audit import record_decision, record_usage
from asgi_identity.errors import IdentityError
from asgi_identity.identity import SCOPE_KEY, Identity
from asgi_identity.telemetry import _config
from asgi_identity.telemetry._spans import identity_attributes, recording_span
from asgi_identity.telemetry.names import (
    ATTR_CONVERSATION,
    ATTR_DECISION,
    ATTR_DECISION_LAYER,
    ATTR_DETAIL,
    ATTR_ERROR_TYPE,
    ATTR_LAYER,
    ATTR_USAGE_INPUT,
    ATTR_USAGE_OUTPUT,
    EVENT_OBSERVED,
    EVENT_REJECTED,
)
from asgi_identity.types import Scope

if TYPE_CHECKING:
    from opentelemetry.util.types import AttributeValue

_IDENTITY_LAYER: Final = "IdentityMiddleware"
_USAGE_LAYER: Final = "UserRateLimit"


def authenticated(scope: Scope, identity: Identity) -> None:
    """IdentityMiddleware authenticated the request as `identity`."""
    state = _config.current
    counters = state.counters
    entry = None
    if not counters.metrics_off():
        entry = state.seen_entry(identity)
        cell = entry.request_cell
        if cell is None:
            cell = entry.request_cell = counters.request_cell(identity)
        counters.requests.tally.add(cell, 1)
    span = recording_span()
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
    record_decision(scope, _IDENTITY_LAYER, "allow", None, identity)


def allowed(scope: Scope, layer: str, identity: Identity, *, detail: str | None = None) -> None:
    """`layer` let the request through by a rule of its own; `detail` names the rule."""
    record_decision(scope, layer, "allow", None, identity, detail=detail)


def refused(scope: Scope, layer: str, error: IdentityError) -> None:
    """`layer` refused the request with `error`."""
    counters = _config.current.counters
    identity: Identity | None = scope.get(SCOPE_KEY)
    if not counters.metrics_off():
        counters.count_refusal(identity, layer, error.code, "enforce")
    span = recording_span()
    if span is not None:
        span.set_status(Status(StatusCode.ERROR, error.code))
        span.set_attributes(
            {ATTR_DECISION: "deny", ATTR_DECISION_LAYER: layer, ATTR_ERROR_TYPE: error.code}
        )
        span.add_event(EVENT_REJECTED, _event(layer, error))
    record_decision(scope, layer, "deny", error.code, identity, detail=error.detail)


def observed(scope: Scope, layer: str, error: IdentityError) -> None:
    """`layer`, in observe mode, would have refused the request with `error` and let it pass."""
    counters = _config.current.counters
    identity: Identity | None = scope.get(SCOPE_KEY)
    if not counters.metrics_off():
        counters.count_refusal(identity, layer, error.code, "observe")
    span = recording_span()
    if span is not None:
        span.add_event(EVENT_OBSERVED, _event(layer, error))
    record_decision(scope, layer, "observe", error.code, identity, detail=error.detail)


def _event(layer: str, error: IdentityError) -> dict[str, AttributeValue]:
    event: dict[str, AttributeValue] = {ATTR_LAYER: layer, ATTR_ERROR_TYPE: error.code}
    if error.detail is not None:
        event[ATTR_DETAIL] = error.detail
    return event


def conversation(scope: Scope, conversation_id: str) -> None:
    """ConversationTagger found the conversation the request belongs to."""
    # Its own call: the id differs per request, so it cannot join the cached identity dict.
    span = recording_span()
    if span is not None:
        span.set_attribute(ATTR_CONVERSATION, conversation_id)


def llm_tokens(
    identity: Identity, input_tokens: int, output_tokens: int, *, scope: Scope | None = None
) -> None:
    """LLM tokens settled for `identity` (from the response's usage or reported by the app).

    `scope`: the request they were used by, for the audit's usage record (its route, model and
    conversation); None for usage charged outside a request.
    """
    counters = _config.current.counters
    if (input_tokens > 0 or output_tokens > 0) and not counters.metrics_off():
        counters.count_llm_tokens(identity, input_tokens, output_tokens)
    span = recording_span()
    if span is not None:
        span.set_attributes({ATTR_USAGE_INPUT: input_tokens, ATTR_USAGE_OUTPUT: output_tokens})
    if input_tokens > 0 or output_tokens > 0:
        record_usage(scope, _USAGE_LAYER, identity, input_tokens, output_tokens)
