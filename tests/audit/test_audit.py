"""Audit records: one per decision, as OpenTelemetry log records and a tamper-evident file."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from opentelemetry._logs import _internal as _logs_internal
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.trace import TracerProvider
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from _asgi import http_client
from asgi_identity import APIKey, Identity, hash_api_key, telemetry
from asgi_identity.audit import _config as audit_config
from asgi_identity.audit import (
    build_record,
    configure_audit,
    record_decision,
    shutdown_audit,
    verify_audit,
)
from asgi_identity.credentials.tokens import JWTIssuer
from asgi_identity.middleware import DomainAllowlist, EnforceIdentity, IdentityMiddleware
from asgi_identity.testing import LocalIssuer
from asgi_identity.types import ASGIApp

AUDIT_KEY = Ed25519PrivateKey.generate()
APP_KEY = "sk-ai-audit-test-key-00000001"


@pytest.fixture(autouse=True)
def _reset_audit() -> Iterator[None]:
    yield
    shutdown_audit()
    telemetry.configure_telemetry()


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


def stack(issuer: LocalIssuer) -> ASGIApp:
    app: ASGIApp = Starlette(routes=[Route("/v1/models", hello)])
    app = DomainAllowlist(app, domains=["acme.com"])
    app = EnforceIdentity(app)
    return IdentityMiddleware(
        app,
        issuers=[JWTIssuer(issuer=issuer.issuer, audience="gateway", jwks=issuer.jwks)],
        api_keys=[APIKey(id="app-1", sha256=hash_api_key(APP_KEY), tenant="acme", group="pro")],
    )


async def call(app: ASGIApp, headers: dict[str, str]) -> int:
    async with http_client(app, peer=("203.0.113.9", 4321)) as http:
        return (await http.get("/v1/models", headers=headers)).status_code


def records(path: Path) -> list[dict[str, Any]]:
    """The decision records of an audit file (not its genesis and digests)."""
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [line for line in lines if line["kind"] == "record"]


async def decisions_to_file(issuer: LocalIssuer, path: Path) -> list[dict[str, Any]]:
    """Three requests: allowed alice (acting through an agent), a refused domain, a bare key."""
    file = configure_audit(
        path=path, signing_key=AUDIT_KEY, emit="none", policy_version="2024-06-01"
    )
    assert file is not None
    app = stack(issuer)
    alice = issuer.mint(sub="alice", email="alice@acme.com", act={"sub": "agent-7"})
    mallory = issuer.mint(sub="mallory", email="mallory@evil.example")
    assert await call(app, {"authorization": f"Bearer {alice}", "x-api-key": APP_KEY}) == 200
    assert await call(app, {"authorization": f"Bearer {mallory}"}) == 403
    assert await call(app, {"x-api-key": APP_KEY}) == 403
    assert file.flush()
    return records(path)


# ------------------------------------------------------------------------------ what is recorded


async def test_every_decision_is_one_record_naming_who_how_and_why(
    issuer: LocalIssuer, tmp_path: Path
) -> None:
    path = tmp_path / "audit.jsonl"
    written = await decisions_to_file(issuer, path)
    summary = [(r["layer"], r["outcome"], r.get("reason"), r.get("user_id")) for r in written]
    assert summary == [
        ("IdentityMiddleware", "allow", None, "alice"),
        ("IdentityMiddleware", "allow", None, "mallory"),
        ("DomainAllowlist", "deny", "domain_not_allowed", "mallory"),
        ("IdentityMiddleware", "allow", None, None),
        ("EnforceIdentity", "deny", "identity_required", None),
    ]
    first = written[0]
    assert first["actor"] == ["agent-7"]
    assert first["api_key_id"] == "app-1"
    assert first["client_id"] == "app-1"
    assert first["tenant"] == "acme"
    assert first["email"] == "alice@acme.com"
    assert first["method"] == "GET"
    assert first["path"] == "/v1/models"
    assert first["client_address"] == "203.0.113.9"
    assert first["policy_version"] == "2024-06-01"
    assert first["time"].endswith("Z")
    assert written[2]["detail"]  # the operator's explanation, never sent to the client
    assert [r["seq"] for r in written] == [1, 2, 3, 4, 5]
    shutdown_audit()
    report = verify_audit(path, AUDIT_KEY.public_key())
    assert report.ok, report.problems
    assert report.files[0].records == 5


async def test_refusals_only_when_allowed_decisions_are_not_wanted(
    issuer: LocalIssuer, tmp_path: Path
) -> None:
    path = tmp_path / "audit.jsonl"
    file = configure_audit(path=path, signing_key=AUDIT_KEY, emit="none", record_allowed=False)
    assert file is not None
    app = stack(issuer)
    assert await call(app, {"authorization": f"Bearer {issuer.mint(sub='alice')}"}) == 403
    assert await call(app, {}) == 401
    assert file.flush()
    assert [(r["layer"], r["reason"]) for r in records(path)] == [
        ("DomainAllowlist", "domain_not_allowed"),
        ("IdentityMiddleware", "missing_credentials"),
    ]


async def test_records_are_opentelemetry_log_records_tied_to_the_request_trace(
    issuer: LocalIssuer,
) -> None:
    exporter = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    tracer_provider = TracerProvider()
    configure_audit(logger_provider=logger_provider, policy_version="7")
    app = stack(issuer)
    token = issuer.mint(sub="mallory", email="mallory@evil.example")
    with tracer_provider.get_tracer("test").start_as_current_span("request") as span:
        assert await call(app, {"authorization": f"Bearer {token}"}) == 403
    trace_id = span.get_span_context().trace_id
    logs = [item.log_record for item in exporter.get_finished_logs()]
    assert [log.attributes["asgi_identity.outcome"] for log in logs] == ["allow", "deny"]  # type: ignore[index]
    deny = logs[1]
    assert deny.attributes is not None
    assert deny.attributes["error.type"] == "domain_not_allowed"
    assert deny.attributes["user.id"] == "mallory"
    assert deny.event_name == "asgi_identity.audit"
    assert deny.severity_text == "INFO"
    assert deny.trace_id == trace_id
    body = deny.body
    assert isinstance(body, dict)
    assert body["reason"] == "domain_not_allowed"
    assert body["policy_version"] == "7"
    assert body["trace_id"] == format(trace_id, "032x")
    logger_provider.shutdown()


async def test_records_can_go_to_the_stdlib_logger_instead(
    issuer: LocalIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    configure_audit(emit="logging")
    with caplog.at_level(logging.INFO, logger="asgi_identity.audit"):
        assert await call(stack(issuer), {}) == 401
    [entry] = [r for r in caplog.records if r.name == "asgi_identity.audit"]
    assert json.loads(entry.getMessage())["reason"] == "missing_credentials"
    assert entry.audit["outcome"] == "deny"  # type: ignore[attr-defined]


def test_nothing_is_built_when_no_sink_is_active(monkeypatch: pytest.MonkeyPatch) -> None:
    # No file, no SDK logger provider, stdlib logger not enabled for INFO: the hook returns.
    monkeypatch.setattr(_logs_internal, "_LOGGER_PROVIDER", None)
    configure_audit()

    def must_not_build(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise AssertionError("a record was built with nowhere to send it")

    monkeypatch.setattr(audit_config, "build_record", must_not_build)
    record_decision({"type": "http"}, "Test", "deny", "invalid_token", None)


def test_a_file_without_a_logs_sdk_builds_no_log_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_logs_internal, "_LOGGER_PROVIDER", None)
    path = tmp_path / "audit.jsonl"
    file = configure_audit(path=path, signing_key=AUDIT_KEY)  # emit="otel", but no SDK to emit to
    assert file is not None

    def must_not_emit(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("an OpenTelemetry log record was built with no logs SDK")

    monkeypatch.setattr(audit_config, "emit_otel", must_not_emit)
    record_decision({"type": "http"}, "Test", "deny", "invalid_token", None)
    assert file.flush()
    assert [r["reason"] for r in records(path)] == ["invalid_token"]


def otel_logs() -> tuple[LoggerProvider, InMemoryLogRecordExporter]:
    exporter = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    return provider, exporter


ALICE = Identity(source="jwt", user_id="alice", email="alice@acme.com", tenant="acme")
PSEUDONYM_KEY = b"a-pseudonymizing-secret-of-32-bytes"


def test_pseudonymous_telemetry_keeps_the_user_and_email_out_of_log_records(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    telemetry.configure_telemetry(pseudonymize_key=PSEUDONYM_KEY)
    expected_hash = hmac.new(PSEUDONYM_KEY, b"alice", hashlib.sha256).hexdigest()[:32]
    provider, exporter = otel_logs()
    path = tmp_path / "audit.jsonl"
    file = configure_audit(path=path, signing_key=AUDIT_KEY, logger_provider=provider)
    assert file is not None
    record_decision({"type": "http"}, "Test", "deny", "policy_denied", ALICE)
    [log] = [item.log_record for item in exporter.get_finished_logs()]
    assert log.attributes is not None
    assert log.attributes["user.hash"] == expected_hash
    assert "user.id" not in log.attributes
    assert isinstance(log.body, dict)
    assert log.body["user_hash"] == expected_hash
    assert "user_id" not in log.body
    assert "email" not in log.body
    assert log.body["tenant"] == "acme"
    # The file is the full record: it is protected like the records it holds.
    assert file.flush()
    [written] = records(path)
    assert (written["user_id"], written["email"]) == ("alice", "alice@acme.com")
    provider.shutdown()

    configure_audit(emit="logging")
    with caplog.at_level(logging.INFO, logger="asgi_identity.audit"):
        record_decision({"type": "http"}, "Test", "deny", "policy_denied", ALICE)
    [entry] = [r for r in caplog.records if r.name == "asgi_identity.audit"]
    logged = json.loads(entry.getMessage())
    assert logged["user_hash"] == expected_hash
    assert "user_id" not in logged
    assert "alice" not in entry.getMessage()
    assert "user_id" not in entry.audit  # type: ignore[attr-defined]


def test_email_reaches_log_records_only_when_telemetry_records_email() -> None:
    provider, exporter = otel_logs()
    configure_audit(logger_provider=provider)
    record_decision({"type": "http"}, "Test", "allow", None, ALICE)
    telemetry.configure_telemetry(record_email=True)
    record_decision({"type": "http"}, "Test", "allow", None, ALICE)
    bodies = [item.log_record.body for item in exporter.get_finished_logs()]
    assert [(b["user_id"], b.get("email")) for b in bodies if isinstance(b, dict)] == [
        ("alice", None),
        ("alice", "alice@acme.com"),
    ]
    provider.shutdown()


def test_a_made_up_outcome_is_refused() -> None:
    with pytest.raises(ValueError, match="allow, deny or observe"):
        record_decision({"type": "http"}, "Test", "maybe", None)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ configuration


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"emit": "syslog"}, ValueError, "emit must be"),
        ({"path": "audit.jsonl"}, ValueError, "both path and signing_key"),
        ({"path": "audit.jsonl", "signing_key": b"a 0.1 HMAC secret"}, ValueError, "not PEM"),
        ({"path": "audit.jsonl", "signing_key": 42}, TypeError, "Ed25519 key, its PEM text"),
        ({"policy_version": 3}, TypeError, "policy_version"),
    ],
)
def test_bad_audit_settings_fail_at_start_up(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    options: dict[str, Any],
    error: type[Exception],
    match: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error, match=match):
        configure_audit(**options)


# ------------------------------------------------------------------------------ cost-saving caches


def test_repeated_identities_and_times_are_written_exactly(tmp_path: Path) -> None:
    # Each identity's fields and each second's date are formatted once and reused: the records
    # must still name the right person, conversation and instant.
    path = tmp_path / "audit.jsonl"
    file = configure_audit(path=path, signing_key=AUDIT_KEY, emit="none")
    assert file is not None
    alice = Identity(source="jwt", user_id="alice", tenant="acme")
    bob = Identity(source="api_key", user_id="bob", client_id="app-2")
    scope: dict[str, Any] = {"type": "http", "method": "POST", "path": "/v1/chat"}
    for identity in (alice, bob, alice, alice.replace(conversation_id="conv-9"), bob):
        record_decision(scope, "Test", "allow", None, identity)
    assert file.flush()
    written = records(path)
    assert [(r["user_id"], r.get("conversation_id"), r.get("tenant")) for r in written] == [
        ("alice", None, "acme"),
        ("bob", None, None),
        ("alice", None, "acme"),
        ("alice", "conv-9", "acme"),
        ("bob", None, None),
    ]
    assert written[1]["client_id"] == "app-2"
    assert "client_id" not in written[0]
    shutdown_audit()
    assert verify_audit(path, AUDIT_KEY.public_key()).ok


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (0.0, "1970-01-01T00:00:00.000000Z"),
        (1_700_000_000.123456, "2023-11-14T22:13:20.123456Z"),
        (1_700_000_000.9999996, "2023-11-14T22:13:21.000000Z"),  # rounds into the next second
        (1_700_000_021.5, "2023-11-14T22:13:41.500000Z"),  # same minute, another second
    ],
)
def test_record_times_are_utc_with_microseconds(now: float, expected: str) -> None:
    record = build_record({"type": "http"}, "Test", "allow", None, None, now=now)
    assert record["time"] == expected


def test_a_logs_sdk_installed_after_start_up_gets_the_records() -> None:
    # A fresh interpreter: the global logger provider can be set only once per process.
    script = textwrap.dedent(
        """
        from opentelemetry import _logs
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import (
            InMemoryLogRecordExporter,
            SimpleLogRecordProcessor,
        )
        from asgi_identity.audit import configure_audit, record_decision
        from asgi_identity.identity import Identity

        configure_audit()
        identity = Identity(source="jwt", user_id="alice")
        for _ in range(3):  # no SDK yet: nothing to record, and the answer is remembered
            record_decision({"type": "http"}, "Test", "allow", None, identity)

        exporter = InMemoryLogRecordExporter()
        provider = LoggerProvider()
        provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
        _logs.set_logger_provider(provider)
        record_decision({"type": "http"}, "Test", "deny", "rate_limited", identity)
        logs = [item.log_record for item in exporter.get_finished_logs()]
        print([(log.attributes["asgi_identity.outcome"], log.body["user_id"]) for log in logs])
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[('deny', 'alice')]"
