"""The refresh function runs operator actions from events with an "action" field."""

from __future__ import annotations

import pytest

from localworld.lambdas import LocalContext, load_function
from tests.operations.helpers import REDIRECT_URI, approve, assert_no_tokens
from tokenkeeper.errors import InvalidEventError
from tokenkeeper.operations import parse_action_request


@pytest.fixture
def refresh(fresh_world):
    module = load_function("refresh")
    module.set_runtime(fresh_world.runtime())
    yield module
    module.set_runtime(None)


def test_action_show_returns_summary(fresh_world, refresh, new_id):
    connection_id = new_id()
    fresh_world.seed_connection(connection_id)

    answer = refresh.handler({"action": "show", "connection_id": connection_id}, LocalContext())

    assert answer["ok"] is True
    assert answer["action"] == "show"
    assert answer["result"]["connection_id"] == connection_id
    assert_no_tokens(fresh_world, answer)


def test_action_connect_flow(fresh_world, refresh, new_id):
    connection_id = new_id()
    started = refresh.handler(
        {"action": "authorize-url", "connection_id": connection_id, "redirect_uri": REDIRECT_URI, "host": fresh_world.token_host},
        LocalContext(),
    )
    code, state = approve(fresh_world, started["result"]["url"])

    connected = refresh.handler({"action": "connect", "code": code, "state": state}, LocalContext())

    assert connected["ok"] is True
    assert connected["result"]["status"] == "active"
    assert_no_tokens(fresh_world, connected)


def test_action_refresh_force_and_disable(fresh_world, refresh, new_id):
    connection_id = new_id()
    fresh_world.seed_connection(connection_id)

    refreshed = refresh.handler({"action": "refresh", "connection_id": connection_id, "force": True}, LocalContext())
    disabled = refresh.handler({"action": "disable", "connection_id": connection_id}, LocalContext())

    assert refreshed["result"]["version"] == 2
    assert disabled["result"]["status"] == "disabled"
    assert_no_tokens(fresh_world, [refreshed, disabled])


def test_token_request_unchanged(fresh_world, refresh, new_id):
    connection_id = new_id()
    fresh_world.seed_connection(connection_id)

    answer = refresh.handler({"connection_id": connection_id}, LocalContext())

    assert answer["ok"] is True
    assert answer["source"] == "redeemed"


@pytest.mark.parametrize(
    ("event", "named"),
    [
        ({"action": "explode"}, "unknown"),
        ({"action": None, "connection_id": "org-1"}, "unknown"),
        ({"action": "show"}, "connection_id"),
        ({"action": "show", "connection_id": "org-1", "force": True}, "'force'"),
        ({"action": "show", "connection_id": 7}, "wrong type"),
        ({"action": "list", "limit": True}, "wrong type"),
        ({"action": "list", "limit": "10"}, "wrong type"),
        ({"action": "check-egress", "expected": "127.0.0.2"}, "wrong type"),
        ({"action": "check-egress", "expected": [2130706434]}, "list of IP address strings"),
        ({"action": "refresh", "connection_id": "org-1", "min_ttl_seconds": 5}, "'min_ttl_seconds'"),
    ],
)
def test_action_event_rejects_invalid(event, named):
    with pytest.raises(InvalidEventError) as caught:
        parse_action_request(event)

    assert named in caught.value.message


def test_action_event_error_is_returned(refresh):
    answer = refresh.handler({"action": "show", "connection_id": "org-1", "extra": 1}, LocalContext())

    assert answer["ok"] is False
    assert answer["error"]["kind"] == "invalid_event"


@pytest.mark.parametrize(
    "event",
    [
        {"action": "refresh"},
        {"action": "refresh", "connection_id": "org-1", "all_due": True},
        {"action": "disable"},
    ],
)
def test_action_needs_one_target(refresh, event):
    answer = refresh.handler(event, LocalContext())

    assert answer["ok"] is False
    assert answer["error"]["kind"] == "invalid_event"
