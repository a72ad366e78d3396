"""The `asgi-identity` command, run for real as a subprocess."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from asgi_identity import APIKey
from asgi_identity.cli import build_parser
from asgi_identity.credentials.tokens import JWTIssuer, TokenVerifier
from asgi_identity.testing import JWKSServer, LocalIssuer

CLI = Path(sys.executable).with_name("asgi-identity")


def run_env(
    env: dict[str, str] | None, *args: str, stdin: str = "", cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asgi_identity", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=env,
        check=False,
    )


def run(*args: str, stdin: str = "", cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return run_env(None, *args, stdin=stdin, cwd=cwd)


def test_keygen_prints_a_key_whose_digest_hash_reproduces() -> None:
    made = run("keygen", "--json", "--id", "billing", "--tenant", "acme")
    assert made.returncode == 0, made.stderr
    output = json.loads(made.stdout)
    key, record = output["key"], output["record"]
    assert key.startswith("sk-ai-")
    assert record["sha256"] == hashlib.sha256(key.encode()).hexdigest()
    assert APIKey(**record).tenant == "acme"

    hashed = run("hash", stdin=key + "\n")
    assert hashed.returncode == 0
    assert hashed.stdout.strip() == record["sha256"]


def test_keygen_text_output_shows_the_record_to_store() -> None:
    made = run("keygen", "--id", "web")
    assert made.returncode == 0
    digest = made.stdout.splitlines()[1].split()[-1]
    assert f'APIKey(id="web", sha256="{digest}")' in made.stdout


def test_hash_without_a_key_on_stdin_is_a_usage_error() -> None:
    result = run("hash", stdin="")
    assert result.returncode == 2
    assert "no key on standard input" in result.stderr


def test_minted_token_verifies_against_the_written_key_set_and_pem(tmp_path: Path) -> None:
    minted = run(
        "mint",
        "--key-out",
        "dev.pem",
        "--jwks-out",
        "jwks.json",
        "--issuer",
        "https://idp.dev",
        "--audience",
        "gateway",
        "--sub",
        "alice",
        "--email",
        "alice@acme.com",
        "--claim",
        'roles=["admin","dev"]',
        "--claim",
        "group=pro",
        cwd=tmp_path,
    )
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()
    assert (tmp_path / "dev.pem").stat().st_mode & 0o077 == 0

    by_jwks = run(
        "verify", token, "--issuer", "https://idp.dev", "--audience", "gateway",
        "--jwks-url", "jwks.json", cwd=tmp_path,
    )  # fmt: skip
    assert by_jwks.returncode == 0, by_jwks.stderr
    claims = json.loads(by_jwks.stdout.split("\n", 1)[1])
    assert claims["sub"] == "alice"
    assert claims["roles"] == ["admin", "dev"]
    assert claims["group"] == "pro"
    assert claims["email_verified"] is True

    # The same key file mints again with the same kid, and verifies by PEM from stdin.
    again = run("mint", "--key", "dev.pem", "--lifetime", "60", cwd=tmp_path)
    by_pem = run("verify", "-", "--public-key", "dev.pem", cwd=tmp_path, stdin=again.stdout)
    assert by_pem.returncode == 0, by_pem.stderr


def test_mint_refuses_an_algorithm_that_does_not_fit_the_key(tmp_path: Path) -> None:
    run("mint", "--alg", "ES384", "--key-out", "k.pem", cwd=tmp_path)
    result = run("mint", "--key", "k.pem", "--alg", "RS256", cwd=tmp_path)
    assert result.returncode == 2
    assert "does not fit this key" in result.stderr


def test_mint_refuses_a_shared_secret_algorithm() -> None:
    result = run("mint", "--alg", "HS256")
    assert result.returncode == 2
    assert "--alg must be one of" in result.stderr
    assert "Traceback" not in result.stderr


def test_files_that_are_not_text_are_a_clear_usage_error(tmp_path: Path) -> None:
    (tmp_path / "binary").write_bytes(b"\x30\x82\xff\xfe\x00 not text")
    token = run("mint").stdout.strip()
    for args in (
        ("mint", "--key", "binary"),
        ("verify", token, "--public-key", "binary"),
        ("jwks", "binary"),
    ):
        result = run(*args, cwd=tmp_path)
        assert result.returncode == 2, (args, result.stderr)
        assert "binary is not a text file" in result.stderr, args
        assert "Traceback" not in result.stderr


@pytest.mark.parametrize("option", ["--key-out", "--jwks-out"])
def test_writing_into_a_missing_directory_exits_3_with_a_message(
    tmp_path: Path, option: str
) -> None:
    result = run("mint", option, "no-such-dir/out", cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    assert "cannot write no-such-dir/out" in result.stderr
    assert "Traceback" not in result.stderr


def test_key_out_over_an_existing_file_makes_it_private(tmp_path: Path) -> None:
    target = tmp_path / "dev.pem"
    target.write_text("old")
    target.chmod(0o644)
    result = run("mint", "--key-out", "dev.pem", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert target.stat().st_mode & 0o777 == 0o600
    assert target.read_text().startswith("-----BEGIN PRIVATE KEY-----")


def test_verify_fetches_keys_from_a_jwks_url_and_from_issuer_discovery(
    issuer: LocalIssuer, jwks_server: JWKSServer
) -> None:
    token = issuer.mint(sub="bob")
    for source in (jwks_server.jwks_url, jwks_server.url):
        result = run(
            "verify", token, "--issuer", issuer.issuer, "--audience", "gateway",
            "--jwks-url", source,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("valid:")
    assert jwks_server.discovery_fetches == 1


def _tampered(token: str) -> str:
    head, payload, signature = token.split(".")
    flipped = ("A" if signature[5] != "A" else "B").join((signature[:5], signature[6:]))
    return f"{head}.{payload}.{flipped}"


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        # The CLI reads the clock itself: the seconds are checked against it below.
        ("expired", "the token expired 10m"),
        ("future", "is not valid before"),
        ("wrong_issuer", "iss is 'https://evil.test', expected 'https://issuer.test'"),
        ("wrong_audience", "aud is 'billing', expected one of ['gateway']"),
        ("no_exp", "the token has no exp claim"),
        ("unknown_kid", "no key with kid 'gone'"),
        ("tampered", "the signature does not match the key"),
        ("alg_none", "alg 'none' is refused"),
        ("not_a_jwt", "a JWT has 3 dot-separated parts, this has 1"),
    ],
)
def test_verify_says_exactly_why_a_token_fails(
    issuer: LocalIssuer, jwks_server: JWKSServer, case: str, expected: str
) -> None:
    now_claims = issuer.claims()
    tokens: dict[str, Callable[[], str]] = {
        "expired": lambda: issuer.mint(exp=now_claims["iat"] - 600),
        "future": lambda: issuer.mint(nbf=now_claims["iat"] + 3600),
        "wrong_issuer": lambda: issuer.mint(iss="https://evil.test"),
        "wrong_audience": lambda: issuer.mint(aud="billing"),
        "no_exp": lambda: issuer.mint(exp=None),
        "unknown_kid": lambda: issuer.mint(headers={"kid": "gone"}),
        "tampered": lambda: _tampered(issuer.mint()),
        "alg_none": lambda: "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
        "not_a_jwt": lambda: "sk-ai-not-a-token",
    }
    started = time.time()
    result = run(
        "verify", tokens[case](), "--issuer", issuer.issuer, "--audience", "gateway",
        "--jwks-url", jwks_server.jwks_url, "--leeway", "0",
    )  # fmt: skip
    finished = time.time()
    assert result.returncode == 1
    assert expected in result.stderr
    assert result.stdout == ""
    if case == "expired":
        # Exactly how long ago, as read by the CLI's clock somewhere between start and finish.
        exp = now_claims["iat"] - 600
        said = re.search(rf"expired (\d+)m(\d\d)s ago \(exp={exp}\)", result.stderr)
        assert said, result.stderr
        ago = int(said[1]) * 60 + int(said[2])
        assert int(started) - exp <= ago <= int(finished) - exp


def test_verify_lists_every_failing_claim_rule(
    issuer: LocalIssuer, jwks_server: JWKSServer
) -> None:
    now = int(time.time())
    token = issuer.mint(exp=now - 600, aud="billing", sub=7)
    result = run(
        "verify", token, "--issuer", issuer.issuer, "--audience", "gateway",
        "--jwks-url", jwks_server.jwks_url,
    )  # fmt: skip
    assert result.returncode == 1
    problems = [line for line in result.stderr.splitlines() if line.startswith("invalid: ")]
    assert len(problems) == 3, result.stderr
    assert problems[0].startswith("invalid: the token expired 9m") or problems[0].startswith(
        "invalid: the token expired 10m"
    )
    assert problems[1] == "invalid: aud is 'billing', expected one of ['gateway']"
    assert problems[2] == "invalid: sub is not a string: 7"


def test_verify_leeway_default_is_the_middlewares() -> None:
    args = build_parser().parse_args(["verify", "token", "--public-key", "key.pem"])
    middleware = JWTIssuer(issuer="https://issuer.test", audience="gateway", jwks={"keys": []})
    assert args.leeway == middleware.leeway


async def test_a_token_within_the_default_leeway_is_valid_for_cli_and_middleware(
    issuer: LocalIssuer, jwks_server: JWKSServer
) -> None:
    # Expired 45 s ago: inside the shared 60 s leeway (0.1's CLI allowed only 30 s).
    token = issuer.mint(sub="alice", exp=int(time.time()) - 45)
    cli = run(
        "verify", token, "--issuer", issuer.issuer, "--audience", "gateway",
        "--jwks-url", jwks_server.jwks_url,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    verifier = TokenVerifier(
        [JWTIssuer(issuer=issuer.issuer, audience="gateway", jwks=issuer.jwks)]
    )
    assert (await verifier.verify(token)).user_id == "alice"


def test_verify_refuses_a_token_the_middleware_finds_malformed(issuer: LocalIssuer) -> None:
    # The verifier's own parser: a second spelling of the same signature is not the token.
    head, payload, signature = issuer.mint().split(".")
    result = run("verify", f"{head}.{payload}.{signature}=", "--jwks-url", "-", stdin="{}")
    assert result.returncode == 1
    assert "invalid: signature is not base64url" in result.stderr


def test_verify_refuses_plain_http_to_a_host_that_is_not_loopback(issuer: LocalIssuer) -> None:
    # The middleware's rule for key set URLs: https, or http only to a loopback host.
    result = run("verify", issuer.mint(), "--jwks-url", "http://idp.example/jwks.json")
    assert result.returncode == 2
    assert "must be an https:// URL" in result.stderr


def test_jwks_lists_each_key_and_warns_about_weak_ones(
    issuer: LocalIssuer, jwks_server: JWKSServer
) -> None:
    weak = RSAAlgorithm.to_jwk(
        # A deliberately weak key: the command must flag it.
        rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key(),  # noqa: S505
        as_dict=True,
    )
    jwks_server.body = json.dumps(
        {"keys": [issuer.signing_key.jwk, {**weak, "kid": "old", "alg": "RS256"}, {"kty": "oct"}]}
    ).encode()
    result = run("jwks", jwks_server.jwks_url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{jwks_server.jwks_url}: 3 key(s)"
    assert lines[1].split() == ["kid", "kty", "alg", "use", "size"]
    assert lines[2].split() == [issuer.signing_key.kid, "EC", "ES256", "sig", "P-256"]
    assert lines[3].split() == ["old", "RSA", "RS256", "-", "1024", "bits"]
    assert "warning: kid old: RSA key shorter than 2048 bits" in lines
    assert "warning: kid -: symmetric key in a public key set: never accepted" in lines


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (500, b"{}", "answered HTTP 500"),
        (200, b"<html>", "did not answer with JSON"),
        (200, b'{"issuer": "x"}', "is neither a key set (no 'keys') nor a discovery document"),
    ],
)
def test_jwks_reports_an_unusable_key_set_with_exit_code_3_or_2(
    jwks_server: JWKSServer, status: int, body: bytes, expected: str
) -> None:
    jwks_server.status = status
    jwks_server.body = body
    result = run("jwks", jwks_server.jwks_url)
    assert result.returncode in (2, 3)
    assert expected in result.stderr


def test_jwks_of_an_unreachable_url_exits_3() -> None:
    result = run("jwks", "http://127.0.0.1:9/jwks.json")
    assert result.returncode == 3
    assert "cannot fetch http://127.0.0.1:9/jwks.json" in result.stderr


def test_console_script_documents_the_exit_codes() -> None:
    result = subprocess.run(
        [str(CLI), "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0
    assert "Exit codes: 0 ok, 1 verification failed" in " ".join(result.stdout.split())
