"""Audit records: one per decision, as OpenTelemetry log records and a tamper-evident file."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
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
from asgi_identity.audit import (
    AuditFile,
    build_record,
    configure_audit,
    record_decision,
    shutdown_audit,
    verify_audit_file,
)
from asgi_identity.audit import _config as audit_config
from asgi_identity.cli import main as cli_main
from asgi_identity.credentials.tokens import JWTIssuer
from asgi_identity.middleware import DomainAllowlist, EnforceIdentity, IdentityMiddleware
from asgi_identity.testing import LocalIssuer
from asgi_identity.types import ASGIApp

AUDIT_KEY = b"audit-key-kept-in-a-secret-store"
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
    return [json.loads(line) for line in path.read_text().splitlines()]


async def decisions_to_file(issuer: LocalIssuer, path: Path) -> list[dict[str, Any]]:
    """Three requests: allowed alice (acting through an agent), a refused domain, a bare key."""
    file = configure_audit(path=path, key=AUDIT_KEY, emit="none", policy_version="2024-06-01")
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
    result = verify_audit_file(path, AUDIT_KEY)
    assert result.ok
    assert result.records == 5
    assert result.last_mac == written[-1]["mac"]


async def test_refusals_only_when_allowed_decisions_are_not_wanted(
    issuer: LocalIssuer, tmp_path: Path
) -> None:
    path = tmp_path / "audit.jsonl"
    file = configure_audit(path=path, key=AUDIT_KEY, emit="none", record_allowed=False)
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
    file = configure_audit(path=path, key=AUDIT_KEY)  # emit="otel", but no SDK to emit to
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
    file = configure_audit(path=path, key=AUDIT_KEY, logger_provider=provider)
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
    # The HMAC-chained file is the full record, for whoever holds the audit key.
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


# ------------------------------------------------------------------------------ tamper evidence


def write_records(path: Path, count: int) -> None:
    file = AuditFile(path, AUDIT_KEY)
    for number in range(count):
        identity = Identity(source="jwt", user_id=f"user-{number}")
        file.append({"outcome": "allow", "layer": "Test", "user_id": identity.user_id})
    file.close()


def edit_lines(path: Path, change: Any) -> None:
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(change(lines)))


def changed(lines: list[str]) -> list[str]:
    record = json.loads(lines[2])
    record["outcome"] = "deny"
    lines[2] = json.dumps(record, separators=(",", ":")) + "\n"
    return lines


def removed(lines: list[str]) -> list[str]:
    del lines[2]
    return lines


def reordered(lines: list[str]) -> list[str]:
    lines[2], lines[3] = lines[3], lines[2]
    return lines


def renumbered_after_removal(lines: list[str]) -> list[str]:
    # A careful forger also fixes the sequence numbers: the MAC chain still breaks.
    del lines[2]
    for index in range(2, len(lines)):
        record = json.loads(lines[index])
        record["seq"] = index + 1
        lines[index] = json.dumps(record, separators=(",", ":")) + "\n"
    return lines


@pytest.mark.parametrize(
    ("tamper", "line", "reason"),
    [
        (changed, 3, "record 3 was changed"),
        (removed, 3, "record 3 is missing"),
        (reordered, 3, "record 3 is missing: the sequence jumps from 2 to 4"),
        (renumbered_after_removal, 3, "record 3 was changed"),
    ],
)
def test_verifier_names_the_first_broken_record(
    tmp_path: Path, tamper: Any, line: int, reason: str
) -> None:
    path = tmp_path / "audit.jsonl"
    write_records(path, 6)
    assert verify_audit_file(path, AUDIT_KEY)
    edit_lines(path, tamper)
    result = verify_audit_file(path, AUDIT_KEY)
    assert not result
    assert result.line == line
    assert result.reason is not None
    assert result.reason.startswith(reason)
    assert result.records == 2


def test_a_reordered_record_is_reported_out_of_order_where_it_lands(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_records(path, 5)
    edit_lines(path, lambda lines: [lines[0], lines[2], lines[1], lines[3], lines[4]])
    result = verify_audit_file(path, AUDIT_KEY)
    assert (result.line, result.reason) == (
        2,
        "record 2 is missing: the sequence jumps from 1 to 3 (removed or moved)",
    )
    # Put back in order, the file verifies again.
    edit_lines(path, lambda lines: [lines[0], lines[2], lines[1], lines[3], lines[4]])
    assert verify_audit_file(path, AUDIT_KEY)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ('{"outcome":"allow","seq":1,"mac":"00"', "not a JSON record (truncated or edited)"),
        ("[1, 2]", "not a JSON object"),
        ('{"outcome":"allow"}', "the record has no seq or mac"),
        ("\n", "empty line inside the file"),
    ],
)
def test_damaged_lines_are_named(tmp_path: Path, content: str, reason: str) -> None:
    path = tmp_path / "audit.jsonl"
    write_records(path, 2)
    with path.open("a") as file:
        file.write(content)
    result = verify_audit_file(path, AUDIT_KEY)
    assert (result.ok, result.line, result.reason, result.records) == (False, 3, reason, 2)


def test_the_wrong_key_fails_at_the_first_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_records(path, 3)
    result = verify_audit_file(path, b"not-the-audit-key-at-all")
    assert (result.ok, result.line) == (False, 1)


def test_a_restarted_writer_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_records(path, 3)
    write_records(path, 2)
    result = verify_audit_file(path, AUDIT_KEY)
    assert (result.ok, result.records) == (True, 5)
    assert [r["seq"] for r in records(path)] == [1, 2, 3, 4, 5]


def test_a_writer_refuses_to_continue_a_tampered_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_records(path, 4)
    edit_lines(path, removed)
    with pytest.raises(ValueError, match="does not verify"):
        AuditFile(path, AUDIT_KEY)


def test_a_record_that_cannot_be_encoded_is_skipped_and_the_chain_holds(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "audit.jsonl"
    file = AuditFile(path, AUDIT_KEY)
    file.append({"outcome": "allow", "user_id": "first"})
    file.append({"outcome": "allow", "user_id": object()})
    file.append({"outcome": "allow", "user_id": "third"})
    file.close()
    assert [(r["seq"], r["user_id"]) for r in records(path)] == [(1, "first"), (2, "third")]
    assert verify_audit_file(path, AUDIT_KEY).ok
    assert "could not be written" in caplog.text
    AuditFile(path, AUDIT_KEY).close()  # a restart continues the file


def test_a_failed_disk_write_leaves_no_partial_record_and_no_gap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "audit.jsonl"
    file = AuditFile(path, AUDIT_KEY)
    file.append({"outcome": "allow", "user_id": "before"})
    assert file.flush()
    write_all = file._write_all

    def disk_full(data: bytes) -> None:
        write_all(data[: len(data) // 2])  # half a line reaches the disk, then ENOSPC
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(file, "_write_all", disk_full)
    file.append({"outcome": "deny", "user_id": "lost"})
    assert file.flush()
    monkeypatch.setattr(file, "_write_all", write_all)
    file.append({"outcome": "allow", "user_id": "after"})
    file.close()
    assert [(r["seq"], r["user_id"]) for r in records(path)] == [(1, "before"), (2, "after")]
    assert verify_audit_file(path, AUDIT_KEY).ok
    assert "No space left on device" in caplog.text
    restarted = AuditFile(path, AUDIT_KEY)
    restarted.append({"outcome": "allow", "user_id": "restarted"})
    restarted.close()
    assert verify_audit_file(path, AUDIT_KEY).records == 3


def test_close_leaves_a_slow_writer_the_file_until_it_is_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.jsonl"
    file = AuditFile(path, AUDIT_KEY)
    writing, release = threading.Event(), threading.Event()
    write_all = file._write_all

    def slow_disk(data: bytes) -> None:
        writing.set()
        assert release.wait(30)
        write_all(data)

    monkeypatch.setattr(file, "_write_all", slow_disk)
    file.append({"outcome": "allow", "user_id": "slow"})
    assert writing.wait(30)
    file.close(timeout=0.01)  # gives up waiting; the writer still owns the file
    with pytest.raises(RuntimeError, match="in use"):
        AuditFile(path, AUDIT_KEY)
    release.set()
    file._thread.join(30)
    assert [r["user_id"] for r in records(path)] == ["slow"]
    assert verify_audit_file(path, AUDIT_KEY).ok
    AuditFile(path, AUDIT_KEY).close()  # the writer closed the file and let go of it


def test_configuring_the_same_file_again_continues_its_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    identity = Identity(source="jwt", user_id="alice")
    for _ in range(3):
        configure_audit(path=path, key=AUDIT_KEY, emit="none")
        for _ in range(2000):
            record_decision({"type": "http"}, "Test", "allow", None, identity)
    shutdown_audit()
    result = verify_audit_file(path, AUDIT_KEY)
    assert (result.ok, result.reason, result.records) == (True, None, 6000)


def test_a_second_process_on_the_same_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    file = AuditFile(path, AUDIT_KEY)
    script = textwrap.dedent(
        f"""
        from asgi_identity.audit import AuditFile
        try:
            AuditFile({str(path)!r}, {AUDIT_KEY!r})
        except RuntimeError as exc:
            print(exc)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    file.close()
    assert result.returncode == 0, result.stderr
    assert str(path) in result.stdout
    assert "one audit file per process" in result.stdout


