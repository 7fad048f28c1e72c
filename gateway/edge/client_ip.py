"""The client's IP address: one function, used by limits, logs and audit alike.

From the socket, unless the direct peer is a trusted proxy (`server.trusted_proxies`,
IPs or CIDRs); then the rightmost address of ``X-Forwarded-For`` (or ``Forwarded: for=``)
that is not itself a trusted proxy. A client cannot spoof its address by sending the
header to Tollway directly. Hops are normalised (ports and brackets dropped, IPv4-mapped
IPv6 written as IPv4); a hop that is not an address (``unknown``, ``_hidden``, garbage)
ends the walk and the last trusted address is used, so a malformed header can neither
forge an address nor mint endless distinct limit buckets.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import lru_cache

from aiohttp import web

__all__ = ["TrustedProxies", "client_ip", "normalize", "request_ip"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    __slots__ = ("_networks",)

    def __init__(self, entries: Iterable[str]) -> None:
        self._networks: tuple[Network, ...] = tuple(
            ipaddress.ip_network(entry, strict=False) for entry in entries
        )

    def __bool__(self) -> bool:
        return bool(self._networks)

    def trusts(self, address: str) -> bool:
        return _trusted(self._networks, address)


@lru_cache(maxsize=4096)
def _trusted(networks: tuple[Network, ...], address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)


@lru_cache(maxsize=4096)
def normalize(hop: str) -> str | None:
    """`hop` as a plain address (``1.2.3.4``, ``2001:db8::1``), or None if it is none.

    Accepts ``1.2.3.4:5678``, ``[2001:db8::1]``, ``[2001:db8::1]:5678`` and quoted forms.
    """
    text = hop.strip().strip('"')
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _forwarded_chain(request: web.Request) -> list[str]:
    chain: list[str] = []
    for header in request.headers.getall("X-Forwarded-For", ()):
        chain.extend(part.strip() for part in header.split(",") if part.strip())
    if chain:
        return chain
    for element in request.forwarded:
        value = element.get("for")
        if value:
            chain.append(value)
    return chain


def client_ip(request: web.Request, trusted: TrustedProxies) -> str:
    """The address of whoever sent the request, believing proxies only if trusted."""
    peer = request.remote or ""
    if not trusted or not trusted.trusts(peer):
        return normalize(peer) or peer
    last_trusted = peer
    for hop in reversed(_forwarded_chain(request)):
        address = normalize(hop)
        if address is None:
            break
        if not trusted.trusts(address):
            return address
        last_trusted = address
    return normalize(last_trusted) or last_trusted


# Kept beside `request_ip`, which reads them on every request.
trusted_proxies_key = web.AppKey("trusted_proxies", TrustedProxies)
client_ip_key = web.RequestKey("client_ip", str)


def request_ip(request: web.Request) -> str:
    """`client_ip` of this request, worked out once and kept on it."""
    found = request.get(client_ip_key)
    if found is None:
        found = request[client_ip_key] = client_ip(request, request.app[trusted_proxies_key])
    return found
