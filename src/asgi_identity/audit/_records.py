"""The audit record of one decision, and the copy of it that leaves the process."""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from opentelemetry import trace

from asgi_identity import _privacy
from asgi_identity._http.view import SCOPE_KEY as VIEW_KEY
from asgi_identity._http.view import RequestView
from asgi_identity.types import Scope

if TYPE_CHECKING:
    from asgi_identity.identity import Identity


# The formatted second of the last record: records come many a second, and formatting a date
# costs more than the rest of the record. One tuple, replaced whole, so threads may share it.
_last_second: tuple[int, str] = (-1, "")


def timestamp(now: float) -> str:
    global _last_second
    seconds, micros = divmod(round(now * 1_000_000), 1_000_000)
    cached_second, prefix = _last_second
    if seconds != cached_second:
        prefix = datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        _last_second = (seconds, prefix)
    return f"{prefix}.{micros:06d}Z"


def identity_fields(identity: Identity) -> dict[str, Any]:
    fields: dict[str, Any] = {"source": identity.source}
    for name in ("user_id", "email", "tenant", "group", "client_id", "issuer"):
        value = getattr(identity, name)
        if value is not None:
            fields[name] = value
    if identity.actor is not None:
        fields["actor"] = list(identity.actor.chain)
    if identity.api_key is not None:
        fields["api_key_id"] = identity.api_key.id
    if identity.conversation_id is not None:
        fields["conversation_id"] = identity.conversation_id
    return fields


def build_record(
    scope: Scope,
    layer: str,
    outcome: str,
    reason: str | None,
    identity: Identity | None,
    *,
    detail: str | None = None,
    policy_version: str | None = None,
    now: float | None = None,
    fields: Mapping[str, Any] | None = None,
    tool: str | None = None,
    input_tokens: int | None = None,
    output_tokens: int | None = None,
    cost: float | None = None,
) -> dict[str, Any]:
    """The audit record of one decision, as a JSON-able dict (None fields left out).

    `fields`: `identity`'s part of the record when the caller has it cached already.
    """
    record: dict[str, Any] = {
        "time": timestamp(time.time() if now is None else now),
        "outcome": outcome,
        "layer": layer,
    }
    if reason is not None:
        record["reason"] = reason
    if detail is not None:
        record["detail"] = detail
    view: RequestView | None = scope.get(VIEW_KEY)
    if identity is not None:
        record.update(identity_fields(identity) if fields is None else fields)
    elif view is not None:
        # Refused before an identity existed: the conversation is still the request's own.
        conversation = view.conversation_id
        if conversation is not None:
            record["conversation_id"] = conversation
    if view is not None:
        model = view.model  # known once a layer has read the body (or a WebSocket's query)
        if model is not None:
            record["model"] = model
    if tool is not None:
        record["tool"] = tool
    if input_tokens is not None:
        record["input_tokens"] = input_tokens
    if output_tokens is not None:
        record["output_tokens"] = output_tokens
    if cost is not None:
        record["cost"] = cost
    # Usage charged outside a request has no scope of its own: no route then.
    method = scope.get("method")
    if method is not None:
        record["method"] = method
    elif scope.get("type") == "websocket":
        record["method"] = "WEBSOCKET"
    path = scope.get("path")
    if path is not None:
        record["path"] = path
    client = scope.get("client")
    if client:
        record["client_address"] = client[0]
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        record["trace_id"] = format(span_context.trace_id, "032x")
        record["span_id"] = format(span_context.span_id, "016x")
    if policy_version is not None:
        record["policy_version"] = policy_version
    return record


def shared_record(record: dict[str, Any]) -> dict[str, Any]:
    """The record as log pipelines get it: the person shown as `configure_telemetry()` says.

    Pseudonymous telemetry turns `user_id` into `user_hash`; `email` stays unless telemetry
    records email. Only the audit file keeps both: protect it like the records it holds.
    """
    if "user_id" not in record and "email" not in record:
        return record
    privacy = _privacy.current
    hash_user = privacy.hash_user
    record_email = privacy.record_email
    if hash_user is None and (record_email or "email" not in record):
        return record
    shared = dict(record)
    if not record_email:
        shared.pop("email", None)
    if hash_user is not None and "user_id" in shared:
        shared["user_hash"] = hash_user(shared.pop("user_id"))
    return shared
