"""configure_audit(): where records go; record_decision(): one record per decision."""

from __future__ import annotations

import atexit
import json
import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from asgi_identity.audit._chain import file_key
from asgi_identity.audit._file import AuditFile
from asgi_identity.audit._otel import (
    AUDIT_LOGGER_NAME,
    NO_GLOBAL,
    emit_otel,
    logs_globals,
    otel_logger,
    records,
)
from asgi_identity.audit._records import build_record, identity_fields, shared_record
from asgi_identity.types import Scope

if TYPE_CHECKING:
    from asgi_identity.identity import Identity

Outcome = Literal["allow", "deny", "observe"]
Emit = Literal["otel", "logging", "none"]

_OUTCOMES: Final = frozenset({"allow", "deny", "observe"})
_EMITS: Final = frozenset({"otel", "logging", "none"})
_MAX_IDENTITIES: Final = 4096
_UNCHECKED: Final = object()

logger = logging.getLogger(AUDIT_LOGGER_NAME)


class _Audit:
    __slots__ = (
        "_checked_provider",
        "_explicit_provider",
        "_identity_fields",
        "_idle_while",
        "_logs_live",
        "emit",
        "file",
        "otel_logger",
        "policy_version",
        "record_allowed",
    )

    def __init__(
        self,
        *,
        emit: Emit = "otel",
        file: AuditFile | None = None,
        logger_provider: Any = None,
        policy_version: str | None = None,
        record_allowed: bool = True,
    ) -> None:
        self.emit = emit
        self.file = file
        self.policy_version = policy_version
        self.record_allowed = record_allowed
        self.otel_logger: Any = otel_logger(logger_provider) if emit == "otel" else None
        self._explicit_provider = logger_provider is not None
        # The global provider last looked at and whether it records; a different one is
        # looked at again, so an SDK installed after start-up is honoured.
        self._checked_provider: Any = _UNCHECKED
        self._logs_live = False
        # The global logger provider under which there is nothing to record (no file, no
        # logger provider given, emit="otel"), once seen; _UNCHECKED never matches.
        self._idle_while: Any = _UNCHECKED
        self._identity_fields: dict[int, tuple[Identity, dict[str, Any]]] = {}

    def active(self) -> bool:
        if self.file is not None:
            return True
        if self.emit == "logging":
            return logger.isEnabledFor(logging.INFO)
        if self.emit == "otel" and self.otel_logger is not None:
            return self.logs_live()
        return False

    def logs_live(self) -> bool:
        if self._explicit_provider:
            return True
        # The API's global, read directly: get_logger_provider() reads the environment on every
        # call until a provider is set. One identity check per request while it stays the same.
        provider = logs_globals._LOGGER_PROVIDER
        if provider is NO_GLOBAL:  # pragma: no cover - a future API without the private global
            return records(provider)
        if provider is self._checked_provider:
            return self._logs_live
        live = records(provider)
        self._logs_live = live
        self._checked_provider = provider
        if not live and self.file is None:
            self._idle_while = provider
        return live

    def identity_fields(self, identity: Identity) -> dict[str, Any]:
        # Identities of repeated tokens and keys are the same objects: read each one once.
        found = self._identity_fields.get(id(identity))
        if found is not None and found[0] is identity:
            return found[1]
        fields = identity_fields(identity)
        if len(self._identity_fields) >= _MAX_IDENTITIES:
            self._identity_fields.clear()
        # The entry holds the identity, so its id cannot be reused while it is cached.
        self._identity_fields[id(identity)] = (identity, fields)
        return fields


_audit = _Audit()
_configure_lock = threading.Lock()


def configure_audit(
    *,
    path: str | Path | None = None,
    key: bytes | str | None = None,
    emit: Emit = "otel",
    policy_version: str | None = None,
    record_allowed: bool = True,
    logger_provider: Any = None,
    fsync: bool = False,
) -> AuditFile | None:
    """Set where audit records go. Call once at start-up; returns the file writer, if any.

    - `emit`: "otel" (an OpenTelemetry log record per decision, through the global or the given
      `logger_provider`), "logging" (the stdlib logger `asgi_identity.audit`, at INFO), or
      "none" (the file only).
    - `path` and `key`: also append every record to this tamper-evident JSON Lines file.
    - `policy_version`: written into every record, to tell which rules decided.
    - `record_allowed`: False keeps only refusals (and observe-mode would-be refusals).
    """
    if emit not in _EMITS:
        raise ValueError(f"configure_audit: emit must be 'otel', 'logging' or 'none', not {emit!r}")
    if (path is None) != (key is None):
        raise ValueError("configure_audit: an audit file needs both path and key")
    if policy_version is not None and not isinstance(policy_version, str):
        raise TypeError("configure_audit: policy_version must be a string")
    if key is not None:
        file_key(key)  # a bad key fails here, before the file in use is closed
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
        # path, and two writers on one file would interleave their chains.
        _audit = _Audit(**settings)
        if old.file is not None:
            old.file.close()
        if path is None or key is None:
            return None
        file = AuditFile(path, key, fsync=fsync)
        _audit = _Audit(file=file, **settings)
    return file


def shutdown_audit() -> None:
    """Write out what is queued and close the audit file (also done at interpreter exit)."""
    global _audit
    with _configure_lock:
        old = _audit
        _audit = _Audit()
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
) -> None:
    """Record one decision: `outcome` is "allow", "deny" or "observe", `reason` the error code.

    The layers' events (`asgi_identity.telemetry.events`) record every refusal, observed
    refusal and authentication; call it yourself only for decisions of your own.
    """
    if outcome not in _OUTCOMES:
        raise ValueError(
            f"record_decision: outcome must be allow, deny or observe, not {outcome!r}"
        )
    state = _audit
    # Nothing configured and no logs SDK: one identity check against the API's global.
    if state._idle_while is logs_globals._LOGGER_PROVIDER:
        return
    if outcome == "allow" and not state.record_allowed:
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
        detail=detail,
        policy_version=state.policy_version,
        now=now_ns / 1e9,
        fields=None if identity is None else state.identity_fields(identity),
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
