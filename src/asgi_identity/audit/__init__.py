"""Audit records: one per decision, as OpenTelemetry log records and in a tamper-evident file.

The file is JSON Lines; each record carries `seq` and `mac`, an HMAC-SHA256 over the previous
record's MAC and this record's canonical JSON, so a changed, removed or reordered record breaks
the chain at the first place it was touched. See docs/audit.md.
"""

from __future__ import annotations

import atexit
import hashlib
import hmac
import inspect
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from opentelemetry import trace

from asgi_identity.types import Scope

try:
    import fcntl

    _CAN_LOCK = True
except ImportError:  # pragma: no cover - not POSIX: no lock against a second writer
    _CAN_LOCK = False

if TYPE_CHECKING:
    from asgi_identity.identity import Identity

Outcome = Literal["allow", "deny", "observe"]
Emit = Literal["otel", "logging", "none"]

AUDIT_LOGGER_NAME: Final = "asgi_identity.audit"
EVENT_NAME: Final = "asgi_identity.audit"
_OUTCOMES: Final = frozenset({"allow", "deny", "observe"})
_EMITS: Final = frozenset({"otel", "logging", "none"})
_MIN_KEY_BYTES: Final = 16

logger = logging.getLogger(AUDIT_LOGGER_NAME)
_internal_logger = logging.getLogger("asgi_identity")

# The OpenTelemetry logs API still lives in a private module and has changed between releases:
# import it guarded, and pass only the keywords every supported release accepts.
try:
    from opentelemetry import _logs as _otel_logs

    _LOG_RECORD_PARAMS = frozenset(inspect.signature(_otel_logs.LogRecord.__init__).parameters)
    _INFO: Any = _otel_logs.SeverityNumber.INFO
except ImportError:  # pragma: no cover - an API without the logs signal
    _otel_logs = None  # type: ignore[assignment]
    _LOG_RECORD_PARAMS = frozenset()
    _INFO = None
try:  # the placeholder until an SDK provider is set
    from opentelemetry._logs import _internal as _logs_internal
    from opentelemetry._logs._internal import ProxyLoggerProvider

    _NOT_RECORDING_PROVIDERS: tuple[type, ...] = (
        ProxyLoggerProvider,
        _otel_logs.NoOpLoggerProvider,
    )
except ImportError:  # pragma: no cover - a future API without it: always emit
    _logs_internal = None  # type: ignore[assignment]
    _NOT_RECORDING_PROVIDERS = ()


