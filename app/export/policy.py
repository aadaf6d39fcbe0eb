"""Which destinations a job's results go to: its routing rule's, its API key's defaults, and what it asks for.

A request may name, in `export_to`, destinations its key lists in `export_to` or `may_export_to`; an `admin`
key may name any. A name that is not configured is a 422, one the key may not use a 403.
"""

from __future__ import annotations

import json

from app.config import ApiKey, Settings, check_destinations
from app.errors import Forbidden, InvalidRequest
from app.security.keys import Principal


def parse_export_to(value: str | None) -> list[str]:
    """`export_to` as sent: a JSON list of names, or names separated by commas."""
    if value is None or not value.strip():
        return []
    text = value.strip()
    if text.startswith("["):
        try:
            names = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidRequest(f"`export_to` is not a valid JSON list ({exc.msg} at character {exc.pos})") from exc
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise InvalidRequest('`export_to` must be a list of destination names, e.g. ["pacs"]')
    else:
        names = text.split(",")
    return [n.strip() for n in names if n.strip()]


class ExportPolicy:
    def __init__(self, settings: Settings, keys: list[ApiKey]) -> None:
        self.known = [d.name for d in settings.export_destinations]
        for key in keys:  # keys from MEDIMG_API_KEYS_FILE are checked here, the others by Settings too
            check_destinations([*key.export_to, *key.may_export_to], self.known, f"API key {key.name!r}")
        self._keys = {key.name: key for key in keys}

    def destinations(self, caller: Principal, requested: list[str], routed: list[str] | None = None) -> list[str]:
        """The job's destinations: the routing rule's, the key's defaults, then the request's own."""
        unknown = sorted(set(requested) - set(self.known))
        if unknown:
            raise InvalidRequest(f"export_to names unknown destination(s) {unknown}; configured: "
                                 f"{self.known or 'none (MEDIMG_EXPORT_DESTINATIONS is empty)'}")
        key = self._keys.get(caller.name)
        defaults = list(key.export_to) if key else []
        if "admin" not in caller.scopes:
            allowed = set(defaults) | set(key.may_export_to if key else [])
            refused = sorted(set(requested) - allowed)
            if refused:
                raise Forbidden(f"The API key of {caller.name!r} may not export to {refused}; it may use "
                                f"{sorted(allowed) or 'none'} (export_to / may_export_to of the key)")
        return list(dict.fromkeys([*(routed or []), *defaults, *requested]))
