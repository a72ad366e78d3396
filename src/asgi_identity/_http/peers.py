"""Trusted peers: the one class for everything that believes the socket peer (as uvicorn's
ProxyHeadersMiddleware does): identity headers and `X-Forwarded-For` alike."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_address(host: object) -> IPAddress | None:
    """`host` as an address, an IPv4-mapped IPv6 one as the IPv4 address it maps; None if it is
    not an address (a Unix socket path, garbage)."""
    if not isinstance(host, str):
        return None
    try:
        address = ipaddress.ip_address(host.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class TrustedPeers:
    """Peers, parsed once, whose word a layer takes.

    `option` names the setting in error messages. `"*"` (every peer) is accepted only where
    `allow_any` says so: trusting anyone on the internet to assert an email address is never
    meant, while believing `X-Forwarded-For` from every peer is, behind a load balancer.
    A peer without an address (a Unix socket) is never trusted, except by `"*"`.
    """

    __slots__ = ("_any", "_networks")

    def __init__(
        self, networks: Iterable[str | IPNetwork], *, option: str, allow_any: bool = False
    ) -> None:
        if isinstance(networks, str):
            raise TypeError(f"{option} must be a list of networks, not a string")
        self._any = False
        parsed: list[IPNetwork] = []
        for network in networks:
            if isinstance(network, ipaddress.IPv4Network | ipaddress.IPv6Network):
                parsed.append(network)
                continue
            if not isinstance(network, str):
                raise TypeError(
                    f"{option}: {network!r} must be a string like '10.0.0.0/8' or an "
                    "ipaddress network"
                )
            if network.strip() == "*":
                if not allow_any:
                    raise ValueError(
                        f"{option}: '*' is not accepted here (it would let any peer on the "
                        "internet assert an identity); list the networks of your backends"
                    )
                self._any = True
                continue
            try:
                parsed.append(ipaddress.ip_network(network.strip(), strict=False))
            except ValueError:
                raise ValueError(f"{option}: {network!r} is not an IP address or network") from None
        # A mapped network (::ffff:10.0.0.0/104) is the IPv4 network it maps, as addresses are.
        self._networks = tuple(_unmapped(n) for n in parsed)

    def __bool__(self) -> bool:
        return self._any or bool(self._networks)

    def trusts(self, host: object) -> bool:
        """Whether the peer `host` (an address string) is trusted."""
        if self._any:
            return True
        if not self._networks:
            return False
        address = parse_address(host)
        return address is not None and any(address in n for n in self._networks)

    def trusts_client(self, client: object) -> bool:
        """Whether an ASGI `scope["client"]` (host, port) is trusted."""
        if self._any:
            return True
        if not client or not isinstance(client, tuple | list):
            return False
        return self.trusts(client[0])

    def client_address(self, client: object, forwarded_for: Iterable[bytes]) -> str | None:
        """The client's address: the peer, or, behind trusted proxies, the nearest hop of
        `X-Forwarded-For` that is not trusted. Addresses come back in their unmapped form."""
        host = client[0] if client and isinstance(client, tuple | list) else None
        address = parse_address(host)
        peer = str(address) if address is not None else host
        if peer is None or not self.trusts(peer):
            return peer
        hops: list[str] = []
        for value in forwarded_for:
            hops.extend(hop.strip() for hop in value.decode("latin-1").split(","))
        # Walk back from the hop nearest to us: the first address we do not trust is the client.
        # Everything left of it was written by the client and proves nothing.
        for hop in reversed(hops):
            if not hop:
                continue
            parsed = parse_address(hop)
            shown = str(parsed) if parsed is not None else hop
            if not self.trusts(shown):
                return shown
            peer = shown
        return peer


def _unmapped(network: IPNetwork) -> IPNetwork:
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.IPv4Network(f"{mapped}/{network.prefixlen - 96}")
    return network
