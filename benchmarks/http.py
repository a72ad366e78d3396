"""Over HTTP: each variant served by uvicorn on 127.0.0.1 (a subprocess), under a bounded load.

Every variant runs under each server configuration: uvicorn with uvloop and httptools (what
production runs, and where the targets are measured) and uvicorn in pure Python (the asyncio loop
and h11). The load comes from wrk when it is installed: a C program in its own process, so the
server keeps its core to itself. Without wrk, a small keep-alive HTTP/1.1 client on raw asyncio
streams sends a fixed number of pre-encoded requests instead; it shares the machine's cores with
the server, so its figures are lower and its ratios closer to 100%.
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal, NamedTuple, Protocol

from . import _wrk
from . import variants as v
from ._fixtures import PATH, REQUEST_BODY, Signer, request_headers
from ._serve import UNAVAILABLE
from .variants import Variant

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
Generator = Literal["wrk", "python"]
#: A first guess of a new-token variant's requests per second, to size its token pool before
#: the warm-up has measured it; later rounds size the pool from the round before.
NEW_TOKEN_RATE_GUESS = 3000.0
#: Tokens minted beyond the expected need, so that a faster round still sends only new tokens.
POOL_HEADROOM = 1.3


@dataclass(frozen=True)
class ServerConfig:
    key: str
    loop: str
    http: str
    title: str


UVLOOP = ServerConfig("uvloop", "uvloop", "httptools", "uvicorn with uvloop and httptools")
PURE_PYTHON = ServerConfig("asyncio", "asyncio", "h11", "uvicorn in pure Python (asyncio and h11)")
SERVERS = {config.key: config for config in (UVLOOP, PURE_PYTHON)}
#: The configuration the HTTP targets are measured on.
MAIN = UVLOOP


@dataclass(frozen=True)
class LoadSettings:
    generator: Generator = "wrk"
    #: The wrk executable.
    wrk: str = "wrk"
    #: wrk: seconds per round, and of the warm-up before the first round.
    seconds: int = 5
    warmup_seconds: int = 1
    threads: int = 1
    #: The Python generator: requests per round, and in its warm-up.
    requests: int = 3000
    warmup: int = 200
    rounds: int = 3
    concurrency: int = 16
    servers: tuple[ServerConfig, ...] = (UVLOOP, PURE_PYTHON)
    #: Said above the tables (why the Python generator ran instead of wrk).
    note: str = ""
    #: Longest a server may take to start, and a round to finish, before the variant fails.
    start_timeout: float = 30.0
    round_timeout: float = 120.0


@dataclass
class Load:
    seconds: float
    latencies: list[float]
    errors: int
    first_error: str = ""

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.seconds


@dataclass
class HTTPMeasured:
    name: str
    baseline: str | None
    server: str = MAIN.key
    status: Literal["ok", "n/a", "failed"] = "ok"
    reason: str = ""
    throughput: list[float] = field(default_factory=list)
    p50_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    #: Requests measured in all, and how many of a new-token variant's reused a token.
    requests: int = 0
    reused: int = 0

    @property
    def rps(self) -> float:
        return statistics.median(self.throughput)

    @property
    def spread(self) -> float:
        """Half the range of the rounds' throughput, relative to the median: how noisy it is."""
        return (max(self.throughput) - min(self.throughput)) / 2 / self.rps

    @property
    def measured(self) -> bool:
        return self.status == "ok" and bool(self.throughput)

    def fail(self, status: Literal["n/a", "failed"], reason: str) -> None:
        self.status, self.reason = status, reason


def encode(headers: Sequence[tuple[bytes, bytes]]) -> bytes:
    head = b"\r\n".join(
        [
            b"POST " + PATH.encode() + b" HTTP/1.1",
            *(name + b": " + value for name, value in headers),
        ]
    )
    return head + b"\r\n\r\n" + REQUEST_BODY


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    raise ValueError("response without Content-Length (the load generator reads no chunked bodies)")


