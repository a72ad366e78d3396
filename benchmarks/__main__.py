"""`python -m benchmarks`: measure, print the tables, write them to benchmarks/results.md."""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from . import variants as v
from ._fixtures import Signer
from .inprocess import Settings

if TYPE_CHECKING:
    from . import http

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
        "--quick", action="store_true", help="small counts: a rough run in about two minutes"
    )
    parser.add_argument("--filter", help="only the variants whose name contains this text")
    parser.add_argument("--count", type=int, help="in-process requests per round (default 2000)")
    parser.add_argument("--rounds", type=int, help="in-process rounds (default 7)")
    parser.add_argument("--warmup", type=int, help="in-process warm-up requests per variant")
    parser.add_argument(
        "--targets",
        action="store_true",
        help="only what the 0.2 targets need: in-process the four full-stack variants, their "
        "baseline and pyjwt's RS256 decode; over HTTP the full stack on memory and on Redis "
        "and their baseline",
    )
    parser.add_argument(
        "--load-generator",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="HTTP load: wrk, or the Python generator (shares the CPUs with the server); "
        "auto: wrk when installed",
    )
    parser.add_argument(
        "--server",
        action="append",
        choices=("uvloop", "asyncio"),
        help="uvicorn configuration (repeatable): uvloop (uvloop + httptools, the targets') "
        "or asyncio (asyncio + h11); default both",
    )
    parser.add_argument("--http-seconds", type=int, help="wrk: seconds per round (default 5)")
    parser.add_argument("--http-rounds", type=int, help="HTTP rounds (default 3)")
    parser.add_argument(
        "--http-requests", type=int, help="Python generator: requests per round (default 3000)"
    )
    parser.add_argument("--concurrency", type=int, default=16, help="HTTP connections")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (default 1)")
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


def _http_settings(args: argparse.Namespace) -> http.LoadSettings:
    """The HTTP load: wrk when it is there (or asked for), else the Python generator, said so."""
    from . import _wrk, http

    quick = args.quick
    executable = _wrk.find()
    generator = args.load_generator
    note = ""
    if generator == "wrk" and executable is None:
        raise SystemExit(
            f"wrk is not installed: {_wrk.INSTALL_HINT}, or pass --load-generator python"
        )
    if generator == "auto":
        generator = "wrk" if executable is not None else "python"
        if executable is None:
            note = (
                f"wrk is not installed ({_wrk.INSTALL_HINT}); the HTTP figures come from the "
                "Python load generator, which shares the CPUs with the server: lower throughput, "
                "and ratios that are not comparable with wrk's."
            )
            print(f"note: {note}", file=sys.stderr, flush=True)
    requests = _positive(args.http_requests, 400 if quick else 3000, "http-requests")
    chosen = args.server or list(http.SERVERS)
    return http.LoadSettings(
        generator=generator,
        wrk=executable or "wrk",
        seconds=_positive(args.http_seconds, 2 if quick else 5, "http-seconds"),
        warmup_seconds=1,
        threads=_positive(args.wrk_threads, 1, "wrk-threads"),
        requests=requests,
        warmup=max(1, min(200, requests // 5)),
        rounds=_positive(args.http_rounds, 1 if quick else 3, "http-rounds"),
        concurrency=_positive(args.concurrency, 16, "concurrency"),
        servers=tuple(http.SERVERS[key] for key in dict.fromkeys(chosen)),
        note=note,
    )


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
    http_settings = _http_settings(args) if "http" in only else None
    from .report import load_average

    load = load_average()
    signer = Signer()
    command = " ".join(
        ["python -m benchmarks", shlex.join(argv if argv is not None else sys.argv[1:])]
    ).strip()
    sections: list[tuple[str, str]] = []
    in_process = []
    http_ratios: list[http.Ratio] = []

    if "inprocess" in only:
        from . import inprocess, report
        from .reference import PYJWT_RS256, REFERENCES

        references = [r for r in REFERENCES if r.name == PYJWT_RS256 or not args.targets]
        measured = v.select(args.filter, target="inprocess") if args.targets else chosen
        print(f"in-process: {len(measured)} variants ...", file=sys.stderr, flush=True)
        in_process = asyncio.run(inprocess.run(measured, signer, settings, references=references))
        sections.append(("In-process", report.inprocess_table(in_process, settings)))
    if http_settings is not None:
        from . import http

        served = v.select(args.filter, target="http") if args.targets else chosen
        over_http = [variant for variant in served if variant.http]
        print(
            f"over HTTP: {len(over_http)} variants x {len(http_settings.servers)} servers, "
            f"load from {http_settings.generator} ...",
            file=sys.stderr,
            flush=True,
        )
        http_results = http.run(over_http, signer, http_settings)
        sections.append(("Over HTTP", http.table(http_results, http_settings)))
        http_ratios = http.target_ratios(http_results)
    if "inprocess" in only or "http" in only:
        from . import report

        targets = report.targets_table(in_process, http_ratios, http="http" in only)
        sections.insert(0, ("Targets", targets))
    if "profile" in only:
        from . import profile

        sections.append(("Profile", profile.run(signer, requests=settings.count)))

    from . import report

    text = report.document(sections, command, load=load)
    print(text)
    args.output.write_text(text)
    print(f"written to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
