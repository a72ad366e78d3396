from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

import asgi_identity.credentials.jwks
from asgi_identity.credentials._fetch import FetchError
from asgi_identity.credentials.jwks import (
    RemoteKeySet,
    fetch_json,
    key_from_jwk,
    keys_from_jwks,
)
from asgi_identity.credentials.tokens import JWTIssuer, TokenVerifier
from asgi_identity.errors import IdentityError
from asgi_identity.testing import JWKSServer, LocalIssuer, public_jwk

# Every wait in these tests is a guard against a hang, never a measurement.
GUARD = 5.0


def url_verifier(local: LocalIssuer, url: str, **options: Any) -> TokenVerifier:
    return TokenVerifier(
        [JWTIssuer(issuer=local.issuer, audience=local.audience, jwks_url=url, **options)]
    )


def key_set(v: TokenVerifier) -> RemoteKeySet:
    (keys,) = v.key_sets
    assert isinstance(keys, RemoteKeySet)
    return keys


class BrokenKeyServer:
    """A loopback server answering every connection with raw bytes no HTTP library would send:
    `reply` at once, then `trickle` one byte every `pause` seconds."""

    def __init__(self, reply: bytes, trickle: bytes = b"", pause: float = 0.0) -> None:
        self.reply, self.trickle, self.pause = reply, trickle, pause
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        # Accept wakes up regularly, so close() never waits on a client that is not coming.
        self._listener.settimeout(0.05)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}/jwks.json"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            with connection:
                try:
                    connection.recv(65536)
                    connection.sendall(self.reply)
                    for byte in self.trickle:
                        if self._stop.wait(self.pause):
                            break
                        connection.sendall(bytes([byte]))
                except OSError:
                    pass  # the client gave up, which is what a deadline is for

    def close(self) -> None:
        self._stop.set()
        self._thread.join(GUARD)
        self._listener.close()


@pytest.fixture
def broken_server() -> Iterator[list[BrokenKeyServer]]:
    servers: list[BrokenKeyServer] = []
    yield servers
    for server in servers:
        server.close()


async def unavailable(v: TokenVerifier, token: str) -> IdentityError:
    with pytest.raises(IdentityError) as caught:
        await asyncio.wait_for(v.verify(token), GUARD)
    error = caught.value
    assert error.code == "identity_provider_unavailable"
    assert error.status == 503
    (retry_after,) = [value for name, value in error.headers if name == "Retry-After"]
    assert int(retry_after) >= 1
    return error


async def test_jwks_url_round_trip_fetches_once(
    issuer: LocalIssuer, jwks_server: JWKSServer
) -> None:
    v = url_verifier(issuer, jwks_server.jwks_url)
    for n in range(20):
        assert (await v.verify(issuer.mint(sub=f"user-{n}"))).user_id == f"user-{n}"
    assert jwks_server.fetches == 1


@pytest.mark.parametrize("algorithm", ["RS256", "PS256", "ES256", "EdDSA"])
async def test_every_algorithm_family_over_http(algorithm: str) -> None:
    local = LocalIssuer(algorithm=algorithm)
    with local.serve() as server:
        v = url_verifier(local, server.jwks_url)
        assert (await v.verify(local.mint(sub="alice"))).user_id == "alice"


async def test_discovery_finds_the_jwks(jwks_server: JWKSServer) -> None:
    local = LocalIssuer(issuer=jwks_server.url, algorithm="ES256")
    jwks_server.issuer = local
    v = TokenVerifier([JWTIssuer(issuer=local.issuer, audience="gateway", discovery=True)])
    await v.startup()
    assert (jwks_server.discovery_fetches, jwks_server.fetches) == (1, 1)
    assert (await v.verify(local.mint(sub="alice"))).issuer == jwks_server.url


@pytest.mark.parametrize(
    "document",
    [
        {"issuer": "https://someone-else.test", "jwks_uri": "{jwks}"},
        {"issuer": "{issuer}", "jwks_uri": "http://keys.example.com/jwks.json"},
        {"issuer": "{issuer}"},
        {"issuer": "{issuer}", "jwks_uri": "file:///etc/passwd"},
    ],
)
async def test_discovery_document_that_cannot_be_trusted_gives_503(
    jwks_server: JWKSServer, document: dict[str, str]
) -> None:
    local = LocalIssuer(issuer=jwks_server.url, algorithm="ES256")
    jwks_server.issuer = local
    jwks_server.discovery = {
        name: value.format(issuer=jwks_server.url, jwks=jwks_server.jwks_url)
        for name, value in document.items()
    }
    v = TokenVerifier([JWTIssuer(issuer=local.issuer, audience="gateway", discovery=True)])
    await unavailable(v, local.mint())
    assert jwks_server.fetches == 0


