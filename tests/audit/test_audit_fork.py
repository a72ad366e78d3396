"""Several processes: each writes its own file with its own genesis, a process forked after
configure_audit() loses none of its records, and a restart continues the chain of the files there."""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from _audit_support import SIGNING_KEY, key_files, parsed, run_cli, write_audit
from asgi_identity import Identity
from asgi_identity.audit import (
    AuditFile,
    configure_audit,
    record_decision,
    shutdown_audit,
    verify_audit,
)

# Python 3.12+ warns on fork() in a process with threads (the audit writer is one): the tests
# fork on purpose, exactly to show the writer survives it.
pytestmark = pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")


@pytest.fixture(autouse=True)
def _reset_audit() -> Iterator[None]:
    yield
    shutdown_audit()


def user_ids(directory: Path) -> list[str]:
    return sorted(
        line["user_id"]
        for path in directory.glob("*.jsonl")
        for line in parsed(path)
        if line["kind"] == "record"
    )


def decide(prefix: str, count: int, threads: int = 1) -> None:
    def run(thread: int) -> None:
        for number in range(count):
            identity = Identity(source="api_key", user_id=f"{prefix}-{thread}-{number}")
            record_decision({"type": "http", "path": "/v1/chat"}, "Test", "allow", None, identity)

    workers = [threading.Thread(target=run, args=(thread,)) for thread in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def worker(number: int) -> None:
    decide(f"worker{number}", 1000, threads=2)  # and return: multiprocessing ends with os._exit()


def test_workers_forked_after_configure_audit_each_write_their_own_file_and_lose_nothing(
    tmp_path: Path,
) -> None:
    _, public = key_files(tmp_path)
    configure_audit(
        path=tmp_path / "audit.jsonl", signing_key=SIGNING_KEY, emit="none", digest_every=100
    )
    decide("parent-before", 10)
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=worker, args=(number,)) for number in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    decide("parent-after", 10)
    shutdown_audit()

    expected = sorted(
        [f"parent-before-0-{n}" for n in range(10)]
        + [f"parent-after-0-{n}" for n in range(10)]
        + [f"worker{w}-{t}-{n}" for w in range(4) for t in range(2) for n in range(1000)]
    )
    assert user_ids(tmp_path) == expected  # every record once, none lost, none twice
    names = sorted(path.name for path in tmp_path.glob("*.jsonl"))
    assert names == sorted(["audit.jsonl", *(f"audit-{p.pid}.jsonl" for p in processes)])
    report = verify_audit(tmp_path, public)
    assert report.ok, report.problems
    assert {file.path.name: (file.pid, file.end) for file in report.files} == {
        "audit.jsonl": (os.getpid(), "shutdown"),
        **{f"audit-{p.pid}.jsonl": (p.pid, "shutdown") for p in processes},
    }
    assert len({file.writer for file in report.files}) == 5
    result = run_cli("audit-verify", str(tmp_path), "--public-key", str(public))
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("intact: 5 files, 8020 records\n")


def test_a_child_of_os_fork_writes_its_own_file_from_a_pid_template(tmp_path: Path) -> None:
    configure_audit(path=tmp_path / "gateway-{pid}.jsonl", signing_key=SIGNING_KEY, emit="none")
    decide("parent", 500)  # queued, maybe not yet written, as the child is forked
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            decide("child", 25)
            shutdown_audit()  # os._exit() skips atexit: a raw fork's child closes its file
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    shutdown_audit()
    parent_file, child_file = (
        tmp_path / f"gateway-{os.getpid()}.jsonl",
        tmp_path / f"gateway-{pid}.jsonl",
    )
    assert [r["user_id"] for r in parsed(child_file) if r["kind"] == "record"] == [
        f"child-0-{n}" for n in range(25)
    ]
    assert len([r for r in parsed(parent_file) if r["kind"] == "record"]) == 500
    assert parsed(child_file)[0]["pid"] == pid
    assert verify_audit(tmp_path, SIGNING_KEY.public_key()).ok


def test_a_forked_child_that_writes_nothing_leaves_no_file(tmp_path: Path) -> None:
    configure_audit(path=tmp_path / "audit.jsonl", signing_key=SIGNING_KEY, emit="none")
    context = multiprocessing.get_context("fork")
    process = context.Process(target=time.sleep, args=(0,))
    process.start()
    process.join(30)
    assert process.exitcode == 0
    assert [path.name for path in tmp_path.glob("*.jsonl")] == ["audit.jsonl"]


