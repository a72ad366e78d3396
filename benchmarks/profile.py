"""Where the full stack's time goes per request: cProfile over the in-process driver.

cProfile adds a fixed cost to every Python call, so small functions look bigger than they are;
read the table for where the calls and allocations are, and the in-process table for the cost.
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import pstats

from . import variants as v
from ._fixtures import Signer
from .inprocess import ASGIRunner, Lifespan, Settings, _headers_for
from .variants import Unavailable, make_app

PROFILED = (v.FULL_REPEATED_OTEL, v.FULL_NEW_OTEL)
TOP = 25


async def _profile_one(name: str, signer: Signer, requests: int) -> str:
    variant = v.BY_NAME[name]
    try:
        app = make_app(variant, signer.keys)
    except Unavailable as exc:
        return f"### {name}\n\nn/a: {exc}\n"
    settings = Settings(
        count=requests * 4 if variant.tokens == "new" else requests, rounds=1, warmup=50
    )
    requests = settings.per_round(variant)
    lifespan = Lifespan(app)
    await lifespan.start()
    try:
        runner = ASGIRunner(app, _headers_for(variant, signer, settings), lifespan.state)
        await runner(settings.warmup_for(variant))
        profiler = cProfile.Profile()
        profiler.enable()
        await runner(requests)
        profiler.disable()
    finally:
        await lifespan.stop()
    return _render(name, profiler, requests)


def _render(name: str, profiler: cProfile.Profile, requests: int) -> str:
    stats = pstats.Stats(profiler, stream=io.StringIO())
    rows = []
    entries = stats.stats  # type: ignore[attr-defined]
    for (filename, line, function), (_, calls, own, cumulative, _) in entries.items():
        rows.append((own, cumulative, calls, f"{_short(filename)}:{line} {function}"))
    rows.sort(reverse=True)
    total = sum(row[0] for row in rows)
    lines = [
        f"### {name}",
        "",
        f"{requests} requests under cProfile: {total / requests * 1e6:.1f} us per request in all "
        "(profiler overhead included). Top functions by own time:",
        "",
        "| own us / request | cumulative us / request | calls / request | function |",
        "| ---: | ---: | ---: | --- |",
    ]
    for own, cumulative, calls, where in rows[:TOP]:
        lines.append(
            f"| {own / requests * 1e6:.2f} | {cumulative / requests * 1e6:.2f} | "
            f"{calls / requests:.1f} | `{where}` |"
        )
    return "\n".join(lines) + "\n"


def _short(filename: str) -> str:
    for marker in ("site-packages/", "src/", "lib/python3"):
        index = filename.find(marker)
        if index != -1:
            return filename[index + len(marker) :]
    return filename


def run(signer: Signer, *, requests: int = 2000) -> str:
    async def main() -> list[str]:
        return [await _profile_one(name, signer, requests) for name in PROFILED]

    return "\n".join(asyncio.run(main()))
