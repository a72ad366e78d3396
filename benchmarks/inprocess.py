"""In-process: prebuilt ASGI scopes driven straight into each app, no server, no sockets.

All variants of a group run in the same rounds, interleaved (the order flips every round), so a
noisy moment on the machine lands on every variant rather than on one; each figure is the median
over rounds of the mean time per request within a round.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from asgi_identity.types import ASGIApp, Message

from ._fixtures import PATH, REQUEST_BODY, Signer, request_headers
from .reference import REFERENCES, Reference, Runner
from .variants import Unavailable, Variant, make_app

Status = Literal["ok", "n/a", "failed"]
Headers = list[tuple[bytes, bytes]]


class VariantFailed(Exception):
    """The variant answered something other than 200, or raised: it is reported, not measured."""


@dataclass
class Measured:
    name: str
    baseline: str | None
    kind: Literal["asgi", "reference"]
    group: Literal["plain", "otel"] = "plain"
    status: Status = "ok"
    reason: str = ""
    samples: list[float] = field(default_factory=list)

    @property
    def us(self) -> float:
        """Median microseconds per request (per call for a reference line)."""
        return statistics.median(self.samples)

    @property
    def spread(self) -> float:
        """Half the range of the rounds, as a fraction of the median: how noisy the figure is."""
        return (max(self.samples) - min(self.samples)) / 2 / self.us


@dataclass(frozen=True)
class Settings:
    count: int = 2000
    rounds: int = 7
    warmup: int = 200

    def per_round(self, variant: Variant | None) -> int:
        # Minting RS256 tokens costs ~0.7 ms each, so variants that need a fresh token per request
        # run fewer requests a round; their figure is still a per-request mean.
        if variant is not None and variant.tokens == "new":
            return max(1, self.count // 4)
        return self.count

    def warmup_for(self, variant: Variant | None) -> int:
        return max(1, min(self.warmup, self.per_round(variant)))


def _base_scope() -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": PATH,
        "raw_path": PATH.encode(),
        "root_path": "",
        "query_string": b"",
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


def _receive_body() -> Callable[[], Awaitable[Message]]:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": REQUEST_BODY, "more_body": False}

    return receive


class ASGIRunner:
    """Sends requests into an app as a server would: a fresh scope and receive for each one."""

    def __init__(self, app: ASGIApp, headers: Iterator[Headers], state: dict[str, Any]) -> None:
        self.app = app
        self.headers = headers
        self.state = state
        self.base = _base_scope()
        self.failure: str | None = None
        self._status = 200
        self._body = b""

    async def _send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self._status = message["status"]
        elif self._status != 200 and message["type"] == "http.response.body":
            self._body += message.get("body", b"")
            if not message.get("more_body"):
                self.failure = f"HTTP {self._status}: {self._body[:300].decode(errors='replace')}"

    async def __call__(self, n: int) -> None:
        app, send, base, state, headers = self.app, self._send, self.base, self.state, self.headers
        for _ in range(n):
            scope = base.copy()
            try:
                scope["headers"] = list(next(headers))
            except StopIteration:
                raise VariantFailed("the harness ran out of prepared tokens") from None
            scope["state"] = state.copy()
            await app(scope, _receive_body(), send)
        if self.failure is not None:
            raise VariantFailed(self.failure)


class Lifespan:
    """Runs an app's lifespan start-up (key warm-up, storage connections) and, later, shut-down."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.state: dict[str, Any] = {}
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._started = asyncio.Event()
        self._stopped = asyncio.Event()
        self._failure: str | None = None
        self._task: asyncio.Task[None] | None = None

    async def _send(self, message: Message) -> None:
        kind = message["type"]
        if kind.startswith("lifespan.startup."):
            if kind.endswith("failed"):
                self._failure = message.get("message", "lifespan start-up failed")
            self._started.set()
        elif kind.startswith("lifespan.shutdown."):
            self._stopped.set()

    async def _run(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": self.state}
        try:
            await self.app(scope, self._inbox.get, self._send)
        except Exception:  # noqa: S110 - an app without lifespan support raises, as uvicorn allows
            pass
        finally:
            self._started.set()
            self._stopped.set()

    async def start(self, timeout: float = 15.0) -> None:
        self._task = asyncio.create_task(self._run())
        await self._inbox.put({"type": "lifespan.startup"})
        await asyncio.wait_for(self._started.wait(), timeout)
        if self._failure is not None:
            raise VariantFailed(f"lifespan start-up failed: {self._failure}")

    async def stop(self, timeout: float = 5.0) -> None:
        if self._task is None or self._task.done():
            return
        await self._inbox.put({"type": "lifespan.shutdown"})
        try:
            await asyncio.wait_for(self._stopped.wait(), timeout)
        finally:
            self._task.cancel()


def _headers_for(variant: Variant, signer: Signer, settings: Settings) -> Iterator[Headers]:
    if variant.tokens == "none":
        return itertools.repeat(request_headers(None, api_key=variant.api_key))
    if variant.tokens == "repeated":
        token = signer.token(variant.algorithm)
        return itertools.repeat(request_headers(token, api_key=variant.api_key))
    needed = settings.warmup_for(variant) + settings.rounds * settings.per_round(variant)
    tokens = signer.new_tokens(variant.algorithm, needed)
    return iter([request_headers(token, api_key=variant.api_key) for token in tokens])


@dataclass
class _Entry:
    result: Measured
    runner: Runner | None
    n: int
    warmup: int


async def _prepare(
    variants: Sequence[Variant],
    references: Sequence[Reference],
    signer: Signer,
    settings: Settings,
    lifespans: list[Lifespan],
) -> list[_Entry]:
    entries: list[_Entry] = []
    for variant in variants:
        result = Measured(
            variant.name, variant.baseline, "asgi", "otel" if variant.otel else "plain"
        )
        runner: Runner | None = None
        try:
            app = make_app(variant, signer.keys)
            lifespan = Lifespan(app)
            await lifespan.start()
            lifespans.append(lifespan)
            runner = ASGIRunner(app, _headers_for(variant, signer, settings), lifespan.state)
        except Unavailable as exc:
            result.status, result.reason = "n/a", str(exc)
        except Exception as exc:
            result.status, result.reason = "failed", f"{type(exc).__name__}: {exc}"
        entries.append(
            _Entry(result, runner, settings.per_round(variant), settings.warmup_for(variant))
        )
    for reference in references:
        result = Measured(reference.name, None, "reference")
        runner = None
        try:
            runner = reference.prepare(signer)
        except Unavailable as exc:
            result.status, result.reason = "n/a", str(exc)
        except Exception as exc:
            result.status, result.reason = "failed", f"{type(exc).__name__}: {exc}"
        entries.append(_Entry(result, runner, settings.count, settings.warmup_for(None)))
    return entries


async def _call(entry: _Entry, n: int) -> float | None:
    """Seconds for `n` operations, or None after marking the entry failed."""
    assert entry.runner is not None
    try:
        started = time.perf_counter()
        await entry.runner(n)
        return time.perf_counter() - started
    except Exception as exc:
        entry.result.status = "failed"
        entry.result.reason = f"{type(exc).__name__}: {exc}"
        entry.runner = None
        return None


async def _measure(entries: list[_Entry], settings: Settings) -> None:
    for entry in entries:
        if entry.runner is not None:
            await _call(entry, entry.warmup)
    for round_number in range(settings.rounds):
        order = entries if round_number % 2 == 0 else entries[::-1]
        for entry in order:
            if entry.runner is None:
                continue
            gc.collect()
            elapsed = await _call(entry, entry.n)
            if elapsed is not None:
                entry.result.samples.append(elapsed / entry.n * 1e6)


async def _run_group(
    variants: Sequence[Variant],
    references: Sequence[Reference],
    signer: Signer,
    settings: Settings,
) -> list[Measured]:
    lifespans: list[Lifespan] = []
    try:
        entries = await _prepare(variants, references, signer, settings, lifespans)
        # The harness's own prepared tokens and apps must not make the collector's passes
        # slower during the measurement: move everything alive now out of its reach.
        gc.collect()
        gc.freeze()
        try:
            await _measure(entries, settings)
        finally:
            gc.unfreeze()
    finally:
        for lifespan in lifespans:
            await lifespan.stop()
    return [entry.result for entry in entries]


async def run(
    variants: Sequence[Variant],
    signer: Signer,
    settings: Settings,
    *,
    references: Sequence[Reference] = REFERENCES,
) -> list[Measured]:
    """Measure every variant and reference line; variants with the OTel SDK run last, together."""
    plain = [v for v in variants if not v.otel]
    with_sdk = [v for v in variants if v.otel]
    results = await _run_group(plain, references, signer, settings)
    if with_sdk:
        results += await _run_group(with_sdk, (), signer, settings)
    return results
