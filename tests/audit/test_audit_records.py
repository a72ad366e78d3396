"""What a record says about a request to a model: who, acting as whom, which key, route, model,
tokens, conversation, outcome, reason and policy version, in the file and in log records alike."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from _audit_support import SIGNING_KEY, parsed
from asgi_identity import APIKey, Identity, hash_api_key, telemetry
from asgi_identity.audit import (
    AuditFile,
    configure_audit,
    record_decision,
    record_usage,
    shutdown_audit,
    verify_audit,
)
from asgi_identity.credentials.tokens import JWTIssuer
from asgi_identity.middleware import (
    ConversationTagger,
    EnforceIdentity,
    IdentityMiddleware,
    UserRateLimit,
)
from asgi_identity.telemetry import events
from asgi_identity.testing import LocalIssuer
from asgi_identity.types import ASGIApp

APP_KEY = "sk-ai-audit-records-test-0001"


@pytest.fixture(autouse=True)
def _reset_audit() -> Iterator[None]:
    yield
    shutdown_audit()
    telemetry.configure_telemetry()


async def chat(request: Request) -> JSONResponse:
    return JSONResponse(
        {
            "object": "chat.completion",
            "choices": [{"message": {"role": "assistant", "content": "hello"}}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42},
        }
    )


def gateway(issuer: LocalIssuer) -> ASGIApp:
    app: ASGIApp = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    app = ConversationTagger(app)
    app = UserRateLimit(app, limits="2/minute", tokens="100000/day")
    app = EnforceIdentity(app)
    return IdentityMiddleware(
        app,
        issuers=[JWTIssuer(issuer=issuer.issuer, audience="gateway", jwks=issuer.jwks)],
        api_keys=[APIKey(id="chat-app", sha256=hash_api_key(APP_KEY), tenant="acme", group="pro")],
    )


async def completions(app: ASGIApp, token: str, count: int) -> list[int]:
    transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 4321))
    headers = {
        "authorization": f"Bearer {token}",
        "x-api-key": APP_KEY,
        "x-conversation-id": "conv-42",
    }
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        return [
            (await http.post("/v1/chat/completions", json=body, headers=headers)).status_code
            for _ in range(count)
        ]


def record_lines(path: Path) -> list[dict[str, Any]]:
    return [line for line in parsed(path) if line["kind"] == "record"]


async def test_a_completion_is_recorded_with_its_model_tokens_key_actor_and_conversation(
    issuer: LocalIssuer, tmp_path: Path
) -> None:
    path = tmp_path / "audit.jsonl"
    configure_audit(path=path, signing_key=SIGNING_KEY, emit="none", policy_version="p-7")
    alice = issuer.mint(sub="alice", email="alice@acme.com", act={"sub": "agent-7"})
    assert await completions(gateway(issuer), alice, 3) == [200, 200, 429]
    shutdown_audit()
    assert verify_audit(path, SIGNING_KEY.public_key()).ok
    summary = [
        (r["layer"], r["outcome"], r.get("reason"), r.get("input_tokens"), r.get("output_tokens"))
        for r in record_lines(path)
    ]
    assert summary == [
        ("IdentityMiddleware", "allow", None, None, None),
        ("UserRateLimit", "usage", None, 12, 30),
        ("IdentityMiddleware", "allow", None, None, None),
        ("UserRateLimit", "usage", None, 12, 30),
        ("IdentityMiddleware", "allow", None, None, None),
        ("UserRateLimit", "deny", "rate_limited", None, None),
    ]
    usage, denial = record_lines(path)[1], record_lines(path)[5]
    assert usage["model"] == "gpt-4o"  # from the body, read once by the token limit
    # Refused on the request count before any layer read the body: no model to name.
    assert "model" not in denial
    for record in (usage, denial):
        assert record["user_id"] == "alice"
        assert record["actor"] == ["agent-7"]
        assert record["api_key_id"] == "chat-app"
        assert record["conversation_id"] == "conv-42"
        assert (record["method"], record["path"]) == ("POST", "/v1/chat/completions")
        assert record["policy_version"] == "p-7"
    assert "cost" not in usage  # budgets come later: left out until known
    assert "tool" not in usage


def test_usage_outside_a_request_is_recorded_without_a_route(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    configure_audit(path=path, signing_key=SIGNING_KEY, emit="none")
    events.llm_tokens(Identity(source="api_key", user_id="batch-job"), 100, 7)
    events.llm_tokens(Identity(source="api_key", user_id="nothing-used"), 0, 0)
    shutdown_audit()
    [record] = record_lines(path)
    assert (record["user_id"], record["input_tokens"], record["output_tokens"]) == (
        "batch-job",
        100,
        7,
    )
    assert "path" not in record
    assert "method" not in record


def test_cost_and_tool_are_written_when_given(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    configure_audit(path=path, signing_key=SIGNING_KEY, emit="none")
    alice = Identity(source="jwt", user_id="alice")
    scope: dict[str, Any] = {"type": "http", "method": "POST", "path": "/mcp"}
    record_usage(scope, "Budget", alice, 10, 20, cost=0.0042)
    record_decision(scope, "MCPGuard", "deny", "tool_denied", alice, tool="delete_repo")
    shutdown_audit()
    usage, decision = record_lines(path)
    assert (usage["cost"], usage["outcome"]) == (0.0042, "usage")
    assert (decision["tool"], decision["reason"]) == ("delete_repo", "tool_denied")


def test_usage_records_are_left_out_with_refusals_only(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    configure_audit(path=path, signing_key=SIGNING_KEY, emit="none", record_allowed=False)
    record_usage(None, "UserRateLimit", Identity(source="jwt", user_id="alice"), 1, 1)
    shutdown_audit()
    assert record_lines(path) == []


def test_log_records_carry_the_same_fields_under_the_privacy_settings(tmp_path: Path) -> None:
    exporter = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    telemetry.configure_telemetry(pseudonymize_key=b"a-pseudonymizing-secret-of-32-bytes")
    path = tmp_path / "audit.jsonl"
    configure_audit(path=path, signing_key=SIGNING_KEY, logger_provider=provider)
    alice = Identity(source="jwt", user_id="alice", email="alice@acme.com")
    record_usage({"type": "http", "path": "/v1/chat"}, "UserRateLimit", alice, 5, 6)
    [log] = [item.log_record for item in exporter.get_finished_logs()]
    assert isinstance(log.body, dict)
    assert (log.body["input_tokens"], log.body["output_tokens"]) == (5, 6)
    assert "user_id" not in log.body
    assert "email" not in log.body
    assert "user_hash" in log.body
    shutdown_audit()
    [written] = record_lines(path)
    assert (written["user_id"], written["email"]) == ("alice", "alice@acme.com")
    provider.shutdown()


def test_a_record_that_cannot_be_encoded_is_counted_as_lost_in_the_signed_digest(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.jsonl"
    file = AuditFile(path, SIGNING_KEY)
    file.append({"outcome": "allow", "user_id": "first"})
    file.append({"outcome": "allow", "user_id": object()})
    file.append({"outcome": "allow", "user_id": "third"})
    file.close()
    assert [(r["seq"], r["user_id"]) for r in record_lines(path)] == [(1, "first"), (2, "third")]
    assert json.loads(path.read_bytes().splitlines()[-1])["lost"] == 1
    report = verify_audit(path, SIGNING_KEY.public_key())
    assert report.ok
    assert [note.reason for note in report.notes] == ["its writer lost 1 records (see its log)"]


def test_a_failed_disk_write_leaves_no_partial_line_and_is_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from asgi_identity.audit import _writer

    path = tmp_path / "audit.jsonl"
    file = AuditFile(path, SIGNING_KEY)
    file.append({"outcome": "allow", "user_id": "before"})
    assert file.flush()
    write_all = _writer._write_all

    def disk_full(fd: int, data: bytes) -> None:
        write_all(fd, data[: len(data) // 2])  # half reaches the disk, then ENOSPC
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_writer, "_write_all", disk_full)
    file.append({"outcome": "deny", "user_id": "lost"})
    assert file.flush()
    monkeypatch.setattr(_writer, "_write_all", write_all)
    file.append({"outcome": "allow", "user_id": "after"})
    file.close()
    assert [(r["seq"], r["user_id"]) for r in record_lines(path)] == [(1, "before"), (2, "after")]
    assert "No space left on device" in caplog.text
    report = verify_audit(path, SIGNING_KEY.public_key())
    assert report.ok, report.problems
    assert report.files[0].lost == 1
