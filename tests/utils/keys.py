"""API keys for tests: the secrets the callers hold, and the hashed configuration the service gets."""

from __future__ import annotations

import json

from app.security.keys import hash_key

KEYS = {
    "clinic-a": ("mk_test_clinic_a_0123456789abcdef", ["submit", "read"]),
    "clinic-b": ("mk_test_clinic_b_0123456789abcdef", ["submit", "read"]),
    "viewer": ("mk_test_viewer_0123456789abcdef", ["read"]),
    "ops": ("mk_test_ops_0123456789abcdef", ["admin"]),
}


def keys_env() -> str:
    return json.dumps([{"name": name, "sha256": hash_key(secret), "scopes": scopes}
                       for name, (secret, scopes) in KEYS.items()])


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name][0]}"}
