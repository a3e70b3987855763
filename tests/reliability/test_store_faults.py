"""DynamoDB faults at each step of a redemption, injected by a relay between boto3 and moto.

Each test checks the end state: the newest refresh token is on the item or in its rescue record,
never lost, and Salesforce saw no replay.
"""

from __future__ import annotations

import threading

import pytest

from fault_helpers import (
    GET_ITEM,
    LEASE_WRITE,
    PUT_ITEM,
    ROTATION_WRITE,
    UPDATE_ITEM,
    runtime_through,
)
from localworld.leakcheck import assert_no_secrets
from tokenkeeper.errors import RescueNotFoundError, StoreError
from tokenkeeper.observability import METRIC_TOKENS_RESCUED
from tokenkeeper.refresher import SOURCE_REDEEMED
from tokenkeeper.rescue import main as rescue_main
from tokenkeeper.rescue import restore_rescued_token


def assert_newest_token_stored(world, runtime, connection_id, first_token, *, version):
    item = runtime.store.get(connection_id)
    assert item.version == version
    assert item.refresh_token == world.salesforce.current_refresh_token_of(first_token)
    assert item.lease_owner is None


def assert_no_replay(world):
    stats = world.salesforce.stats
    assert stats.replays_detected == 0
    assert stats.chains_revoked == 0


@pytest.mark.parametrize("mode", ["throttle", "error_500"])
def test_rotation_write_failures_are_retried(fresh_world, relay, connection_id, metric_counts, mode):
    runtime = runtime_through(fresh_world, relay)
    first_token = runtime.store.get(connection_id).refresh_token
    # Two SDK attempts per product attempt: the first product attempt and half the second fail.
    fault = relay.inject(mode, count=3, target=UPDATE_ITEM, body_contains=ROTATION_WRITE)

    token = runtime.refresher().get_token(connection_id)

    assert fault.applied == 3
    assert token.source == SOURCE_REDEEMED
    assert_newest_token_stored(fresh_world, runtime, connection_id, first_token, version=2)
    assert runtime.store.get_rescue(connection_id, 2) is None
    assert metric_counts[METRIC_TOKENS_RESCUED] == 0
    assert fresh_world.salesforce.stats.redemptions == 1
    assert_no_replay(fresh_world)


def test_rotation_write_lost_response_recognized(fresh_world, relay, connection_id, metric_counts):
    # GIVEN moto applies the rotation write but its response never arrives
    runtime = runtime_through(fresh_world, relay)
    first_token = runtime.store.get(connection_id).refresh_token
    fault = relay.inject("drop_after_forward", target=UPDATE_ITEM, body_contains=ROTATION_WRITE)

    # WHEN the SDK repeats the write, whose version condition now fails
    token = runtime.refresher().get_token(connection_id)

    # THEN the refresher finds its own write instead of rescuing a token that is already stored
    assert fault.applied == 1
    assert token.source == SOURCE_REDEEMED
    assert token.version == 2
    assert_newest_token_stored(fresh_world, runtime, connection_id, first_token, version=2)
    assert runtime.store.get_rescue(connection_id, 2) is None
    assert metric_counts[METRIC_TOKENS_RESCUED] == 0
    assert_no_replay(fresh_world)


def test_rotation_write_delayed_past_timeout_applies_once(fresh_world, relay, connection_id):
    runtime = runtime_through(fresh_world, relay)
    first_token = runtime.store.get(connection_id).refresh_token
    # Longer than the client's 2 s read timeout: the SDK retries, then the first copy lands late.
    fault = relay.inject("delay", target=UPDATE_ITEM, body_contains=ROTATION_WRITE, delay_seconds=3)

    token = runtime.refresher().get_token(connection_id)

    assert token.version == 2
    assert fresh_world.wait_for(lambda: fault.forwarded == 1, timeout=10)
    assert_newest_token_stored(fresh_world, runtime, connection_id, first_token, version=2)
    assert_no_replay(fresh_world)


