"""One trusted-peer class for identity headers and X-Forwarded-For: one truth table."""

from __future__ import annotations

import pytest

from asgi_identity._http.peers import TrustedPeers

NETWORKS = ["127.0.0.1/32", "10.0.0.0/8", "::1/128", "::ffff:192.168.0.0/112"]


@pytest.mark.parametrize(
    ("client", "trusted"),
    [
        (("127.0.0.1", 1), True),
        (("::ffff:127.0.0.1", 1), True),  # IPv4-mapped: the IPv4 peer it maps
        (("::FFFF:7f00:1", 1), True),
        (("::1", 1), True),
        (("10.1.2.3", 1), True),
        (("::ffff:10.1.2.3", 1), True),
        (("192.168.3.4", 1), True),  # a mapped network is the IPv4 network it maps
        (("11.0.0.1", 1), False),
        (("::ffff:11.0.0.1", 1), False),
        (("2001:db8::1", 1), False),
        (None, False),  # a Unix socket has no address
        (("/run/app.sock", 0), False),
        (("not-an-address", 1), False),
        (("", 1), False),
        ((), False),
    ],
)
def test_identity_headers_and_forwarded_for_trust_the_same_peers(
    client: object, trusted: bool
) -> None:
    headers = TrustedPeers(NETWORKS, option="trusted_header_networks")
    proxies = TrustedPeers(NETWORKS, option="trusted_proxies", allow_any=True)
    assert headers.trusts_client(client) is trusted
    assert proxies.trusts_client(client) is trusted
    # Behind a trusted peer the forwarded client is believed; otherwise the peer is the client.
    expected = "203.0.113.9" if trusted else None
    address = proxies.client_address(client, [b"203.0.113.9"])
    if trusted:
        assert address == expected
    else:
        assert address != "203.0.113.9"


def test_star_is_refused_for_identity_headers_and_accepted_for_proxies() -> None:
    with pytest.raises(ValueError, match="'\\*' is not accepted"):
        TrustedPeers(["*"], option="trusted_header_networks")
    anyone = TrustedPeers(["*"], option="trusted_proxies", allow_any=True)
    assert anyone.trusts_client(("198.51.100.1", 1))
    assert anyone.trusts_client(None)


@pytest.mark.parametrize(
    ("forwarded", "client"),
    [
        ([b"203.0.113.9"], "203.0.113.9"),
        ([b"198.51.100.1, 203.0.113.9"], "203.0.113.9"),  # the nearest untrusted hop
        ([b"198.51.100.1, 10.0.0.2"], "198.51.100.1"),  # trusted hops are walked past
        ([b"198.51.100.1", b"10.0.0.2"], "198.51.100.1"),  # two headers are one list
        ([b"::ffff:203.0.113.9"], "203.0.113.9"),  # hops come back unmapped
        ([b""], "127.0.0.1"),
        ([], "127.0.0.1"),
    ],
)
def test_forwarded_for_is_walked_back_from_the_nearest_hop(
    forwarded: list[bytes], client: str
) -> None:
    proxies = TrustedPeers(NETWORKS, option="trusted_proxies", allow_any=True)
    assert proxies.client_address(("::ffff:127.0.0.1", 1), forwarded) == client


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "example.com", "10.0.0.1/8/8"])
def test_a_network_that_is_not_one_fails_at_start_up_naming_the_option(bad: str) -> None:
    with pytest.raises(ValueError, match="trusted_proxies"):
        TrustedPeers([bad], option="trusted_proxies")
    with pytest.raises(TypeError, match="not a string"):
        TrustedPeers("10.0.0.0/8", option="trusted_proxies")