def _canonical(record: Mapping[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _mac(key: bytes, previous: str, canonical: bytes) -> str:
    return hmac.new(key, previous.encode("ascii") + b"\n" + canonical, hashlib.sha256).hexdigest()


def _key_bytes(key: bytes | str, where: str) -> bytes:
    if isinstance(key, str):
        key = key.encode("utf-8")
    if not isinstance(key, bytes):
        raise TypeError(f"{where}: the audit key must be bytes or str")
    if not key:
        raise ValueError(f"{where}: the audit key must not be empty")
    return key


def _file_key(key: bytes | str) -> bytes:
    key = _key_bytes(key, "AuditFile")
    if len(key) < _MIN_KEY_BYTES:
        raise ValueError(f"AuditFile: the audit key must be at least {_MIN_KEY_BYTES} bytes")
    return key


# ------------------------------------------------------------------------------ the file


class AuditFile:
    """Appends records to a JSON Lines file, each chained to the one before by HMAC-SHA256.

    `append()` only queues the record: a writer thread serializes, signs and writes, so the
    event loop never waits on the disk. An existing file is continued where its chain ends.
    """

    def __init__(
        self,
        path: str | Path,
        key: bytes | str,
        *,
        fsync: bool = False,
        max_pending: int = 100_000,
    ) -> None:
        key = _file_key(key)
        if max_pending < 1:
            raise ValueError("AuditFile: max_pending must be at least 1")
        self.path = Path(path)
        self._key = key
        self._fsync = fsync
        self._max_pending = max_pending
        # Unbuffered: after a failed write nothing is left in a buffer to reach the disk later.
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            _lock(self._fd, self.path)
            self._previous, self._seq = _chain_end(self.path, key)
        except BaseException:
            os.close(self._fd)
            raise
        self._queue: deque[dict[str, Any]] = deque()
        self._cond = threading.Condition()
        self._pending = 0
        self._closing = False
        self.dropped = 0
        self._thread = threading.Thread(
            target=self._run, name=f"asgi-identity-audit:{self.path.name}", daemon=True
        )
        self._thread.start()

    def append(self, record: dict[str, Any]) -> None:
        """Queue `record` (a JSON-able dict, without `seq`/`mac`) to be signed and written."""
        with self._cond:
            if self._closing:
                raise RuntimeError(f"AuditFile {self.path} is closed")
            if self._pending >= self._max_pending:
                # The disk cannot keep up: losing a record is bad, stalling every request worse.
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 10_000 == 0:
                    _internal_logger.error(
                        "audit file %s is not keeping up: %d records dropped",
                        self.path,
                        self.dropped,
                    )
                return
            self._queue.append(record)
            self._pending += 1
            self._cond.notify()

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until every queued record is on disk; False if `timeout` ran out first."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending == 0, timeout)

    def close(self, timeout: float | None = 10.0) -> None:
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._cond.notify_all()
        # The writer closes the file once the queue is written: a writer still busy after
        # `timeout` keeps it (and its lock) rather than being cut off mid-record.
        self._thread.join(timeout)
        if self._thread.is_alive():
            _internal_logger.warning(
                "audit file %s: still writing %d queued records after %ss",
                self.path,
                self._pending,
                timeout,
            )

    @property
    def last_mac(self) -> str:
        return self._previous

    def _run(self) -> None:
        try:
            self._drain()
        finally:
            os.close(self._fd)  # also lets go of the lock

    def _drain(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._queue) or self._closing)
                batch = list(self._queue)
                self._queue.clear()
                if not batch and self._closing:
                    return
            try:
                self._write(batch)
            except Exception:  # the writer must outlive a bad record or a full disk
                _internal_logger.exception("audit file %s: could not write records", self.path)
            finally:
                with self._cond:
                    self._pending -= len(batch)
                    self._cond.notify_all()

    def _write(self, batch: list[dict[str, Any]]) -> None:
        # Signed into locals: the chain end moves only once the records are on disk, so a
        # record that cannot be encoded or a failed write never leaves a gap in the chain.
        seq, previous = self._seq, self._previous
        lines = []
        for record in batch:
            signed = dict(record)
            signed["seq"] = seq + 1
            try:
                canonical = _canonical(signed)
            except (TypeError, ValueError) as exc:
                _internal_logger.error(
                    "audit file %s: a record could not be written (not JSON): %s", self.path, exc
                )
                continue
            seq += 1
            previous = _mac(self._key, previous, canonical)
            signed["mac"] = previous
            lines.append(_canonical(signed) + b"\n")
        if not lines:
            return
        end = os.fstat(self._fd).st_size
        try:
            self._write_all(b"".join(lines))
            if self._fsync:
                os.fsync(self._fd)
        except OSError as exc:
            # Cut what reached the disk, so the file still ends at the last committed record.
            try:
                os.ftruncate(self._fd, end)
            except OSError:
                _internal_logger.exception(
                    "audit file %s: could not cut a partial write", self.path
                )
            _internal_logger.error(
                "audit file %s: %d records could not be written: %s", self.path, len(lines), exc
            )
            return
        self._seq, self._previous = seq, previous

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]


def _lock(fd: int, path: Path) -> None:
    """Hold an exclusive lock on the open file: two writers would interleave their chains."""
    if not _CAN_LOCK:  # pragma: no cover - not POSIX
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RuntimeError(
            f"audit file {path} is in use by another writer (another process, or an AuditFile "
            "not yet closed): use one audit file per process, e.g. with the pid in its name"
        ) from None


def _chain_end(path: Path, key: bytes) -> tuple[str, int]:
    """The MAC and sequence number the next record continues from (empty file: "", 0)."""
    if not path.exists() or path.stat().st_size == 0:
        return "", 0
    result = verify_audit_file(path, key)
    if not result.ok:
        raise ValueError(
            f"audit file {path} does not verify ({result.reason} at line {result.line}); "
            "move it aside before appending, and keep it as evidence"
        )
    return result.last_mac or "", result.records


# ------------------------------------------------------------------------------ verification


@dataclass(frozen=True, slots=True)
class AuditVerification:
    """The result of `verify_audit_file()`: true when the whole chain holds.

    `line` (1-based) and `reason` name the first broken record; `records` counts the records
    verified before it. Keep `last_mac` somewhere else to detect records cut from the end.
    """

    ok: bool
    records: int
    line: int | None = None
    reason: str | None = None
    last_mac: str | None = None

    def __bool__(self) -> bool:
        return self.ok


