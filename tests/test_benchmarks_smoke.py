"""The benchmark harness runs end to end with tiny counts, so it cannot rot unnoticed.

Nothing here looks at a timing: figures belong to `make bench`, not to the test suite. The main
run uses the Python load generator on the uvloop server; wrk and the pure-Python server are run
on their own, briefly, when wrk is installed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from benchmarks import _wrk
from benchmarks import variants as v
from benchmarks.reference import PYJWT_RS256, REFERENCES
from benchmarks.variants import VARIANTS, redis_reachable

ROOT = Path(__file__).resolve().parent.parent


def _wrk_installed() -> None:
    # .ci/run installs wrk (Debian's package): these tests run in CI, never skip.
    assert shutil.which("wrk"), "wrk is not installed: apt-get install wrk (or run .ci/run)"


needs_wrk = pytest.mark.usefixtures("wrk_installed")


@pytest.fixture
def wrk_installed() -> None:
    _wrk_installed()


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> str:
    output = tmp_path_factory.mktemp("bench") / "results.md"
    tiny = ["--count", "3", "--rounds", "1", "--warmup", "1"]
    tiny += ["--http-requests", "20", "--http-rounds", "1", "--concurrency", "2"]
    tiny += ["--load-generator", "python", "--server", "uvloop"]
    sections = ["--only", "inprocess", "--only", "http", "--only", "profile"]
    # -W error: a deprecation in the harness or in a layer it drives fails here, not in a user's run.
    run = subprocess.run(
        [
            sys.executable,
            "-W",
            "error",
            "-m",
            "benchmarks",
            *sections,
            *tiny,
            "--output",
            str(output),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    written = output.read_text()
    assert written in run.stdout, "the printed tables and the written file differ"
    return written


def _section(document: str, title: str) -> str:
    match = re.search(rf"^## {title}\n(.*?)(?=^## |\Z)", document, re.M | re.S)
    assert match, f"no '## {title}' section"
    return match.group(1)


def _row(section: str, name: str) -> str:
    for line in section.splitlines():
        if line.startswith(f"| {name} |"):
            return line
    raise AssertionError(f"no row for {name!r}")


def _assert_measured(row: str) -> None:
    """Measured, or n/a only for the reason the machine may lack: Redis."""
    assert "failed:" not in row, row
    if "n/a:" in row:
        assert "no Redis" in row, row
        assert not redis_reachable(), row


def test_in_process_table_has_every_variant_measured(results: str) -> None:
    section = _section(results, "In-process")
    for variant in VARIANTS:
        row = _row(section, variant.name)
        _assert_measured(row)
        if variant.baseline is not None and "n/a" not in row:
            assert f"| {variant.baseline} |" in row


def test_in_process_table_has_every_reference_line(results: str) -> None:
    section = _section(results, "In-process")
    for reference in REFERENCES:
        _assert_measured(_row(section, reference.name))


def test_in_process_table_has_the_four_target_variants_and_pyjwt(results: str) -> None:
    section = _section(results, "In-process")
    for name in (v.FULL_REPEATED, v.FULL_REPEATED_NO_QUOTA, v.FULL_NEW, v.FULL_NEW_NO_QUOTA):
        assert "inprocess" in v.BY_NAME[name].targets
        assert "failed" not in _row(section, name)
    assert "failed" not in _row(section, PYJWT_RS256)


def test_targets_select_exactly_what_the_targets_need() -> None:
    in_process = {variant.name for variant in v.select(None, target="inprocess")}
    assert in_process == {
        v.BARE,
        v.FULL_REPEATED,
        v.FULL_REPEATED_NO_QUOTA,
        v.FULL_NEW,
        v.FULL_NEW_NO_QUOTA,
    }
    over_http = {variant.name for variant in v.select(None, target="http")}
    assert over_http == {v.BARE, v.FULL_REPEATED, v.FULL_REDIS}
    assert all(v.BY_NAME[name].http for name in over_http)


def _server_table(section: str, title: str) -> str:
    match = re.search(rf"^### {re.escape(title)}.*?\n(.*?)(?=^### |\Z)", section, re.M | re.S)
    assert match, f"no '### {title}' table"
    return match.group(1)


def test_http_table_has_every_http_variant_measured(results: str) -> None:
    section = _section(results, "Over HTTP")
    table = _server_table(section, "uvicorn with uvloop and httptools")
    for variant in VARIANTS:
        if variant.http:
            _assert_measured(_row(table, variant.name))


def test_targets_have_a_row_and_a_summary_line_each(results: str) -> None:
    targets = _section(results, "Targets")
    for label in (
        "in-process, repeated token, with token quota: added us",
        "in-process, repeated token, no token quota: added us",
        "in-process, new token, with token quota: added us beyond pyjwt decode",
        "in-process, new token, no token quota: added us beyond pyjwt decode",
        "over HTTP (uvloop + httptools), full stack, memory: throughput vs bare",
        "over HTTP (uvloop + httptools), full stack, Redis: throughput vs bare",
    ):
        assert f"| {label} |" in targets
    number = r"[+-]\d+\.\d"
    for quota in ("with token quota", "no token quota"):
        assert re.search(rf"^- repeated token, {quota}: {number} us \(target 15\)", targets, re.M)
        assert re.search(
            rf"^- new token, {quota}: {number} us = pyjwt decode \d+\.\d us [+-] \d+\.\d us "
            r"\(target 15\)",
            targets,
            re.M,
        )
    assert re.search(
        r"^- over HTTP, memory: \d+\.\d% of the bare app's throughput \(target 70%\)", targets, re.M
    )
    assert "full stack, repeated token, OTel SDK: added us" in targets


def test_profile_is_reported(results: str) -> None:
    profile = _section(results, "Profile")
    assert "own us / request" in profile
    assert "n/a" not in profile


def test_bad_option_is_a_clear_error_not_a_traceback() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--count", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0
    assert "--count must be at least 1" in run.stderr
    assert "Traceback" not in run.stderr


def _harness(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "error", "-m", "benchmarks", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
        env=env,
    )


def _without_wrk(tmp_path: Path) -> dict[str, str]:
    """The environment with a PATH on which no wrk can be found."""
    return {**os.environ, "PATH": str(tmp_path)}


def test_asking_for_wrk_without_it_says_how_to_install_it(tmp_path: Path) -> None:
    run = _harness("--only", "http", "--load-generator", "wrk", env=_without_wrk(tmp_path))
    assert run.returncode != 0
    assert "wrk is not installed" in run.stderr
    assert "apt-get install wrk" in run.stderr
    assert "Traceback" not in run.stderr


def test_without_wrk_the_python_generator_runs_and_the_report_says_so(tmp_path: Path) -> None:
    output = tmp_path / "results.md"
    run = _harness(
        *("--only", "http", "--filter", "bare Starlette", "--server", "asyncio"),
        *("--http-requests", "20", "--http-rounds", "1", "--concurrency", "2"),
        *("--output", str(output)),
        env=_without_wrk(tmp_path),
    )
    assert run.returncode == 0, run.stderr[-3000:]
    section = _section(output.read_text(), "Over HTTP")
    assert "wrk is not installed" in section
    assert "apt-get install wrk" in section
    assert "Load: the Python generator" in section
    _assert_measured(_row(_server_table(section, "uvicorn in pure Python"), v.BARE))


@needs_wrk
def test_wrk_measures_the_pure_python_server(tmp_path: Path) -> None:
    # The main run measured the uvloop server (with the Python generator): this one the other.
    output = tmp_path / "results.md"
    run = _harness(
        *("--only", "http", "--filter", "bare Starlette", "--load-generator", "wrk"),
        *("--server", "asyncio"),
        *("--http-seconds", "1", "--http-rounds", "1", "--concurrency", "2"),
        *("--output", str(output)),
    )
    assert run.returncode == 0, run.stderr[-3000:]
    section = _section(output.read_text(), "Over HTTP")
    assert "Load: wrk (1 thread, 2 keep-alive connections)" in section
    assert "### uvicorn with uvloop" not in section
    table = _server_table(section, "uvicorn in pure Python")
    for name in (v.BARE, v.SPAN_BARE):
        _assert_measured(_row(table, name))


# --- wrk: the generated script and the output parser ------------------------------------------

WRK_OUTPUT = """\
Running 2s test @ http://127.0.0.1:8765/v1/chat/completions
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     5.10ms    4.63ms  52.17ms   96.03%
    Req/Sec     3.48k   688.83     4.64k    80.00%
  6944 requests in 2.00s, 3.56MB read
  Non-2xx or 3xx responses: 3