async def load(port: int, requests: Sequence[bytes], concurrency: int) -> Load:
    """Send every request once over `concurrency` keep-alive connections; time each one."""
    latencies: list[float] = []
    errors = 0
    first_error = ""
    next_index = 0

    async def connection() -> None:
        nonlocal next_index, errors, first_error
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            while next_index < len(requests):
                request = requests[next_index]
                next_index += 1
                started = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                body = await reader.readexactly(_content_length(head))
                latencies.append(time.perf_counter() - started)
                if head[9:12] != b"200":
                    errors += 1
                    first_error = first_error or (head[9:12] + b" " + body[:300]).decode(
                        errors="replace"
                    )
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(min(concurrency, len(requests)))))
    return Load(time.perf_counter() - started, latencies, errors, first_error)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


class Server:
    """A uvicorn subprocess serving one variant under one server configuration."""

    def __init__(self, variant: Variant, config: ServerConfig, keys_file: Path) -> None:
        self.variant = variant
        self.config = config
        self.port = _free_port()
        self.url = f"http://{HOST}:{self.port}{PATH}"
        self._log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        }
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks._serve",
                "--variant",
                variant.name,
                "--keys",
                str(keys_file),
                "--port",
                str(self.port),
                "--loop",
                config.loop,
                "--http",
                config.http,
            ],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )

    def log(self) -> str:
        self._log.seek(0)
        return self._log.read()[-2000:].decode(errors="replace").strip()

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return
            try:
                with socket.create_connection((HOST, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"uvicorn did not listen within {timeout:.0f} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()


class TokenPool:
    """New tokens for the new-token variants, minted as they are needed.

    Every server is its own process with its own verified-token cache, so each server walks the
    same pool from its start: tokens minted for one server configuration serve the other too.
    """

    def __init__(self, signer: Signer) -> None:
        self.signer = signer
        self._tokens: dict[str, list[str]] = {}

    def take(self, algorithm: str, start: int, count: int) -> list[str]:
        tokens = self._tokens.setdefault(algorithm, [])
        missing = start + count - len(tokens)
        if missing > 0:
            tokens += self.signer.new_tokens(algorithm, missing)
        return tokens[start : start + count]


class _Driver(Protocol):
    """Sends one variant's load for one round (or the warm-up) and records what it measured."""

    def warm(self, server: Server, result: HTTPMeasured) -> None: ...

    def round(self, server: Server, result: HTTPMeasured, number: int) -> None: ...


class _PythonDriver:
    """The asyncio load generator: a fixed number of requests per round."""

    def __init__(self, settings: LoadSettings, signer: Signer, pool: TokenPool) -> None:
        self.settings = settings
        self.signer = signer
        self.pool = pool

    def _requests(self, variant: Variant, start: int, count: int) -> list[bytes]:
        if variant.tokens == "new":
            tokens = self.pool.take(variant.algorithm, start, count)
            return [encode(request_headers(token, api_key=variant.api_key)) for token in tokens]
        token = self.signer.token(variant.algorithm) if variant.tokens == "repeated" else None
        return [encode(request_headers(token, api_key=variant.api_key))] * count

    def warm(self, server: Server, result: HTTPMeasured) -> None:
        warm = HTTPMeasured(result.name, None)
        self._run(server, warm, self._requests(server.variant, 0, self.settings.warmup))
        if warm.status != "ok":
            result.fail(warm.status, warm.reason)

    def round(self, server: Server, result: HTTPMeasured, number: int) -> None:
        start = self.settings.warmup + number * self.settings.requests
        self._run(server, result, self._requests(server.variant, start, self.settings.requests))

    def _run(self, server: Server, result: HTTPMeasured, requests: Sequence[bytes]) -> None:
        settings = self.settings
        try:
            done = asyncio.run(
                asyncio.wait_for(
                    load(server.port, requests, settings.concurrency), settings.round_timeout
                )
            )
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as exc:
            result.fail("failed", f"{type(exc).__name__}: {exc} {server.log()}")
            return
        if done.errors:
            result.fail("failed", f"{done.errors} errors, first: HTTP {done.first_error}")
            return
        ordered = sorted(done.latencies)
        result.throughput.append(done.throughput)
        result.p50_ms.append(ordered[len(ordered) // 2] * 1e3)
        result.p99_ms.append(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3)
        result.requests += len(ordered)


class _WrkDriver:
    """wrk for a fixed duration per round, with a Lua script per variant in `directory`."""

    def __init__(
        self, settings: LoadSettings, signer: Signer, pool: TokenPool, directory: Path
    ) -> None:
        self.settings = settings
        self.signer = signer
        self.pool = pool
        self.directory = directory
        #: Per server: the next unused token of the pool, and the last rate measured.
        self._next: dict[int, int] = {}
        self._rate: dict[int, float] = {}

    def _script(self, server: Server) -> Path:
        variant = server.variant
        stem = f"{server.config.key}-{server.port}"
        path = self.directory / f"{stem}.lua"
        if path.exists():
            return path
        if variant.tokens == "new":
            text = _wrk.script(
                request_headers(None, api_key=variant.api_key),
                REQUEST_BODY,
                tokens_file=self.directory / f"{stem}.tokens",
                threads=self.settings.threads,
            )
        else:
            token = self.signer.token(variant.algorithm) if variant.tokens == "repeated" else None
            text = _wrk.script(request_headers(token, api_key=variant.api_key), REQUEST_BODY)
        path.write_text(text)
        return path

    def _write_tokens(self, server: Server, seconds: int) -> None:
        """Mint (or reuse from the pool) enough new tokens for `seconds` of this server's load."""
        rate = self._rate.get(server.port, NEW_TOKEN_RATE_GUESS)
        count = math.ceil(rate * seconds * POOL_HEADROOM) + 2 * self.settings.concurrency
        start = self._next.get(server.port, 0)
        tokens = self.pool.take(server.variant.algorithm, start, count)
        self._next[server.port] = start + count
        (self.directory / f"{server.config.key}-{server.port}.tokens").write_text(
            "\n".join(tokens) + "\n"
        )

    def _run(self, server: Server, result: HTTPMeasured, seconds: int) -> _wrk.Result | None:
        script = self._script(server)
        if server.variant.tokens == "new":
            self._write_tokens(server, seconds)
        command = _wrk.command(
            self.settings.wrk,
            server.url,
            script,
            seconds=seconds,
            connections=self.settings.concurrency,
            threads=self.settings.threads,
        )
        try:
            run = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=seconds + self.settings.round_timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            result.fail("failed", f"wrk: {exc} {server.log()}".strip())
            return None
        try:
            done = _wrk.parse(run.stdout)
        except ValueError as exc:
            result.fail("failed", f"wrk: {exc} {run.stderr.strip()} {server.log()}".strip())
            return None
        if done.failed:
            errors = ", ".join(f"{name} {count}" for name, count in done.errors.items() if count)
            result.fail("failed", f"wrk counted errors ({errors}) in {done.requests} requests")
            return None
        self._rate[server.port] = done.throughput
        return done

    def warm(self, server: Server, result: HTTPMeasured) -> None:
        self._run(server, result, self.settings.warmup_seconds)

    def round(self, server: Server, result: HTTPMeasured, number: int) -> None:
        done = self._run(server, result, self.settings.seconds)
        if done is None:
            return
        result.throughput.append(done.throughput)
        result.p50_ms.append(done.p50_ms)
        result.p99_ms.append(done.p99_ms)
        result.requests += done.requests
        result.reused += done.reused


def _baseline(variant: Variant, names: set[str]) -> str | None:
    if variant.name == v.BARE:
        return None
    if variant.baseline in names:
        return variant.baseline
    return v.BARE if v.BARE in names else None


def run(variants: Sequence[Variant], signer: Signer, settings: LoadSettings) -> list[HTTPMeasured]:
    """Every variant under every server configuration; the configurations one after the other."""
    results: list[HTTPMeasured] = []
    pool = TokenPool(signer)
    with tempfile.TemporaryDirectory(prefix="asgi-identity-bench-") as directory:
        keys_file = Path(directory) / "keys.json"
        keys_file.write_text(signer.keys.to_json())
        driver: _Driver
        if settings.generator == "wrk":
            driver = _WrkDriver(settings, signer, pool, Path(directory))
        else:
            driver = _PythonDriver(settings, signer, pool)
        for config in settings.servers:
            results += _run_servers(variants, config, keys_file, driver, settings)
    return results


def _run_servers(
    variants: Sequence[Variant],
    config: ServerConfig,
    keys_file: Path,
    driver: _Driver,
    settings: LoadSettings,
) -> list[HTTPMeasured]:
    """Serve every variant at once (idle servers cost nothing) and load them in turn, each round."""
    names = {variant.name for variant in variants}
    results = [
        HTTPMeasured(variant.name, _baseline(variant, names), config.key) for variant in variants
    ]
    servers: list[Server] = []
    try:
        for variant in variants:
            servers.append(Server(variant, config, keys_file))
        live: list[tuple[HTTPMeasured, Server]] = []
        for result, server in zip(results, servers, strict=True):
            try:
                server.wait_ready(settings.start_timeout)
            except TimeoutError as exc:
                result.fail("failed", f"{exc}: {server.log()}")
                continue
            code = server.process.poll()
            if code is not None:
                result.fail(
                    "n/a" if code == UNAVAILABLE else "failed",
                    server.log() or f"uvicorn exited with status {code}",
                )
                continue
            live.append((result, server))
        for result, server in live:
            driver.warm(server, result)
        for number in range(settings.rounds):
            order = live if number % 2 == 0 else live[::-1]
            for result, server in order:
                if result.status == "ok":
                    driver.round(server, result, number)
    finally:
        for server in servers:
            server.stop()
    return results


def _load_line(settings: LoadSettings) -> str:
    if settings.generator == "wrk":
        return (
            f"Load: wrk ({settings.threads} thread{'s' if settings.threads > 1 else ''}, "
            f"{settings.concurrency} keep-alive "
            f"connections), {settings.seconds} s per round after {settings.warmup_seconds} s of "
            f"warm-up, {_rounds(settings.rounds)}; medians over the rounds."
        )
    return (
        f"Load: the Python generator, {settings.requests} requests per round over "
        f"{settings.concurrency} keep-alive connections, {_rounds(settings.rounds)}; medians "
        "over the rounds."
    )


def _rounds(count: int) -> str:
    return "1 round" if count == 1 else f"{count} rounds"


def table(results: Sequence[HTTPMeasured], settings: LoadSettings) -> str:
    lines = []
    if settings.note:
        lines += [f"**Note:** {settings.note}", ""]
    lines += [
        f"uvicorn (one worker) on 127.0.0.1; each configuration's variants compared within it. "
        f"{_load_line(settings)}",
    ]
    for config in settings.servers:
        mine = [r for r in results if r.server == config.key]
        if not mine:
            continue
        by_name = {r.name: r for r in mine}
        main = ": what production runs, and the HTTP targets" if config is MAIN else ""
        lines += [
            "",
            f"### {config.title}{main}",
            "",
            "| variant | compared with | requests / s | spread | x baseline | p50 ms | p99 ms |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        notes = []
        for result in mine:
            if not result.measured:
                reason = result.reason.replace("|", "\\|").replace("\n", " ")[:200]
                lines.append(f"| {result.name} | | {result.status}: {reason} | | | | |")
                continue
            baseline = by_name.get(result.baseline or "")
            ratio = (
                f"{result.rps / baseline.rps:.0%}"
                if baseline is not None and baseline.measured
                else ""
            )
            lines.append(
                f"| {result.name} | {result.baseline or '(baseline)'} | {result.rps:,.0f} | "
                f"±{result.spread:.0%} | {ratio} | {statistics.median(result.p50_ms):.2f} | "
                f"{statistics.median(result.p99_ms):.2f} |"
            )
            if result.reused:
                notes.append(
                    f"{result.name}: {result.reused / result.requests:.1%} of its requests "
                    "reused a token (the run outpaced the minted pool)."
                )
        if notes:
            lines += ["", *notes]
    return "\n".join(lines)


class Ratio(NamedTuple):
    """A full-stack variant's throughput as a fraction of its baseline's, on one server."""

    server: str
    name: str
    ratio: float


def target_ratios(results: Sequence[HTTPMeasured]) -> list[Ratio]:
    """Throughput of the full-stack variants relative to their baseline, per server."""
    ratios = []
    for result in results:
        if result.name not in (v.FULL_REPEATED, v.FULL_REDIS, v.FULL_REPEATED_OTEL):
            continue
        baseline = next(
            (r for r in results if r.server == result.server and r.name == result.baseline),
            None,
        )
        if result.measured and baseline is not None and baseline.measured:
            ratios.append(Ratio(result.server, result.name, result.rps / baseline.rps))
    return ratios