def test_failing_rotation_write_goes_to_rescue(fresh_world, relay, connection_id, metric_counts):
    # GIVEN every write of the rotation to the item fails
    runtime = runtime_through(fresh_world, relay)
    first_token = runtime.store.get(connection_id).refresh_token
    relay.inject("error_500", count=100, target=UPDATE_ITEM, body_contains=ROTATION_WRITE)

    # WHEN a caller redeems
    token = runtime.refresher().get_token(connection_id)

    # THEN the caller still gets the access token, and the rotated refresh token is in the rescue record
    assert token.source == SOURCE_REDEEMED
    newest = fresh_world.salesforce.current_refresh_token_of(first_token)
    rescued = runtime.store.get_rescue(connection_id, 2)
    assert rescued is not None
    assert rescued.refresh_token == newest
    assert rescued.access_token == token.access_token
    assert metric_counts[METRIC_TOKENS_RESCUED] == 1
    item = runtime.store.get(connection_id)
    assert item.version == 1
    assert item.refresh_token == first_token
    assert_no_replay(fresh_world)


def test_rescued_token_is_adopted_by_next_caller(fresh_world, relay, connection_id):
    runtime = runtime_through(fresh_world, relay)
    first_token = runtime.store.get(connection_id).refresh_token
    relay.inject("error_500", count=100, target=UPDATE_ITEM, body_contains=ROTATION_WRITE)
    runtime.refresher().get_token(connection_id)
    relay.clear()
    # The failed writer released its lease, so another container adopts the rescue at once.
    assert runtime.store.get(connection_id).lease_owner is None

    token = fresh_world.runtime().refresher().get_token(connection_id)

    assert token.source == SOURCE_REDEEMED
    assert token.version == 3
    assert_newest_token_stored(fresh_world, runtime, connection_id, first_token, version=3)
    assert fresh_world.salesforce.stats.redemptions == 2
    assert_no_replay(fresh_world)


def test_rescued_token_is_restored_by_command(fresh_world, relay, connection_id, capfd):
    runtime = runtime_through(fresh_world, relay)
    first_token = runtime.store.get(connection_id).refresh_token
    relay.inject("error_500", count=100, target=UPDATE_ITEM, body_contains=ROTATION_WRITE)
    runtime.refresher().get_token(connection_id)
    newest = fresh_world.salesforce.current_refresh_token_of(first_token)
    relay.clear()
    operator = fresh_world.runtime()

    status = rescue_main(["--connection-id", connection_id], runtime=operator)

    printed = capfd.readouterr()
    assert_no_secrets(printed.out + printed.err)
    assert status == 0
    assert "version 2" in printed.out
    item = operator.store.get(connection_id)
    assert item.version == 2
    assert item.refresh_token == newest
    assert item.lease_owner is None
    # The restored access token counts as expired, so the next call redeems the newest token.
    token = fresh_world.runtime().refresher().get_token(connection_id)
    assert token.source == SOURCE_REDEEMED
    assert token.version == 3
    assert_no_replay(fresh_world)


def test_restore_without_rescue_reports_nothing_to_restore(fresh_world, connection_id, capfd):
    runtime = fresh_world.runtime()

    status = rescue_main(["--connection-id", connection_id], runtime=runtime)

    printed = capfd.readouterr()
    assert_no_secrets(printed.out + printed.err)
    assert status == 1
    assert "no rescue record for version 2" in printed.err
    assert runtime.store.get(connection_id).version == 1
    with pytest.raises(RescueNotFoundError) as caught:
        restore_rescued_token(runtime, connection_id)
    assert caught.value.kind == "rescue_not_found"


def test_write_retries_stop_before_lease_ends(fresh_world, relay, connection_id, metric_counts):
    # GIVEN item writes keep failing and each backoff pause takes 12 s of the 31 s lease
    def slow_sleep(seconds: float) -> None:
        fresh_world.clock.advance(12)

    runtime = runtime_through(fresh_world, relay, sleep=slow_sleep)
    fault = relay.inject("error_500", count=100, target=UPDATE_ITEM, body_contains=ROTATION_WRITE)

    # WHEN a caller redeems
    runtime.refresher().get_token(connection_id)

    # THEN it stops retrying while the lease still covers the rescue write, and rescues the token
    assert runtime.settings.lease_seconds == 31
    assert fault.applied < 4 * 2
    assert runtime.store.get_rescue(connection_id, 2) is not None
    assert metric_counts[METRIC_TOKENS_RESCUED] == 1
    assert_no_replay(fresh_world)


def test_store_down_after_redemption_raises_clear_error(fresh_world, relay, connection_id):
    # GIVEN both the item write and the rescue write fail: the one case where the new token is lost
    runtime = runtime_through(fresh_world, relay)
    relay.inject("error_500", count=100, target=UPDATE_ITEM, body_contains=ROTATION_WRITE)
    relay.inject("error_500", count=100, target=PUT_ITEM)

    with pytest.raises(StoreError) as caught:
        runtime.refresher().get_token(connection_id)

    assert "nor to its rescue record" in str(caught.value)
    assert caught.value.connection_id == connection_id
    assert_no_secrets(str(caught.value))
    assert runtime.store.get(connection_id).version == 1
    assert_no_replay(fresh_world)


