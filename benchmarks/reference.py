"""Reference lines: the cost of the libraries underneath, per call, measured in the same run."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from ._fixtures import AUDIENCE, RATE_LIMIT, Signer, issuer_url
from .variants import REDIS_STORAGE, Unavailable, redis_reachable

#: Performs its operation `n` times.
Runner = Callable[[int], Awaitable[None]]


@dataclass(frozen=True)
class Reference:
    name: str
    prepare: Callable[[Signer], Runner]


def _pyjwt_decode(algorithm: str) -> Callable[[Signer], Runner]:
    def prepare(signer: Signer) -> Runner:
        token = signer.token(algorithm)
        key = load_pem_public_key(signer.keys.public_pems[algorithm].encode())
        issuer = issuer_url(algorithm)

        async def run(n: int) -> None:
            for _ in range(n):
                jwt.decode(
                    token,
                    key,  # type: ignore[arg-type]
                    algorithms=[algorithm],
                    audience=AUDIENCE,
                    issuer=issuer,
                    options={"require": ["exp", "iss", "aud", "sub"]},
                )

        return run

    return prepare


def _rs256_signature(signer: Signer) -> Runner:
    """The RSA signature check alone, to tell pyjwt's own work from the cryptography."""
    token = signer.token("RS256")
    key = load_pem_public_key(signer.keys.public_pems["RS256"].encode())
    assert isinstance(key, rsa.RSAPublicKey)
    signing_input, _, signature = token.rpartition(".")
    message = signing_input.encode()
    raw_signature = jwt.utils.base64url_decode(signature)

    async def run(n: int) -> None:
        for _ in range(n):
            key.verify(raw_signature, message, padding.PKCS1v15(), hashes.SHA256())

    return run


def _limits(strategy: str, storage_uri: str) -> Callable[[Signer], Runner]:
    def prepare(signer: Signer) -> Runner:
        from limits import parse
        from limits.aio import strategies
        from limits.storage import storage_from_string

        if storage_uri.startswith("async+redis") and not redis_reachable():
            raise Unavailable("no Redis at 127.0.0.1:6379")
        storage = storage_from_string(storage_uri)
        limiter: strategies.RateLimiter
        if strategy == "fixed-window":
            limiter = strategies.FixedWindowRateLimiter(storage)
        elif strategy == "sliding-window-counter":
            limiter = strategies.SlidingWindowCounterRateLimiter(storage)
        else:
            limiter = strategies.MovingWindowRateLimiter(storage)
        item = parse(RATE_LIMIT)
        # A key of this run only: never touches another run's (or a test's) counters.
        key = f"bench-{uuid.uuid4().hex}"

        async def run(n: int) -> None:
            for _ in range(n):
                await limiter.hit(item, key)

        return run

    return prepare


def _otel_api(signer: Signer) -> Runner:
    from opentelemetry import trace

    async def run(n: int) -> None:
        for _ in range(n):
            trace.get_current_span().is_recording()

    return run


REFERENCES: tuple[Reference, ...] = (
    *(Reference(f"pyjwt decode, {alg}", _pyjwt_decode(alg)) for alg in ("RS256", "ES256", "EdDSA")),
    Reference("RS256 signature alone (cryptography)", _rs256_signature),
    *(
        Reference(f"limits {strategy}, memory", _limits(strategy, "async+memory://"))
        for strategy in ("fixed-window", "sliding-window-counter", "moving-window")
    ),
    *(
        Reference(f"limits {strategy}, Redis", _limits(strategy, REDIS_STORAGE))
        for strategy in ("fixed-window", "sliding-window-counter")
    ),
    Reference("OpenTelemetry API, no SDK: current span", _otel_api),
)
PYJWT_RS256 = "pyjwt decode, RS256"