async def test_500_concurrent_first_requests_make_exactly_one_fetch(
    issuer: LocalIssuer, jwks_server: JWKSServer
) -> None:
    jwks_server.delay = 0.05  # let every request arrive while the fetch is in flight
    v = url_verifier(issuer, jwks_server.jwks_url)
    tokens = [issuer.mint(sub=f"user-{n}") for n in range(500)]
    identities = await asyncio.wait_for(
        asyncio.gather(*(v.verify(token) for token in tokens)), GUARD * 4
    )
    assert {identity.user_id for identity in identities} == {f"user-{n}" for n in range(500)}
    assert jwks_server.fetches == 1


async def test_1000_unknown_kids_make_at_most_one_fetch_per_cooldown(
    issuer: LocalIssuer, jwks_server: JWKSServer
) -> None:
    v = url_verifier(issuer, jwks_server.jwks_url, jwks_refresh_cooldown=60)
    await v.startup()
    assert jwks_server.fetches == 1
    attacker = LocalIssuer(issuer=issuer.issuer, algorithm="ES256")

    async def unknown_kid() -> str:
        with pytest.raises(IdentityError) as caught:
            await v.verify(attacker.mint(headers={"kid": uuid.uuid4().hex}))
        return caught.value.message

    # Within the cooldown that followed the first fetch: no fetch at all.
    messages = await asyncio.gather(*(unknown_kid() for _ in range(1000)))
    assert set(messages) == {"The access token's signing key is not known."}
    assert jwks_server.fetches == 1
    # Once the cooldown has passed (moved back instead of waited for): one fetch, shared.
    key_set(v)._attempted_at -= 61
    await asyncio.gather(*(unknown_kid() for _ in range(1000)))
    assert jwks_server.fetches == 2


async def test_rotated_key_is_picked_up(issuer: LocalIssuer, jwks_server: JWKSServer) -> None:
    v = url_verifier(issuer, jwks_server.jwks_url, jwks_refresh_cooldown=0.001)
    old = issuer.mint(sub="before")
    assert (await v.verify(old)).user_id == "before"
    issuer.rotate()
    await asyncio.sleep(0.01)  # let the tiny cooldown pass; the outcome does not depend on it
    assert (await v.verify(issuer.mint(sub="after"))).user_id == "after"
    assert jwks_server.fetches == 2


async def test_failed_refresh_keeps_the_cached_keys_working(
    issuer: LocalIssuer, jwks_server: JWKSServer, caplog: pytest.LogCaptureFixture
) -> None:
    v = url_verifier(issuer, jwks_server.jwks_url, jwks_ttl=0.001, jwks_refresh_cooldown=0.001)
    await v.startup()
    jwks_server.status = 500
    await asyncio.sleep(0.01)
    keys = key_set(v)
    # The key set is stale: this request is served from it and starts a background refresh.
    assert (await v.verify(issuer.mint(sub="alice"))).user_id == "alice"
    assert keys._task is not None
    await asyncio.wait_for(keys._task, GUARD)
    assert jwks_server.fetches == 2
    assert keys.last_error == "answered with HTTP 500"
    assert "keeping the last good keys" in caplog.text
    assert (await v.verify(issuer.mint(sub="bob"))).user_id == "bob"
    # An unknown kid while the provider fails is a 401, not an outage.
    stranger = LocalIssuer(issuer=issuer.issuer, algorithm="ES256")
    with pytest.raises(IdentityError) as caught:
        await v.verify(stranger.mint())
    assert caught.value.code == "invalid_token"


async def test_provider_down_before_any_fetch_is_503_with_retry_after(
    issuer: LocalIssuer, jwks_server: JWKSServer
) -> None:
    jwks_server.status = 503
    v = url_verifier(issuer, jwks_server.jwks_url, jwks_refresh_cooldown=30)
    error = await unavailable(v, issuer.mint())
    assert error.headers == (("Retry-After", "30"),)
    # Within the cooldown further requests are answered at once, without hammering the provider.
    for _ in range(50):
        await unavailable(v, issuer.mint())
    assert jwks_server.fetches == 1


async def test_startup_warms_the_keys_and_never_raises(
    issuer: LocalIssuer, jwks_server: JWKSServer, caplog: pytest.LogCaptureFixture
) -> None:
    v = url_verifier(issuer, jwks_server.jwks_url)
    await v.startup()
    assert jwks_server.fetches == 1
    jwks_server.status = 500
    down = url_verifier(issuer, jwks_server.jwks_url)
    with caplog.at_level(logging.WARNING, logger="asgi_identity"):
        await asyncio.wait_for(down.startup(), GUARD)
    assert "no keys loaded" in caplog.text


