"""The Ed25519 pair: the writer signs genesis and digest records, anyone with the public key checks.

Only the private key can sign; the public key, which verifiers hold, cannot. (0.1's HMAC key did
both, so anyone able to verify a file could also forge one.)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Union

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from asgi_identity.audit._chain import canonical

# Signatures cover this prefix too, so no other use of the same key can be replayed as a digest.
_CONTEXT: Final = b"asgi-identity audit v1\n"

SigningKeySource = Union[Ed25519PrivateKey, bytes, str, "os.PathLike[str]"]
PublicKeySource = Union[Ed25519PublicKey, Ed25519PrivateKey, bytes, str, "os.PathLike[str]"]


def _pem(source: bytes | str | os.PathLike[str], what: str, where: str) -> bytes:
    if isinstance(source, os.PathLike):
        try:
            return Path(source).read_bytes()
        except OSError as exc:
            raise ValueError(f"{where}: cannot read the {what} file: {exc.strerror}") from None
    if isinstance(source, str):
        source = source.encode("utf-8")
    if not isinstance(source, bytes):
        raise TypeError(
            f"{where}: the {what} must be an Ed25519 key, its PEM text (bytes or str) or a "
            "pathlib.Path to a PEM file"
        )
    if not source.lstrip().startswith(b"-----BEGIN "):
        # A str is never taken for a file name: an environment variable holding a path instead
        # of the key would otherwise be read from whatever file it names.
        raise ValueError(
            f"{where}: the {what} is not PEM text (pass a pathlib.Path to read it from a file)"
        )
    return source


def load_signing_key(source: SigningKeySource, where: str = "audit") -> Ed25519PrivateKey:
    """An Ed25519 private key from itself, its PEM text (bytes or str) or a `pathlib.Path`."""
    if isinstance(source, Ed25519PrivateKey):
        return source
    pem = _pem(source, "signing key", where)
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        # The library's message could quote the input; the input is a secret.
        raise ValueError(
            f"{where}: the signing key is not an unencrypted PEM private key"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{where}: the signing key must be an Ed25519 key")
    return key


def load_public_key(source: PublicKeySource, where: str = "audit") -> Ed25519PublicKey:
    """An Ed25519 public key from itself, a private key, its PEM text or a `pathlib.Path`."""
    if isinstance(source, Ed25519PublicKey):
        return source
    if isinstance(source, Ed25519PrivateKey):
        return source.public_key()
    pem = _pem(source, "public key", where)
    if b"PRIVATE KEY" in pem:
        raise ValueError(f"{where}: this is a private key: verifiers need only the public key")
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError):
        raise ValueError(f"{where}: the public key is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{where}: the public key must be an Ed25519 key")
    return key


def public_key_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The public key as PEM (SubjectPublicKeyInfo), to hand to verifiers."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def signing_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def key_id(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The key's id in genesis records: SHA-256 of the raw public key, first 16 bytes, hex."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:32]


def sign(key: Ed25519PrivateKey, record: Mapping[str, Any]) -> str:
    """The `sig` of `record` (which has none yet): Ed25519 over its canonical bytes, base64url."""
    signature = key.sign(_CONTEXT + canonical(record))
    return base64.urlsafe_b64encode(signature).rstrip(b"=").decode("ascii")


def signature_holds(key: Ed25519PublicKey, record: Mapping[str, Any]) -> bool:
    """Whether `record`'s `sig` is the signature of the rest of it under `key`."""
    signature = record.get("sig")
    if not isinstance(signature, str) or len(signature) != 86:
        return False
    try:
        raw = base64.urlsafe_b64decode(signature + "==")
    except (binascii.Error, ValueError):
        return False
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != signature:
        return False  # one spelling of each signature, as of every other value
    unsigned = {name: value for name, value in record.items() if name != "sig"}
    try:
        key.verify(raw, _CONTEXT + canonical(unsigned))
    except InvalidSignature:
        return False
    return True
