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


def _fingerprint(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:12]


def find_secrets(text: str) -> list[str]:
    """Return fingerprints (sha256 prefixes, never the values) of the known secrets in ``text``."""
    return [_fingerprint(value) for value in known_secrets() if value in text]


def redact(text: str) -> str:
    """Return ``text`` with every known secret replaced by its fingerprint."""
    # Longer values first, so that a secret containing another is replaced whole.
    for value in sorted(known_secrets(), key=len, reverse=True):
        text = text.replace(value, f"[secret sha256:{_fingerprint(value)}]")
    return text


def assert_no_secrets(text: str) -> None:
    hits = find_secrets(text)
    assert not hits, f"secret values (sha256 prefixes {hits}) appeared in output starting {redact(text)[:120]!r}"


def withhold_secrets(report) -> bool:
    """Redact known secrets in a pytest test report and mark it failed; return whether any were found.

    A failure report repeats exception texts, assertion operands and captured output, so a secret
    that reached any of them would be printed by pytest itself.
    """
    texts = [report.longreprtext, *(content for _title, content in report.sections)]
    hits = find_secrets("\n".join(texts))
    if not hits:
        return False
    report.sections = [(title, redact(content)) for title, content in report.sections]
    report.longrepr = (
        f"Secret values (sha256 prefixes {hits}) appeared in this test's report; it is shown with them "
        "replaced.\n" + redact(report.longreprtext)
    )
    report.outcome = "failed"
    return True
