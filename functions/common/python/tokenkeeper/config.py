"""Settings read once per container from environment variables.

Precedence everywhere: an explicit argument, then the environment variable named here, then the
default. :meth:`Settings.from_environment` validates every value at cold start and raises
:class:`~tokenkeeper.errors.ConfigurationError` naming the variable and the fix.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields
from typing import Mapping

from tokenkeeper.errors import ConfigurationError

ENV_TABLE_NAME = "TOKENKEEPER_TABLE_NAME"
ENV_CLIENT_SECRET_ID = "TOKENKEEPER_CLIENT_SECRET_ID"
ENV_PROXY_SECRET_ID = "TOKENKEEPER_PROXY_SECRET_ID"
ENV_TOKEN_KEY_ID = "TOKENKEEPER_TOKEN_KEY_ID"
ENV_CA_BUNDLE = "TOKENKEEPER_CA_BUNDLE"
ENV_ALLOW_LOOPBACK_HOSTS = "TOKENKEEPER_ALLOW_LOOPBACK_HOSTS"
ENV_SECRETS_MAX_AGE = "TOKENKEEPER_SECRETS_MAX_AGE_SECONDS"
ENV_DEFAULT_SESSION_SECONDS = "TOKENKEEPER_DEFAULT_SESSION_SECONDS"
ENV_LEASE_SECONDS = "TOKENKEEPER_LEASE_SECONDS"
ENV_MAX_WAIT_SECONDS = "TOKENKEEPER_MAX_WAIT_SECONDS"
ENV_CONNECT_TIMEOUT = "TOKENKEEPER_CONNECT_TIMEOUT_SECONDS"
ENV_READ_TIMEOUT = "TOKENKEEPER_READ_TIMEOUT_SECONDS"
ENV_REDEEM_ATTEMPTS = "TOKENKEEPER_REDEEM_ATTEMPTS"
ENV_EXPIRY_LEEWAY = "TOKENKEEPER_EXPIRY_LEEWAY_SECONDS"

# Salesforce's default session timeout is two hours; an org may set 15 minutes to 24 hours.
DEFAULT_SESSION_SECONDS = 7200
# An access token counts as expired this long before its recorded expiry.
DEFAULT_EXPIRY_LEEWAY_SECONDS = 60
DEFAULT_SECRETS_MAX_AGE_SECONDS = 300
DEFAULT_CONNECT_TIMEOUT_SECONDS = 3.05
# The token call's read timeout is generous on purpose: a read timeout is ambiguous because
# Salesforce may already have rotated the token, so waiting longer is cheaper than losing a chain.
DEFAULT_READ_TIMEOUT_SECONDS = 20.0
DEFAULT_REDEEM_ATTEMPTS = 3
DEFAULT_MAX_WAIT_SECONDS = 25.0
LEASE_MARGIN_SECONDS = 10.0


def _lease_floor(connect_timeout: float, read_timeout: float, attempts: int) -> float:
    """Return the shortest lease that outlasts every attempt a holder may start, plus a margin."""
    return (connect_timeout + read_timeout) * attempts + LEASE_MARGIN_SECONDS


@dataclass(frozen=True)
class Settings:
    """Validated settings shared by both functions."""

    table_name: str
    client_secret_id: str
    proxy_secret_id: str
    token_key_id: str
    ca_bundle: str | None = None
    allow_loopback_hosts: bool = False
    secrets_max_age_seconds: int = DEFAULT_SECRETS_MAX_AGE_SECONDS
    default_session_seconds: int = DEFAULT_SESSION_SECONDS
    expiry_leeway_seconds: int = DEFAULT_EXPIRY_LEEWAY_SECONDS
    connect_timeout_seconds: float = DEFAULT_CONNECT_TIMEOUT_SECONDS
    read_timeout_seconds: float = DEFAULT_READ_TIMEOUT_SECONDS
    redeem_attempts: int = DEFAULT_REDEEM_ATTEMPTS
    max_wait_seconds: float = DEFAULT_MAX_WAIT_SECONDS
    lease_seconds: float = field(default=0.0)

    def __post_init__(self) -> None:
        floor = _lease_floor(self.connect_timeout_seconds, self.read_timeout_seconds, self.redeem_attempts)
        if self.lease_seconds == 0.0:
            object.__setattr__(self, "lease_seconds", floor)
        elif self.lease_seconds < floor:
            raise ConfigurationError(
                f"{ENV_LEASE_SECONDS}={self.lease_seconds:g} is shorter than the longest redemption "
                f"a lease holder may start ({floor:g} s: (connect timeout + read timeout) x attempts "
                f"+ {LEASE_MARGIN_SECONDS:g} s margin); raise it to at least {floor:g} or lower the timeouts."
            )
        if self.redeem_attempts < 1:
            raise ConfigurationError(f"{ENV_REDEEM_ATTEMPTS}={self.redeem_attempts} must be at least 1.")
        if not 900 <= self.default_session_seconds <= 86400:
            raise ConfigurationError(
                f"{ENV_DEFAULT_SESSION_SECONDS}={self.default_session_seconds} is outside Salesforce's "
                "session timeout range; use a value from 900 (15 minutes) to 86400 (24 hours)."
            )

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None, **overrides) -> "Settings":
        """Build settings from ``environ`` (default ``os.environ``); keyword arguments win."""
        environ = os.environ if environ is None else environ
        values: dict = {
            "table_name": _required(environ, ENV_TABLE_NAME),
            "client_secret_id": _required(environ, ENV_CLIENT_SECRET_ID),
            "proxy_secret_id": _required(environ, ENV_PROXY_SECRET_ID),
            "token_key_id": _required(environ, ENV_TOKEN_KEY_ID),
            "ca_bundle": environ.get(ENV_CA_BUNDLE) or None,
            "allow_loopback_hosts": _boolean(environ, ENV_ALLOW_LOOPBACK_HOSTS, False),
            "secrets_max_age_seconds": read_number(environ, ENV_SECRETS_MAX_AGE, DEFAULT_SECRETS_MAX_AGE_SECONDS, int),
            "default_session_seconds": read_number(environ, ENV_DEFAULT_SESSION_SECONDS, DEFAULT_SESSION_SECONDS, int),
            "expiry_leeway_seconds": read_number(environ, ENV_EXPIRY_LEEWAY, DEFAULT_EXPIRY_LEEWAY_SECONDS, int),
            "connect_timeout_seconds": read_number(environ, ENV_CONNECT_TIMEOUT, DEFAULT_CONNECT_TIMEOUT_SECONDS, float),
            "read_timeout_seconds": read_number(environ, ENV_READ_TIMEOUT, DEFAULT_READ_TIMEOUT_SECONDS, float),
            "redeem_attempts": read_number(environ, ENV_REDEEM_ATTEMPTS, DEFAULT_REDEEM_ATTEMPTS, int),
            "max_wait_seconds": read_number(environ, ENV_MAX_WAIT_SECONDS, DEFAULT_MAX_WAIT_SECONDS, float),
            "lease_seconds": read_number(environ, ENV_LEASE_SECONDS, 0.0, float),
        }
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
        values.update(overrides)
        return cls(**values)


def _required(environ: Mapping[str, str], name: str) -> str:
    value = environ.get(name, "").strip()
    if not value:
        raise ConfigurationError(f"Environment variable {name} is missing or empty; the stack sets it on deploy.")
    return value


def _boolean(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes"}:
        return True
    if lowered in {"0", "false", "no"}:
        return False
    raise ConfigurationError(f"Environment variable {name}={raw!r} is not a boolean; use true or false.")


def read_number(environ: Mapping[str, str], name: str, default, kind):
    """Return the variable ``name`` as ``kind`` (int or float), or ``default`` when it is unset.

    Raise :class:`ConfigurationError` naming the variable when it is not a finite number of 0 or more.
    """
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigurationError(
            f"Environment variable {name}={raw!r} is not a {'whole number' if kind is int else 'number'}."
        ) from None
    if value < 0 or (kind is float and not math.isfinite(value)):
        raise ConfigurationError(f"Environment variable {name}={raw!r} must be a finite number, 0 or more.")
    return value