async def test_slow_jwks_is_cut_by_its_deadline(
    issuer: LocalIssuer, jwks_server: JWKSServer
) -> None:
    jwks_server.delay = 3
    v = url_verifier(issuer, jwks_server.jwks_url, jwks_fetch_timeout=0.2)
    await unavailable(v, issuer.mint())
    assert key_set(v).last_error == "no complete answer within 0.2s"


async def test_huge_jwks_is_cut_by_its_size_cap(
    issuer: LocalIssuer, jwks_server: JWKSServer
) -> None:
    jwks_server.body = b'{"keys": [' + b" " * (2 * 1024 * 1024) + b"]}"
    v = url_verifier(issuer, jwks_server.jwks_url, jwks_max_bytes=64 * 1024)
    await unavailable(v, issuer.mint())
    assert "byte cap" in (key_set(v).last_error or "")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"<html>not json</html>", "did not answer with JSON"),
        (b'{"keys": "nope"}', '"keys" list'),
        (b'{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}', "no usable signing key"),
        (b"[]", '"keys" list'),
    ],
)
async def test_hostile_jwks_bodies_give_503_not_500(
    issuer: LocalIssuer, jwks_server: JWKSServer, body: bytes, reason: str
) -> None:
    jwks_server.body = body
    v = url_verifier(issuer, jwks_server.jwks_url)
    await unavailable(v, issuer.mint())
    assert reason in (key_set(v).last_error or "")


@pytest.mark.parametrize(
    "reply",
    [
        b"HELLO\r\n\r\n",
        b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n100\r\n{"keys"',
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b'HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{"keys": [',
    ],
    ids=["garbage-status-line", "truncated-chunked-body", "bad-chunk-size", "short-body"],
)
async def test_malformed_http_from_the_key_server_gives_503_not_500(
    issuer: LocalIssuer, broken_server: list[BrokenKeyServer], reply: bytes
) -> None:
    server = BrokenKeyServer(reply)
    broken_server.append(server)
    v = url_verifier(issuer, server.url)
    await unavailable(v, issuer.mint())
    assert "malformed HTTP response" in (key_set(v).last_error or "")


def test_a_trickling_key_server_is_cut_at_the_deadline(
    broken_server: list[BrokenKeyServer],
) -> None:
    # 40 bytes of body at one every 0.25 s: 10 s in all, against a 1 s deadline.
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    server = BrokenKeyServer(head, trickle=b" " * 40, pause=0.25)
    broken_server.append(server)
    started = time.monotonic()
    with pytest.raises(FetchError, match="no complete answer within 1s"):
        fetch_json(server.url, 1.0, 4096)
    # A guard, not a measurement: each byte used to restart the socket timeout, so the worker
    # thread was held for the whole 10 s trickle.
    assert time.monotonic() - started < 5


async def test_redirects_are_not_followed(issuer: LocalIssuer, jwks_server: JWKSServer) -> None:
    with LocalIssuer(issuer=issuer.issuer, algorithm="ES256").serve() as elsewhere:
        jwks_server.redirect_to = elsewhere.jwks_url
        v = url_verifier(issuer, jwks_server.jwks_url)
        await unavailable(v, issuer.mint())
        assert elsewhere.fetches == 0
    assert "redirect" in (key_set(v).last_error or "")


@pytest.mark.parametrize(
    "url",
    [
        "http://idp.example.com/jwks.json",
        "http://10.0.0.1/jwks.json",
        "file:///etc/jwks.json",
        "https:///jwks.json",
    ],
)
def test_http_to_non_loopback_is_refused_at_construction(url: str) -> None:
    with pytest.raises(ValueError, match="https://"):
        JWTIssuer(issuer="https://idp.test", audience="api", jwks_url=url)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:1/jwks", "http://localhost:1/jwks", "http://[::1]:1/jwks"]
)
def test_http_to_loopback_is_allowed_for_development(url: str) -> None:
    JWTIssuer(issuer="https://idp.test", audience="api", jwks_url=url)


async def test_fetch_failures_are_logged_without_secrets(
    issuer: LocalIssuer, jwks_server: JWKSServer, caplog: pytest.LogCaptureFixture
) -> None:
    jwks_server.status = 500
    v = url_verifier(issuer, jwks_server.jwks_url + "?access_token=s3cret")
    token = issuer.mint()
    await unavailable(v, token)
    assert "HTTP 500" in caplog.text
    assert "s3cret" not in caplog.text
    assert token not in caplog.text


async def test_issuers_sharing_a_jwks_url_share_one_fetch(jwks_server: JWKSServer) -> None:
    local = jwks_server.issuer
    tenants = [f"https://login.example.com/{n}/v2.0" for n in range(3)]
    v = TokenVerifier(
        [JWTIssuer(issuer=t, audience="gateway", jwks_url=jwks_server.jwks_url) for t in tenants]
    )
    for tenant in tenants:
        assert (await v.verify(local.mint(iss=tenant))).issuer == tenant
    assert jwks_server.fetches == 1


