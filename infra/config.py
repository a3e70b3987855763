"""Deployment settings read from CDK context and validated before any construct is built.

Every value comes from the `context` block of cdk.json or from `cdk ... -c key=value`, which
overrides it. A missing key takes the default in :data:`DEFAULTS`, and cdk.json lists the same
values so that the settings are visible where they are changed. An invalid value raises
:class:`ConfigError` naming the key, the value and the fix, before anything is synthesized.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from aws_cdk import aws_logs as logs

# The schedule check is the runtime's own, so synth and the heartbeat function apply one rule.
_RUNTIME_PACKAGE_DIR = str(Path(__file__).resolve().parents[1] / "functions" / "common" / "python")
if _RUNTIME_PACKAGE_DIR not in sys.path:
    sys.path.insert(0, _RUNTIME_PACKAGE_DIR)

from tokenkeeper.errors import ConfigurationError  # noqa: E402
from tokenkeeper.heartbeat import MAX_CONCURRENCY, validate_schedule  # noqa: E402

__all__ = [
    "ConfigError",
    "StackConfig",
    "DEFAULTS",
    "RETENTION_DAYS",
    "HEARTBEAT_MODES",
    "HEARTBEAT_MODE_SINGLE",
    "HEARTBEAT_MODE_FANOUT",
    "load_config",
]

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
    "heartbeat_threshold_days": 20,
    # None: derived from a rate(...) schedule. A cron(...) schedule needs it set.
    "heartbeat_period_hours": None,
    "heartbeat_failed_runs_tolerated": 3,
    "heartbeat_concurrency": 8,
    "heartbeat_mode": "single",
    "enable_callback": False,
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

# Keys the stack no longer reads, with the reason. A leftover value fails the synth instead of
# being ignored, so nobody deploys in the belief that it still has an effect.
REMOVED_KEYS: Mapping[str, str] = {
    "proxy_mode": (
        "the stack no longer reads it, because the functions choose the proxy type from the scheme of "
        "the proxy URL secret (http:// QuotaGuard Static, https:// QuotaGuard Shield, socks5:// or "
        "socks5h:// SOCKS5)"
    ),
}

# single: one scheduled invocation redeems the due connections on a thread pool.
# fanout: the scheduled invocation queues the due connection ids and SQS-triggered workers redeem them.
HEARTBEAT_MODE_SINGLE = "single"
HEARTBEAT_MODE_FANOUT = "fanout"
HEARTBEAT_MODES = (HEARTBEAT_MODE_SINGLE, HEARTBEAT_MODE_FANOUT)
# Lambda's SQS event source accepts a maximum concurrency of 2 to 1000.
MIN_FANOUT_CONCURRENCY = 2
# The HeartbeatMissing alarm spans two runs, and CloudWatch evaluates an alarm over at most 7 days.
MAX_HEARTBEAT_PERIOD_HOURS = 84

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
    heartbeat_threshold_days: float
    heartbeat_period_hours: float
    heartbeat_failed_runs_tolerated: int
    heartbeat_concurrency: int
    heartbeat_mode: str
    enable_callback: bool
    alarm_email: str
    reserved_concurrency: int
    log_retention_days: int
    client_secret_name: str
    proxy_secret_name: str
    powertools_layer_version: int

    @property
    def log_retention(self) -> logs.RetentionDays:
        return RETENTION_DAYS[self.log_retention_days]

    @property
    def heartbeat_fanout(self) -> bool:
        return self.heartbeat_mode == HEARTBEAT_MODE_FANOUT

    @property
    def heartbeat_max_idle_days(self) -> float:
        """Return the longest idle age the schedule allows: due, then one run plus the tolerated failed runs.

        :func:`tokenkeeper.heartbeat.validate_schedule` keeps it at least one day below the idle window.
        """
        return self.heartbeat_threshold_days + self.heartbeat_period_hours / 24 * (
            1 + self.heartbeat_failed_runs_tolerated
        )

    @classmethod
    def from_mapping(cls, context: Mapping[str, Any]) -> "StackConfig":
        """Validate ``context``, keyed as in cdk.json. A missing key takes its default."""
        _reject_removed_keys(context)
        values = {key: context.get(key, default) for key, default in DEFAULTS.items()}
        idle_window_days = _whole_number(values, "idle_window_days", minimum=1)
        schedule = _schedule(values["heartbeat_schedule"], idle_window_days)
        threshold_days = _positive_number(values, "heartbeat_threshold_days")
        period_hours = _period_hours(values["heartbeat_period_hours"], schedule)
        failed_runs_tolerated = _whole_number(values, "heartbeat_failed_runs_tolerated", minimum=0)
        _check_heartbeat_timing(schedule, idle_window_days, threshold_days, period_hours, failed_runs_tolerated)
        _check_alarm_period(period_hours, schedule)
        mode = _heartbeat_mode(values["heartbeat_mode"])
        return cls(
            region=_region(values["region"]),
            stack_name=_matching(values, "stack_name", _STACK_NAME, _STACK_NAME_RULE),
            heartbeat_schedule=schedule,
            idle_window_days=idle_window_days,
            heartbeat_threshold_days=threshold_days,
            heartbeat_period_hours=period_hours,
            heartbeat_failed_runs_tolerated=failed_runs_tolerated,
            heartbeat_concurrency=_heartbeat_concurrency(values["heartbeat_concurrency"], mode),
            heartbeat_mode=mode,
            enable_callback=_boolean(values, "enable_callback"),
            alarm_email=_optional_matching(values, "alarm_email", _EMAIL, "it is not an email address"),
            reserved_concurrency=_whole_number(values, "reserved_concurrency", minimum=1),
            log_retention_days=_retention(values["log_retention_days"]),
            client_secret_name=_optional_matching(values, "client_secret_name", _SECRET_NAME, _SECRET_RULE),
            proxy_secret_name=_optional_matching(values, "proxy_secret_name", _SECRET_NAME, _SECRET_RULE),
            powertools_layer_version=_whole_number(values, "powertools_layer_version", minimum=1),
        )


def load_config(try_get_context: Callable[[str], Any]) -> StackConfig:
    """Build a :class:`StackConfig` from a lookup such as ``app.node.try_get_context``."""
    context = {key: try_get_context(key) for key in (*DEFAULTS, *REMOVED_KEYS)}
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


def _reject_removed_keys(context: Mapping[str, Any]) -> None:
    for key, reason in REMOVED_KEYS.items():
        if key in context:
            raise ConfigError(
                key, context[key], reason, f"Remove it from the context block of cdk.json and from any -c {key}=... option."
            )


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


def _rate_hours(expression: str) -> float | None:
    """Return the interval of a ``rate(...)`` expression in hours, or None for ``cron(...)``."""
    rate = _RATE.match(expression)
    if not rate:
        return None
    return int(rate.group("value")) * _SECONDS_PER_UNIT[rate.group("unit").rstrip("s")] / 3600


def _positive_number(values: Mapping[str, Any], key: str) -> float:
    raw = values[key]
    fix = _fix(key, DEFAULTS[key] if DEFAULTS[key] is not None else 24)
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise ConfigError(key, raw, "it must be a number", fix)
    try:
        number = float(raw)
    except ValueError:
        raise ConfigError(key, raw, "it must be a number", fix) from None
    if not math.isfinite(number) or number <= 0:
        raise ConfigError(key, raw, "it must be a number greater than 0", fix)
    return number


def _period_hours(raw: Any, schedule: str) -> float:
    """Return the hours between two heartbeat runs: the rate's interval, or the value given for a cron."""
    rate_hours = _rate_hours(schedule)
    if raw is None or raw == "":
        if rate_hours is None:
            raise ConfigError(
                "heartbeat_period_hours",
                raw,
                f"the schedule {schedule!r} is a cron expression, so the stack cannot derive the time between "
                "two runs from it",
                "Set heartbeat_period_hours in cdk.json to the longest gap between two runs of the cron "
                "expression, or pass it, for example -c heartbeat_period_hours=24.",
            )
        return rate_hours

    period_hours = _positive_number({"heartbeat_period_hours": raw}, "heartbeat_period_hours")
    if rate_hours is not None and not math.isclose(period_hours, rate_hours):
        raise ConfigError(
            "heartbeat_period_hours",
            raw,
            f"the schedule {schedule!r} runs every {rate_hours:g} hours",
            "Set heartbeat_period_hours to null in cdk.json for a rate(...) schedule, or to the rate's interval.",
        )
    return period_hours


