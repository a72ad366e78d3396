"""The benchmark harness runs end to end with tiny counts, so it cannot rot unnoticed.

Nothing here looks at a timing: figures belong to `make bench`, not to the test suite.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from benchmarks.reference import REFERENCES
from benchmarks.variants import VARIANTS, redis_reachable

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> str:
    output = tmp_path_factory.mktemp("bench") / "results.md"
    tiny = ["--count", "3", "--rounds", "1", "--warmup", "1"]
    tiny += ["--http-requests", "20", "--http-rounds", "1", "--concurrency", "2"]
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


def test_http_table_has_every_http_variant_measured(results: str) -> None:
    section = _section(results, "Over HTTP")
    for variant in VARIANTS:
        if variant.http:
            _assert_measured(_row(section, variant.name))


def test_targets_and_profile_are_reported(results: str) -> None:
    targets = _section(results, "Targets")
    assert "full stack, repeated token, OTel SDK: added us" in targets
    assert "over HTTP, full stack, memory, repeated token: throughput vs bare" in targets
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
