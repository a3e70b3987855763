"""Tests of the local Salesforce OAuth emulator, driven over HTTPS like a real client."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import socket
import ssl
import threading
import time

import pytest
import trustme
import urllib3

from localworld.salesforce import SalesforceEmulator

CLIENT_ID = "3MVG9emulator.client.id"
CLIENT_SECRET = "E1B2C3D4E5F60718293A4B5C6D7E8F90"
REDIRECT_URI = "https://app.example.com/oauth/callback"
START_TIME = 1_700_000_000.0
DAY_SECONDS = 86400
TOKEN_PATH = "/services/oauth2/token"
INTROSPECT_PATH = "/services/oauth2/introspect"
REVOKE_PATH = "/services/oauth2/revoke"
# Bounds every wait on a thread, so a hung server fails the test instead of stalling it.
THREAD_JOIN_SECONDS = 10.0
REQUEST_TIMEOUT = urllib3.Timeout(connect=5.0, read=10.0)


class FakeClock:
    """A clock that only moves when a test advances it."""

    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="module")
def certificate_authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_ssl_context(certificate_authority: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate_authority.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture(scope="module")
def client_ssl_context(certificate_authority: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    certificate_authority.configure_trust(context)
    return context


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START_TIME)


def _start_emulator(server_ssl_context, clock, **options) -> SalesforceEmulator:
    emulator = SalesforceEmulator(ssl_context=server_ssl_context, clock=clock, **options)
    emulator.register_client(CLIENT_ID, CLIENT_SECRET)
    return emulator.start()


@pytest.fixture
def emulator(server_ssl_context, clock):
    """An emulator whose allowlist admits the tests' own source, 127.0.0.1."""
    emulator = _start_emulator(server_ssl_context, clock, allowed_source_addresses=("127.0.0.1",))
    yield emulator
    emulator.stop()


@pytest.fixture
def strict_emulator(server_ssl_context, clock):
    """An emulator with the default allowlist, which admits only 127.0.0.2 and 127.0.0.3."""
    emulator = _start_emulator(server_ssl_context, clock)
    yield emulator
    emulator.stop()


def _open_pool(emulator, client_ssl_context, source_address=None):
    return urllib3.HTTPSConnectionPool(
        "127.0.0.1",
        emulator.port,
        ssl_context=client_ssl_context,
        source_address=source_address,
        retries=False,
        timeout=REQUEST_TIMEOUT,
    )


@pytest.fixture
def pool(emulator, client_ssl_context):
    with _open_pool(emulator, client_ssl_context) as connection_pool:
        yield connection_pool


def post_form(pool, path, fields, headers=None):
    return pool.request("POST", path, fields=fields, headers=headers, encode_multipart=False)


def redeem(pool, refresh_token, *, client_secret=CLIENT_SECRET):
    fields = {
        "grant_type": "refresh_token",
        "refresh_token": refresh_token,
        "client_id": CLIENT_ID,
        "client_secret": client_secret,
    }
    return post_form(pool, TOKEN_PATH, fields)


def exchange_code(pool, code, code_verifier, *, redirect_uri=REDIRECT_URI, **extra):
    fields = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "code_verifier": code_verifier,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        **extra,
    }
    return post_form(pool, TOKEN_PATH, {k: v for k, v in fields.items() if v is not None})


def introspect(pool, token):
    fields = {
        "token": token,
        "token_type_hint": "access_token",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
    }
    return post_form(pool, INTROSPECT_PATH, fields)


def basic_header(client_id, client_secret):
    encoded = base64.b64encode(f"{client_id}:{client_secret}".encode()).decode()
    return {"Authorization": f"Basic {encoded}"}


def pkce_pair():
    verifier = secrets.token_urlsafe(64)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
    return verifier, challenge


def wait_until(condition, timeout=THREAD_JOIN_SECONDS):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} seconds")
        time.sleep(0.01)


def error_of(response):
    body = response.json()
    return body["error"], body["error_description"]


# Refresh token grant