def _check_alarm_period(period_hours: float, schedule: str) -> None:
    if period_hours > MAX_HEARTBEAT_PERIOD_HOURS:
        raise ConfigError(
            "heartbeat_schedule",
            schedule,
            f"it runs every {period_hours:g} hours, but the alarm for a missing run spans two runs and "
            f"CloudWatch evaluates an alarm over at most 7 days, so runs may be at most "
            f"{MAX_HEARTBEAT_PERIOD_HOURS} hours apart",
            _fix("heartbeat_schedule", '"rate(1 day)"'),
        )


def _check_heartbeat_timing(
    schedule: str, window_days: int, threshold_days: float, period_hours: float, failed_runs_tolerated: int
) -> None:
    """Raise ConfigError if a connection could reach the idle window between two successful runs."""
    try:
        validate_schedule(window_days, threshold_days, period_hours, failed_runs_tolerated)
    except ConfigurationError as exc:
        named = (
            f"idle_window_days={window_days}, heartbeat_threshold_days={threshold_days:g}, "
            f"heartbeat_schedule={schedule!r} (a run every {period_hours:g} hours), "
            f"heartbeat_failed_runs_tolerated={failed_runs_tolerated}"
        )
        runtime_message = exc.message.rstrip(".")
        raise ConfigError(
            "heartbeat_schedule",
            schedule,
            f"with {named}, {runtime_message[:1].lower()}{runtime_message[1:]}",
            "Run the heartbeat more often, lower heartbeat_threshold_days or "
            "heartbeat_failed_runs_tolerated in cdk.json, or pass them with -c.",
        ) from None


