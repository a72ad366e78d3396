"""Where records go now: the file, OpenTelemetry logs or the stdlib logger, and whether any
of them would take a record at all (checked before a record is built)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final, Literal

from asgi_identity.audit._file import AuditFile
from asgi_identity.audit._otel import (
    AUDIT_LOGGER_NAME,
    NO_GLOBAL,
    logs_globals,
    otel_logger,
    records,
)
from asgi_identity.audit._records import identity_fields

if TYPE_CHECKING:
    from asgi_identity.identity import Identity

Emit = Literal["otel", "logging", "none"]

_MAX_IDENTITIES: Final = 4096
_UNCHECKED: Final = object()

logger = logging.getLogger(AUDIT_LOGGER_NAME)


class Sinks:
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
