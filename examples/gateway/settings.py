"""The gateway's configuration, built from environment variables (never from a `.env` file)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from asgi_identity import APIKey

# Tiers a token's `tier` claim may name; None is unlimited.
DEFAULT_TIER_LIMITS: Mapping[str, str | None] = {
    "free": "3/minute",
    "pro": "600/minute",
    "enterprise": None,
}
DEFAULT_TIER_TOKENS: Mapping[str, str | None] = {
    "free": "20000/day",
    "pro": "1000000/day",
    "enterprise": None,
}


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _tiers(
    environ: Mapping[str, str], name: str, default: Mapping[str, str | None]
) -> dict[str, str | None]:
    raw = environ.get(name)
    if not raw:
        return dict(default)
    try:
        tiers = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{name} is not valid JSON: {exc.msg}") from None
    if not isinstance(tiers, dict) or not all(
        isinstance(v, str) or v is None for v in tiers.values()
    ):
        raise ValueError(f'{name} must be a JSON object like {{"free": "10/minute", "pro": null}}')
    return tiers


def _api_keys(raw: str) -> tuple[APIKey, ...]:
    # A JSON list of records: [{"id": "web", "sha256": "<digest>", "tenant": "acme"}, ...]
    if not raw:
        return ()
    try:
        records = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"ASGI_IDENTITY_API_KEYS is not valid JSON: {exc.msg}") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ValueError("ASGI_IDENTITY_API_KEYS must be a JSON list of API key records")
    return tuple(APIKey(**record) for record in records)


@dataclass(frozen=True)
class Settings:
    """Everything the gateway needs to know; `Settings.from_env()` reads it from the environment."""

    issuer: str
    jwks_url: str | None = None
    audience: str = "gateway"
    allowed_domains: tuple[str, ...] = ()
    api_keys: tuple[APIKey, ...] = ()
    rate_limit: str = "60/minute"
    tier_limits: Mapping[str, str | None] = field(default_factory=lambda: dict(DEFAULT_TIER_LIMITS))
    token_quota: str = "100000/day"
    tier_tokens: Mapping[str, str | None] = field(default_factory=lambda: dict(DEFAULT_TIER_TOKENS))
    default_tier: str = "free"
    rate_limit_storage: str = "async+memory://"
    model: str = "echo-1"
    # A second model only some tiers may use; RoutePolicy refuses it to the others. When the
    # gateway forwards to an upstream, name one of the upstream's models (a glob like `gpt-4o*`
    # works too); None turns the restriction off.
    premium_model: str | None = "echo-4o"
    premium_tiers: tuple[str, ...] = ("pro",)
    upstream_base_url: str | None = None
    upstream_api_key: str | None = field(default=None, repr=False)
    upstream_timeout: float = 60.0
    # Paths served without a credential: the demo's own key set, and a health check.
    public_paths: tuple[str, ...] = ("/healthz", "/.well-known/")
    # Only the demo sets this: the app then publishes its own issuer's key set and discovery
    # document under /.well-known/, as an identity provider would.
    published_jwks: Mapping[str, Any] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.premium_model is not None and not self.premium_tiers:
            raise ValueError(
                "premium_tiers is empty: name the tiers that may use the premium model "
                "(GATEWAY_PREMIUM_TIERS=pro), or turn the restriction off (GATEWAY_PREMIUM_MODEL=)"
            )

    @property
    def builtin_models(self) -> tuple[str, ...]:
        """The models the built-in echo model answers as, when there is no upstream."""
        return (self.model,) if self.premium_model is None else (self.model, self.premium_model)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read `GATEWAY_*`, `ASGI_IDENTITY_API_KEYS` and `UPSTREAM_*` variables."""
        env = os.environ if environ is None else environ
        issuer = env.get("GATEWAY_ISSUER")
        if not issuer:
            raise ValueError(
                "GATEWAY_ISSUER is not set: the URL of your identity provider "
                "(or run `python -m examples.fastapi` for the self-contained demo)"
            )
        return cls(
            issuer=issuer,
            jwks_url=env.get("GATEWAY_JWKS_URL") or None,
            audience=env.get("GATEWAY_AUDIENCE", "gateway"),
            allowed_domains=_split(env.get("GATEWAY_ALLOWED_DOMAINS", "")),
            api_keys=_api_keys(env.get("ASGI_IDENTITY_API_KEYS", "")),
            rate_limit=env.get("GATEWAY_RATE_LIMIT", "60/minute"),
            tier_limits=_tiers(env, "GATEWAY_TIER_LIMITS", DEFAULT_TIER_LIMITS),
            token_quota=env.get("GATEWAY_TOKEN_QUOTA", "100000/day"),
            tier_tokens=_tiers(env, "GATEWAY_TIER_TOKENS", DEFAULT_TIER_TOKENS),
            default_tier=env.get("GATEWAY_DEFAULT_TIER", "free"),
            rate_limit_storage=env.get("GATEWAY_RATE_LIMIT_STORAGE", "async+memory://"),
            model=env.get("GATEWAY_MODEL", "echo-1"),
            premium_model=env.get("GATEWAY_PREMIUM_MODEL", "echo-4o") or None,
            premium_tiers=_split(env.get("GATEWAY_PREMIUM_TIERS", "pro")),
            upstream_base_url=env.get("UPSTREAM_BASE_URL") or None,
            upstream_api_key=env.get("UPSTREAM_API_KEY") or None,
        )