def _heartbeat_mode(raw: Any) -> str:
    mode = _text({"heartbeat_mode": raw}, "heartbeat_mode")
    if mode not in HEARTBEAT_MODES:
        raise ConfigError(
            "heartbeat_mode",
            raw,
            f"supported modes are {', '.join(HEARTBEAT_MODES)}",
            _fix("heartbeat_mode", HEARTBEAT_MODE_SINGLE),
        )
    return mode


def _heartbeat_concurrency(raw: Any, mode: str) -> int:
    concurrency = _whole_number({"heartbeat_concurrency": raw}, "heartbeat_concurrency", minimum=1)
    if mode == HEARTBEAT_MODE_FANOUT and concurrency < MIN_FANOUT_CONCURRENCY:
        raise ConfigError(
            "heartbeat_concurrency",
            raw,
            f"in fanout mode it is the SQS event source's maximum concurrency, which Lambda accepts "
            f"from {MIN_FANOUT_CONCURRENCY}",
            _fix("heartbeat_concurrency", DEFAULTS["heartbeat_concurrency"]),
        )
    if concurrency > MAX_CONCURRENCY:
        raise ConfigError(
            "heartbeat_concurrency",
            raw,
            f"it must be at most {MAX_CONCURRENCY}, the most redemptions the heartbeat runs at once",
            _fix("heartbeat_concurrency", DEFAULTS["heartbeat_concurrency"]),
        )
    return concurrency


def _boolean(values: Mapping[str, Any], key: str) -> bool:
    raw = values[key]
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in ("true", "false"):
        return raw.strip().lower() == "true"
    raise ConfigError(key, raw, "it must be true or false", _fix(key, "true"))
