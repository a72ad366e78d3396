"""configure_audit(): where records go; record_decision(): one record per decision."""

from __future__ import annotations

import atexit
import json
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Final, Literal

from asgi_identity.audit._file import AuditFile
from asgi_identity.audit._keys import SigningKeySource, load_signing_key
from asgi_identity.audit._otel import emit_otel, logs_globals
from asgi_identity.audit._records import build_record, shared_record
from asgi_identity.audit._sinks import Emit, Sinks, logger
from asgi_identity.types import Scope

if TYPE_CHECKING:
    from asgi_identity.identity import Identity

Outcome = Literal["allow", "deny", "observe"]

_OUTCOMES: Final = frozenset({"allow", "deny", "observe"})
_EMITS: Final = frozenset({"otel", "logging", "none"})


_audit = Sinks()
_configure_lock = threading.Lock()


def configure_audit(
    *,
    path: str | os.PathLike[str] | None = None,
    signing_key: SigningKeySource | None = None,
    emit: Emit = "otel",
    policy_version: str | None = None,
    record_allowed: bool = True,
    logger_provider: Any = None,
    digest_every: int = 1000,
    digest_seconds: float = 60.0,
    rotate_bytes: int | None = None,
    rotate_seconds: float | None = None,
    fsync: bool = False,
) -> AuditFile | None:
    """Set where audit records go. Call once at start-up; returns the file writer, if any.

    - `emit`: "otel" (an OpenTelemetry log record per decision, through the global or the given
      `logger_provider`), "logging" (the stdlib logger `asgi_identity.audit`, at INFO), or
      "none" (the file only).
    - `path` and `signing_key`: also append every record to this chained JSON Lines file, with
      digests signed by this Ed25519 key (see `AuditFile` for the other options).
    - `policy_version`: written into every record, to tell which rules decided.
    - `record_allowed`: False keeps only refusals (and observe-mode would-be refusals).
    """
    if emit not in _EMITS:
        raise ValueError(f"configure_audit: emit must be 'otel', 'logging' or 'none', not {emit!r}")
    if (path is None) != (signing_key is None):
        raise ValueError("configure_audit: an audit file needs both path and signing_key")
    if policy_version is not None and not isinstance(policy_version, str):
        raise TypeError("configure_audit: policy_version must be a string")
    key = None if signing_key is None else load_signing_key(signing_key, "configure_audit")
    global _audit
    with _configure_lock:
        old = _audit
        settings: dict[str, Any] = {
            "emit": emit,
            "logger_provider": logger_provider,
            "policy_version": policy_version,
            "record_allowed": record_allowed,
        }
        # The old file is written out and closed before a file is opened: it may be the same
        # path, and the new writer's genesis continues from where the old one ended.
        _audit = Sinks(**settings)
        if old.file is not None:
            old.file.close()
        if path is None or key is None:
            return None
        file = AuditFile(
            path,
            key,
            digest_every=digest_every,
            digest_seconds=digest_seconds,
            rotate_bytes=rotate_bytes,
            rotate_seconds=rotate_seconds,
            fsync=fsync,
        )
        _audit = Sinks(file=file, **settings)
    return file


def shutdown_audit() -> None:
    """Write out what is queued and close the audit file (also done at interpreter exit)."""
    global _audit
    with _configure_lock:
        old = _audit
        _audit = Sinks()
    if old.file is not None:
        old.file.close()


atexit.register(shutdown_audit)


def record_decision(
    scope: Scope,
    layer: str,
    outcome: Outcome,
    reason: str | None,
    identity: Identity | None = None,
    *,
    detail: str | None = None,
    tool: str | None = None,
) -> None:
    """Record one decision: `outcome` is "allow", "deny" or "observe", `reason` the error code.

    The layers' events (`asgi_identity.telemetry.events`) record every refusal, observed
    refusal and authentication; call it yourself only for decisions of your own. `tool` names
    the MCP tool the decision was about.
    """
    if outcome not in _OUTCOMES:
        raise ValueError(
            f"record_decision: outcome must be allow, deny or observe, not {outcome!r}"
        )
    _record(scope, layer, outcome, reason, identity, detail=detail, tool=tool)


def record_usage(
    scope: Scope | None,
    layer: str,
    identity: Identity,
    input_tokens: int,
    output_tokens: int,
    *,
    cost: float | None = None,
) -> None:
    """Record the LLM tokens (and, later, the cost) one request used: outcome "usage".

    Written like an allowed decision (not with `record_allowed=False`). `scope` is the request's,
    for its route, model and conversation; None for usage charged outside a request.
    """
    _record(
        {} if scope is None else scope,
        layer,
        "usage",
        None,
        identity,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cost=cost,
    )


def _record(
    scope: Scope,
    layer: str,
    outcome: str,
    reason: str | None,
    identity: Identity | None,
    **extra: Any,
) -> None:
    state = _audit
    # Nothing configured and no logs SDK: one identity check against the API's global.
    if state._idle_while is logs_globals._LOGGER_PROVIDER:
        return
    if outcome != "deny" and outcome != "observe" and not state.record_allowed:
        return
    if not state.active():
        return
    now_ns = time.time_ns()
    record = build_record(
        scope,
        layer,
        outcome,
        reason,
        identity,
        policy_version=state.policy_version,
        now=now_ns / 1e9,
        fields=None if identity is None else state.identity_fields(identity),
        **extra,
    )
    if state.file is not None:
        state.file.append(record)
    if state.emit == "otel":
        # With a file, active() was true without asking whether a logs SDK records.
        if state.otel_logger is not None and state.logs_live():
            emit_otel(state.otel_logger, shared_record(record), now_ns)
    elif state.emit == "logging" and logger.isEnabledFor(logging.INFO):
        shared = shared_record(record)
        logger.info(
            "%s",
            json.dumps(shared, separators=(",", ":"), ensure_ascii=False),
            extra={"audit": shared},
        )


def _reset_after_fork() -> None:
    # A fork while another thread held the lock would leave the child's copy held forever.
    global _configure_lock
    _configure_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)