def verify_audit_file(path: str | Path, key: bytes | str) -> AuditVerification:
    """Check every record's sequence number and MAC chain; name the first broken record."""
    key = _key_bytes(key, "verify_audit_file")
    previous = ""
    count = 0

    def broken(line: int, reason: str) -> AuditVerification:
        return AuditVerification(False, count, line, reason, previous or None)

    with Path(path).open("rb") as file:
        for line_number, raw in enumerate(file, start=1):
            if not raw.strip():
                return broken(line_number, "empty line inside the file")
            try:
                record = json.loads(raw)
            except ValueError:
                return broken(line_number, "not a JSON record (truncated or edited)")
            if not isinstance(record, dict):
                return broken(line_number, "not a JSON object")
            mac = record.pop("mac", None)
            seq = record.get("seq")
            if not isinstance(mac, str) or not isinstance(seq, int) or isinstance(seq, bool):
                return broken(line_number, "the record has no seq or mac")
            expected = count + 1
            if seq > expected:
                return broken(
                    line_number,
                    f"record {expected} is missing: the sequence jumps from {count} to {seq} "
                    "(removed or moved)",
                )
            if seq < expected:
                return broken(
                    line_number,
                    f"record {seq} is out of order: it comes after record {count}",
                )
            if not hmac.compare_digest(mac, _mac(key, previous, _canonical(record))):
                return broken(
                    line_number,
                    f"record {seq} was changed: its MAC does not match (or the key is wrong)",
                )
            previous = mac
            count += 1
    return AuditVerification(True, count, None, None, previous or None)


# ------------------------------------------------------------------------------ recording


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
        self.otel_logger: Any = None
        self._explicit_provider = logger_provider is not None
        # The global provider last looked at and whether it records; a different one is
        # looked at again, so an SDK installed after start-up is honoured.
        self._checked_provider: Any = _UNCHECKED
        self._logs_live = False
        # The global logger provider under which there is nothing to record (no file, no
        # logger provider given, emit="otel"), once seen; _UNCHECKED never matches.
        self._idle_while: Any = _UNCHECKED
        self._identity_fields: dict[int, tuple[Identity, dict[str, Any]]] = {}
        if emit == "otel" and _otel_logs is not None:
            # A ProxyLogger when no SDK is set yet: it follows a provider installed later.
            self.otel_logger = (
                logger_provider.get_logger(AUDIT_LOGGER_NAME)
                if logger_provider is not None
                else _otel_logs.get_logger(AUDIT_LOGGER_NAME)
            )

    def active(self) -> bool:
        if self.file is not None:
            return True
        if self.emit == "logging":
            return logger.isEnabledFor(logging.INFO)
        if self.emit == "otel" and self.otel_logger is not None:
            return _otel_logs_live(self)
        return False

    def identity_fields(self, identity: Identity) -> dict[str, Any]:
        # Identities of repeated tokens and keys are the same objects: read each one once.
        found = self._identity_fields.get(id(identity))
        if found is not None and found[0] is identity:
            return found[1]
        fields = _identity_fields(identity)
        if len(self._identity_fields) >= _MAX_IDENTITIES:
            self._identity_fields.clear()
        # The entry holds the identity, so its id cannot be reused while it is cached.
        self._identity_fields[id(identity)] = (identity, fields)
        return fields


_UNCHECKED: Final = object()


_NO_GLOBAL: Final = object()


class _NoGlobals:
    # A future API without the private global: _otel_logs_live() asks the API each time.
    _LOGGER_PROVIDER = _NO_GLOBAL


_logs_globals: Any = _logs_internal if hasattr(_logs_internal, "_LOGGER_PROVIDER") else _NoGlobals
_MAX_IDENTITIES: Final = 4096


def _otel_logs_live(state: _Audit) -> bool:
    if state._explicit_provider:
        return True
    # The API's global, read directly: get_logger_provider() reads the environment on every
    # call until a provider is set. One identity check per request while it stays the same.
    provider = _logs_globals._LOGGER_PROVIDER
    if provider is _NO_GLOBAL:  # pragma: no cover - a future API without the private global
        return not isinstance(_otel_logs.get_logger_provider(), _NOT_RECORDING_PROVIDERS)
    if provider is state._checked_provider:
        return state._logs_live
    live = provider is not None and not isinstance(provider, _NOT_RECORDING_PROVIDERS)
    state._logs_live = live
    state._checked_provider = provider
    if not live and state.file is None:
        state._idle_while = provider
    return live


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
        _file_key(key)  # a bad key fails here, before the file in use is closed
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


