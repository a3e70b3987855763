"""Deployment settings read from CDK context and validated before any construct is built.

Every value comes from the `context` block of cdk.json or from `cdk ... -c key=value`, which
overrides it. A missing key takes the default in :data:`DEFAULTS`, and cdk.json lists the same
values so that the settings are visible where they are changed. An invalid value raises
:class:`ConfigError` naming the key, the value and the fix, before anything is synthesized.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from aws_cdk import aws_logs as logs

__all__ = ["ConfigError", "StackConfig", "DEFAULTS", "RETENTION_DAYS", "load_config"]

# The Powertools layer version that contains aws-lambda-powertools 3.37.0, the version pinned in
# requirements.txt. Powertools publishes one layer version per release under account
# 017000801446 and lists the mapping in the SSM parameter
# /aws/service/powertools/python/arm64/python3.14/3.37.0.
# NOTE: 42 is an estimate (3.23.0 is layer 27, one version per release since); it could not be
# checked offline. Check it with the command in docs/deploy.md and override
# `powertools_layer_version` if it differs.
POWERTOOLS_LAYER_VERSION = 42

DEFAULTS: Mapping[str, Any] = {
    "region": "us-east-1",
    "stack_name": "TokenKeeper",
    "heartbeat_schedule": "rate(1 day)",
    "idle_window_days": 30,
    "proxy_mode": "static",
    "alarm_email": "",
    "reserved_concurrency": 50,
    "log_retention_days": 90,
    "client_secret_name": "",
    "proxy_secret_name": "",
    "powertools_layer_version": POWERTOOLS_LAYER_VERSION,
}

# The retention periods CloudWatch Logs accepts, in days.
RETENTION_DAYS: Mapping[int, logs.RetentionDays] = {
    1: logs.RetentionDays.ONE_DAY,
    3: logs.RetentionDays.THREE_DAYS,
    5: logs.RetentionDays.FIVE_DAYS,
    7: logs.RetentionDays.ONE_WEEK,
    14: logs.RetentionDays.TWO_WEEKS,
    30: logs.RetentionDays.ONE_MONTH,
    60: logs.RetentionDays.TWO_MONTHS,
    90: logs.RetentionDays.THREE_MONTHS,
    120: logs.RetentionDays.FOUR_MONTHS,
    150: logs.RetentionDays.FIVE_MONTHS,
    180: logs.RetentionDays.SIX_MONTHS,
    365: logs.RetentionDays.ONE_YEAR,
    400: logs.RetentionDays.THIRTEEN_MONTHS,
    545: logs.RetentionDays.EIGHTEEN_MONTHS,
    731: logs.RetentionDays.TWO_YEARS,
    1096: logs.RetentionDays.THREE_YEARS,
    1827: logs.RetentionDays.FIVE_YEARS,
    2192: logs.RetentionDays.SIX_YEARS,
    2557: logs.RetentionDays.SEVEN_YEARS,
    2922: logs.RetentionDays.EIGHT_YEARS,
    3288: logs.RetentionDays.NINE_YEARS,
    3653: logs.RetentionDays.TEN_YEARS,
}

# Only QuotaGuard Static, an HTTP proxy with two fixed egress addresses, is supported.
PROXY_MODES = ("static",)

_REGION = re.compile(r"^[a-z]{2}-[a-z]+-\d{1,2}$")
# China, GovCloud, the isolated Regions and the European Sovereign Cloud.
_OTHER_PARTITION_PREFIXES = ("cn-", "us-gov-", "us-iso", "eu-iso", "eusc-")
_STACK_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,127}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_SECRET_NAME = re.compile(r"^[A-Za-z0-9/_+=.@-]{1,512}$")
_RATE = re.compile(r"^rate\((?P<value>\d+) (?P<unit>minute|minutes|hour|hours|day|days)\)$")
_CRON = re.compile(r"^cron\((?P<fields>[^()]+)\)$")
_SECONDS_PER_UNIT = {"minute": 60, "hour": 3600, "day": 86400}


class ConfigError(ValueError):
    """Error for a missing or invalid context value, with a message that names the key and the fix."""

    def __init__(self, key: str, value: Any, problem: str, fix: str):
        super().__init__(f"Context value {key}={value!r} is invalid: {problem}. {fix}")
        self.key = key
        self.value = value


@dataclass(frozen=True)
class StackConfig:
    """Validated deployment settings."""

    region: str
    stack_name: str
    heartbeat_schedule: str
    idle_window_days: int
    proxy_mode: str
    alarm_email: str
    reserved_concurrency: int
    log_retention_days: int
    client_secret_name: str
    proxy_secret_name: str
    powertools_layer_version: int

    @property
    def log_retention(self) -> logs.RetentionDays:
        return RETENTION_DAYS[self.log_retention_days]

    @classmethod
    def from_mapping(cls, context: Mapping[str, Any]) -> "StackConfig":
        """Validate ``context``, keyed as in cdk.json. A missing key takes its default."""
        values = {key: context.get(key, default) for key, default in DEFAULTS.items()}
        idle_window_days = _whole_number(values, "idle_window_days", minimum=1)
        return cls(
            region=_region(values["region"]),
            stack_name=_matching(values, "stack_name", _STACK_NAME, _STACK_NAME_RULE),
            heartbeat_schedule=_schedule(values["heartbeat_schedule"], idle_window_days),
            idle_window_days=idle_window_days,
            proxy_mode=_proxy_mode(values["proxy_mode"]),
            alarm_email=_optional_matching(values, "alarm_email", _EMAIL, "it is not an email address"),
            reserved_concurrency=_whole_number(values, "reserved_concurrency", minimum=1),
            log_retention_days=_retention(values["log_retention_days"]),
            client_secret_name=_optional_matching(values, "client_secret_name", _SECRET_NAME, _SECRET_RULE),
            proxy_secret_name=_optional_matching(values, "proxy_secret_name", _SECRET_NAME, _SECRET_RULE),
            powertools_layer_version=_whole_number(values, "powertools_layer_version", minimum=1),
        )


def load_config(try_get_context: Callable[[str], Any]) -> StackConfig:
    """Build a :class:`StackConfig` from a lookup such as ``app.node.try_get_context``."""
    context = {key: try_get_context(key) for key in DEFAULTS}
    present = {key: value for key, value in context.items() if value is not None}
    return StackConfig.from_mapping(present)


_STACK_NAME_RULE = "a stack name starts with a letter and contains only letters, digits and hyphens (at most 128)"
_SECRET_RULE = "a secret name contains only letters, digits and /_+=.@- (at most 512)"


def _fix(key: str, example: Any) -> str:
    return f"Set it in the context block of cdk.json or pass -c {key}={example}."


def _whole_number(values: Mapping[str, Any], key: str, *, minimum: int) -> int:
    raw = values[key]
    # bool is a subclass of int, and `true` in JSON must not pass as 1.
    if isinstance(raw, bool) or not isinstance(raw, (int, str)):
        raise ConfigError(key, raw, "it must be a whole number", _fix(key, DEFAULTS[key]))
    if isinstance(raw, str) and not raw.strip().isdigit():
        raise ConfigError(key, raw, "it must be a whole number", _fix(key, DEFAULTS[key]))
    number = int(raw)
    if number < minimum:
        raise ConfigError(key, raw, f"it must be at least {minimum}", _fix(key, DEFAULTS[key]))
    return number


def _text(values: Mapping[str, Any], key: str) -> str:
    raw = values[key]
    if not isinstance(raw, str):
        raise ConfigError(key, raw, "it must be a string", _fix(key, DEFAULTS[key] or "VALUE"))
    return raw.strip()


def _matching(values: Mapping[str, Any], key: str, pattern: re.Pattern, rule: str) -> str:
    text = _text(values, key)
    if not pattern.match(text):
        raise ConfigError(key, values[key], rule, _fix(key, DEFAULTS[key] or "VALUE"))
    return text


def _optional_matching(values: Mapping[str, Any], key: str, pattern: re.Pattern, rule: str) -> str:
    if _text(values, key) == "":
        return ""
    return _matching(values, key, pattern, rule)


def _region(raw: Any) -> str:
    region = _text({"region": raw}, "region")
    if region.startswith(_OTHER_PARTITION_PREFIXES):
        raise ConfigError(
            "region",
            raw,
            "the stack uses the Powertools layer that account 017000801446 publishes in the "
            "commercial AWS partition, and this Region belongs to another partition",
            _fix("region", "us-east-1"),
        )
    return _matching({"region": raw}, "region", _REGION, "it is not an AWS Region name such as us-east-1")


def _proxy_mode(raw: Any) -> str:
    mode = _text({"proxy_mode": raw}, "proxy_mode")
    if mode not in PROXY_MODES:
        raise ConfigError(
            "proxy_mode",
            raw,
            f"supported modes are {', '.join(PROXY_MODES)} (QuotaGuard Static, an HTTP proxy)",
            _fix("proxy_mode", "static"),
        )
    return mode


def _retention(raw: Any) -> int:
    days = _whole_number({"log_retention_days": raw}, "log_retention_days", minimum=1)
    if days not in RETENTION_DAYS:
        allowed = ", ".join(str(value) for value in RETENTION_DAYS)
        raise ConfigError(
            "log_retention_days",
            raw,
            f"CloudWatch Logs accepts only these retention periods in days: {allowed}",
            _fix("log_retention_days", 90),
        )
    return days


def _schedule(raw: Any, idle_window_days: int) -> str:
    """Validate an EventBridge schedule expression. A rate must be shorter than the idle window."""
    expression = _text({"heartbeat_schedule": raw}, "heartbeat_schedule")
    fix = _fix("heartbeat_schedule", '"rate(1 day)"')

    cron = _CRON.match(expression)
    if cron:
        if len(cron.group("fields").split()) != 6:
            raise ConfigError("heartbeat_schedule", raw, "a cron expression has six fields", fix)
        return expression

    rate = _RATE.match(expression)
    if not rate:
        raise ConfigError(
            "heartbeat_schedule", raw, "it must be an EventBridge rate(...) or cron(...) expression", fix
        )
    value = int(rate.group("value"))
    unit = rate.group("unit")
    # EventBridge takes the singular unit for 1 and the plural for every other value.
    if value < 1 or (value == 1) != (not unit.endswith("s")):
        raise ConfigError(
            "heartbeat_schedule", raw, "use a positive value with a singular unit for 1, plural otherwise", fix
        )
    interval_seconds = value * _SECONDS_PER_UNIT[unit.rstrip("s")]
    if interval_seconds >= idle_window_days * 86400:
        raise ConfigError(
            "heartbeat_schedule",
            raw,
            f"the heartbeat must run more often than the idle window of {idle_window_days} days, "
            "or idle refresh tokens expire between two runs",
            fix,
        )
    return expression