Requests/sec:   3465.07
Transfer/sec:      1.77MB
asgi-identity-bench requests=6944 duration_us=2003998 p50_us=4179 p99_us=32555 connect=0 read=1 write=0 status=3 timeout=0 reused=12
"""


def test_wrk_output_is_parsed_from_the_scripts_line() -> None:
    result = _wrk.parse(WRK_OUTPUT)
    assert result.requests == 6944
    assert result.seconds == pytest.approx(2.003998)
    assert result.throughput == pytest.approx(3465.07, rel=1e-3)
    assert (result.p50_ms, result.p99_ms) == (4.179, 32.555)
    assert result.errors == {"connect": 0, "read": 1, "write": 0, "status": 3, "timeout": 0}
    assert result.failed == 4
    assert result.reused == 12


def test_wrk_output_without_the_scripts_line_is_an_error() -> None:
    plain = "\n".join(line for line in WRK_OUTPUT.splitlines() if _wrk.MARKER not in line)
    with pytest.raises(ValueError, match="no 'asgi-identity-bench' line"):
        _wrk.parse(plain)
    with pytest.raises(ValueError, match="completed no request"):
        _wrk.parse(WRK_OUTPUT.replace("requests=6944", "requests=0"))


def test_lua_strings_are_quoted() -> None:
    assert _wrk.lua_quote('{"a": "b\\c"}') == '"{\\"a\\": \\"b\\\\c\\"}"'
    assert _wrk.lua_quote("é\n") == '"\\195\\169\\10"'


def test_wrk_script_sends_the_request_and_leaves_host_and_length_to_wrk() -> None:
    headers = [
        (b"host", b"127.0.0.1"),
        (b"content-length", b"2"),
        (b"content-type", b"application/json"),
        (b"authorization", b"Bearer abc"),
    ]
    script = _wrk.script(headers, b"{}")
    assert 'wrk.method = "POST"' in script
    assert 'wrk.body = "{}"' in script
    assert 'wrk.headers["content-type"] = "application/json"' in script
    assert 'wrk.headers["authorization"] = "Bearer abc"' in script
    assert 'wrk.headers["host"]' not in script
    assert 'wrk.headers["content-length"]' not in script
    assert "function request()" not in script
    assert f"'{_wrk.MARKER} requests=%d" in script


def test_wrk_script_with_a_token_file_sends_its_tokens_instead(tmp_path: Path) -> None:
    script = _wrk.script([(b"authorization", b"Bearer abc")], b"{}", tokens_file=tmp_path / "t")
    assert "Bearer abc" not in script
    assert "function request()" in script
    assert f'io.lines("{tmp_path / "t"}")' in script


class _Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append(self.headers["Authorization"])
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []
    handler = type("Handler", (_Recorder,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/chat/completions", seen
    finally:
        server.shutdown()
        server.server_close()


@needs_wrk
def test_wrk_sends_every_token_of_the_pool_then_counts_the_reused_ones(
    tmp_path: Path, recorder: tuple[str, list[str]]
) -> None:
    url, seen = recorder
    tokens = [f"token-{i}" for i in range(20)]
    (tmp_path / "tokens").write_text("\n".join(tokens) + "\n")
    script = tmp_path / "new.lua"
    script.write_text(
        _wrk.script(
            [(b"content-type", b"application/json")],
            b"{}",
            tokens_file=tmp_path / "tokens",
            threads=2,
        )
    )
    executable = shutil.which("wrk")
    assert executable is not None
    command = _wrk.command(executable, url, script, seconds=1, connections=2, threads=2)
    run = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True)
    result = _wrk.parse(run.stdout)
    assert result.failed == 0
    assert {f"Bearer {token}" for token in tokens} == set(seen)
    assert result.requests > len(tokens)
    assert result.reused > 0
