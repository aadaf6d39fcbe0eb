"""A key's configured priority reaches its caller's jobs when a request names none."""

from app.config import ApiKey
from app.schemas.jobs import JobPriority
from app.security.keys import KeyRing, hash_key


def test_authenticate_carries_the_key_priority() -> None:
    ring = KeyRing([ApiKey(name="emergency", sha256=hash_key("mk_ed"), priority="stat"),
                    ApiKey(name="screening", sha256=hash_key("mk_screen"))])
    assert ring.authenticate("mk_ed").priority is JobPriority.STAT
    assert ring.authenticate("mk_screen").priority is JobPriority.ROUTINE
