"""The refresh protocol end to end: proxy, emulator, DynamoDB and KMS all real, on loopback."""

from __future__ import annotations

import uuid

import pytest

from tokenkeeper.errors import (
    ClientCredentialsError,
    ConnectionInactiveError,
    ConnectionNotFoundError,
    EgressBlockedError,
    ProxyAuthenticationError,
    ProxyConnectionError,
    ReauthorizationRequiredError,
    SalesforceUnavailableError,
)
from tokenkeeper.store import STATUS_ACTIVE, STATUS_REAUTHORIZATION_REQUIRED
from localworld.leakcheck import assert_no_secrets


def new_id() -> str:
    return f"org-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def seeded(fresh_world):
    connection_id = new_id()
    fresh_world.seed_connection(connection_id)
    return connection_id


def test_refresh_redeems_through_proxy_and_stores_rotation(fresh_world, seeded):
    runtime = fresh_world.runtime()
    before = runtime.store.get(seeded)

    token = runtime.refresher().get_token(seeded)

    after = runtime.store.get(seeded)
    assert token.source == "redeemed"
    assert after.version == before.version + 1
    assert after.refresh_token != before.refresh_token
    assert fresh_world.salesforce.chain_state(before.refresh_token) == "rotated"
    assert fresh_world.salesforce.chain_state(after.refresh_token) == "current"
    assert set(fresh_world.salesforce.stats.by_source) <= set(fresh_world.proxy.egress_addresses)
    assert fresh_world.salesforce.stats.redemptions == 1
    assert after.lease_owner is None
    assert after.access_token == token.access_token


def test_refresh_learns_session_length_from_introspection(fresh_world, seeded):
    runtime = fresh_world.runtime()

    token = runtime.refresher().get_token(seeded)

    stored = runtime.store.get(seeded)
    assert stored.session_seconds == 7200
    introspected = fresh_world.salesforce.introspect(token.access_token)
    assert abs(stored.access_token_expires_at - introspected["exp"]) <= 2


def test_refresh_serves_memory_then_store_without_redeeming(fresh_world, seeded):
    first_container = fresh_world.runtime()
    first = first_container.refresher().get_token(seeded)

    again = first_container.refresher().get_token(seeded)
    other_container = fresh_world.runtime().refresher().get_token(seeded)

    assert again.source == "memory"
    assert other_container.source == "store"
    assert again.access_token == first.access_token == other_container.access_token
    assert fresh_world.salesforce.stats.redemptions == 1


def test_refresh_redeems_again_after_expiry(fresh_world, seeded):
    refresher = fresh_world.runtime().refresher()
    first = refresher.get_token(seeded)

    fresh_world.clock.advance(7200)
    second = refresher.get_token(seeded)

    assert second.source == "redeemed"
    assert second.access_token != first.access_token
    assert second.version == first.version + 1


def test_refresh_min_ttl_beyond_remaining_lifetime_redeems(fresh_world, seeded):
    refresher = fresh_world.runtime().refresher()
    refresher.get_token(seeded)

    fresh_world.clock.advance(4000)
    answer = refresher.get_token(seeded, min_ttl_seconds=3600)

    assert answer.source == "redeemed"
    assert fresh_world.salesforce.stats.redemptions == 2


def test_refresh_force_redeems_valid_token(fresh_world, seeded):
    refresher = fresh_world.runtime().refresher()
    refresher.get_token(seeded)

    forced = refresher.get_token(seeded, force=True)

    assert forced.source == "redeemed"
    assert fresh_world.salesforce.stats.redemptions == 2


def test_refresh_response_without_refresh_token_keeps_old_one(fresh_world, seeded):
    runtime = fresh_world.runtime()
    before = runtime.store.get(seeded)
    fresh_world.salesforce.answer_next_with(
        1, 200, '{"access_token": "00Dscripted!AQ0AQH0dMHZfz8abcdefghijklmnop", "instance_url": "https://x.my.salesforce.com", '
        '"id": "https://login.salesforce.com/id/00D000000000001EAA/005000000000001AAA", "token_type": "Bearer", '
        '"issued_at": "1796400000000", "signature": "c2ln"}', "application/json"
    )

    runtime.refresher().get_token(seeded)

    after = runtime.store.get(seeded)
    assert after.version == before.version + 1
    assert after.refresh_token == before.refresh_token
    assert after.instance_url == "https://x.my.salesforce.com"


