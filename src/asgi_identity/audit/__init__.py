"""Audit records: one per decision, as OpenTelemetry log records and in a tamper-evident file.

The file is JSON Lines in one canonical serialisation. A genesis record binds it to its writer;
every line holds the SHA-256 of the line before (its exact bytes); digests signed with Ed25519
cover the chain so far, so anyone with the public key can verify content, order, truncation,
rollback and swapped files. See docs/audit.md.
"""

from __future__ import annotations

from asgi_identity.audit._config import (
    Outcome,
    configure_audit,
    record_decision,
    record_usage,
    shutdown_audit,
)
from asgi_identity.audit._file import AuditFile
from asgi_identity.audit._fileset import AuditReport, Problem, verify_audit
from asgi_identity.audit._keys import key_id, load_public_key, load_signing_key, public_key_pem
from asgi_identity.audit._otel import AUDIT_LOGGER_NAME, EVENT_NAME
from asgi_identity.audit._records import build_record
from asgi_identity.audit._sinks import Emit, logger
from asgi_identity.audit._verify import FileReport

__all__ = [
    "AUDIT_LOGGER_NAME",
    "EVENT_NAME",
    "AuditFile",
    "AuditReport",
    "Emit",
    "FileReport",
    "Outcome",
    "Problem",
    "build_record",
    "configure_audit",
    "key_id",
    "load_public_key",
    "load_signing_key",
    "logger",
    "public_key_pem",
    "record_decision",
    "record_usage",
    "shutdown_audit",
    "verify_audit",
]