def test_refresh_grant_returns_documented_fields(emulator, pool):
    token = emulator.create_refresh_token(CLIENT_ID, user_id="005000000000042AAA")

    response = redeem(pool, token)

    assert response.status == 200
    body = response.json()
    assert set(body) == {
        "access_token",
        "refresh_token",
        "signature",
        "scope",
        "instance_url",
        "id",
        "token_type",
        "issued_at",
    }
    assert "expires_in" not in body
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "api refresh_token"
    assert body["instance_url"] == emulator.base_url
    assert body["id"] == "https://login.salesforce.com/id/00D000000000001EAA/005000000000042AAA"


def test_issued_at_has_13_digits(emulator, pool):
    token = emulator.create_refresh_token(CLIENT_ID)

    issued_at = redeem(pool, token).json()["issued_at"]

    assert isinstance(issued_at, str)
    assert issued_at.isdigit()
    assert len(issued_at) == 13
    assert issued_at == str(int(START_TIME * 1000))


def test_refresh_grant_signature_matches_hmac(emulator, pool):
    token = emulator.create_refresh_token(CLIENT_ID)

    body = redeem(pool, token).json()

    message = (body["id"] + body["issued_at"]).encode()
    expected = hmac.new(CLIENT_SECRET.encode(), message, hashlib.sha256).digest()
    assert base64.b64decode(body["signature"]) == expected


def test_refresh_grant_rotates_token(emulator, pool):
    first = emulator.create_refresh_token(CLIENT_ID)

    second = redeem(pool, first).json()["refresh_token"]
    third = redeem(pool, second).json()["refresh_token"]

    assert len({first, second, third}) == 3
    assert emulator.chain_state(first) == "rotated"
    assert emulator.chain_state(second) == "rotated"
    assert emulator.chain_state(third) == "current"
    assert emulator.stats.redemptions == 2


def test_tokens_have_realistic_shapes(emulator, pool):
    refresh_token = emulator.create_refresh_token(CLIENT_ID)

    body = redeem(pool, refresh_token).json()

    assert body["access_token"].startswith("00D000000000001!")
    assert len(body["access_token"]) >= 100
    assert body["refresh_token"].startswith("5Aep861")
    assert len(body["refresh_token"]) >= 80
    assert body["access_token"] != redeem(pool, body["refresh_token"]).json()["access_token"]


def test_replay_of_rotated_token_revokes_chain(emulator, pool):
    # GIVEN a chain that has moved on by one rotation
    first = emulator.create_refresh_token(CLIENT_ID)
    rotated = redeem(pool, first).json()
    second, access_token = rotated["refresh_token"], rotated["access_token"]

    # WHEN the rotated-out token is presented again
    replay = redeem(pool, first)

    # THEN the whole chain, including the current token and its access token, is revoked
    assert replay.status == 400
    assert error_of(replay) == ("invalid_grant", "expired access/refresh token")
    assert emulator.chain_state(second) == "revoked"
    assert error_of(redeem(pool, second)) == ("invalid_grant", "expired access/refresh token")
    assert introspect(pool, access_token).json() == {"active": False}
    assert emulator.stats.replays_detected == 1
    assert emulator.stats.chains_revoked == 1