# The formatted second of the last record: records come many a second, and formatting a date
# costs more than the rest of the record. One tuple, replaced whole, so threads may share it.
_last_second: tuple[int, str] = (-1, "")


def _timestamp(now: float) -> str:
    global _last_second
    seconds, micros = divmod(round(now * 1_000_000), 1_000_000)
    cached_second, prefix = _last_second
    if seconds != cached_second:
        prefix = datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        _last_second = (seconds, prefix)
    return f"{prefix}.{micros:06d}Z"


def _identity_fields(identity: Identity) -> dict[str, Any]:
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
) -> dict[str, Any]:
    """The audit record of one decision, as a JSON-able dict (None fields left out).

    `fields`: `identity`'s part of the record when the caller has it cached already.
    """
    record: dict[str, Any] = {
        "time": _timestamp(time.time() if now is None else now),
        "outcome": outcome,
        "layer": layer,
    }
    if reason is not None:
        record["reason"] = reason
    if detail is not None:
        record["detail"] = detail
    if identity is not None:
        record.update(_identity_fields(identity) if fields is None else fields)
    method = scope.get("method")
    record["method"] = method if method is not None else "WEBSOCKET"
    record["path"] = scope.get("path", "")
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

    The telemetry hooks call this for every refusal, observed refusal and authentication; call
    it yourself only for decisions of your own.
    """
    if outcome not in _OUTCOMES:
        raise ValueError(
            f"record_decision: outcome must be allow, deny or observe, not {outcome!r}"
        )
    state = _audit
    # Nothing configured and no logs SDK: one identity check against the API's global.
    if state._idle_while is _logs_globals._LOGGER_PROVIDER:
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
        if state.otel_logger is not None and _otel_logs_live(state):
            _emit_otel(state.otel_logger, _shared_record(record), now_ns)
    elif state.emit == "logging" and logger.isEnabledFor(logging.INFO):
        shared = _shared_record(record)
        logger.info(
            "%s",
            json.dumps(shared, separators=(",", ":"), ensure_ascii=False),
            extra={"audit": shared},
        )


def _telemetry_module() -> Any:
    global _telemetry
    if _telemetry is None:
        from asgi_identity import telemetry  # imported late: telemetry imports this module

        _telemetry = telemetry
    return _telemetry


_telemetry: Any = None


def _shared_record(record: dict[str, Any]) -> dict[str, Any]:
    """The record as log pipelines get it: the person shown as `configure_telemetry()` says.

    Pseudonymous telemetry turns `user_id` into `user_hash`; `email` stays unless telemetry
    records email. Only the HMAC-chained file, read with the audit key, keeps both.
    """
    if "user_id" not in record and "email" not in record:
        return record
    state = _telemetry_module()._state
    hash_user = state.hash_user
    record_email = state.config.record_email
    if hash_user is None and (record_email or "email" not in record):
        return record
    shared = dict(record)
    if not record_email:
        shared.pop("email", None)
    if hash_user is not None and "user_id" in shared:
        shared["user_hash"] = hash_user(shared.pop("user_id"))
    return shared


def _emit_otel(otel_logger: Any, record: dict[str, Any], now_ns: int) -> None:
    attributes: dict[str, Any] = {
        "asgi_identity.outcome": record["outcome"],
        "asgi_identity.layer": record["layer"],
    }
    if "reason" in record:
        attributes["error.type"] = record["reason"]
    if "user_id" in record:
        attributes["user.id"] = record["user_id"]
    elif "user_hash" in record:
        attributes["user.hash"] = record["user_hash"]
    otel_logger.emit(
        _otel_logs.LogRecord(
            **_LOG_RECORD_CONSTANTS, timestamp=now_ns, body=record, attributes=attributes
        )
    )


# The LogRecord keywords every record shares (only those this API release accepts).
_LOG_RECORD_CONSTANTS: Final[dict[str, Any]] = {
    "severity_number": _INFO,
    "severity_text": "INFO",
    **({"event_name": EVENT_NAME} if "event_name" in _LOG_RECORD_PARAMS else {}),
}
