"""Webhook destinations and messages, in the Standard Webhooks form (https://www.standardwebhooks.com).

Only destinations on the allow-list are called. With no list configured, only public addresses are;
link-local, cloud metadata, multicast and unspecified addresses are refused whatever the list says.
"""

from __future__ import annotations

import ipaddress
import socket
from datetime import UTC, datetime
from urllib.parse import urlsplit

from app.errors import InvalidRequest

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
METADATA_ADDRESSES = {ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")}


def address_allowed(address: IPAddress, allowed_networks: list[str]) -> bool:
    if address.is_link_local or address in METADATA_ADDRESSES or address.is_multicast or address.is_unspecified:
        return False
    if allowed_networks:
        return any(address in ipaddress.ip_network(network, strict=False) for network in allowed_networks)
    return address.is_global


def resolve(host: str, port: int) -> list[IPAddress]:
    infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    return [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]


def check_callback_url(url: str, allowed_networks: list[str]) -> None:
    """Refuses, with a reason, a callback the service must not call; resolves the host to check every address."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest(f"callback_url must be an absolute http(s) URL; got scheme {parts.scheme or 'none'!r}")
    if parts.username or parts.password:
        raise InvalidRequest("callback_url must not carry credentials; the signature authenticates the service")
    try:
        addresses = resolve(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    except (OSError, UnicodeError) as exc:
        raise InvalidRequest(f"callback_url host {parts.hostname!r} cannot be resolved ({type(exc).__name__})") from exc
    refused = sorted(str(a) for a in addresses if not address_allowed(a, allowed_networks))
    if refused:
        raise InvalidRequest(
            f"callback_url host {parts.hostname!r} resolves to {', '.join(refused)}, which callbacks may not reach "
            "(MEDIMG_WEBHOOK_ALLOWED_NETWORKS; link-local and metadata addresses are never allowed)"
        )


def webhook_headers(secret: str, message_id: str, body: str, now: datetime | None = None) -> dict[str, str]:
    from standardwebhooks import Webhook

    timestamp = now or datetime.now(UTC)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": Webhook(secret).sign(message_id, timestamp, body),
        "content-type": "application/json",
    }
