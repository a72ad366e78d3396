"""Audit records: one per decision, as OpenTelemetry log records and in a tamper-evident file.

The file is JSON Lines; each record carries `seq` and `mac`, an HMAC-SHA256 over the previous
record's MAC and this record's canonical JSON, so a changed, removed or reordered record breaks
the chain at the first place it was touched. See docs/audit.md.
"""

from __future__ import annotations

from asgi_identity.audit._config import (
    Emit,
    Outcome,
    configure_audit,
    logger,
    record_decision,
    shutdown_audit,
)
from asgi_identity.audit._file import AuditFile
from asgi_identity.audit._otel import AUDIT_LOGGER_NAME, EVENT_NAME
from asgi_identity.audit._records import build_record
from asgi_identity.audit._verify import AuditVerification, verify_audit_file

__all__ = [
    "AUDIT_LOGGER_NAME",
    "EVENT_NAME",
    "AuditFile",
    "AuditVerification",
    "Emit",
    "Outcome",
    "build_record",
    "configure_audit",
    "logger",
    "record_decision",
    "shutdown_audit",
    "verify_audit_file",
]
