"""Connecting an org: PKCE values, the state check, the code exchange and storing the connection."""

from __future__ import annotations

import base64
import hashlib
import re
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.operations.helpers import REDIRECT_URI, approve, assert_no_tokens
from tokenkeeper.admin_store import AdminStore
from tokenkeeper.errors import (
    AuthorizationStateError,
    ConnectionExistsError,
    InvalidEventError,
    ProxyAuthenticationError,
    SalesforceHostError,
    SalesforceOAuthError,
)
from tokenkeeper.operations import (
    PENDING_AUTHORIZATION_SECONDS,
    Operations,
    code_challenge,
    new_code_verifier,
    new_state,
)

UNRESERVED = re.compile(r"[A-Za-z0-9\-._~]+")


def _query(url: str) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(urlsplit(url).query).items()}


def test_code_verifier_length_and_charset():
    verifiers = {new_code_verifier() for _ in range(50)}

    assert len(verifiers) == 50
    for verifier in verifiers:
        assert 43 <= len(verifier) <= 128
        assert UNRESERVED.fullmatch(verifier)


def test_code_challenge_is_unpadded_base64url_sha256():
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"

    challenge = code_challenge(verifier)

    # The example pair from RFC 7636, appendix B.
    assert challenge == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    assert "=" not in challenge
    expected = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    assert challenge == expected


def test_state_is_random_and_url_safe():
    states = {new_state() for _ in range(50)}

    assert len(states) == 50
    assert all(UNRESERVED.fullmatch(state) and len(state) >= 43 for state in states)


def test_authorize_url_has_pkce_fields(fresh_world, operations, new_id):
    connection_id = new_id()

    started = operations.authorize_url(connection_id, redirect_uri=REDIRECT_URI, host=fresh_world.token_host)

    parts = urlsplit(started["url"])
    query = _query(started["url"])
    assert parts.scheme == "https"
    assert parts.netloc == fresh_world.token_host
    assert parts.path == "/services/oauth2/authorize"
    assert query["response_type"] == "code"
    assert query["client_id"] == fresh_world.secrets.client_id
    assert query["redirect_uri"] == REDIRECT_URI
    assert query["code_challenge_method"] == "S256"
    assert query["state"] == started["state"]
    assert "code_verifier" not in query
    # The verifier is stored sealed under the state, and the URL carries only its challenge.
    pending = AdminStore.of(fresh_world.runtime().store).take_pending(started["state"])
    assert pending is not None
    assert pending.connection_id == connection_id
    assert query["code_challenge"] == code_challenge(pending.code_verifier)
    assert pending.code_verifier not in started["url"]
    assert pending.expires_at == pytest.approx(fresh_world.clock() + PENDING_AUTHORIZATION_SECONDS, abs=5)


def test_authorize_url_defaults_to_production_login_host(operations, new_id):
    started = operations.authorize_url(new_id(), redirect_uri=REDIRECT_URI)

    assert started["url"].startswith("https://login.salesforce.com/services/oauth2/authorize?")


@pytest.mark.parametrize("host", ["evil.example.com", "login.salesforce.com.evil.example.com"])
def test_authorize_url_rejects_non_salesforce_host(operations, new_id, host):
    with pytest.raises(SalesforceHostError):
        operations.authorize_url(new_id(), redirect_uri=REDIRECT_URI, host=host)


@pytest.mark.parametrize("redirect_uri", ["", "http://isv.example.com/callback", "ftp://isv.example.com/x"])
def test_authorize_url_rejects_invalid_redirect_uri(operations, new_id, redirect_uri):
    with pytest.raises(InvalidEventError) as caught:
        operations.authorize_url(new_id(), redirect_uri=redirect_uri)

    assert "redirect_uri" in caught.value.message


def test_connect_stores_connection_through_proxy(fresh_world, operations, new_id):
    connection_id = new_id()
    started = operations.authorize_url(connection_id, redirect_uri=REDIRECT_URI, host=fresh_world.token_host)
    code, state = approve(fresh_world, started["url"])

    result = operations.connect(code=code, state=state)

    assert result["connected"] is True
    assert result["connection_id"] == connection_id
    assert result["status"] == "active"
    assert result["version"] == 1
    assert result["org_id"]
    assert_no_tokens(fresh_world, result)
    stats = fresh_world.salesforce.stats
    assert stats.code_exchanges == 1
    assert set(stats.by_source) <= set(fresh_world.proxy.egress_addresses)
    assert sum(stats.by_source.values()) == 1
    # The stored chain is live: the refresh protocol can redeem it.
    token = fresh_world.runtime().refresher().get_token(connection_id, force=True)
    assert token.version == 2


