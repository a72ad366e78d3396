"""The Markdown the harness prints and writes to benchmarks/results.md."""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from importlib import metadata

from . import variants as v
from .http import MAIN, SERVERS, Ratio
from .inprocess import Measured, Settings
from .reference import PYJWT_RS256

#: DESIGN.md "Performance": what the full stack may add in-process (for a new token: beyond
#: pyjwt's decode of it), and the share of the bare app's throughput it keeps over HTTP.
ADDED_US_TARGET = 15.0
HTTP_MEMORY_TARGET = 0.70
HTTP_REDIS_TARGET = 0.60

_IN_PROCESS = (
    (v.FULL_REPEATED, "repeated token", "with token quota"),
    (v.FULL_REPEATED_NO_QUOTA, "repeated token", "no token quota"),
    (v.FULL_NEW, "new token", "with token quota"),
    (v.FULL_NEW_NO_QUOTA, "new token", "no token quota"),
)
_OVER_HTTP = (
    (v.FULL_REPEATED, "memory", HTTP_MEMORY_TARGET),
    (v.FULL_REDIS, "Redis", HTTP_REDIS_TARGET),
)

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


def _at_least(ratio: float | None, floor: float) -> str:
    # Throughput is better when higher: compare the shortfall so _verdict reads the same way.
    return "n/a" if ratio is None else _verdict(-ratio, -floor)


class _Targets:
    """The figures the 0.2 targets are judged on, read from one run's results."""

    def __init__(self, results: Sequence[Measured], http_ratios: Sequence[Ratio]) -> None:
        self.by_name = _rows(results)
        pyjwt = self.by_name.get(PYJWT_RS256)
        self.pyjwt = pyjwt.us if pyjwt is not None and pyjwt.status == "ok" else None
        self.ratios = {(r.server, r.name): r.ratio for r in http_ratios}

    def added(self, name: str) -> float | None:
        result = self.by_name.get(name)
        if result is None:
            return None
        found = _added(result, self.by_name)
        return found[0] if found else None

    def beyond_pyjwt(self, name: str) -> float | None:
        """What a new token adds beyond pyjwt's own decode of it."""
        added = self.added(name)
        return None if added is None or self.pyjwt is None else added - self.pyjwt

    def ratio(self, name: str, server: str = MAIN.key) -> float | None:
        return self.ratios.get((server, name))


def _in_process_targets(t: _Targets) -> list[tuple[str, str, str]]:
    """(table row, summary line, verdict) for each in-process target."""
    found = []
    for name, tokens, quota in _IN_PROCESS:
        label = f"{tokens}, {quota}"
        if tokens == "repeated token":
            measured = t.added(name)
            row = f"in-process, {label}: added us"
            summary = f"{label}: {_signed(measured)} us (target {ADDED_US_TARGET:.0f})"
        else:
            measured = t.beyond_pyjwt(name)
            row = f"in-process, {label}: added us beyond pyjwt decode"
            summary = (
                f"{label}: {_signed(t.added(name))} us = pyjwt decode {_opt(t.pyjwt)} us "
                f"{_signed(measured, space=True)} us (target {ADDED_US_TARGET:.0f})"
            )
        verdict = _verdict(measured, ADDED_US_TARGET)
        found.append(
            (f"| {row} | {ADDED_US_TARGET:.1f} | {_opt(measured)} | {verdict} |", summary, verdict)
        )
    return found


def _http_targets(t: _Targets) -> list[tuple[str, str, str]]:
    found = []
    for name, storage, floor in _OVER_HTTP:
        ratio = t.ratio(name)
        verdict = _at_least(ratio, floor)
        shown = "n/a" if ratio is None else f"{ratio:.1%}"
        found.append(
            (
                f"| over HTTP ({MAIN.loop} + {MAIN.http}), full stack, {storage}: throughput vs "
                f"bare | >= {floor:.0%} | {shown} | {verdict} |",
                f"over HTTP, {storage}: {shown} of the bare app's throughput (target {floor:.0%})",
                verdict,
            )
        )
    return found


def targets_table(
    results: Sequence[Measured], http_ratios: Sequence[Ratio] = (), *, http: bool = True
) -> str:
    """The 0.2 targets: a table, one summary line per target, and the figures beside them."""
    t = _Targets(results, http_ratios)
    rows = _in_process_targets(t) if results else []
    if http:
        rows += _http_targets(t)
    lines = [
        'DESIGN.md "Performance": in-process, the full stack (every layer, memory storage, no '
        "OTel SDK) on a chat completion; over HTTP, uvicorn with uvloop and httptools.",
        "",
        "| target | limit | measured | |",
        "| --- | ---: | ---: | --- |",
        *(row for row, _, _ in rows),
        "",
        *(f"- {summary}: {verdict}" for _, summary, verdict in rows),
    ]
    beside = _beside_rows(t) if results or http_ratios else []
    if beside:
        lines += [
            "",
            "Beside the targets:",
            "",
            "| figure | compared with | measured | |",
            "| --- | ---: | ---: | --- |",
            *beside,
        ]
    return "\n".join(lines)


def _beside_rows(t: _Targets) -> list[str]:
    rows = []
    for label, name in (
        ("full stack, repeated token, OTel SDK: added us", v.FULL_REPEATED_OTEL),
        ("full stack, new RS256 token, OTel SDK: added us", v.FULL_NEW_OTEL),
    ):
        added = t.added(name)
        if added is not None:
            rows.append(f"| {label} | | {_fmt(added)} | |")
    peer, peer_otel = t.added(v.HAND_WRITTEN), t.added(v.HAND_WRITTEN_OTEL)
    for label, name, limit in (
        ("full stack, repeated token, cheaper than the hand-written stack", v.FULL_REPEATED, peer),
        ("full stack, new RS256 token, cheaper than the hand-written stack", v.FULL_NEW, peer),
        (
            "full stack, repeated token, OTel SDK, cheaper than the hand-written stack",
            v.FULL_REPEATED_OTEL,
            peer_otel,
        ),
    ):
        measured = t.added(name)
        if measured is not None and limit is not None:
            rows.append(
                f"| {label} | {_fmt(limit)} | {_fmt(measured)} | {_verdict(measured, limit)} |"
            )
    for (server, name), ratio in t.ratios.items():
        if server == MAIN.key and name in (v.FULL_REPEATED, v.FULL_REDIS):
            continue
        config = SERVERS[server]
        rows.append(
            f"| over HTTP ({config.loop} + {config.http}), {name}: throughput vs bare | | "
            f"{ratio:.0%} | |"
        )
    return rows


def _signed(value: float | None, *, space: bool = False) -> str:
    if value is None:
        return "n/a" if not space else "+ n/a"
    text = f"{value:+.1f}"
    return f"{text[0]} {text[1:]}" if space else text


def _opt(value: float | None) -> str:
    return "n/a" if value is None else _fmt(value)


def load_average() -> str:
    """The 1-minute load average now (how busy the machine was when the run started)."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "unknown"


def document(sections: Sequence[tuple[str, str]], command: str, *, load: str = "") -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    started = f" Load average when the run started: {load}." if load else ""
    parts = [
        "# asgi-identity benchmark results",
        "",
        f"Run {stamp} with `{command}` on: {machine()}.",
        "",
        f"Figures are only comparable within one run: the machine is shared and noisy.{started}",
    ]
    for title, body in sections:
        parts += ["", f"## {title}", "", body]
    return "\n".join(parts) + "\n"
