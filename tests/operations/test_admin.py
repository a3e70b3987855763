"""Connection administration: list, show, refresh, disable, enable and revoke, never showing a token."""

from __future__ import annotations

import uuid

import pytest

from localworld.aws import create_token_table
from tests.operations.helpers import assert_no_tokens
from tokenkeeper.errors import ConnectionInactiveError, ConnectionNotFoundError, InvalidEventError
from tokenkeeper.operations import Operations

DAY = 86400


@pytest.fixture
def own_table(fresh_world):
    """A runtime on a table of its own, because bulk actions act on every connection in the table."""
    table_name = f"ops-bulk-{uuid.uuid4().hex[:8]}"
    create_token_table(fresh_world.aws.client("dynamodb"), table_name)
    return fresh_world.runtime(table_name=table_name)


@pytest.fixture
def own_operations(fresh_world, own_table, progress):
    return Operations(own_table, clock=fresh_world.clock, progress=progress)


def test_list_shows_status_and_idle_days(fresh_world, operations, new_id):
    quiet, busy = new_id(), new_id()
    fresh_world.seed_connection(quiet, idle_seconds=25 * DAY)
    fresh_world.seed_connection(busy)

    result = operations.list_connections()

    by_id = {entry["connection_id"]: entry for entry in result["connections"]}
    assert by_id[quiet]["status"] == "active"
    assert by_id[quiet]["idle_days_left"] == pytest.approx(5.0, abs=0.1)
    assert by_id[busy]["idle_days_left"] == pytest.approx(30.0, abs=0.1)
    assert by_id[busy]["consecutive_failures"] == 0
    assert by_id[busy]["last_redeemed_at"] is not None
    assert result["count"] == len(result["connections"])
    assert_no_tokens(fresh_world, result)


def test_list_skips_pending_and_rescue_items(fresh_world, operations, new_id):
    from tests.operations.helpers import REDIRECT_URI

    started = operations.authorize_url(new_id(), redirect_uri=REDIRECT_URI, host=fresh_world.token_host)

    ids = [entry["connection_id"] for entry in operations.list_connections()["connections"]]

    assert not [identifier for identifier in ids if "#" in identifier]
    assert started["state"] not in " ".join(ids)


def test_list_limit_caps_count(fresh_world, operations, new_id):
    for _ in range(3):
        fresh_world.seed_connection(new_id())

    result = operations.list_connections(limit=2)

    assert result["count"] == 2


def test_show_contains_no_token(fresh_world, operations, new_id):
    connection_id = new_id()
    fresh_world.seed_connection(connection_id)
    fresh_world.runtime().refresher().get_token(connection_id)

    result = operations.show(connection_id)

    assert result["connection_id"] == connection_id
    assert result["version"] == 2
    assert result["access_token_expires_at"] is not None
    assert "access_token" not in result
    assert "refresh_token" not in result
    assert_no_tokens(fresh_world, result)


def test_show_unknown_connection_raises(operations):
    with pytest.raises(ConnectionNotFoundError):
        operations.show("org-does-not-exist")


def test_refresh_force_redeems(fresh_world, operations, new_id):
    connection_id = new_id()
    fresh_world.seed_connection(connection_id)
    operations.refresh(connection_id)

    cached = operations.refresh(connection_id)
    forced = operations.refresh(connection_id, force=True)

    assert cached["version"] == 2
    assert forced["version"] == 3
    assert forced["source"] == "redeemed"
    assert_no_tokens(fresh_world, forced)


def test_refresh_all_due_rejects_invalid_days(operations):
    with pytest.raises(InvalidEventError):
        operations.refresh_all_due(due_after_days=31)


def test_disable_stops_serving_and_enable_restores(fresh_world, operations, new_id):
    connection_id = new_id()
    fresh_world.seed_connection(connection_id)

    disabled = operations.disable(connection_id)
    with pytest.raises(ConnectionInactiveError) as caught:
        fresh_world.runtime().refresher().get_token(connection_id)
    enabled = operations.enable(connection_id)
    token = fresh_world.runtime().refresher().get_token(connection_id)

    assert disabled["status"] == "disabled"
    assert disabled["changed"] is True
    assert caught.value.status == "disabled"
    assert enabled["status"] == "active"
    assert token.version == 2
    assert_no_tokens(fresh_world, [disabled, enabled])


def test_disable_twice_is_unchanged(fresh_world, operations, new_id):
    connection_id = new_id()
    fresh_world.seed_connection(connection_id)
    operations.disable(connection_id)

    again = operations.disable(connection_id)

    assert again["changed"] is False
    assert again["status"] == "disabled"


