"""Malformed input, generated: invocation events, and token responses from Salesforce or a proxy.

Every bad input must end in a typed error (a TokenKeeperError) with a message, and leave the
stored connection as it was. The one exception is a 200 response with a usable access token,
which is stored as the next version.
"""

from __future__ import annotations

import json
import uuid

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from localworld.lambdas import LocalContext, load_function
from tokenkeeper.errors import InvalidEventError, ReauthorizationRequiredError, TokenKeeperError
from tokenkeeper.salesforce import MAX_RESPONSE_BYTES, MAX_TOKEN_CHARS
from tokenkeeper.store import STATUS_ACTIVE, STATUS_REAUTHORIZATION_REQUIRED

PURE_EXAMPLES = 200
NETWORK_EXAMPLES = 25
NETWORK_SETTINGS = settings(
    max_examples=NETWORK_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
EVENT_FIELDS = ("connection_id", "min_ttl_seconds", "force")

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=False),
    st.text(max_size=300),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=10,
)
events = st.one_of(
    json_values,
    st.dictionaries(st.sampled_from(EVENT_FIELDS) | st.text(max_size=20), json_values, max_size=4),
    st.fixed_dictionaries(
        {"connection_id": st.text(max_size=250)},
        optional={"min_ttl_seconds": json_values, "force": json_values},
    ),
)


@pytest.fixture(scope="module")
def refresh_function():
    return load_function("refresh")


@settings(max_examples=PURE_EXAMPLES, deadline=None, database=None)
@given(event=events)
def test_parse_event_accepts_or_raises_typed_error(refresh_function, event):
    try:
        parsed = refresh_function.parse_event(event)
    except InvalidEventError as exc:
        assert len(exc.message) > 20
        assert exc.kind == "invalid_event"
        return

    assert set(parsed) == set(EVENT_FIELDS)
    assert isinstance(parsed["connection_id"], str)
    assert parsed["connection_id"]
    assert type(parsed["min_ttl_seconds"]) is int
    assert type(parsed["force"]) is bool


@NETWORK_SETTINGS
@given(event=events)
def test_handler_returns_typed_error_for_bad_event(refresh_function, fresh_world, connection_id, event):
    refresh_function.set_runtime(fresh_world.runtime())
    before = fresh_world.runtime().store.get(connection_id)
    try:
        result = refresh_function.handler(event, LocalContext())
    finally:
        refresh_function.set_runtime(None)

    assert result["ok"] is False
    assert result["error"]["kind"] in {"invalid_event", "connection_not_found"}
    assert len(result["error"]["message"]) > 20
    after = fresh_world.runtime().store.get(connection_id)
    assert after.version == before.version
    assert after.refresh_token == before.refresh_token


# Token responses --------------------------------------------------------------------------------

# RFC 6749, appendix A: tokens are printable ASCII; mostly such tokens, sometimes any text.
TOKEN_TEXT = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=40)
TOKENS = TOKEN_TEXT | TOKEN_TEXT | st.text(max_size=40)
VALID_FIELDS = {
    "access_token": TOKENS,
    "refresh_token": TOKENS,
    "instance_url": st.sampled_from(["https://example.my.salesforce.com", "http://example.com", "javascript:alert(1)"]),
    "id": st.just("https://login.salesforce.com/id/00D000000000001EAA/005000000000001AAA"),
    "token_type": st.just("Bearer"),
    "issued_at": st.just("1764806400000"),
    "signature": st.text(max_size=20),
    "scope": st.just("api refresh_token"),
}
WRONG_TYPES = st.one_of(st.none(), st.booleans(), st.integers(), st.lists(st.integers(), max_size=2), st.just({}), st.just(""))
HTML_PAGE = (
    "<html><head><title>{status}</title></head><body><h1>{status}</h1>"
    "<p>The proxy server received an invalid response from an upstream server.</p></body></html>"
)
OAUTH_ERRORS = st.sampled_from(
    ["invalid_grant", "invalid_client", "invalid_request", "unsupported_grant_type", "inactive_user", "rate_limit_exceeded"]
)
OAUTH_DESCRIPTIONS = st.sampled_from(
    ["expired access/refresh token", "authentication failure", "ip restricted", "token request is already being processed"]
)


@st.composite
def mutated_token_bodies(draw):
    """A token response with fields dropped, added or given the wrong type."""
    body = {name: draw(strategy) for name, strategy in VALID_FIELDS.items()}
    for name in draw(st.lists(st.sampled_from(sorted(VALID_FIELDS)), unique=True, max_size=2)):
        del body[name]
    for name in draw(st.lists(st.sampled_from(sorted(VALID_FIELDS)), unique=True, max_size=1)):
        body[name] = draw(WRONG_TYPES)
    body.update(draw(st.dictionaries(st.text(min_size=1, max_size=12), json_scalars, max_size=3)))
    return body


