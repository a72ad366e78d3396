"""Over HTTP: each variant served by uvicorn on 127.0.0.1 (a subprocess), under a bounded load.

The load generator is a small keep-alive HTTP/1.1 client on raw asyncio streams, sending
pre-encoded requests: a fixed number of requests over a fixed number of connections, each
connection waiting for its response before the next request. It costs a fraction of what the
server spends per request, so the server, not the client, sets the pace.
"""

from __future__ import annotations

import asyncio
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
from typing import IO, Literal

from . import variants as v
from ._fixtures import PATH, REQUEST_BODY, Signer, request_headers
from ._serve import UNAVAILABLE
from .variants import Variant

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


@dataclass(frozen=True)
class LoadSettings:
    requests: int = 3000
    rounds: int = 3
    concurrency: int = 16
    warmup: int = 200
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
    status: Literal["ok", "n/a", "failed"] = "ok"
    reason: str = ""
    throughput: list[float] = field(default_factory=list)
    p50_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return statistics.median(self.throughput)


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
    """A uvicorn subprocess serving one variant."""

    def __init__(self, variant: Variant, keys_file: Path) -> None:
        self.variant = variant
        self.port = _free_port()
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


def _requests(variant: Variant, signer: Signer, count: int) -> list[bytes]:
    if variant.tokens == "new":
        tokens = signer.new_tokens(variant.algorithm, count)
        return [encode(request_headers(token, api_key=variant.api_key)) for token in tokens]
    token = signer.token(variant.algorithm) if variant.tokens == "repeated" else None
    return [encode(request_headers(token, api_key=variant.api_key))] * count


def _baseline(variant: Variant, names: set[str]) -> str | None:
    if variant.name == v.BARE:
        return None
    if variant.baseline in names:
        return variant.baseline
    return v.BARE if v.BARE in names else None


async def _round(
    server: Server, result: HTTPMeasured, requests: Sequence[bytes], settings: LoadSettings
) -> None:
    try:
        done = await asyncio.wait_for(
            load(server.port, requests, settings.concurrency), settings.round_timeout
        )
    except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as exc:
        result.status, result.reason = "failed", f"{type(exc).__name__}: {exc} {server.log()}"
        return
    if done.errors:
        result.status = "failed"
        result.reason = f"{done.errors} errors, first: HTTP {done.first_error}"
        return
    ordered = sorted(done.latencies)
    result.throughput.append(done.throughput)
    result.p50_ms.append(ordered[len(ordered) // 2] * 1e3)
    result.p99_ms.append(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3)


def run(variants: Sequence[Variant], signer: Signer, settings: LoadSettings) -> list[HTTPMeasured]:
    """Serve every variant at once (idle servers cost nothing) and load them in turn, each round."""
    names = {variant.name for variant in variants}
    results = [HTTPMeasured(variant.name, _baseline(variant, names)) for variant in variants]
    servers: dict[str, Server] = {}
    with tempfile.NamedTemporaryFile("w", suffix=".json") as keys_file:
        keys_file.write(signer.keys.to_json())
        keys_file.flush()
        try:
            for variant in variants:
                servers[variant.name] = Server(variant, Path(keys_file.name))
            plans = {}
            for variant, result in zip(variants, results, strict=True):
                server = servers[variant.name]
                try:
                    server.wait_ready(settings.start_timeout)
                except TimeoutError as exc:
                    result.status, result.reason = "failed", f"{exc}: {server.log()}"
                    continue
                code = server.process.poll()
                if code is not None:
                    result.status = "n/a" if code == UNAVAILABLE else "failed"
                    result.reason = server.log() or f"uvicorn exited with status {code}"
                    continue
                total = settings.warmup + settings.rounds * settings.requests
                plans[variant.name] = _requests(variant, signer, total)
            asyncio.run(_drive(variants, results, servers, plans, settings))
        finally:
            for server in servers.values():
                server.stop()
    return results


async def _drive(
    variants: Sequence[Variant],
    results: Sequence[HTTPMeasured],
    servers: dict[str, Server],
    plans: dict[str, list[bytes]],
    settings: LoadSettings,
) -> None:
    live = [(r, servers[r.name]) for r in results if r.status == "ok"]
    for result, server in live:
        warm = HTTPMeasured(result.name, None)
        await _round(server, warm, plans[result.name][: settings.warmup], settings)
        if warm.status != "ok":
            result.status, result.reason = warm.status, warm.reason
    for round_number in range(settings.rounds):
        order = live if round_number % 2 == 0 else live[::-1]
        for result, server in order:
            if result.status != "ok":
                continue
            start = settings.warmup + round_number * settings.requests
            await _round(
                server, result, plans[result.name][start : start + settings.requests], settings
            )


def table(results: Sequence[HTTPMeasured], settings: LoadSettings) -> str:
    by_name = {r.name: r for r in results}
    lines = [
        f"uvicorn (one worker) on 127.0.0.1; {settings.requests} requests per round over "
        f"{settings.concurrency} keep-alive connections, {settings.rounds} rounds, medians.",
        "",
        "| variant | compared with | requests / s | x baseline | p50 ms | p99 ms |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for result in results:
        if result.status != "ok" or not result.throughput:
            reason = result.reason.replace("|", "\\|").replace("\n", " ")[:200]
            lines.append(f"| {result.name} | | {result.status}: {reason} | | | |")
            continue
        baseline = by_name.get(result.baseline or "")
        ratio = (
            f"{result.rps / baseline.rps:.0%}"
            if baseline is not None and baseline.status == "ok" and baseline.throughput
            else ""
        )
        lines.append(
            f"| {result.name} | {result.baseline or '(baseline)'} | {result.rps:,.0f} | {ratio} | "
            f"{statistics.median(result.p50_ms):.2f} | {statistics.median(result.p99_ms):.2f} |"
        )
    return "\n".join(lines)


def target_ratios(results: Sequence[HTTPMeasured]) -> dict[str, float]:
    """Throughput of the full-stack variants as a fraction of their baseline's."""
    by_name = {r.name: r for r in results}
    ratios = {}
    for name in (v.FULL_REPEATED, v.FULL_REDIS, v.FULL_REPEATED_OTEL):
        result = by_name.get(name)
        if result is None or result.status != "ok" or not result.throughput:
            continue
        baseline = by_name.get(result.baseline or "")
        if baseline is not None and baseline.status == "ok" and baseline.throughput:
            ratios[name] = result.rps / baseline.rps
    return ratios
