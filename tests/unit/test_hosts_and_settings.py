"""Which hosts may receive credentials, and the validation of settings."""

from __future__ import annotations

import pytest

from tokenkeeper.config import ENV_LEASE_SECONDS, Settings
from tokenkeeper.errors import ConfigurationError, SalesforceHostError
from tokenkeeper.salesforce import validate_token_host

REQUIRED = {
    "TOKENKEEPER_TABLE_NAME": "connections",
    "TOKENKEEPER_CLIENT_SECRET_ID": "client",
    "TOKENKEEPER_PROXY_SECRET_ID": "proxy",
    "TOKENKEEPER_TOKEN_KEY_ID": "key",
}


@pytest.mark.parametrize(
    "host", ["login.salesforce.com", "test.salesforce.com", "acme.my.salesforce.com", "acme--uat.sandbox.my.salesforce.com", "LOGIN.Salesforce.com"]
)
def test_token_host_accepts_salesforce_login_hosts(host):
    assert validate_token_host(host) == host.lower()


@pytest.mark.parametrize(
    "host",
    ["", "example.com", "login.salesforce.com.example.com", "my.salesforce.com", "evil.com/.my.salesforce.com", "127.0.0.1:8443"],
)
def test_token_host_rejects_other_hosts(host):
    with pytest.raises(SalesforceHostError) as caught:
        validate_token_host(host)

    assert "login.salesforce.com" in str(caught.value)


def test_token_host_allows_loopback_only_when_enabled():
    assert validate_token_host("127.0.0.1:8443", allow_loopback=True) == "127.0.0.1:8443"
    with pytest.raises(SalesforceHostError):
        validate_token_host("10.0.0.1:8443", allow_loopback=True)


def test_settings_default_lease_covers_redemption():
    settings = Settings.from_environment(REQUIRED)

    expected = (settings.connect_timeout_seconds + settings.read_timeout_seconds) * settings.redeem_attempts + 10
    assert settings.lease_seconds == pytest.approx(expected)


def test_settings_reject_lease_shorter_than_redemption():
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_environment({**REQUIRED, ENV_LEASE_SECONDS: "5"})

    assert ENV_LEASE_SECONDS in str(caught.value)


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_settings_name_missing_variable(name):
    environment = {key: value for key, value in REQUIRED.items() if key != name}

    with pytest.raises(ConfigurationError) as caught:
        Settings.from_environment(environment)

    assert name in str(caught.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TOKENKEEPER_READ_TIMEOUT_SECONDS", "soon"),
        ("TOKENKEEPER_REDEEM_ATTEMPTS", "2.5"),
        ("TOKENKEEPER_ALLOW_LOOPBACK_HOSTS", "maybe"),
        ("TOKENKEEPER_DEFAULT_SESSION_SECONDS", "60"),
        ("TOKENKEEPER_CONNECT_TIMEOUT_SECONDS", "-1"),
    ],
)
def test_settings_reject_invalid_value_naming_it(name, value):
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_environment({**REQUIRED, name: value})

    assert name in str(caught.value)
