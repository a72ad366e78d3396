"""The Markdown the harness prints and writes to benchmarks/results.md."""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from importlib import metadata

from . import variants as v
from .inprocess import Measured, Settings
from .reference import PYJWT_RS256

#: DESIGN.md "Performance": the added cost the full stack may have, and its HTTP throughput floor.
ADDED_US_TARGET = 15.0
HTTP_THROUGHPUT_TARGET = 0.65

_PACKAGES = (
    "starlette",
    "fastapi",
    "uvicorn",
    "pyjwt",
    "cryptography",
    "limits",
    "opentelemetry-sdk",
    "slowapi",
    "asgi-correlation-id",
)


def machine() -> str:
    versions = []
    for name in _PACKAGES:
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{name} (not installed)")
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs (nproc), "
        f"Python {platform.python_version()} ({sys.implementation.name}); " + ", ".join(versions)
    )


def _fmt(value: float, digits: int = 1) -> str:
    return f"{value:.{digits}f}"


def _rows(results: Sequence[Measured]) -> dict[str, Measured]:
    return {r.name: r for r in results}


def _added(result: Measured, by_name: dict[str, Measured]) -> tuple[float, float] | None:
    """Microseconds added to the baseline, and the ratio to it, when both were measured."""
    if result.baseline is None or result.status != "ok":
        return None
    baseline = by_name.get(result.baseline)
    if baseline is None or baseline.status != "ok":
        return None
    return result.us - baseline.us, result.us / baseline.us


def inprocess_table(results: Sequence[Measured], settings: Settings) -> str:
    by_name = _rows(results)
    lines = [
        f"Median of {settings.rounds} rounds of {settings.count} requests "
        f"({settings.count // 4} for new-token variants); microseconds per request. "
        "Spread: half the range over the rounds, relative to the median.",
        "",
        "| variant | compared with | us / request | spread | added us | x baseline |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for result in results:
        if result.kind != "asgi":
            continue
        if result.status != "ok":
            lines.append(
                f"| {result.name} | {result.baseline or ''} | {result.status}: "
                f"{_cell(result.reason)} | | | |"
            )
            continue
        added = _added(result, by_name)
        extra = f"{added[0]:+.1f} | {added[1]:.2f}" if added else " | "
        lines.append(
            f"| {result.name} | {result.baseline or '(baseline)'} | {_fmt(result.us)} | "
            f"±{result.spread:.0%} | {extra} |"
        )
    lines += ["", "Reference lines, microseconds per call:", ""]
    lines += ["| operation | us / call | spread |", "| --- | ---: | ---: |"]
    for result in results:
        if result.kind == "reference":
            value = (
                f"{_fmt(result.us, 2)} | ±{result.spread:.0%}"
                if result.status == "ok"
                else f"{result.status}: {_cell(result.reason)} |"
            )
            lines.append(f"| {result.name} | {value} |")
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")[:200]


def _verdict(measured: float | None, limit: float | None) -> str:
    if measured is None or limit is None:
        return "n/a"
    return "met" if measured <= limit else "**not met**"


def targets_table(results: Sequence[Measured], http_ratios: dict[str, float] | None = None) -> str:
    by_name = _rows(results)

    def added(name: str) -> float | None:
        result = by_name.get(name)
        if result is None:
            return None
        found = _added(result, by_name)
        return found[0] if found else None

    pyjwt = by_name.get(PYJWT_RS256)
    verify = pyjwt.us if pyjwt is not None and pyjwt.status == "ok" else None
    new_limit = verify + ADDED_US_TARGET if verify is not None else None
    peer = added(v.HAND_WRITTEN)
    peer_otel = added(v.HAND_WRITTEN_OTEL)
    rows = [
        (
            "full stack, repeated token, OTel SDK: added us",
            ADDED_US_TARGET,
            added(v.FULL_REPEATED_OTEL),
        ),
        (
            "full stack, new RS256 token, OTel SDK: added us (pyjwt RS256 + 15)",
            new_limit,
            added(v.FULL_NEW_OTEL),
        ),
        ("full stack, repeated token, no SDK: added us", ADDED_US_TARGET, added(v.FULL_REPEATED)),
        (
            "full stack, new RS256 token, no SDK: added us (pyjwt RS256 + 15)",
            new_limit,
            added(v.FULL_NEW),
        ),
        (
            "full stack, repeated token, cheaper than the hand-written stack",
            peer,
            added(v.FULL_REPEATED),
        ),
        (
            "full stack, new RS256 token, cheaper than the hand-written stack",
            peer,
            added(v.FULL_NEW),
        ),
        (
            "full stack, repeated token, OTel SDK, cheaper than the hand-written stack",
            peer_otel,
            added(v.FULL_REPEATED_OTEL),
        ),
    ]
    lines = ["| target | limit | measured | |", "| --- | ---: | ---: | --- |"]
    for label, limit, measured in rows if results else ():
        lines.append(
            f"| {label} | {_opt(limit)} | {_opt(measured)} | {_verdict(measured, limit)} |"
        )
    for name, ratio in (http_ratios or {}).items():
        # Throughput is better when higher: compare the shortfall so _verdict reads the same way.
        lines.append(
            f"| over HTTP, {name}: throughput vs bare | >= {HTTP_THROUGHPUT_TARGET:.0%} | "
            f"{ratio:.0%} | {_verdict(-ratio, -HTTP_THROUGHPUT_TARGET)} |"
        )
    return "\n".join(lines)


def _opt(value: float | None) -> str:
    return "n/a" if value is None else _fmt(value)


def document(sections: Sequence[tuple[str, str]], command: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "# asgi-identity benchmark results",
        "",
        f"Run {stamp} with `{command}` on: {machine()}.",
        "",
        "Figures are only comparable within one run: the machine is shared and noisy.",
    ]
    for title, body in sections:
        parts += ["", f"## {title}", "", body]
    return "\n".join(parts) + "\n"