def test_enable_active_connection_is_unchanged(fresh_world, operations, new_id):
    connection_id = new_id()
    fresh_world.seed_connection(connection_id)

    result = operations.enable(connection_id)

    assert result["changed"] is False


def test_revoke_revokes_at_salesforce_and_erases(fresh_world, operations, new_id):
    connection_id = new_id()
    seeded = fresh_world.seed_connection(connection_id)
    fresh_world.salesforce.reset_stats()

    result = operations.revoke(connection_id)

    assert result["changed"] is True
    assert result["salesforce"] == "revoked"
    assert result["status"] == "revoked"
    assert fresh_world.salesforce.chain_state(seeded.refresh_token) == "revoked"
    stored = fresh_world.runtime().store.get(connection_id)
    assert stored.refresh_token == ""
    assert stored.access_token is None
    assert stored.version == 2
    assert_no_tokens(fresh_world, result)


def test_show_has_no_idle_days_after_revoke(fresh_world, operations, new_id):
    connection_id = new_id()
    fresh_world.seed_connection(connection_id)
    active = operations.show(connection_id)

    operations.revoke(connection_id)
    revoked = operations.show(connection_id)

    assert active["idle_days_left"] is not None
    assert revoked["idle_days_left"] is None


def test_revoke_goes_through_proxy(fresh_world, operations, new_id):
    connection_id = new_id()
    fresh_world.seed_connection(connection_id)
    tunnels_before = sum(fresh_world.proxy.tunnels().values())

    operations.revoke(connection_id)

    assert sum(fresh_world.proxy.tunnels().values()) > tunnels_before


def test_revoke_twice_is_unchanged(fresh_world, operations, new_id):
    connection_id = new_id()
    fresh_world.seed_connection(connection_id)
    operations.revoke(connection_id)

    again = operations.revoke(connection_id)

    assert again["changed"] is False
    assert again["status"] == "revoked"


def test_revoke_dead_chain_still_marks_revoked(fresh_world, operations, new_id):
    connection_id = new_id()
    seeded = fresh_world.seed_connection(connection_id)
    fresh_world.salesforce.revoke_chain_of(seeded.refresh_token)

    result = operations.revoke(connection_id)

    assert result["salesforce"] == "already invalid"
    assert result["status"] == "revoked"


def test_enable_revoked_connection_raises(fresh_world, operations, new_id):
    connection_id = new_id()
    fresh_world.seed_connection(connection_id)
    operations.revoke(connection_id)

    with pytest.raises(ConnectionInactiveError) as caught:
        operations.enable(connection_id)

    assert caught.value.status == "revoked"


def test_refresh_all_due_reports_progress(fresh_world, own_table, own_operations, new_id, progress):
    due, fresh = new_id(), new_id()
    fresh_world.seed_connection(due, idle_seconds=29.9 * DAY, runtime=own_table)
    fresh_world.seed_connection(fresh, runtime=own_table)

    result = own_operations.refresh_all_due(due_after_days=29)

    assert [entry["connection_id"] for entry in result["results"]] == [due]
    assert result["failed"] == 0
    assert result["succeeded"] == 1
    assert progress.lines == [(1, 1, due, "done")]
    assert own_operations.show(due)["idle_days_left"] == pytest.approx(30.0, abs=0.1)
    assert own_operations.show(fresh)["version"] == 1
    assert_no_tokens(fresh_world, result)


def test_refresh_all_due_counts_failures(fresh_world, own_table, own_operations, new_id, progress):
    dead, due = sorted([new_id(), new_id()])
    seeded = fresh_world.seed_connection(dead, idle_seconds=25 * DAY, runtime=own_table)
    fresh_world.seed_connection(due, idle_seconds=25 * DAY, runtime=own_table)
    fresh_world.salesforce.revoke_chain_of(seeded.refresh_token)

    result = own_operations.refresh_all_due()

    assert result["total"] == 2
    assert result["failed"] == 1
    assert result["results"][0]["ok"] is False
    assert result["results"][0]["error"]["kind"] == "chain_dead"
    assert result["results"][1]["ok"] is True
    assert progress.lines[0][3].startswith("failed: ")
    assert progress.lines[1] == (2, 2, due, "done")


def test_disable_all_disables_every_active(fresh_world, own_table, own_operations, new_id, progress):
    first, second = sorted([new_id(), new_id()])
    fresh_world.seed_connection(first, runtime=own_table)
    fresh_world.seed_connection(second, runtime=own_table)

    result = own_operations.disable_all()

    assert result["total"] == 2
    assert result["failed"] == 0
    assert own_operations.show(first)["status"] == "disabled"
    assert own_operations.show(second)["status"] == "disabled"
    assert progress.lines == [(1, 2, first, "done"), (2, 2, second, "done")]
