"""Verification keys parsed once from a PEM or a JWKS, and pinned to the algorithms they may verify."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import Algorithm, get_default_algorithms
from jwt.exceptions import PyJWTError

logger = logging.getLogger("asgi_identity.jwks")

RSA_ALGORITHMS: Final = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_ALGORITHMS: Final[Mapping[str, str]] = {
    "secp256r1": "ES256",
    "secp384r1": "ES384",
    "secp521r1": "ES512",
}
#: Every algorithm a token may be signed with: asymmetric only, so a public key can never be
#: used as an HMAC secret and `none` never passes.
ASYMMETRIC_ALGORITHMS: Final = RSA_ALGORITHMS | frozenset(EC_ALGORITHMS.values()) | {"EdDSA"}
MIN_RSA_BITS: Final = 2048
#: pyjwt's algorithm objects (its JOSE implementations), one per allowed algorithm name.
JOSE_ALGORITHMS: Final[Mapping[str, Algorithm]] = MappingProxyType(
    {name: alg for name, alg in get_default_algorithms().items() if name in ASYMMETRIC_ALGORITHMS}
)

PublicKey = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """A public key and the algorithms it may verify (decided by the key, never by a token)."""

    kid: str | None
    algorithms: frozenset[str]
    key: PublicKey
    #: Per algorithm, pyjwt's algorithm object and the key as its `prepare_key` returned it: done
    #: once when the key set loads, not once per token.
    verifiers: Mapping[str, tuple[Algorithm, Any]] = field(
        init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        verifiers: dict[str, tuple[Algorithm, Any]] = {}
        for name in self.algorithms:
            algorithm = JOSE_ALGORITHMS.get(name)
            if algorithm is None:
                raise ValueError(f"alg {name!r} is not an asymmetric algorithm")
            try:
                verifiers[name] = (algorithm, algorithm.prepare_key(self.key))
            except (PyJWTError, TypeError, ValueError) as exc:
                raise ValueError(f"the key cannot verify {name}: {exc}") from None
        object.__setattr__(self, "verifiers", MappingProxyType(verifiers))


def algorithms_for(key: PublicKey) -> frozenset[str]:
    """The algorithms a key's type (and curve) can verify."""
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(
                f"RSA key of {key.key_size} bits is too weak (at least {MIN_RSA_BITS})"
            )
        return RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey):
        algorithm = EC_ALGORITHMS.get(key.curve.name)
        if algorithm is None:
            raise ValueError(f"EC curve {key.curve.name} is not supported")
        return frozenset({algorithm})
    if isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return frozenset({"EdDSA"})
    raise ValueError(f"{type(key).__name__} cannot verify JWT signatures")


def _pinned(key: PublicKey, declared: str | None, allowed: frozenset[str]) -> frozenset[str]:
    algorithms = algorithms_for(key)
    if declared is not None:
        if declared not in algorithms:
            raise ValueError(f"alg {declared!r} does not fit a {type(key).__name__}")
        algorithms = frozenset({declared})
    algorithms &= allowed
    if not algorithms:
        raise ValueError("none of the issuer's allowed algorithms fits this key")
    return algorithms


def key_from_pem(pem: str, allowed: frozenset[str] = ASYMMETRIC_ALGORITHMS) -> VerificationKey:
    """A public key (or a certificate's key) in PEM; its type decides the algorithms."""
    data = pem.encode() if isinstance(pem, str) else pem
    if b"PRIVATE KEY" in data:
        raise ValueError("public_key must be a public key, not a private key")
    try:
        if b"BEGIN CERTIFICATE" in data:
            public: Any = x509.load_pem_x509_certificate(data).public_key()
        else:
            public = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise ValueError(f"public_key is not a PEM public key or certificate: {exc}") from None
    return VerificationKey(None, _pinned(public, None, allowed), public)


def key_from_jwk(jwk: Any, allowed: frozenset[str] = ASYMMETRIC_ALGORITHMS) -> VerificationKey:
    """One signing key of a JWKS; ValueError saying why it is unusable."""
    if not isinstance(jwk, Mapping):
        raise ValueError("a key must be a JSON object")
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise ValueError("kid must be a string")
    if jwk.get("use") not in (None, "sig"):
        raise ValueError(f"key {kid!r} is not a signing key (use={jwk.get('use')!r})")
    key_ops = jwk.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        raise ValueError(f"key {kid!r} is not for verification (key_ops)")
    if "d" in jwk:
        raise ValueError(f"key {kid!r} holds private key material: publish only public keys")
    declared = jwk.get("alg")
    if declared is not None and not isinstance(declared, str):
        # A list or object is unhashable: refuse it before the set lookup below.
        raise ValueError(f"key {kid!r} has an alg that is not a string")
    if declared is not None and declared not in ASYMMETRIC_ALGORITHMS:
        raise ValueError(f"key {kid!r} has alg {declared!r}, which is not an asymmetric algorithm")
    kty = jwk.get("kty")
    family = (
        {"RSA": "RS256", "EC": "ES256", "OKP": "EdDSA"}.get(kty) if isinstance(kty, str) else None
    )
    if family is None:
        raise ValueError(f"key {kid!r} has an unsupported kty {kty!r}")
    try:
        public = JOSE_ALGORITHMS[family].from_jwk(dict(jwk))
    except (PyJWTError, ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"key {kid!r} cannot be loaded: {exc}") from None
    return VerificationKey(kid, _pinned(public, declared, allowed), public)


def keys_from_jwks(
    document: Any, allowed: frozenset[str] = ASYMMETRIC_ALGORITHMS, *, strict: bool
) -> tuple[VerificationKey, ...]:
    """The usable keys of a JWKS document; `strict` raises on any bad key instead of skipping it."""
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise ValueError('a JWKS must be a JSON object with a "keys" list')
    keys: list[VerificationKey] = []
    for jwk in document["keys"]:
        try:
            keys.append(key_from_jwk(jwk, allowed))
        except Exception as exc:
            # A key set may come from the network: whatever one key does wrong, even in a way
            # key_from_jwk did not foresee, is that key's problem, not the whole set's.
            if not isinstance(exc, ValueError):
                exc = ValueError(f"a key cannot be loaded ({type(exc).__name__})")
            if strict:
                raise ValueError(f"jwks: {exc}") from None
            # One odd key (an encryption key, a new algorithm) must not take the others down.
            logger.info("asgi_identity: skipping a JWKS key: %s", exc)
    if not keys:
        raise ValueError("the JWKS holds no usable signing key")
    return tuple(keys)