async def test_aclose_stops_a_background_refresh(
    issuer: LocalIssuer, jwks_server: JWKSServer
) -> None:
    v = url_verifier(issuer, jwks_server.jwks_url, jwks_ttl=0.001, jwks_refresh_cooldown=0.001)
    await v.startup()
    jwks_server.delay = 1
    await asyncio.sleep(0.01)
    await v.verify(issuer.mint())
    keys = key_set(v)
    assert keys._task is not None
    assert not keys._task.done()
    await v.aclose()
    assert keys._task.done()


# --- key parsing ------------------------------------------------------------------------------


def test_remote_set_skips_unusable_keys_and_keeps_the_rest(issuer: LocalIssuer) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    document = {
        "keys": [
            {**issuer.signing_key.jwk, "use": "enc", "kid": "encryption"},
            public_jwk(weak, kid="weak", algorithm="RS256"),
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {**issuer.signing_key.jwk, "alg": "HS256", "kid": "confused"},
            {**issuer.signing_key.jwk, "kid": "private", "d": "AAAA"},
            issuer.signing_key.jwk,
        ]
    }
    keys = keys_from_jwks(document, strict=False)
    assert [key.kid for key in keys] == [issuer.signing_key.kid]
    with pytest.raises(ValueError, match="not a signing key"):
        keys_from_jwks(document, strict=True)


async def test_a_key_with_a_non_string_alg_is_skipped_and_the_others_verify(
    issuer: LocalIssuer, jwks_server: JWKSServer
) -> None:
    odd = {**issuer.signing_key.jwk, "kid": "odd", "alg": ["ES256"]}
    jwks_server.body = json.dumps({"keys": [odd, issuer.signing_key.jwk]}).encode()
    v = url_verifier(issuer, jwks_server.jwks_url)
    assert (await v.verify(issuer.mint(sub="alice"))).user_id == "alice"


@pytest.mark.parametrize("alg", [["ES256"], {"ES256": True}, 256])
def test_an_inline_jwks_with_a_non_string_alg_is_refused_like_any_bad_key(
    issuer: LocalIssuer, alg: object
) -> None:
    odd = {**issuer.signing_key.jwk, "kid": "odd", "alg": alg}
    config = JWTIssuer(issuer=issuer.issuer, audience="gateway", jwks={"keys": [odd]})
    with pytest.raises(ValueError, match=r"jwks: key 'odd' has an alg that is not a string"):
        TokenVerifier([config])


async def test_an_unforeseen_failure_while_refreshing_keeps_the_last_good_keys(
    issuer: LocalIssuer,
    jwks_server: JWKSServer,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    v = url_verifier(issuer, jwks_server.jwks_url, jwks_ttl=0.001, jwks_refresh_cooldown=0.001)
    await v.startup()

    def broken(*args: Any, **kwargs: Any) -> Any:
        # Stands in for a parser bug nobody foresaw; its text must not reach the logs.
        raise RuntimeError("s3cret detail")

    monkeypatch.setattr(asgi_identity.credentials.jwks, "keys_from_jwks", broken)
    await asyncio.sleep(0.01)
    keys = key_set(v)
    assert (await v.verify(issuer.mint(sub="alice"))).user_id == "alice"
    assert keys._task is not None
    await asyncio.wait_for(keys._task, GUARD)
    assert keys.last_error == "unexpected RuntimeError"
    assert "keeping the last good keys" in caplog.text
    assert "s3cret" not in caplog.text
    assert (await v.verify(issuer.mint(sub="bob"))).user_id == "bob"
    # With no keys ever loaded, the same failure is the usual 503, never a 500.
    await unavailable(url_verifier(issuer, jwks_server.jwks_url), issuer.mint())


@pytest.mark.parametrize(
    ("jwk", "algorithms"),
    [
        ({"alg": None}, {"ES256"}),
        ({"alg": "ES256"}, {"ES256"}),
    ],
)
def test_a_key_without_alg_is_pinned_by_its_curve(
    issuer: LocalIssuer, jwk: dict[str, Any], algorithms: set[str]
) -> None:
    data = {**issuer.signing_key.jwk, **jwk}
    data = {name: value for name, value in data.items() if value is not None}
    assert key_from_jwk(data).algorithms == algorithms


def test_an_rsa_key_without_alg_verifies_only_rsa_algorithms(rsa_issuer: LocalIssuer) -> None:
    data = {name: value for name, value in rsa_issuer.signing_key.jwk.items() if name != "alg"}
    assert key_from_jwk(data).algorithms == {
        "RS256",
        "RS384",
        "RS512",
        "PS256",
        "PS384",
        "PS512",
    }
    with pytest.raises(ValueError, match="does not fit"):
        key_from_jwk({**data, "alg": "ES256"})