def test_concurrent_redemption_returns_busy(emulator, client_ssl_context):
    token = emulator.create_refresh_token(CLIENT_ID)
    emulator.latency_seconds = 0.5
    barrier = threading.Barrier(2, timeout=THREAD_JOIN_SECONDS)
    responses = []
    responses_lock = threading.Lock()

    def redeem_in_thread():
        # Each thread has its own connection, so both requests are in flight at once.
        with _open_pool(emulator, client_ssl_context) as own_pool:
            barrier.wait()
            response = redeem(own_pool, token)
        with responses_lock:
            responses.append(response)

    threads = [threading.Thread(target=redeem_in_thread) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(THREAD_JOIN_SECONDS)

    assert not any(thread.is_alive() for thread in threads)
    assert sorted(response.status for response in responses) == [200, 400]
    success = next(response for response in responses if response.status == 200)
    busy = next(response for response in responses if response.status == 400)
    assert error_of(busy) == ("invalid_grant", "token request is already being processed")
    assert emulator.chain_state(success.json()["refresh_token"]) == "current"
    assert emulator.stats.chains_revoked == 0
    assert emulator.stats.replays_detected == 0


def test_redemption_after_busy_succeeds(emulator, pool, client_ssl_context):
    token = emulator.create_refresh_token(CLIENT_ID)
    emulator.latency_seconds = 1.0
    results = []
    background = threading.Thread(target=lambda: results.append(redeem(pool, token)))
    background.start()

    # Once the emulator counts the background request, that request owns the token until
    # the latency ends.
    wait_until(lambda: emulator.stats.token_requests == 1)
    with _open_pool(emulator, client_ssl_context) as second_pool:
        busy = redeem(second_pool, token)
    background.join(THREAD_JOIN_SECONDS)

    assert not background.is_alive()
    assert error_of(busy) == ("invalid_grant", "token request is already being processed")
    assert results[0].status == 200
    emulator.latency_seconds = 0
    assert redeem(pool, results[0].json()["refresh_token"]).status == 200


def test_latency_delays_token_response(emulator, pool):
    token = emulator.create_refresh_token(CLIENT_ID)
    emulator.latency_seconds = 0.3

    started = time.monotonic()
    response = redeem(pool, token)
    elapsed = time.monotonic() - started

    assert response.status == 200
    assert elapsed >= 0.3


# Idle timeout


def test_idle_timeout_expires_unused_token(emulator, pool, clock):
    token = emulator.create_refresh_token(CLIENT_ID)

    clock.advance(30 * DAY_SECONDS + 1)
    response = redeem(pool, token)

    assert emulator.chain_state(token) == "expired"
    assert response.status == 400
    assert error_of(response) == ("invalid_grant", "expired access/refresh token")


def test_idle_timeout_allows_use_within_window(emulator, pool, clock):
    token = emulator.create_refresh_token(CLIENT_ID)

    clock.advance(30 * DAY_SECONDS)

    assert redeem(pool, token).status == 200


def test_idle_timeout_restarts_at_each_redemption(emulator, pool, clock):
    token = emulator.create_refresh_token(CLIENT_ID)

    clock.advance(29 * DAY_SECONDS)
    token = redeem(pool, token).json()["refresh_token"]
    clock.advance(29 * DAY_SECONDS)
    response = redeem(pool, token)

    assert response.status == 200
    assert emulator.chain_state(response.json()["refresh_token"]) == "current"


def test_idle_timeout_none_keeps_token_valid(server_ssl_context, client_ssl_context, clock):
    emulator = _start_emulator(
        server_ssl_context,
        clock,
        allowed_source_addresses=("127.0.0.1",),
        idle_timeout_seconds=None,
    )
    with emulator, _open_pool(emulator, client_ssl_context) as own_pool:
        token = emulator.create_refresh_token(CLIENT_ID)
        clock.advance(400 * DAY_SECONDS)

        assert redeem(own_pool, token).status == 200


# Client authentication


def test_client_auth_rejects_wrong_secret_in_form(emulator, pool):
    token = emulator.create_refresh_token(CLIENT_ID)

    response = redeem(pool, token, client_secret="wrong-secret")

    assert response.status == 400
    assert error_of(response) == ("invalid_client", "invalid client credentials")
    assert emulator.chain_state(token) == "current"


def test_client_auth_rejects_wrong_basic_secret(emulator, pool):
    token = emulator.create_refresh_token(CLIENT_ID)
    fields = {"grant_type": "refresh_token", "refresh_token": token}

    response = post_form(pool, TOKEN_PATH, fields, basic_header(CLIENT_ID, "wrong-secret"))

    assert response.status == 400
    assert error_of(response) == ("invalid_client", "invalid client credentials")


def test_client_auth_accepts_basic_header(emulator, pool):
    token = emulator.create_refresh_token(CLIENT_ID)
    fields = {"grant_type": "refresh_token", "refresh_token": token}

    response = post_form(pool, TOKEN_PATH, fields, basic_header(CLIENT_ID, CLIENT_SECRET))

    assert response.status == 200
    assert emulator.chain_state(token) == "rotated"


def test_client_auth_rejects_unknown_client_id(emulator, pool):
    token = emulator.create_refresh_token(CLIENT_ID)
    fields = {
        "grant_type": "refresh_token",
        "refresh_token": token,
        "client_id": "unknown-client",
        "client_secret": CLIENT_SECRET,
    }

    response = post_form(pool, TOKEN_PATH, fields)

    assert response.status == 400
    assert error_of(response)[0] == "invalid_client_id"


def test_client_auth_rejects_missing_secret(emulator, pool):
    token = emulator.create_refresh_token(CLIENT_ID)
    fields = {"grant_type": "refresh_token", "refresh_token": token, "client_id": CLIENT_ID}

    response = post_form(pool, TOKEN_PATH, fields)

    assert error_of(response) == ("invalid_client", "invalid client credentials")


# Refresh Token IP Allowlist


def test_ip_allowlist_blocks_unlisted_source(strict_emulator, client_ssl_context):
    token = strict_emulator.create_refresh_token(CLIENT_ID)

    with _open_pool(strict_emulator, client_ssl_context) as own_pool:
        response = redeem(own_pool, token)
        # The allowlist is checked before the client, so bad credentials change nothing.
        wrong_secret = redeem(own_pool, token, client_secret="wrong-secret")

    assert response.status == 400
    assert error_of(response) == ("invalid_grant", "ip restricted")
    assert error_of(wrong_secret) == ("invalid_grant", "ip restricted")
    assert strict_emulator.chain_state(token) == "current"
    assert strict_emulator.stats.by_source["127.0.0.1"] == 2


def test_ip_allowlist_blocks_code_exchange(strict_emulator, client_ssl_context):
    verifier, challenge = pkce_pair()
    code = strict_emulator.create_authorization_code(
        CLIENT_ID, redirect_uri=REDIRECT_URI, code_challenge=challenge
    )

    with _open_pool(strict_emulator, client_ssl_context) as own_pool:
        response = exchange_code(own_pool, code, verifier)

    assert error_of(response) == ("invalid_grant", "ip restricted")


@pytest.mark.parametrize("source", ["127.0.0.2", "127.0.0.3"])
def test_ip_allowlist_accepts_listed_source(strict_emulator, client_ssl_context, source):
    token = strict_emulator.create_refresh_token(CLIENT_ID)

    with _open_pool(strict_emulator, client_ssl_context, (source, 0)) as own_pool:
        response = redeem(own_pool, token)

    assert response.status == 200
    assert strict_emulator.stats.by_source[source] == 1
    assert strict_emulator.stats.by_source["127.0.0.1"] == 0


def test_ip_allowlist_accepts_runtime_cidr_range(strict_emulator, client_ssl_context):
    token = strict_emulator.create_refresh_token(CLIENT_ID)

    strict_emulator.set_allowed_source_addresses(["127.0.0.0/30"])
    with _open_pool(strict_emulator, client_ssl_context) as own_pool:
        response = redeem(own_pool, token)

    assert response.status == 200


# Grant and field validation


def test_token_endpoint_rejects_unknown_grant_type(emulator, pool):
    fields = {"grant_type": "password", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}

    response = post_form(pool, TOKEN_PATH, fields)

    assert error_of(response) == ("unsupported_grant_type", "grant type not supported")


@pytest.mark.parametrize("missing", ["grant_type", "refresh_token"])
def test_token_endpoint_rejects_missing_field(emulator, pool, missing):
    fields = {
        "grant_type": "refresh_token",
        "refresh_token": emulator.create_refresh_token(CLIENT_ID),
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
    }
    del fields[missing]

    response = post_form(pool, TOKEN_PATH, fields)

    assert response.status == 400
    error, description = error_of(response)
    assert error == "invalid_request"
    assert missing in description


def test_token_endpoint_rejects_unknown_refresh_token(emulator, pool):
    response = redeem(pool, "5Aep861" + "x" * 80)

    assert error_of(response) == ("invalid_grant", "expired access/refresh token")


def test_error_responses_carry_no_store(emulator, pool):
    response = redeem(pool, "not-a-token")

    assert response.status == 400
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Content-Type"].startswith("application/json")
    assert set(response.json()) == {"error", "error_description"}


def test_inactive_user_is_rejected(emulator, pool):
    token = emulator.create_refresh_token(CLIENT_ID, user_id="005000000000007AAA")

    emulator.deactivate_user("005000000000007AAA")
    rejected = redeem(pool, token)
    emulator.activate_user("005000000000007AAA")
    accepted = redeem(pool, token)

    assert error_of(rejected) == ("inactive_user", "user inactive")
    assert accepted.status == 200


def test_locked_org_is_rejected(emulator, pool):
    token = emulator.create_refresh_token(CLIENT_ID)

    emulator.set_org_status("locked")
    response = redeem(pool, token)

    assert response.status == 400
    assert error_of(response)[0] == "inactive_org"
    assert emulator.chain_state(token) == "current"


def test_changed_password_fails_authentication(emulator, pool):
    token = emulator.create_refresh_token(CLIENT_ID, user_id="005000000000009AAA")

    emulator.change_user_password("005000000000009AAA")
    response = redeem(pool, token)

    assert error_of(response) == ("invalid_grant", "authentication failure")


def test_grant_limit_revokes_oldest_chain(server_ssl_context, clock):
    emulator = SalesforceEmulator(
        ssl_context=server_ssl_context, clock=clock, max_grants_per_user=2
    )
    emulator.register_client(CLIENT_ID, CLIENT_SECRET)

    tokens = [emulator.create_refresh_token(CLIENT_ID) for _ in range(3)]

    assert [emulator.chain_state(token) for token in tokens] == ["revoked", "current", "current"]


# Authorization code grant with PKCE


def test_code_exchange_with_pkce_starts_chain(emulator, pool):
    verifier, challenge = pkce_pair()
    code = emulator.create_authorization_code(
        CLIENT_ID, redirect_uri=REDIRECT_URI, code_challenge=challenge
    )

    response = exchange_code(pool, code, verifier)

    assert response.status == 200
    body = response.json()
    assert "expires_in" not in body
    assert emulator.chain_state(body["refresh_token"]) == "current"
    assert emulator.stats.code_exchanges == 1
    assert redeem(pool, body["refresh_token"]).status == 200


def test_code_exchange_rejects_wrong_verifier(emulator, pool):
    _, challenge = pkce_pair()
    other_verifier, _ = pkce_pair()
    code = emulator.create_authorization_code(
        CLIENT_ID, redirect_uri=REDIRECT_URI, code_challenge=challenge
    )

    response = exchange_code(pool, code, other_verifier)

    assert response.status == 400
    assert error_of(response) == ("invalid_grant", "invalid code verifier")


def test_code_exchange_rejects_missing_verifier(emulator, pool):
    _, challenge = pkce_pair()
    code = emulator.create_authorization_code(
        CLIENT_ID, redirect_uri=REDIRECT_URI, code_challenge=challenge
    )

    response = exchange_code(pool, code, None)

    assert error_of(response)[0] == "invalid_request"


def test_code_exchange_requires_client_secret(emulator, pool):
    verifier, challenge = pkce_pair()
    code = emulator.create_authorization_code(
        CLIENT_ID, redirect_uri=REDIRECT_URI, code_challenge=challenge
    )

    response = exchange_code(pool, code, verifier, client_secret=None)

    assert error_of(response) == ("invalid_client", "invalid client credentials")


def test_code_exchange_rejects_redirect_uri_mismatch(emulator, pool):
    verifier, challenge = pkce_pair()
    code = emulator.create_authorization_code(
        CLIENT_ID, redirect_uri=REDIRECT_URI, code_challenge=challenge
    )

    other_uri = "https://other.example.com/callback"
    response = exchange_code(pool, code, verifier, redirect_uri=other_uri)

    assert response.status == 400
    assert error_of(response)[0] == "invalid_grant"


def test_code_exchange_rejects_expired_code(emulator, pool, clock):
    verifier, challenge = pkce_pair()
    code = emulator.create_authorization_code(
        CLIENT_ID, redirect_uri=REDIRECT_URI, code_challenge=challenge
    )

    clock.advance(15 * 60 + 1)
    response = exchange_code(pool, code, verifier)

    assert error_of(response) == ("invalid_grant", "expired authorization code")


def test_code_reuse_revokes_chain(emulator, pool):
    verifier, challenge = pkce_pair()
    code = emulator.create_authorization_code(
        CLIENT_ID, redirect_uri=REDIRECT_URI, code_challenge=challenge
    )
    refresh_token = exchange_code(pool, code, verifier).json()["refresh_token"]

    reuse = exchange_code(pool, code, verifier)

    assert reuse.status == 400
    assert error_of(reuse)[0] == "invalid_grant"
    assert emulator.chain_state(refresh_token) == "revoked"


def test_authorization_code_rejects_plain_method(emulator):
    with pytest.raises(ValueError, match="S256"):
        emulator.create_authorization_code(
            CLIENT_ID,
            redirect_uri=REDIRECT_URI,
            code_challenge="x" * 43,
            code_challenge_method="plain",
        )


# Introspection


def test_introspect_access_token_reports_exp(emulator, pool, clock):
    body = redeem(pool, emulator.create_refresh_token(CLIENT_ID, username="a@example.com")).json()

    active = introspect(pool, body["access_token"]).json()
    clock.advance(7200)
    expired = introspect(pool, body["access_token"]).json()

    assert active["active"] is True
    assert active["exp"] == int(START_TIME) + 7200
    assert active["iat"] == int(START_TIME)
    assert active["nbf"] == int(START_TIME)
    assert active["client_id"] == CLIENT_ID
    assert active["username"] == "a@example.com"
    assert active["sub"] == body["id"]
    assert active["token_type"] == "access_token"
    assert active["scope"] == "api refresh_token"
    assert expired == {"active": False}


def test_introspect_uses_session_seconds(server_ssl_context, client_ssl_context, clock):
    emulator = _start_emulator(
        server_ssl_context, clock, allowed_source_addresses=("127.0.0.1",), session_seconds=900
    )
    with emulator, _open_pool(emulator, client_ssl_context) as own_pool:
        access_token = redeem(own_pool, emulator.create_refresh_token(CLIENT_ID)).json()[
            "access_token"
        ]

        assert introspect(own_pool, access_token).json()["exp"] == int(START_TIME) + 900


def test_introspect_unknown_token_is_inactive(emulator, pool):
    response = introspect(pool, "00D000000000001!unknown")

    assert response.status == 200
    assert response.json() == {"active": False}


def test_introspect_rejects_wrong_client_secret(emulator, pool):
    fields = {"token": "anything", "client_id": CLIENT_ID, "client_secret": "wrong-secret"}

    response = post_form(pool, INTROSPECT_PATH, fields)

    assert response.status == 400
    assert error_of(response) == ("invalid_client", "invalid client credentials")


def test_introspect_accepts_basic_header(emulator, pool):
    token = emulator.create_refresh_token(CLIENT_ID)

    response = post_form(
        pool, INTROSPECT_PATH, {"token": token}, basic_header(CLIENT_ID, CLIENT_SECRET)
    )

    assert response.json()["active"] is True
    assert response.json()["token_type"] == "refresh_token"


# Revocation


def test_revoke_refresh_token_revokes_chain(emulator, pool):
    body = redeem(pool, emulator.create_refresh_token(CLIENT_ID)).json()

    response = post_form(pool, REVOKE_PATH, {"token": body["refresh_token"]})

    assert response.status == 200
    assert response.data == b""
    assert emulator.chain_state(body["refresh_token"]) == "revoked"
    assert introspect(pool, body["access_token"]).json() == {"active": False}
    assert error_of(redeem(pool, body["refresh_token"])) == (
        "invalid_grant",
        "expired access/refresh token",
    )


def test_revoke_access_token_keeps_chain(emulator, pool):
    body = redeem(pool, emulator.create_refresh_token(CLIENT_ID)).json()

    response = post_form(pool, REVOKE_PATH, {"token": body["access_token"]})

    assert response.status == 200
    assert introspect(pool, body["access_token"]).json() == {"active": False}
    assert emulator.chain_state(body["refresh_token"]) == "current"


def test_revoke_unknown_token_returns_invalid_token(emulator, pool):
    response = post_form(pool, REVOKE_PATH, {"token": "unknown"})

    assert response.status == 400
    assert error_of(response)[0] == "invalid_token"


def test_revoke_chain_of_revokes_current_token(emulator, pool):
    first = emulator.create_refresh_token(CLIENT_ID)
    second = redeem(pool, first).json()["refresh_token"]

    emulator.revoke_chain_of(first)

    assert emulator.chain_state(second) == "revoked"
    assert redeem(pool, second).status == 400


# Faults


def test_drop_after_issue_rotates_token(emulator, pool):
    token = emulator.create_refresh_token(CLIENT_ID)
    emulator.drop_after_issue_next()

    with pytest.raises(urllib3.exceptions.ProtocolError):
        redeem(pool, token)

    # The token rotated although the client never saw the new one.
    assert emulator.chain_state(token) == "rotated"
    lost_token = emulator.current_refresh_token_of(token)
    assert lost_token != token
    assert emulator.chain_state(lost_token) == "current"
    assert emulator.stats.redemptions == 1
    assert emulator.stats.connections_dropped == 1


def test_drop_after_issue_then_retry_revokes_chain(emulator, pool):
    token = emulator.create_refresh_token(CLIENT_ID)
    emulator.drop_after_issue_next()
    with pytest.raises(urllib3.exceptions.ProtocolError):
        redeem(pool, token)

    retry = redeem(pool, token)

    assert error_of(retry) == ("invalid_grant", "expired access/refresh token")
    assert emulator.current_refresh_token_of(token) is None


def test_drop_after_issue_skips_failed_requests(emulator, pool):
    token = emulator.create_refresh_token(CLIENT_ID)
    emulator.drop_after_issue_next()

    rejected = redeem(pool, token, client_secret="wrong-secret")

    assert rejected.status == 400
    with pytest.raises(urllib3.exceptions.ProtocolError):
        redeem(pool, token)


def test_fail_next_returns_503_html(emulator, pool):
    token = emulator.create_refresh_token(CLIENT_ID)
    emulator.fail_next(2)

    failures = [redeem(pool, token) for _ in range(2)]
    success = redeem(pool, token)

    assert [response.status for response in failures] == [503, 503]
    assert failures[0].headers["Content-Type"].startswith("text/html")
    assert b"<html>" in failures[0].data
    assert success.status == 200
    assert emulator.stats.scripted_responses == 2
    assert emulator.stats.redemptions == 1
    assert emulator.stats.token_requests == 3


def test_fail_next_uses_given_status_and_body(emulator, pool):
    emulator.fail_next(1, status=502, body="<html>Bad Gateway</html>")

    response = redeem(pool, emulator.create_refresh_token(CLIENT_ID))

    assert response.status == 502
    assert response.data == b"<html>Bad Gateway</html>"


def test_answer_next_with_returns_raw_body(emulator, pool):
    rate_limited = json.dumps(
        {"error": "rate_limit_exceeded", "error_description": "number of logins exceeded"}
    )
    emulator.answer_next_with(1, 400, rate_limited, "application/json")
    emulator.answer_next_with(1, 200, b"not json", "text/plain")

    first = redeem(pool, emulator.create_refresh_token(CLIENT_ID))
    second = redeem(pool, emulator.create_refresh_token(CLIENT_ID))

    assert first.status == 400
    assert error_of(first) == ("rate_limit_exceeded", "number of logins exceeded")
    assert second.status == 200
    assert second.data == b"not json"
    assert second.headers["Content-Type"] == "text/plain"


def test_answer_next_with_sends_large_body(emulator, pool):
    emulator.answer_next_with(1, 200, "x" * 5_000_000, "application/json")

    response = redeem(pool, emulator.create_refresh_token(CLIENT_ID))

    assert len(response.data) == 5_000_000


def test_clear_faults_cancels_pending_faults(emulator, pool):
    emulator.fail_next(1)
    emulator.drop_after_issue_next()
    emulator.latency_seconds = 5

    emulator.clear_faults()
    response = redeem(pool, emulator.create_refresh_token(CLIENT_ID))

    assert response.status == 200
    assert emulator.latency_seconds == 0


# IP echo, stats and lifecycle


def test_ip_echo_returns_peer_address(emulator, pool, client_ssl_context):
    direct = pool.request("GET", "/ip").json()
    with _open_pool(emulator, client_ssl_context, ("127.0.0.3", 0)) as own_pool:
        bound = own_pool.request("GET", "/ip").json()

    assert direct == {"ip": "127.0.0.1"}
    assert bound == {"ip": "127.0.0.3"}


def test_unknown_path_returns_404(emulator, pool):
    assert pool.request("GET", "/services/data").status == 404
    assert post_form(pool, "/services/oauth2/unknown", {"a": "b"}).status == 404


def test_stats_count_errors_and_reset(emulator, pool):
    redeem(pool, "unknown")
    redeem(pool, "unknown")

    counted = emulator.stats
    emulator.reset_stats()

    assert counted.token_requests == 2
    assert counted.errors[("invalid_grant", "expired access/refresh token")] == 2
    assert emulator.stats.token_requests == 0
    assert not emulator.stats.errors


def test_stats_snapshot_is_independent(emulator, pool):
    snapshot = emulator.stats

    redeem(pool, emulator.create_refresh_token(CLIENT_ID))

    assert snapshot.token_requests == 0
    assert emulator.stats.token_requests == 1


def test_logs_omit_token_values(emulator, pool, caplog):
    caplog.set_level(logging.DEBUG, logger="localworld.salesforce")
    first = emulator.create_refresh_token(CLIENT_ID)
    body = redeem(pool, first).json()
    redeem(pool, first)

    assert caplog.records
    for token in (first, body["refresh_token"], body["access_token"], CLIENT_SECRET):
        assert token not in caplog.text


def test_stop_closes_socket_promptly(server_ssl_context, client_ssl_context, clock):
    emulator = _start_emulator(server_ssl_context, clock, allowed_source_addresses=("127.0.0.1",))
    port = emulator.port
    with _open_pool(emulator, client_ssl_context) as own_pool:
        # A kept-alive connection must not hold stop() up.
        assert own_pool.request("GET", "/ip").status == 200

        started = time.monotonic()
        emulator.stop()
        elapsed = time.monotonic() - started

    assert elapsed < 2.0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2.0)


