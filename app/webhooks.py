"""Webhook destinations and messages, in the Standard Webhooks form (https://www.standardwebhooks.com).

Only destinations on the allow-list are called. With no list configured, only public addresses are;
link-local, cloud metadata, multicast and unspecified addresses are refused whatever the list says.
An IPv6 address that carries an IPv4 one (IPv4-mapped ::ffff:a.b.c.d, IPv4-compatible ::a.b.c.d, NAT64
64:ff9b::/96, 6to4 2002::/16, Teredo) is judged by the IPv4 address too, since that is where it leads. The
host is resolved once, and the sender connects to the address that was checked (`pinned_request`), so a
name that resolves elsewhere a moment later (DNS rebinding) cannot redirect the call.
"""

from __future__ import annotations

import ipaddress
import socket
from datetime import UTC, datetime
from urllib.parse import urlsplit

from app.errors import InvalidRequest

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
METADATA_ADDRESSES = {ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")}


NAT64 = ipaddress.ip_network("64:ff9b::/96")


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one leads to, when it carries one."""
    if address.version == 4:
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if int(address) >> 32 == 0 and int(address) > 1:  # IPv4-compatible ::a.b.c.d (deprecated, still routed)
        return ipaddress.IPv4Address(int(address))
    return None


def address_allowed(address: IPAddress, allowed_networks: list[str]) -> bool:
    embedded = embedded_ipv4(address)
    if embedded is not None and not _address_allowed(embedded, allowed_networks):
        return False
    return _address_allowed(address, allowed_networks)


def _address_allowed(address: IPAddress, allowed_networks: list[str]) -> bool:
    if address.is_link_local or address in METADATA_ADDRESSES or address.is_multicast or address.is_unspecified:
        return False
    if allowed_networks:
        return any(address in ipaddress.ip_network(network, strict=False) for network in allowed_networks)
    return address.is_global


def resolve(host: str, port: int) -> list[IPAddress]:
    infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    return [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]


def check_callback_url(url: str, allowed_networks: list[str]) -> list[IPAddress]:
    """Refuses, with a reason, a callback the service must not call; resolves the host to check every address
    and returns them: the only addresses the call may then connect to."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest(f"callback_url must be an absolute http(s) URL; got scheme {parts.scheme or 'none'!r}")
    if parts.username or parts.password:
        raise InvalidRequest("callback_url must not carry credentials; the signature authenticates the service")
    try:
        addresses = resolve(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    except (OSError, UnicodeError) as exc:
        raise InvalidRequest(f"callback_url host {parts.hostname!r} cannot be resolved ({type(exc).__name__})") from exc
    refused = sorted(_shown(a) for a in addresses if not address_allowed(a, allowed_networks))
    if refused:
        raise InvalidRequest(
            f"callback_url host {parts.hostname!r} resolves to {', '.join(refused)}, which callbacks may not reach "
            "(MEDIMG_WEBHOOK_ALLOWED_NETWORKS; link-local and metadata addresses are never allowed)"
        )
    return addresses


def _shown(address: IPAddress) -> str:
    embedded = embedded_ipv4(address)
    return str(address) if embedded is None else f"{address} (IPv4 {embedded})"


def pinned_request(url: str, address: IPAddress) -> tuple[str, dict[str, str], dict[str, str]]:
    """(URL with the checked address as host, headers with the original Host, httpx extensions with the TLS
    server name): the connection goes to `address`, while HTTP and TLS still name the original host."""
    parts = urlsplit(url)
    literal = f"[{address}]" if address.version == 6 else str(address)
    netloc = literal if parts.port is None else f"{literal}:{parts.port}"
    host = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
    if ":" in (parts.hostname or "") and not host.startswith("["):
        host = f"[{parts.hostname}]" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl(), {"Host": host}, {"sni_hostname": parts.hostname}


def webhook_headers(secret: str, message_id: str, body: str, now: datetime | None = None) -> dict[str, str]:
    from standardwebhooks import Webhook

    timestamp = now or datetime.now(UTC)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": Webhook(secret).sign(message_id, timestamp, body),
        "content-type": "application/json",
    }
