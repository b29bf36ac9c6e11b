"""SSRF guard for buyer-supplied image URLs: which hosts and addresses Tandem may fetch from.

A URL is fetchable when its scheme is http(s) and every address its host resolves to is a
public (global) address, unless an allow-list entry (a host name or a network in CIDR form)
says otherwise. The fetcher connects to the address checked here, not to a second DNS answer,
so a rebinding DNS server cannot swap in a private address after the check.

Example:
    >>> policy = UrlPolicy(["cdn.internal", "10.20.0.0/16"])
    >>> policy.address_allowed(ipaddress.ip_address("10.20.1.5"))
    True
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence

from api.http.errors import ImageUnavailableError, UrlNotAllowedError

__all__ = ["IPAddress", "Resolver", "UrlPolicy", "is_loopback", "system_resolver"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]


async def system_resolver(host: str, port: int) -> list[str]:
    """The host's addresses from the system resolver, without blocking the event loop."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def is_loopback(host: str | None) -> bool:
    """A loopback address or name (``testclient`` is Starlette's in-process test client)."""
    if host is None:
        return False
    if host in ("localhost", "testclient"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _is_public(ip: IPAddress) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return _is_public(ip.ipv4_mapped)
    # is_global excludes loopback, private, link-local (cloud metadata 169.254.169.254), CGNAT,
    # reserved and unspecified ranges; multicast is global but never an image server.
    return ip.is_global and not ip.is_multicast


class UrlPolicy:
    """Decides which image hosts may be fetched (see the module docstring)."""

    def __init__(self, allow: Sequence[str] = (), *, resolver: Resolver = system_resolver) -> None:
        self.allowed_hosts: set[str] = set()
        self.allowed_networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for raw in allow:
            entry = raw.strip().lower()
            try:
                self.allowed_networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self.allowed_hosts.add(entry)
        self.resolver = resolver

    def address_allowed(self, ip: IPAddress) -> bool:
        return _is_public(ip) or any(ip in net for net in self.allowed_networks)

    async def resolve(self, url_host: str, port: int) -> str:
        """The address to connect to for ``url_host``; raises when the host is not allowed."""
        host = url_host.strip("[]").lower()
        try:
            literal: IPAddress | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            addresses = [literal]
        else:
            if not host or (host.endswith(".") and host.rstrip(".") == ""):
                raise UrlNotAllowedError("the image URL has no host")
            try:
                found = await self.resolver(host, port)
            except (OSError, UnicodeError) as exc:
                raise ImageUnavailableError(f"cannot resolve the image host {host!r}") from exc
            addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in found]
            if not addresses:
                raise ImageUnavailableError(f"the image host {host!r} has no address")
        if host in self.allowed_hosts:
            return str(addresses[0])
        refused = [ip for ip in addresses if not self.address_allowed(ip)]
        if refused:
            raise UrlNotAllowedError(
                f"image URLs may not point at loopback, private, link-local or metadata addresses"
                f" ({host} is {refused[0]}); allow it with TANDEM_STORAGE__URL_ALLOW if it is trusted"
            )
        return str(addresses[0])
