"""Windows and buckets: limit strings, storage keys that never collide, client addresses."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asgi_identity._http.peers import TrustedPeers
from asgi_identity.identity import Identity
from asgi_identity.quotas._windows import bucket_key, parse_limit
from asgi_identity.types import Scope


def jwt_user(user: str, issuer: str = "https://issuer.test") -> Identity:
    return Identity(source="jwt", user_id=user, issuer=issuer)


@given(
    st.lists(st.text(max_size=8), min_size=1, max_size=3),
    st.lists(st.text(max_size=8), min_size=1, max_size=3),
)
def test_distinct_subjects_never_make_the_same_storage_key(a: list[str], b: list[str]) -> None:
    first = jwt_user("/".join(a[1:]) or "u", a[0])
    second = jwt_user("/".join(b[1:]) or "u", b[0])
    if (first.issuer, first.user_id) != (second.issuer, second.user_id):
        assert "/".join(bucket_key(first, None) or ()) != "/".join(bucket_key(second, None) or ())


@pytest.mark.parametrize(
    ("spec", "names"),
    [
        ("60/minute", ["requests-minute"]),
        ("1000/day;10/second", ["requests-second", "requests-day"]),
        ("10 per 5 minutes", ["requests-5minute"]),
        (None, None),
        ("unlimited", None),
    ],
)
def test_limit_strings_parse_shortest_window_first(
    spec: str | None, names: list[str] | None
) -> None:
    windows = parse_limit(spec, "requests", "limits")
    assert (None if windows is None else [w.name for w in windows]) == names


def http_scope(peer: str | None, forwarded: list[str]) -> Scope:
    return {
        "type": "http",
        "client": (peer, 5000) if peer else None,
        "headers": [(b"x-forwarded-for", value.encode()) for value in forwarded],
    }


@pytest.mark.parametrize(
    ("trusted", "peer", "forwarded", "client_address"),
    [
        ([], "203.0.113.7", ["198.51.100.1"], "203.0.113.7"),  # no trusted proxies: the peer
        (["10.0.0.1"], "203.0.113.7", ["198.51.100.1"], "203.0.113.7"),  # peer not trusted
        (["10.0.0.1"], "10.0.0.1", ["198.51.100.1"], "198.51.100.1"),
        (["10.0.0.1"], "10.0.0.1", [], "10.0.0.1"),  # a trusted proxy that forwards nothing
        (["10.0.0.0/8"], "10.0.0.2", ["1.1.1.1, 198.51.100.1, 10.0.0.3"], "198.51.100.1"),
        (["10.0.0.0/8"], "10.0.0.2", ["1.1.1.1", "198.51.100.1"], "198.51.100.1"),  # two headers
        (["10.0.0.0/8"], "10.0.0.2", ["10.0.0.5, 10.0.0.4"], "10.0.0.5"),  # all trusted: leftmost
        (["10.0.0.0/8"], "10.0.0.2", ["garbage, 198.51.100.1"], "198.51.100.1"),
        (["10.0.0.0/8"], "10.0.0.2", ["198.51.100.1, not-an-ip"], "not-an-ip"),
        (["*"], "192.0.2.1", ["198.51.100.1, 192.0.2.9"], "198.51.100.1"),
        (["::1"], "::1", ["2001:db8::1"], "2001:db8::1"),
        ([], None, ["198.51.100.1"], None),
    ],
)
def test_forwarded_for_is_believed_only_from_trusted_proxies(
    trusted: list[str], peer: str | None, forwarded: list[str], client_address: str | None
) -> None:
    proxies = TrustedPeers(trusted, option="trusted_proxies", allow_any=True)
    scope = http_scope(peer, forwarded)
    forwarded_for = [value for _, value in scope["headers"]]
    assert proxies.client_address(scope["client"], forwarded_for) == client_address
