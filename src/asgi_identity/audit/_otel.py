"""Audit records as OpenTelemetry log records, through the logs API (still a private module)."""

from __future__ import annotations

import inspect
from typing import Any, Final

AUDIT_LOGGER_NAME: Final = "asgi_identity.audit"
EVENT_NAME: Final = "asgi_identity.audit"

# The OpenTelemetry logs API still lives in a private module and has changed between releases:
# import it guarded, and pass only the keywords every supported release accepts.
try:
    from opentelemetry import _logs as _otel_logs

    _HAS_LOGS_API = True
    _LOG_RECORD_PARAMS = frozenset(inspect.signature(_otel_logs.LogRecord.__init__).parameters)
    _INFO: Any = _otel_logs.SeverityNumber.INFO
except ImportError:  # pragma: no cover - an API without the logs signal
    _otel_logs = None  # type: ignore[assignment]
    _HAS_LOGS_API = False
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

#: What `logs_globals._LOGGER_PROVIDER` is on an API without that private global.
NO_GLOBAL: Final = object()


class _NoGlobals:
    # A future API without the private global: Audit.logs_live() asks the API each time.
    _LOGGER_PROVIDER = NO_GLOBAL


#: Where the API keeps the global logger provider (None until an SDK provider is set).
logs_globals: Any = _logs_internal if hasattr(_logs_internal, "_LOGGER_PROVIDER") else _NoGlobals


def otel_logger(logger_provider: Any) -> Any:
    """The audit's logger from `logger_provider` (None: the global one), or None without the API."""
    if not _HAS_LOGS_API:  # pragma: no cover - an API without the logs signal
        return None
    # A ProxyLogger when no SDK is set yet: it follows a provider installed later.
    if logger_provider is not None:
        return logger_provider.get_logger(AUDIT_LOGGER_NAME)
    return _otel_logs.get_logger(AUDIT_LOGGER_NAME)


def records(provider: Any) -> bool:
    """Whether a global logger provider is an SDK's (the API's placeholders record nothing)."""
    if provider is NO_GLOBAL:  # pragma: no cover - a future API without the private global
        provider = _otel_logs.get_logger_provider()
    return provider is not None and not isinstance(provider, _NOT_RECORDING_PROVIDERS)


def emit_otel(otel_logger: Any, record: dict[str, Any], now_ns: int) -> None:
    attributes: dict[str, Any] = {
        "asgi_identity.outcome": record["outcome"],
        "asgi_identity.layer": record["layer"],
    }
    if "reason" in record:
        attributes["error.type"] = record["reason"]
    if "model" in record:
        attributes["gen_ai.request.model"] = record["model"]
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
