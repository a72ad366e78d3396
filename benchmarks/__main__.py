"""`python -m benchmarks`: measure, print the tables, write them to benchmarks/results.md."""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from . import variants as v
from ._fixtures import Signer
from .inprocess import Settings

SECTIONS = ("inprocess", "http", "profile")
DEFAULT_OUTPUT = Path(__file__).with_name("results.md")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        help="run only this part (repeatable); default: inprocess and http",
    )
    parser.add_argument(
        "--quick", action="store_true", help="small counts: a rough run in well under a minute"
    )
    parser.add_argument("--filter", help="only the variants whose name contains this text")
    parser.add_argument("--count", type=int, help="in-process requests per round (default 2000)")
    parser.add_argument("--rounds", type=int, help="in-process rounds (default 7)")
    parser.add_argument("--warmup", type=int, help="in-process warm-up requests per variant")
    parser.add_argument("--http-requests", type=int, help="HTTP requests per round (default 3000)")
    parser.add_argument("--http-rounds", type=int, help="HTTP rounds (default 3)")
    parser.add_argument("--concurrency", type=int, default=16, help="HTTP connections")
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help="where to write the Markdown"
    )
    return parser


def _positive(value: int | None, default: int, name: str) -> int:
    if value is None:
        return default
    if value < 1:
        raise SystemExit(f"--{name} must be at least 1")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    only = set(args.only or ("inprocess", "http"))
    quick = args.quick
    settings = Settings(
        count=_positive(args.count, 300 if quick else 2000, "count"),
        rounds=_positive(args.rounds, 3 if quick else 7, "rounds"),
        warmup=_positive(args.warmup, 50 if quick else 200, "warmup"),
    )
    chosen = v.select(args.filter)
    if not chosen:
        raise SystemExit(f"no variant name contains {args.filter!r}")
    signer = Signer()
    command = " ".join(
        ["python -m benchmarks", shlex.join(argv if argv is not None else sys.argv[1:])]
    ).strip()
    sections: list[tuple[str, str]] = []
    in_process = []
    http_ratios: dict[str, float] = {}

    if "inprocess" in only:
        from . import inprocess, report

        print(f"in-process: {len(chosen)} variants ...", file=sys.stderr, flush=True)
        in_process = asyncio.run(inprocess.run(chosen, signer, settings))
        sections.append(("In-process", report.inprocess_table(in_process, settings)))
    if "http" in only:
        from . import http

        http_requests = _positive(args.http_requests, 400 if quick else 3000, "http-requests")
        http_settings = http.LoadSettings(
            requests=http_requests,
            rounds=_positive(args.http_rounds, 1 if quick else 3, "http-rounds"),
            concurrency=_positive(args.concurrency, 16, "concurrency"),
            warmup=max(1, min(200, http_requests // 5)),
        )
        over_http = [variant for variant in chosen if variant.http]
        print(f"over HTTP: {len(over_http)} variants ...", file=sys.stderr, flush=True)
        http_results = http.run(over_http, signer, http_settings)
        sections.append(("Over HTTP", http.table(http_results, http_settings)))
        http_ratios = http.target_ratios(http_results)
    if "inprocess" in only or "http" in only:
        from . import report

        targets = report.targets_table(in_process, http_ratios)
        sections.insert(0, ("Targets", targets))
    if "profile" in only:
        from . import profile

        sections.append(("Profile", profile.run(signer, requests=settings.count)))

    from . import report

    text = report.document(sections, command)
    print(text)
    args.output.write_text(text)
    print(f"written to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