def test_connect_accepts_callback_url(fresh_world, operations, new_id):
    connection_id = new_id()
    started = operations.authorize_url(connection_id, redirect_uri=REDIRECT_URI, host=fresh_world.token_host)
    code, state = approve(fresh_world, started["url"])

    result = operations.connect(callback_url=f"{REDIRECT_URI}?code={code}&state={state}")

    assert result["connection_id"] == connection_id


def test_connect_rejects_state_mismatch(fresh_world, operations, new_id):
    started = operations.authorize_url(new_id(), redirect_uri=REDIRECT_URI, host=fresh_world.token_host)
    code, _state = approve(fresh_world, started["url"])

    with pytest.raises(AuthorizationStateError) as caught:
        operations.connect(code=code, state=new_state())

    assert "authorize-url again" in caught.value.message
    assert fresh_world.salesforce.stats.code_exchanges == 0


def test_connect_state_works_only_once(fresh_world, operations, new_id):
    started = operations.authorize_url(new_id(), redirect_uri=REDIRECT_URI, host=fresh_world.token_host)
    code, state = approve(fresh_world, started["url"])
    operations.connect(code=code, state=state)

    with pytest.raises(AuthorizationStateError):
        operations.connect(code=code, state=state)

    assert fresh_world.salesforce.stats.code_exchanges == 1


def test_connect_rejects_expired_authorization(fresh_world, operations, new_id):
    started = operations.authorize_url(new_id(), redirect_uri=REDIRECT_URI, host=fresh_world.token_host)
    code, state = approve(fresh_world, started["url"])
    fresh_world.clock.advance(PENDING_AUTHORIZATION_SECONDS + 1)

    with pytest.raises(AuthorizationStateError) as caught:
        operations.connect(code=code, state=state)

    assert "expired" in caught.value.message
    assert fresh_world.salesforce.stats.code_exchanges == 0


def test_connect_reports_denied_consent(operations):
    with pytest.raises(SalesforceOAuthError) as caught:
        operations.connect(callback_url=f"{REDIRECT_URI}?error=access_denied&error_description=end-user+denied&state=x")

    assert caught.value.error == "access_denied"


def test_authorize_url_refuses_existing_connection(fresh_world, operations, new_id):
    connection_id = new_id()
    fresh_world.seed_connection(connection_id)

    with pytest.raises(ConnectionExistsError):
        operations.authorize_url(connection_id, redirect_uri=REDIRECT_URI, host=fresh_world.token_host)


def test_connect_refuses_to_overwrite_connection(fresh_world, operations, new_id):
    connection_id = new_id()
    started = operations.authorize_url(connection_id, redirect_uri=REDIRECT_URI, host=fresh_world.token_host)
    code, state = approve(fresh_world, started["url"])
    existing = fresh_world.seed_connection(connection_id)

    with pytest.raises(ConnectionExistsError):
        operations.connect(code=code, state=state)

    stored = fresh_world.runtime().store.get(connection_id)
    assert stored.refresh_token == existing.refresh_token
    assert fresh_world.salesforce.chain_state(existing.refresh_token) == "current"
    assert fresh_world.salesforce.stats.code_exchanges == 0


def test_connect_revokes_new_chain_when_id_taken_meanwhile(fresh_world, operations, new_id, monkeypatch):
    connection_id = new_id()
    started = operations.authorize_url(connection_id, redirect_uri=REDIRECT_URI, host=fresh_world.token_host)
    code, state = approve(fresh_world, started["url"])
    existing = fresh_world.seed_connection(connection_id)
    # The existence check runs before another operator stores the same id.
    monkeypatch.setattr(operations._store, "summary", lambda _connection_id: None)

    with pytest.raises(ConnectionExistsError):
        operations.connect(code=code, state=state)

    assert fresh_world.salesforce.stats.code_exchanges == 1
    assert fresh_world.salesforce.stats.chains_revoked == 1
    assert fresh_world.runtime().store.get(connection_id).refresh_token == existing.refresh_token
    assert fresh_world.salesforce.chain_state(existing.refresh_token) == "current"


def test_connect_keeps_state_when_proxy_fails(fresh_world, operations, new_id):
    connection_id = new_id()
    started = operations.authorize_url(connection_id, redirect_uri=REDIRECT_URI, host=fresh_world.token_host)
    code, state = approve(fresh_world, started["url"])
    fresh_world.set_proxy_url(fresh_world.proxy.url(password="wrong-password"))

    with pytest.raises(ProxyAuthenticationError):
        Operations(fresh_world.runtime(), clock=fresh_world.clock).connect(code=code, state=state)
    fresh_world.set_proxy_url(fresh_world.proxy.url())
    result = Operations(fresh_world.runtime(), clock=fresh_world.clock).connect(code=code, state=state)

    assert result["connection_id"] == connection_id
    assert fresh_world.salesforce.stats.code_exchanges == 1