@pytest.mark.parametrize("mode", ["throttle", "drop_after_forward"])
def test_lease_write_faults_are_retried_safely(fresh_world, relay, connection_id, mode):
    # A lost response to the lease write is safe: the SDK's repeat passes because the owner matches.
    runtime = runtime_through(fresh_world, relay)
    first_token = runtime.store.get(connection_id).refresh_token
    fault = relay.inject(mode, target=UPDATE_ITEM, body_contains=LEASE_WRITE)

    token = runtime.refresher().get_token(connection_id)

    assert fault.applied == 1
    assert token.source == SOURCE_REDEEMED
    assert_newest_token_stored(fresh_world, runtime, connection_id, first_token, version=2)
    assert fresh_world.salesforce.stats.redemptions == 1
    assert_no_replay(fresh_world)


@pytest.mark.parametrize("mode", ["error_500", "drop"])
def test_failing_reads_redeem_nothing(fresh_world, relay, connection_id, mode):
    runtime = runtime_through(fresh_world, relay)
    relay.inject(mode, count=100, target=GET_ITEM)

    with pytest.raises(StoreError) as caught:
        runtime.refresher().get_token(connection_id)

    assert "GetItem" in str(caught.value)
    assert fresh_world.salesforce.stats.token_requests == 0
    relay.clear()
    assert runtime.store.get(connection_id).version == 1


def test_stalled_rotation_write_cannot_overwrite_newer(fresh_world, relay, connection_id, metric_counts):
    # GIVEN a holder whose rotation write stalls in the network for 1.5 s
    runtime = runtime_through(fresh_world, relay)
    stale = runtime.store.get(connection_id)
    fault = relay.inject("delay", target=UPDATE_ITEM, body_contains=ROTATION_WRITE, delay_seconds=1.5)
    outcome: dict = {}
    holder = threading.Thread(target=lambda: outcome.update(token=runtime.refresher().get_token(connection_id)))
    holder.start()
    assert fresh_world.wait_for(lambda: fault.applied == 1, timeout=10)

    # WHEN another writer stores version 2 first
    newer = fresh_world.runtime().store.save_rotation(
        stale,
        refresh_token="newer-writer-refresh-token",
        access_token="newer-writer-access-token",
        access_token_expires_at=fresh_world.clock() + 7200,
        instance_url=None,
        org_id=None,
        user_id=None,
        session_seconds=None,
        now=fresh_world.clock(),
    )
    holder.join(timeout=30)

    # THEN the stalled write fails its version condition and the holder's token goes to rescue
    assert newer is not None
    item = runtime.store.get(connection_id)
    assert item.version == 2
    assert item.refresh_token == "newer-writer-refresh-token"
    rescued = runtime.store.get_rescue(connection_id, 2)
    assert rescued is not None
    assert rescued.refresh_token == fresh_world.salesforce.current_refresh_token_of(stale.refresh_token)
    assert outcome["token"].source == SOURCE_REDEEMED
    assert metric_counts[METRIC_TOKENS_RESCUED] == 1


def test_heartbeat_write_failure_goes_to_rescue(fresh_world, relay, connection_id, metric_counts):
    # GIVEN the heartbeat's redemption, whose rotation write keeps failing
    runtime = runtime_through(fresh_world, relay)
    first_token = runtime.store.get(connection_id).refresh_token
    relay.inject("error_500", count=100, target=UPDATE_ITEM, body_contains=ROTATION_WRITE)

    result = runtime.refresher().keep_alive(connection_id, due_before=fresh_world.clock() + 1)

    # THEN its token is rescued like a caller's, and the next request adopts it
    assert result.redeemed is True
    newest = fresh_world.salesforce.current_refresh_token_of(first_token)
    assert runtime.store.get_rescue(connection_id, 2).refresh_token == newest
    assert metric_counts[METRIC_TOKENS_RESCUED] == 1
    relay.clear()
    token = fresh_world.runtime().refresher().get_token(connection_id)
    assert token.version == 3
    assert_newest_token_stored(fresh_world, runtime, connection_id, first_token, version=3)
    assert_no_replay(fresh_world)
