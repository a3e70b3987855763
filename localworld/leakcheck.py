"""Find secret values in text: every secret a local world used, and every token it issued.

Worlds register themselves when they start. Tests, the demo and benchmarks scan captured logs,
metrics and error messages with :func:`find_secrets`; a hit is reported by a fingerprint, so the
report itself never repeats the secret.
"""

from __future__ import annotations

import hashlib
from urllib.parse import quote

_worlds: list = []
_extra_secrets: set[str] = set()
# Shorter values are too likely to occur by chance in ordinary text.
MIN_SECRET_LENGTH = 8


def register_world(world) -> None:
    _worlds.append(world)


def register_secret(value: str) -> None:
    """Add ``value`` to the secrets that no output may contain."""
    if value:
        _extra_secrets.add(value)


def known_secrets() -> set[str]:
    values = set(_extra_secrets)
    for world in _worlds:
        values.update(world.secrets.values())
        values.add(quote(world.secrets.proxy_password, safe=""))
        if world.salesforce is not None:
            values.update(world.salesforce.issued_tokens())
    return {value for value in values if value and len(value) >= MIN_SECRET_LENGTH}


def find_secrets(text: str) -> list[str]:
    """Return fingerprints (sha256 prefixes, never the values) of the known secrets in ``text``."""
    return [hashlib.sha256(value.encode()).hexdigest()[:12] for value in known_secrets() if value in text]


def assert_no_secrets(text: str) -> None:
    hits = find_secrets(text)
    assert not hits, f"secret values (sha256 prefixes {hits}) appeared in output starting {text[:120]!r}"
