"""Faults between the product and Salesforce: the proxy, the emulator, and the answers in between.

Each test checks the end state against the emulator: the stored refresh token is the chain's
current one, or the connection is marked for reauthorization with the reason said plainly.
"""

from __future__ import annotations

import time

import pytest

from localworld.faults import RejectingProxy, SilentProxy
from localworld.leakcheck import assert_no_secrets
from tokenkeeper.errors import (
    ProxyAuthenticationError,
    ProxyConnectionError,
    ReauthorizationRequiredError,
    SalesforceUnavailableError,
)
from tokenkeeper.refresher import SOURCE_REDEEMED
from tokenkeeper.store import STATUS_ACTIVE, STATUS_REAUTHORIZATION_REQUIRED

SECRETS_CACHE_SECONDS = 1


def assert_unchanged(runtime, connection_id, first_token):
    item = runtime.store.get(connection_id)
    assert item.version == 1
    assert item.refresh_token == first_token
    assert item.status == STATUS_ACTIVE
    assert item.lease_owner is None


def assert_current_token_stored(world, runtime, connection_id, first_token, *, version):
    item = runtime.store.get(connection_id)
    assert item.version == version
    assert item.refresh_token == world.salesforce.current_refresh_token_of(first_token)
    assert world.salesforce.stats.replays_detected == 0


def test_server_errors_then_success_store_current_token(fresh_world, connection_id):
    runtime = fresh_world.runtime()
    first_token = runtime.store.get(connection_id).refresh_token
    fresh_world.salesforce.fail_next(2, status=503)

    token = runtime.refresher().get_token(connection_id)

    assert token.source == SOURCE_REDEEMED
    assert fresh_world.salesforce.stats.redemptions == 1
    assert_current_token_stored(fresh_world, runtime, connection_id, first_token, version=2)


def test_dropped_response_loses_chain_with_clear_error(fresh_world, connection_id):
    # GIVEN Salesforce rotates the token but the connection drops before the response arrives
    runtime = fresh_world.runtime()
    first_token = runtime.store.get(connection_id).refresh_token
    fresh_world.salesforce.drop_after_issue_next(1)

    # WHEN the refresher retries with the only token it has
    with pytest.raises(ReauthorizationRequiredError) as caught:
        runtime.refresher().get_token(connection_id)

    # THEN the loss is reported as a rotation lost in transit, and the item is marked
    assert caught.value.rotation_lost_in_transit is True
    assert "lost in transit" in str(caught.value)
    assert runtime.store.get(connection_id).status == STATUS_REAUTHORIZATION_REQUIRED
    assert fresh_world.salesforce.stats.redemptions == 1
    assert fresh_world.salesforce.stats.replays_detected == 1
    assert fresh_world.salesforce.chain_state(first_token) == "revoked"


def test_slow_salesforce_read_timeout_is_ambiguous(fresh_world, connection_id):
    runtime = fresh_world.runtime(read_timeout_seconds=0.5, redeem_attempts=1)
    first_token = runtime.store.get(connection_id).refresh_token
    fresh_world.salesforce.latency_seconds = 1.5

    with pytest.raises(SalesforceUnavailableError) as caught:
        runtime.refresher().get_token(connection_id)

    assert caught.value.ambiguous is True
    item = runtime.store.get(connection_id)
    assert item.version == 1
    assert item.refresh_token == first_token
    assert item.lease_owner is None
    assert fresh_world.wait_for(lambda: fresh_world.salesforce.chain_state(first_token) == "rotated", timeout=5)


def test_rejection_after_read_timeout_reports_lost_rotation(fresh_world, connection_id):
    # GIVEN a call that timed out after Salesforce rotated the token
    runtime = fresh_world.runtime(read_timeout_seconds=0.5, redeem_attempts=1)
    first_token = runtime.store.get(connection_id).refresh_token
    fresh_world.salesforce.latency_seconds = 1.5
    with pytest.raises(SalesforceUnavailableError):
        runtime.refresher().get_token(connection_id)
    assert fresh_world.wait_for(lambda: fresh_world.salesforce.chain_state(first_token) == "rotated", timeout=5)
    fresh_world.salesforce.latency_seconds = 0

    # WHEN a later call redeems the only token the item has
    with pytest.raises(ReauthorizationRequiredError) as caught:
        fresh_world.runtime().refresher().get_token(connection_id)

    # THEN the rejection is reported as a rotation lost in transit
    assert caught.value.rotation_lost_in_transit is True
    assert "lost in transit" in str(caught.value)
    assert runtime.store.get(connection_id).status == STATUS_REAUTHORIZATION_REQUIRED
    assert fresh_world.salesforce.stats.replays_detected == 1


def test_slow_salesforce_within_timeout_succeeds(fresh_world, connection_id):
    runtime = fresh_world.runtime()
    first_token = runtime.store.get(connection_id).refresh_token
    fresh_world.salesforce.latency_seconds = 1.0

    token = runtime.refresher().get_token(connection_id)

    assert token.source == SOURCE_REDEEMED
    assert_current_token_stored(fresh_world, runtime, connection_id, first_token, version=2)


def test_proxy_wrong_password_sends_nothing(fresh_world, connection_id):
    runtime = fresh_world.runtime()
    first_token = runtime.store.get(connection_id).refresh_token
    fresh_world.set_proxy_url(fresh_world.proxy.url(password="not-the-password"))

    with pytest.raises(ProxyAuthenticationError) as caught:
        runtime.refresher().get_token(connection_id)

    assert "407" in str(caught.value)
    assert_no_secrets(str(caught.value))
    assert fresh_world.salesforce.stats.token_requests == 0
    assert_unchanged(runtime, connection_id, first_token)


def test_proxy_bad_gateway_sends_nothing_then_recovers(fresh_world, connection_id):
    runtime = fresh_world.runtime(redeem_attempts=2)
    first_token = runtime.store.get(connection_id).refresh_token
    with RejectingProxy() as proxy:
        fresh_world.set_proxy_url(proxy.url())

        with pytest.raises(ProxyConnectionError) as caught:
            runtime.refresher().get_token(connection_id)

        assert proxy.connects >= 2
    assert "502" in str(caught.value)
    assert "nothing reached Salesforce" in str(caught.value)
    assert fresh_world.salesforce.stats.token_requests == 0
    assert runtime.store.get(connection_id).consecutive_failures == 1

    fresh_world.set_proxy_url(fresh_world.proxy.url())
    # The container reads the proxy URL secret again once its 1 s cache entry is older than that.
    time.sleep(SECRETS_CACHE_SECONDS + 0.2)
    token = runtime.refresher().get_token(connection_id)

    assert token.source == SOURCE_REDEEMED
    assert_current_token_stored(fresh_world, runtime, connection_id, first_token, version=2)


def test_silent_proxy_times_out_sending_nothing(fresh_world, connection_id):
    runtime = fresh_world.runtime(connect_timeout_seconds=0.5, read_timeout_seconds=1, redeem_attempts=1)
    first_token = runtime.store.get(connection_id).refresh_token
    with SilentProxy() as proxy:
        fresh_world.set_proxy_url(proxy.url())

        with pytest.raises(ProxyConnectionError) as caught:
            runtime.refresher().get_token(connection_id)

    assert "did not respond to the tunnel request" in str(caught.value)
    assert "nothing reached Salesforce" in str(caught.value)
    assert_no_secrets(str(caught.value))
    assert fresh_world.salesforce.stats.token_requests == 0
    item = runtime.store.get(connection_id)
    assert item.version == 1
    assert item.refresh_token == first_token
    assert item.lease_owner is None
