"""One variant under uvicorn on loopback: `python -m benchmarks._serve --variant NAME ...`."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import uvicorn

from ._fixtures import Keys
from .variants import BY_NAME, Unavailable, make_app

#: Exit status telling the harness the variant cannot be built here (reported as n/a).
UNAVAILABLE = 3


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._serve")
    parser.add_argument("--variant", required=True, choices=sorted(BY_NAME))
    parser.add_argument("--keys", required=True, type=Path, help="JSON file of public keys")
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--loop", default="asyncio", choices=("asyncio", "uvloop"))
    parser.add_argument("--http", default="h11", choices=("h11", "httptools"))
    args = parser.parse_args()
    # Named explicitly, never uvicorn's "auto": a missing uvloop or httptools must say so, not
    # quietly measure the pure-Python server under the other configuration's name.
    for module in {args.loop, args.http} - {"asyncio"}:
        if importlib.util.find_spec(module) is None:
            print(f"{module} is not installed (pip install 'uvicorn[standard]')", file=sys.stderr)
            return UNAVAILABLE
    try:
        app = make_app(BY_NAME[args.variant], Keys.from_json(args.keys.read_text()))
    except Unavailable as exc:
        print(exc, file=sys.stderr)
        return UNAVAILABLE
    # No access log: it would measure the logging module, and every variant would pay it alike.
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        loop=args.loop,
        http=args.http,
        log_level="warning",
        access_log=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