def test_an_empty_file_verifies_with_no_records(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text("")
    assert verify_audit_file(path, AUDIT_KEY) == verify_audit_file(path, AUDIT_KEY.decode())
    assert verify_audit_file(path, AUDIT_KEY).records == 0


def test_the_cli_verifies_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "audit.jsonl"
    write_records(path, 4)
    monkeypatch.setenv("AUDIT_KEY", AUDIT_KEY.decode())
    assert cli_main(["audit-verify", str(path), "--key-env", "AUDIT_KEY"]) == 0
    assert "4 records" in capsys.readouterr().out
    edit_lines(path, changed)
    assert cli_main(["audit-verify", str(path), "--key-env", "AUDIT_KEY"]) == 1
    assert "record 3 was changed" in capsys.readouterr().err


# ------------------------------------------------------------------------------ configuration


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"emit": "syslog"}, ValueError, "emit must be"),
        ({"path": "audit.jsonl"}, ValueError, "both path and key"),
        ({"path": "audit.jsonl", "key": b"short"}, ValueError, "at least 16 bytes"),
        ({"path": "audit.jsonl", "key": 42}, TypeError, "bytes or str"),
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
    file = configure_audit(path=path, key=AUDIT_KEY, emit="none")
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
    assert verify_audit_file(path, AUDIT_KEY).ok


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
