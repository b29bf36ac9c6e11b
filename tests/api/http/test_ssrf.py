"""The SSRF policy on its own: addresses, allow-lists, DNS answers."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from api.http.errors import ImageUnavailableError, UrlNotAllowedError
from api.http.ssrf import UrlPolicy


def _dns(table: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    async def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError("NXDOMAIN")
        return table[host]

    return resolve


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.216.34", True),
        ("2606:2800:220:1:248:1893:25c8:1946", True),
        ("127.0.0.1", False),
        ("10.2.3.4", False),
        ("172.16.0.1", False),
        ("192.168.0.1", False),
        ("169.254.169.254", False),
        ("100.64.1.1", False),
        ("0.0.0.0", False),
        ("::1", False),
        ("fe80::1", False),
        ("fd00:ec2::254", False),
        ("::ffff:127.0.0.1", False),
        ("224.0.0.1", False),
    ],
)
def test_only_public_addresses_pass_by_default(address: str, public: bool) -> None:
    assert UrlPolicy().address_allowed(ipaddress.ip_address(address)) is public


def test_allow_list_takes_networks_and_host_names() -> None:
    policy = UrlPolicy(["10.20.0.0/16", "cdn.internal"], resolver=_dns({"cdn.internal": ["10.99.0.5"]}))
    assert policy.address_allowed(ipaddress.ip_address("10.20.1.5"))
    assert not policy.address_allowed(ipaddress.ip_address("10.21.1.5"))
    assert asyncio.run(policy.resolve("cdn.internal", 80)) == "10.99.0.5"
    assert asyncio.run(policy.resolve("CDN.internal", 80)) == "10.99.0.5"


def test_every_dns_answer_must_be_allowed() -> None:
    policy = UrlPolicy(resolver=_dns({"mixed.example": ["93.184.216.34", "10.0.0.1"], "ok.example": ["1.1.1.1"]}))
    with pytest.raises(UrlNotAllowedError, match=r"10\.0\.0\.1"):
        asyncio.run(policy.resolve("mixed.example", 80))
    assert asyncio.run(policy.resolve("ok.example", 80)) == "1.1.1.1"
    with pytest.raises(ImageUnavailableError, match="resolve"):
        asyncio.run(policy.resolve("missing.example", 80))


def test_ip_literals_skip_dns() -> None:
    policy = UrlPolicy(resolver=_dns({}))
    assert asyncio.run(policy.resolve("8.8.8.8", 80)) == "8.8.8.8"
    with pytest.raises(UrlNotAllowedError):
        asyncio.run(policy.resolve("[::1]", 80))
