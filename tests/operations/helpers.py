"""Helpers for the operator tests: approving an authorization and checking output for tokens."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

REDIRECT_URI = "https://isv.example.com/oauth/callback"


def approve(world, authorize_url: str) -> tuple[str, str]:
    """Act as the subscriber's admin approving the app: return the redirect's code and state."""
    query = {name: values[0] for name, values in parse_qs(urlsplit(authorize_url).query).items()}
    code = world.salesforce.create_authorization_code(
        query["client_id"],
        redirect_uri=query["redirect_uri"],
        code_challenge=query["code_challenge"],
        code_challenge_method=query["code_challenge_method"],
    )
    return code, query["state"]


def assert_no_tokens(world, result) -> None:
    """Fail if any token the emulator issued appears in ``result`` (a dict or text)."""
    text = result if isinstance(result, str) else json.dumps(result)
    leaked = [token for token in world.salesforce.issued_tokens() if token in text]
    assert not leaked, f"{len(leaked)} issued token(s) appear in the output"
