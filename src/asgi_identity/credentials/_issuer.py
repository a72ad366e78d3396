"""JWTIssuer, one trusted token issuer as configured, and its compiled form for the verifier."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from asgi_identity.credentials._claim_rules import ClaimRules
from asgi_identity.credentials._jws import is_number
from asgi_identity.credentials.claims import ClaimMap, resolve_claim_map
from asgi_identity.credentials.jwks import ASYMMETRIC_ALGORITHMS, KeySet, check_url

# Shared with `asgi-identity verify`: a token the command calls valid is one the middleware takes.
DEFAULT_LEEWAY: Final = 60
DEFAULT_FETCH_TIMEOUT: Final = 5
DEFAULT_JWKS_MAX_BYTES: Final = 256 * 1024


@dataclass(frozen=True)
class JWTIssuer:
    """One trusted token issuer: where its keys are, and what its tokens must say."""

    issuer: str
    audience: str | Sequence[str] | None
    jwks_url: str | None = None
    discovery: bool = False
    public_key: str | None = None
    jwks: Mapping[str, Any] | None = None
    authorized_parties: Sequence[str] | None = None
    claims: str | ClaimMap = "default"
    leeway: float = DEFAULT_LEEWAY
    required_typ: str | None = None
    max_lifetime: float | None = None
    algorithms: Sequence[str] | None = None
    jwks_ttl: float = 300
    jwks_refresh_cooldown: float = 10
    jwks_fetch_timeout: float = DEFAULT_FETCH_TIMEOUT
    jwks_max_bytes: int = DEFAULT_JWKS_MAX_BYTES

    def __post_init__(self) -> None:
        name = f"JWTIssuer({self.issuer!r})"
        if not isinstance(self.issuer, str) or not self.issuer:
            raise ValueError("JWTIssuer: issuer must be a non-empty string (the exact `iss`)")
        object.__setattr__(self, "audience", self._audience(name))
        sources = [
            option
            for option, present in (
                ("jwks_url", self.jwks_url is not None),
                ("discovery", self.discovery),
                ("public_key", self.public_key is not None),
                ("jwks", self.jwks is not None),
            )
            if present
        ]
        if len(sources) != 1:
            raise ValueError(
                f"{name}: give exactly one key source (jwks_url, discovery=True, public_key or "
                f"jwks), not {', '.join(sources) or 'none'}"
            )
        if self.jwks_url is not None:
            check_url(self.jwks_url, f"{name}: jwks_url")
        if self.discovery:
            check_url(self.issuer, f"{name}: with discovery=True, issuer")
        if self.authorized_parties is not None:
            parties = self._strings(self.authorized_parties, "authorized_parties", name)
            object.__setattr__(self, "authorized_parties", parties)
        resolve_claim_map(self.claims)
        if not is_number(self.leeway) or self.leeway < 0:
            raise ValueError(f"{name}: leeway must be a number of seconds >= 0")
        if self.required_typ is not None and (
            not isinstance(self.required_typ, str) or not self.required_typ
        ):
            raise ValueError(f"{name}: required_typ must be a non-empty string such as 'at+jwt'")
        if self.max_lifetime is not None and (
            not is_number(self.max_lifetime) or self.max_lifetime <= 0
        ):
            raise ValueError(f"{name}: max_lifetime must be a number of seconds > 0")
        if self.algorithms is not None:
            algorithms = self._strings(self.algorithms, "algorithms", name)
            refused = [alg for alg in algorithms if alg not in ASYMMETRIC_ALGORITHMS]
            if refused:
                raise ValueError(
                    f"{name}: algorithms {refused} are not allowed; only asymmetric ones are: "
                    f"{', '.join(sorted(ASYMMETRIC_ALGORITHMS))}"
                )
            object.__setattr__(self, "algorithms", algorithms)
        for option in ("jwks_ttl", "jwks_refresh_cooldown", "jwks_fetch_timeout"):
            value = getattr(self, option)
            if not is_number(value) or value <= 0:
                raise ValueError(f"{name}: {option} must be a number of seconds > 0")
        if not isinstance(self.jwks_max_bytes, int) or self.jwks_max_bytes < 1024:
            raise ValueError(f"{name}: jwks_max_bytes must be an int of at least 1024")

    def _audience(self, name: str) -> str | tuple[str, ...] | None:
        audience = self.audience
        if audience is None:
            # Cognito access tokens carry no `aud`; they are bound by `client_id` instead.
            if not self.authorized_parties:
                raise ValueError(
                    f"{name}: audience=None is allowed only with authorized_parties, so every "
                    "token is still bound to a client"
                )
            return None
        if isinstance(audience, str):
            if not audience:
                raise ValueError(f"{name}: audience must not be empty")
            return audience
        return self._strings(audience, "audience", name)

    @staticmethod
    def _strings(values: Any, option: str, name: str) -> tuple[str, ...]:
        if isinstance(values, str) or not isinstance(values, Sequence):
            raise ValueError(f"{name}: {option} must be a list of strings")
        if not values or not all(isinstance(value, str) and value for value in values):
            raise ValueError(f"{name}: {option} must be a non-empty list of non-empty strings")
        return tuple(values)

    @property
    def allowed_algorithms(self) -> frozenset[str]:
        return frozenset(self.algorithms) if self.algorithms else ASYMMETRIC_ALGORITHMS


def media_type(value: str) -> str:
    # RFC 7515 section 4.1.9: "application/" may be omitted, and media types ignore case.
    value = value.lower()
    return value[len("application/") :] if value.startswith("application/") else value


class CompiledIssuer:
    """One JWTIssuer, compiled: its keys, claim map and the claim rules its tokens must pass."""

    __slots__ = ("algorithms", "claim_map", "config", "keys", "rules", "typ")

    def __init__(self, config: JWTIssuer, keys: KeySet) -> None:
        self.config = config
        # Once here, not a new frozenset per verification.
        self.algorithms = config.allowed_algorithms
        self.keys = keys
        self.claim_map = resolve_claim_map(config.claims)
        self.typ = media_type(config.required_typ) if config.required_typ else None
        audience = config.audience
        self.rules = ClaimRules(
            issuer=config.issuer,
            audience=(
                (audience,)
                if isinstance(audience, str)
                else None
                if audience is None
                else tuple(audience)
            ),
            leeway=config.leeway,
            max_lifetime=config.max_lifetime,
            parties=frozenset(config.authorized_parties) if config.authorized_parties else None,
            claim_map=self.claim_map,
        )
