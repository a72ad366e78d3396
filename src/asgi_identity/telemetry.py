"""Every OpenTelemetry name the package uses, and the hooks the layers call.

Only the OpenTelemetry API is imported: with no SDK installed every call is a no-op.
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from ._asgi import Scope
from .errors import IdentityError
from .identity import Identity

ATTR_USER_ID = "user.id"
ATTR_ENDUSER_ID = "enduser.id"
ATTR_USER_ROLES = "user.roles"
ATTR_SOURCE = "asgi_identity.source"
ATTR_CONVERSATION = "gen_ai.conversation.id"
EVENT_REJECTED = "asgi_identity.rejected"
EVENT_OBSERVED = "asgi_identity.would_reject"


def on_identity(scope: Scope, identity: Identity) -> None:
    """IdentityMiddleware authenticated a request."""
    span = trace.get_current_span()
    if not span.is_recording():
        return
    span.set_attribute(ATTR_SOURCE, identity.source)
    if identity.user_id is not None:
        span.set_attribute(ATTR_USER_ID, identity.user_id)
        span.set_attribute(ATTR_ENDUSER_ID, identity.user_id)


def on_rejection(scope: Scope, layer: str, error: IdentityError) -> None:
    """A layer refused the request with `error`."""
    span = trace.get_current_span()
    if not span.is_recording():
        return
    span.set_status(Status(StatusCode.ERROR, error.code))
    span.add_event(EVENT_REJECTED, {"asgi_identity.layer": layer, "error.code": error.code})


def on_observed(scope: Scope, layer: str, error: IdentityError) -> None:
    """A layer in observe mode would have refused the request with `error`, and let it through."""
    span = trace.get_current_span()
    if not span.is_recording():
        return
    span.add_event(EVENT_OBSERVED, {"asgi_identity.layer": layer, "error.code": error.code})


def on_conversation(scope: Scope, conversation_id: str) -> None:
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute(ATTR_CONVERSATION, conversation_id)


def on_tokens(identity: Identity, input_tokens: int, output_tokens: int) -> None:
    """LLM tokens settled for `identity` (from the response's usage or reported by the app)."""