def test_refresh_response_without_instance_url_keeps_stored_one(fresh_world, seeded):
    runtime = fresh_world.runtime()
    before = runtime.store.get(seeded)
    fresh_world.salesforce.answer_next_with(
        1, 200, '{"access_token": "00Dscripted!AQ0AQH0dMHZfz8zyxwvutsrqponmlk", "refresh_token": "' + before.refresh_token
        + '", "token_type": "Bearer", "issued_at": "1796400000000"}', "application/json"
    )

    runtime.refresher().get_token(seeded)

    after = runtime.store.get(seeded)
    assert after.instance_url == before.instance_url
    assert after.instance_url


def test_proxy_wrong_password_changes_nothing(fresh_world, seeded):
    runtime = fresh_world.runtime()
    before = runtime.store.get(seeded)
    fresh_world.set_proxy_url(fresh_world.proxy.url(password="not-the-password"))

    with pytest.raises(ProxyAuthenticationError) as caught:
        runtime.refresher().get_token(seeded)

    message = str(caught.value)
    assert "407" in message
    assert "QUOTAGUARDSTATIC_URL" in message
    assert "****" in message
    assert "not-the-password" not in message
    assert_no_secrets(message)
    after = runtime.store.get(seeded)
    assert (after.version, after.refresh_token, after.status) == (before.version, before.refresh_token, STATUS_ACTIVE)
    assert after.lease_owner is None
    assert fresh_world.salesforce.stats.token_requests == 0


def test_egress_block_raises_egress_error_without_retry(fresh_world, seeded):
    runtime = fresh_world.runtime()
    fresh_world.salesforce.set_allowed_source_addresses(["127.0.0.9"])

    with pytest.raises(EgressBlockedError) as caught:
        runtime.refresher().get_token(seeded)

    assert "both" in str(caught.value)
    assert "allowlist" in str(caught.value).lower()
    assert fresh_world.salesforce.stats.token_requests == 1
    after = runtime.store.get(seeded)
    assert after.status == STATUS_ACTIVE
    assert after.version == 1
    assert after.last_error_kind == "egress_not_allowlisted"
    assert after.lease_owner is None


def test_dead_chain_marks_reauthorization_required_without_retry(fresh_world, seeded):
    runtime = fresh_world.runtime()
    fresh_world.salesforce.revoke_chain_of(runtime.store.get(seeded).refresh_token)

    with pytest.raises(ReauthorizationRequiredError) as caught:
        runtime.refresher().get_token(seeded)

    assert caught.value.rotation_lost_in_transit is False
    assert fresh_world.salesforce.stats.token_requests == 1
    assert runtime.store.get(seeded).status == STATUS_REAUTHORIZATION_REQUIRED
    with pytest.raises(ConnectionInactiveError) as again:
        runtime.refresher().get_token(seeded)
    assert again.value.status == STATUS_REAUTHORIZATION_REQUIRED
    assert fresh_world.salesforce.stats.token_requests == 1


def test_token_busy_answer_is_retried_after_waiting(fresh_world, seeded):
    runtime = fresh_world.runtime()
    fresh_world.salesforce.answer_next_with(
        1, 400, '{"error": "invalid_grant", "error_description": "token request is already being processed"}', "application/json"
    )

    token = runtime.refresher().get_token(seeded)

    assert token.source == "redeemed"
    assert fresh_world.salesforce.stats.token_requests == 2
    assert runtime.store.get(seeded).version == 2


def test_server_errors_are_retried_then_succeed(fresh_world, seeded):
    runtime = fresh_world.runtime()
    fresh_world.salesforce.fail_next(2, status=503)

    token = runtime.refresher().get_token(seeded)

    assert token.source == "redeemed"
    assert fresh_world.salesforce.stats.token_requests == 3
    assert runtime.store.get(seeded).consecutive_failures == 0