def test_stop_interrupts_latency_wait(server_ssl_context, client_ssl_context, clock):
    emulator = _start_emulator(server_ssl_context, clock, allowed_source_addresses=("127.0.0.1",))
    emulator.latency_seconds = 30
    token = emulator.create_refresh_token(CLIENT_ID)
    outcomes = []

    def redeem_in_thread():
        # Stopping may cut the connection before or after the response, so both are outcomes.
        with _open_pool(emulator, client_ssl_context) as own_pool:
            try:
                outcomes.append(redeem(own_pool, token).status)
            except urllib3.exceptions.HTTPError as error:
                outcomes.append(error)

    background = threading.Thread(target=redeem_in_thread)
    background.start()
    wait_until(lambda: emulator.stats.token_requests == 1)
    started = time.monotonic()
    emulator.stop()
    background.join(THREAD_JOIN_SECONDS)

    assert not background.is_alive()
    assert time.monotonic() - started < 5.0
    assert len(outcomes) == 1
    # The waiting request went on at once instead of sleeping out the 30 seconds.
    wait_until(lambda: emulator.stats.redemptions == 1, timeout=5.0)


def test_emulator_rejects_non_loopback_host(server_ssl_context):
    with pytest.raises(ValueError, match="loopback") as caught:
        SalesforceEmulator(ssl_context=server_ssl_context, host="0.0.0.0")

    assert "0.0.0.0" in str(caught.value)
