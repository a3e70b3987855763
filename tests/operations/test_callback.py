"""The authorization callback function behind a Lambda function URL."""

from __future__ import annotations

import pytest

from localworld.lambdas import LocalContext, load_function
from tests.operations.helpers import REDIRECT_URI, approve, assert_no_tokens


@pytest.fixture
def callback(fresh_world):
    module = load_function("callback")
    module.set_runtime(fresh_world.runtime())
    yield module
    module.set_runtime(None)


def _redirect(parameters: dict, method: str = "GET") -> dict:
    """Build a function URL event (payload format 2.0) for a browser redirect."""
    return {
        "version": "2.0",
        "rawPath": "/",
        "queryStringParameters": parameters,
        "requestContext": {"http": {"method": method, "path": "/"}},
    }


def test_callback_connects_org(fresh_world, operations, callback, new_id):
    connection_id = new_id()
    started = operations.authorize_url(connection_id, redirect_uri=REDIRECT_URI, host=fresh_world.token_host)
    code, state = approve(fresh_world, started["url"])

    response = callback.handler(_redirect({"code": code, "state": state}), LocalContext(function_name="tokenkeeper-callback"))

    assert response["statusCode"] == 200
    assert connection_id in response["body"]
    assert code not in response["body"]
    assert response["headers"]["Cache-Control"] == "no-store"
    assert response["headers"]["Referrer-Policy"] == "no-referrer"
    assert operations.show(connection_id)["status"] == "active"
    assert_no_tokens(fresh_world, response)


def test_callback_rejects_unknown_state(fresh_world, operations, callback, new_id):
    started = operations.authorize_url(new_id(), redirect_uri=REDIRECT_URI, host=fresh_world.token_host)
    code, _state = approve(fresh_world, started["url"])

    response = callback.handler(_redirect({"code": code, "state": "forged-state"}), LocalContext())

    assert response["statusCode"] == 400
    assert "matches no pending authorization" in response["body"]
    assert fresh_world.salesforce.stats.code_exchanges == 0


def test_callback_reports_denied_consent(callback):
    parameters = {"error": "access_denied", "error_description": "end-user denied <authorization>", "state": "x"}

    response = callback.handler(_redirect(parameters), LocalContext())

    assert response["statusCode"] == 400
    assert "access_denied" in response["body"]
    assert "<authorization>" not in response["body"]
    assert "&lt;authorization&gt;" in response["body"]


@pytest.mark.parametrize("parameters", [{}, {"code": "abc"}, {"state": "abc"}, {"code": "x" * 5000, "state": "s"}])
def test_callback_rejects_incomplete_redirect(callback, parameters):
    response = callback.handler(_redirect(parameters), LocalContext())

    assert response["statusCode"] == 400


def test_callback_rejects_post(callback):
    response = callback.handler(_redirect({"code": "abc", "state": "abc"}, method="POST"), LocalContext())

    assert response["statusCode"] == 405
