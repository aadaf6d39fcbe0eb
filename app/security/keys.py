"""API keys: presented as `Authorization: Bearer <key>` or `X-API-Key`, compared by their sha256.

Keys are long random tokens (`medimg new-key` makes one), so an unsalted sha256 is enough to keep the
stored form useless to whoever reads the configuration.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import secrets
from dataclasses import dataclass

from pydantic import TypeAdapter

from app.config import ApiKey, Scope, Settings
from app.schemas.jobs import JobPriority

ANONYMOUS = "anonymous"
ALL_SCOPES: frozenset[Scope] = frozenset({"submit", "read", "admin"})


@dataclass(frozen=True)
class Principal:
    name: str
    scopes: frozenset[Scope]
    authenticated: bool
    priority: JobPriority = JobPriority.ROUTINE  # of the caller's jobs when a request names none

    def may_read(self, owner: str) -> bool:
        return owner == self.name or "admin" in self.scopes


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_key() -> str:
    return "mk_" + secrets.token_urlsafe(32)


def load_keys(settings: Settings) -> list[ApiKey]:
    keys = list(settings.api_keys)
    if settings.api_keys_file is not None:
        raw = json.loads(settings.api_keys_file.read_text(encoding="utf-8"))
        keys += TypeAdapter(list[ApiKey]).validate_python(raw)
    names = [k.name for k in keys]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"API key names must be unique; repeated: {duplicates}")
    return keys


class KeyRing:
    def __init__(self, keys: list[ApiKey]) -> None:
        self._keys = keys

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def authenticate(self, presented: str | None) -> Principal | None:
        """The key's principal; everyone is an all-scopes anonymous caller while no key is configured."""
        if not self._keys:
            return Principal(ANONYMOUS, ALL_SCOPES, authenticated=False)
        if not presented:
            return None
        digest = hash_key(presented)
        for key in self._keys:
            if hmac.compare_digest(digest, key.sha256):
                return Principal(key.name, frozenset(key.scopes), authenticated=True,
                                 priority=JobPriority(key.priority))
        return None


def presented_key(headers: dict[bytes, bytes]) -> str | None:
    """The key from `Authorization: Bearer <key>`, else from `X-API-Key` (raw ASGI headers, lower-case names)."""
    authorization = headers.get(b"authorization", b"").decode("latin-1")
    if authorization[:7].lower() == "bearer ":
        return authorization[7:].strip()
    key = headers.get(b"x-api-key")
    return key.decode("latin-1") if key is not None else None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