def test_server_errors_beyond_attempts_raise_transient_error(fresh_world, seeded):
    runtime = fresh_world.runtime()
    fresh_world.salesforce.fail_next(10, status=500)

    with pytest.raises(SalesforceUnavailableError):
        runtime.refresher().get_token(seeded)

    attempts = runtime.settings.redeem_attempts
    assert fresh_world.salesforce.stats.token_requests == attempts
    after = runtime.store.get(seeded)
    assert after.consecutive_failures == 1
    assert after.last_error_kind == "transient"
    assert after.version == 1
    assert after.lease_owner is None


def test_invalid_client_raises_configuration_error_without_retry(fresh_world, seeded):
    runtime = fresh_world.runtime()
    secrets = fresh_world.aws.client("secretsmanager")
    secrets.put_secret_value(
        SecretId=fresh_world.client_secret_arn,
        SecretString='{"client_id": "%s", "client_secret": "wrong-secret-value"}' % fresh_world.secrets.client_id,
    )
    try:
        with pytest.raises(ClientCredentialsError) as caught:
            runtime.refresher().get_token(seeded)
    finally:
        secrets.put_secret_value(
            SecretId=fresh_world.client_secret_arn,
            SecretString='{"client_id": "%s", "client_secret": "%s"}'
            % (fresh_world.secrets.client_id, fresh_world.secrets.client_secret),
        )

    assert "invalid_client" in str(caught.value)
    assert "wrong-secret-value" not in str(caught.value)
    assert fresh_world.salesforce.stats.token_requests == 1
    assert runtime.store.get(seeded).version == 1


def test_dropped_answer_then_rejection_reports_rotation_lost(fresh_world, seeded):
    runtime = fresh_world.runtime()
    fresh_world.salesforce.drop_after_issue_next(1)

    with pytest.raises(ReauthorizationRequiredError) as caught:
        runtime.refresher().get_token(seeded)

    assert caught.value.rotation_lost_in_transit is True
    assert "lost in transit" in str(caught.value)
    assert runtime.store.get(seeded).status == STATUS_REAUTHORIZATION_REQUIRED


def test_unknown_connection_raises_not_found(fresh_world):
    with pytest.raises(ConnectionNotFoundError) as caught:
        fresh_world.runtime().refresher().get_token("org-does-not-exist")

    assert "org-does-not-exist" in str(caught.value)


def test_tokens_are_encrypted_in_the_item(fresh_world, seeded):
    runtime = fresh_world.runtime()
    runtime.refresher().get_token(seeded)
    stored = runtime.store.get(seeded)

    raw = fresh_world.aws.client("dynamodb").get_item(
        TableName=runtime.settings.table_name, Key={"connection_id": {"S": seeded}}
    )["Item"]

    flattened = repr(raw)
    assert stored.refresh_token not in flattened
    assert stored.access_token not in flattened
    assert set(raw["tokens"]) == {"B"}


def test_read_timeout_is_reported_as_ambiguous(fresh_world, seeded):
    runtime = fresh_world.runtime(read_timeout_seconds=0.5, redeem_attempts=1)
    old_token = runtime.store.get(seeded).refresh_token
    fresh_world.salesforce.latency_seconds = 1.5

    with pytest.raises(SalesforceUnavailableError) as caught:
        runtime.refresher().get_token(seeded)

    assert caught.value.ambiguous is True
    assert "may have processed" in str(caught.value)
    after = runtime.store.get(seeded)
    assert after.version == 1
    assert after.consecutive_failures == 1
    assert fresh_world.wait_for(lambda: fresh_world.salesforce.chain_state(old_token) == "rotated", timeout=5)


def test_unreachable_proxy_is_safe_and_retried(fresh_world, seeded):
    runtime = fresh_world.runtime()
    fresh_world.set_proxy_url(fresh_world.proxy.url().rsplit(":", 1)[0] + ":9")

    with pytest.raises(ProxyConnectionError) as caught:
        runtime.refresher().get_token(seeded)

    assert "nothing reached Salesforce" in str(caught.value)
    assert fresh_world.salesforce.stats.token_requests == 0
    after = runtime.store.get(seeded)
    assert after.version == 1
    assert after.consecutive_failures == 1
    assert after.last_error_kind == "proxy_unreachable"
    assert_no_secrets(str(caught.value))
