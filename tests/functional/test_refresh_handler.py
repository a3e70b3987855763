"""The refresh function's handler and the client other Lambdas use to call it."""

from __future__ import annotations

import json
import uuid

import pytest

from localworld.lambdas import LocalContext, LocalLambdaApi, load_function
from localworld.leakcheck import assert_no_secrets
from tokenkeeper.client import TokenKeeperClient
from tokenkeeper.errors import ConfigurationError, ConnectionNotFoundError, EgressBlockedError, InvalidEventError


@pytest.fixture
def refresh(fresh_world):
    module = load_function("refresh")
    module.set_runtime(fresh_world.runtime())
    yield module
    module.set_runtime(None)


@pytest.fixture
def connection_id(fresh_world):
    identifier = f"org-{uuid.uuid4().hex[:12]}"
    fresh_world.seed_connection(identifier)
    return identifier


def test_handler_returns_token_and_source(refresh, connection_id):
    first = refresh.handler({"connection_id": connection_id}, LocalContext())
    second = refresh.handler({"connection_id": connection_id, "min_ttl_seconds": 60}, LocalContext())

    assert first["ok"] is True
    assert first["source"] == "redeemed"
    assert first["instance_url"].startswith("https://127.0.0.1:")
    assert first["version"] == 2
    assert second["source"] == "memory"
    assert second["access_token"] == first["access_token"]


def test_handler_logs_connection_id_on_every_line(refresh, connection_id, product_log):
    refresh.handler({"connection_id": connection_id}, LocalContext())

    lines = [json.loads(line) for line in product_log.getvalue().splitlines()]
    assert lines
    assert all(line.get("connection_id") == connection_id for line in lines)


@pytest.mark.parametrize(
    ("event", "named"),
    [
        ([], "JSON object"),
        ({}, "connection_id"),
        ({"connection_id": ""}, "connection_id"),
        ({"connection_id": 42}, "connection_id"),
        ({"connection_id": "org 1"}, "connection_id"),
        ({"connection_id": "rescue#org-1"}, "connection_id"),
        ({"connection_id": "x" * 65}, "connection_id"),
        ({"connection_id": "org-1", "min_ttl_seconds": -1}, "min_ttl_seconds"),
        ({"connection_id": "org-1", "min_ttl_seconds": "300"}, "min_ttl_seconds"),
        ({"connection_id": "org-1", "min_ttl_seconds": True}, "min_ttl_seconds"),
        ({"connection_id": "org-1", "min_ttl_seconds": 86401}, "min_ttl_seconds"),
        ({"connection_id": "org-1", "force": "yes"}, "force"),
        ({"connection_id": "org-1", "min_ttl": 300}, "min_ttl"),
    ],
)
def test_handler_rejects_bad_event_naming_the_field(refresh, fresh_world, event, named):
    before = fresh_world.salesforce.stats.token_requests

    answer = refresh.handler(event, LocalContext())

    assert answer["ok"] is False
    assert answer["error"]["kind"] == InvalidEventError.kind
    assert named in answer["error"]["message"]
    assert fresh_world.salesforce.stats.token_requests == before


def test_handler_invalid_connection_id_is_not_repeated(refresh, product_log):
    pasted_token = "00D000000000001!AQ0AQHexampleAccessTokenValue.with.dots"

    answer = refresh.handler({"connection_id": pasted_token}, LocalContext())

    assert answer["ok"] is False
    assert pasted_token not in answer["error"]["message"]
    assert pasted_token not in product_log.getvalue()


def test_handler_bad_event_changes_nothing_stored(refresh, fresh_world, connection_id):
    store = fresh_world.runtime().store
    before = store.get(connection_id)

    answer = refresh.handler({"connection_id": connection_id, "force": "true"}, LocalContext())

    after = store.get(connection_id)
    assert answer["ok"] is False
    assert (after.version, after.refresh_token, after.lease_owner) == (before.version, before.refresh_token, None)


def test_handler_reports_missing_configuration(fresh_world, monkeypatch):
    module = load_function("refresh")
    module.set_runtime(None)
    monkeypatch.delenv("TOKENKEEPER_TABLE_NAME", raising=False)

    answer = module.handler({"connection_id": "org-1"}, LocalContext())

    assert answer["ok"] is False
    assert answer["error"]["kind"] == "configuration"
    assert "TOKENKEEPER_TABLE_NAME" in answer["error"]["message"]


@pytest.fixture
def lambda_api(refresh):
    api = LocalLambdaApi({"tokenkeeper-refresh": refresh.handler}).start()
    yield api
    api.stop()


def test_client_returns_token_through_invoke_api(fresh_world, lambda_api, connection_id):
    client = TokenKeeperClient(
        "tokenkeeper-refresh", lambda_client=fresh_world.aws.client("lambda", endpoint_url=lambda_api.endpoint_url)
    )

    token = client.get_access_token(connection_id)

    assert token.source == "redeemed"
    assert token.connection_id == connection_id
    assert token.expires_at > fresh_world.clock()
    assert "access_token" not in repr(token) or token.access_token not in repr(token)


def test_client_raises_typed_error(fresh_world, lambda_api, connection_id):
    client = TokenKeeperClient(
        "tokenkeeper-refresh", lambda_client=fresh_world.aws.client("lambda", endpoint_url=lambda_api.endpoint_url)
    )
    fresh_world.salesforce.set_allowed_source_addresses(["127.0.0.9"])

    with pytest.raises(EgressBlockedError) as caught:
        client.get_access_token(connection_id)

    assert caught.value.connection_id == connection_id
    assert "allowlist" in str(caught.value).lower()
    assert_no_secrets(str(caught.value))


def test_client_raises_not_found_for_unknown_connection(fresh_world, lambda_api):
    client = TokenKeeperClient(
        "tokenkeeper-refresh", lambda_client=fresh_world.aws.client("lambda", endpoint_url=lambda_api.endpoint_url)
    )

    with pytest.raises(ConnectionNotFoundError):
        client.get_access_token("org-unknown")


def test_client_reports_unknown_function(fresh_world, lambda_api):
    client = TokenKeeperClient(
        "no-such-function", lambda_client=fresh_world.aws.client("lambda", endpoint_url=lambda_api.endpoint_url)
    )

    with pytest.raises(ConfigurationError) as caught:
        client.get_access_token("org-1")

    assert "no-such-function" in str(caught.value)
    assert "not found" in str(caught.value)
    assert caught.value.retryable is False


def test_client_accepts_function_arn(fresh_world, lambda_api, connection_id):
    client = TokenKeeperClient(
        "arn:aws:lambda:us-east-1:123456789012:function:tokenkeeper-refresh",
        lambda_client=fresh_world.aws.client("lambda", endpoint_url=lambda_api.endpoint_url),
    )

    token = client.get_access_token(connection_id)

    assert token.connection_id == connection_id