def test_a_second_process_on_the_same_file_is_refused(tmp_path: Path) -> None:
    private, _ = key_files(tmp_path)
    path = tmp_path / "audit.jsonl"
    file = AuditFile(path, SIGNING_KEY)
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from asgi_identity.audit import AuditFile
        try:
            AuditFile({str(path)!r}, Path({str(private)!r}))
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
    assert "give each process its own file, e.g. path='audit-{pid}.jsonl'" in result.stdout


def test_a_restart_continues_the_chain_in_a_new_file(tmp_path: Path) -> None:
    write_audit(tmp_path / "audit.jsonl", 4)
    write_audit(tmp_path / "audit.jsonl", 2)  # the next run of the app, same path
    first, second = parsed(tmp_path / "audit.jsonl"), parsed(tmp_path / "audit.1.jsonl")
    assert second[0]["part"] == 1
    assert second[0]["writer"] != first[0]["writer"]
    report = verify_audit(tmp_path, SIGNING_KEY.public_key())
    assert report.ok, report.problems
    # In chain order, whatever the order of their names.
    assert [(file.path.name, file.records) for file in report.files] == [
        ("audit.jsonl", 4),
        ("audit.1.jsonl", 2),
    ]


def test_a_crashed_writers_last_records_are_covered_by_the_next_genesis(tmp_path: Path) -> None:
    private, public = key_files(tmp_path)
    path = tmp_path / "audit.jsonl"
    crash = textwrap.dedent(
        f"""
        import os
        from pathlib import Path
        from asgi_identity.audit import AuditFile
        file = AuditFile({str(path)!r}, Path({str(private)!r}), digest_every=3)
        for number in range(5):
            file.append({{"outcome": "allow", "user_id": f"before-crash-{{number}}"}})
        assert file.flush()
        os._exit(0)  # no closing digest
        """
    )
    subprocess.run([sys.executable, "-c", crash], check=True, timeout=60)
    write_audit(path, 1)  # the restarted app
    result = run_cli("audit-verify", str(tmp_path), "--public-key", str(public))
    assert result.returncode == 0, result.stderr
    assert (
        "audit.jsonl: note: its writer stopped without a closing digest; its last 2 records are "
        "covered by the genesis of audit.1.jsonl\n"
    ) in result.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


GATEWAY = """
import os
from pathlib import Path

from asgi_identity import APIKey, IdentityMiddleware, hash_api_key
from asgi_identity.audit import configure_audit, shutdown_audit

AUDIT_DIR = Path(os.environ["AUDIT_DIR"])


async def inner(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                configure_audit(
                    path=AUDIT_DIR / "audit-{pid}.jsonl",
                    signing_key=Path(os.environ["AUDIT_SIGNING_KEY_FILE"]),
                    emit="none",
                    digest_every=20,
                )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                shutdown_audit()
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(os.getpid()).encode()})


app = IdentityMiddleware(
    inner, api_keys=[APIKey(id="app", sha256=hash_api_key("sk-audit-load-test-0001"))]
)
"""


def test_four_uvicorn_workers_under_load_write_four_intact_files(tmp_path: Path) -> None:
    private, public = key_files(tmp_path)
    audit_dir = tmp_path / "audit"
    audit_dir.mkdir()
    (tmp_path / "gateway.py").write_text(GATEWAY)
    port = free_port()
    env = {**os.environ, "AUDIT_DIR": str(audit_dir), "AUDIT_SIGNING_KEY_FILE": str(private)}
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "uvicorn", "gateway:app", "--workers", "4"),
            *("--port", str(port), "--log-level", "warning", "--app-dir", str(tmp_path)),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60  # waiting for the workers to start, not a timing test
        while len(list(audit_dir.glob("*.jsonl"))) < 4:
            assert server.poll() is None, server.communicate()[0]
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.05)
        pids: set[str] = set()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
            for number in range(400):
                key = "sk-audit-load-test-0001" if number % 4 else "sk-not-a-key-of-ours-01"
                response = http.get("/v1/models", headers={"x-api-key": key})
                assert response.status_code == (200 if number % 4 else 401)
                if response.status_code == 200:
                    pids.add(response.text)
    finally:
        server.send_signal(signal.SIGINT)
        output, _ = server.communicate(timeout=60)
    assert server.returncode == 0, output
    report = verify_audit(audit_dir, public)
    assert report.ok, report.problems
    assert len(report.files) == 4
    assert all(file.end == "shutdown" for file in report.files)
    assert sum(file.records for file in report.files) == 400
    assert {str(file.pid) for file in report.files} >= pids