json_bodies = st.one_of(
    st.tuples(st.just(200), mutated_token_bodies()),
    st.tuples(
        st.sampled_from([400, 401, 403]),
        st.fixed_dictionaries({"error": OAUTH_ERRORS | WRONG_TYPES, "error_description": OAUTH_DESCRIPTIONS | st.text(max_size=60) | WRONG_TYPES}),
    ),
    st.tuples(st.sampled_from([200, 400]), json_values),
).map(lambda pair: (pair[0], json.dumps(pair[1]), "application/json;charset=UTF-8"))

unreadable_bodies = st.one_of(
    st.tuples(
        st.sampled_from([200, 400, 401, 404]),
        st.text(max_size=200),
        st.sampled_from(["text/plain", "application/json", "text/html; charset=UTF-8", ""]),
    ),
    st.tuples(st.sampled_from([200, 400, 403, 407, 502, 503, 504]), st.just(HTML_PAGE), st.just("text/html")).map(
        lambda triple: (triple[0], triple[1].format(status=triple[0]), triple[2])
    ),
    st.tuples(
        st.sampled_from([200, 400, 500]),
        st.integers(min_value=MAX_RESPONSE_BYTES + 1, max_value=4 * MAX_RESPONSE_BYTES),
        st.sampled_from(["application/json", "text/html"]),
    ).map(lambda triple: (triple[0], json.dumps({"access_token": "a" * triple[1]}), triple[2])),
    # Over the token length limit but within the body limit: the tokens could not be sealed.
    st.tuples(st.sampled_from(["access_token", "refresh_token"]), st.integers(MAX_TOKEN_CHARS + 1, 20 * MAX_TOKEN_CHARS)).map(
        lambda pair: (200, json.dumps({"access_token": "a", pair[0]: "b" * pair[1]}), "application/json")
    ),
)


def is_token(value) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_TOKEN_CHARS and all(" " <= char <= "~" for char in value)


def usable_token_body(status: int, body: str) -> dict | None:
    """Return the body if the product must accept it: a 200 JSON object with well-formed tokens."""
    if status != 200 or len(body.encode("utf-8")) > MAX_RESPONSE_BYTES:
        return None
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    if not isinstance(parsed, dict):
        return None
    if not is_token(parsed.get("access_token")):
        return None
    refresh_token = parsed.get("refresh_token")
    return parsed if refresh_token is None or is_token(refresh_token) else None


def check_response_outcome(world, runtime, response) -> None:
    status, body, content_type = response
    connection_id = f"org-{uuid.uuid4().hex[:12]}"
    world.seed_connection(connection_id, runtime=runtime)
    before = runtime.store.get(connection_id)
    world.salesforce.clear_faults()
    world.salesforce.answer_next_with(1, status, body, content_type)

    try:
        token = runtime.refresher().get_token(connection_id)
    except TokenKeeperError as exc:
        error = exc
    else:
        error = None
    after = runtime.store.get(connection_id)

    accepted = usable_token_body(status, body)
    event("stored" if error is None else type(error).__name__)
    if accepted is not None:
        assert error is None, f"a usable 200 response was rejected: {type(error).__name__}: {error}"
        assert token.access_token == accepted["access_token"]
        assert after.version == before.version + 1
        assert after.refresh_token == (accepted.get("refresh_token") or before.refresh_token)
        assert after.instance_url.startswith("https://")
        return

    assert error is not None, f"HTTP {status} with an unusable body was accepted"
    assert isinstance(error, TokenKeeperError)
    assert len(error.message) > 20
    assert after.version == before.version
    assert after.refresh_token == before.refresh_token
    assert after.lease_owner is None
    expected_status = STATUS_REAUTHORIZATION_REQUIRED if isinstance(error, ReauthorizationRequiredError) else STATUS_ACTIVE
    assert after.status == expected_status


@pytest.fixture
def one_attempt_runtime(fresh_world):
    return fresh_world.runtime(redeem_attempts=1)


@NETWORK_SETTINGS
@given(response=json_bodies)
def test_json_token_responses_are_handled(fresh_world, one_attempt_runtime, response):
    check_response_outcome(fresh_world, one_attempt_runtime, response)


@NETWORK_SETTINGS
@given(response=unreadable_bodies)
def test_unreadable_token_responses_raise_typed_error(fresh_world, one_attempt_runtime, response):
    check_response_outcome(fresh_world, one_attempt_runtime, response)
