"""The Powertools logger, metrics and tracer every module of the product shares.

Metric names are constants here so that the stack's alarms and dashboard, the heartbeat and the
refresh function use one spelling. Values logged or measured are ids, counts and error kinds;
no token, client secret or proxy password is ever passed to any of these objects.
"""

from __future__ import annotations

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit, single_metric
from aws_lambda_powertools.metrics.functions import is_metrics_disabled

__all__ = [
    "SERVICE",
    "NAMESPACE",
    "logger",
    "metrics",
    "tracer",
    "count",
    "count_failure",
    "METRIC_REQUESTS",
    "METRIC_REDEMPTIONS",
    "METRIC_CACHE_HITS",
    "METRIC_FAILURES",
    "METRIC_LEASE_WAITS",
    "METRIC_TOKENS_RESCUED",
    "METRIC_ANNOUNCEMENTS_FAILED",
    "METRIC_HEARTBEAT_DUE",
    "METRIC_HEARTBEAT_REFRESHED",
    "METRIC_HEARTBEAT_SKIPPED",
    "METRIC_HEARTBEAT_FAILED",
    "METRIC_HEARTBEAT_REAUTHORIZATION_REQUIRED",
    "METRIC_HEARTBEAT_RECOVERED",
    "METRIC_HEARTBEAT_NOT_STARTED",
    "METRIC_HEARTBEAT_ENQUEUED",
    "METRIC_HEARTBEAT_OLDEST_IDLE",
]

SERVICE = "tokenkeeper"
NAMESPACE = "TokenKeeper"

METRIC_REQUESTS = "TokenRequests"
METRIC_REDEMPTIONS = "Redemptions"
METRIC_CACHE_HITS = "CacheHits"
METRIC_FAILURES = "RedemptionFailures"
METRIC_LEASE_WAITS = "LeaseWaits"
METRIC_TOKENS_RESCUED = "TokensRescued"
METRIC_ANNOUNCEMENTS_FAILED = "AnnouncementsFailed"

# One data point of each per heartbeat run (or per fan-out worker batch).
METRIC_HEARTBEAT_DUE = "HeartbeatDue"
METRIC_HEARTBEAT_REFRESHED = "HeartbeatRefreshed"
METRIC_HEARTBEAT_SKIPPED = "HeartbeatSkipped"
METRIC_HEARTBEAT_FAILED = "HeartbeatFailed"
METRIC_HEARTBEAT_REAUTHORIZATION_REQUIRED = "HeartbeatReauthorizationRequired"
METRIC_HEARTBEAT_RECOVERED = "HeartbeatRecovered"
# Due connections a run left for the next one because its time ran out.
METRIC_HEARTBEAT_NOT_STARTED = "HeartbeatNotStarted"
METRIC_HEARTBEAT_ENQUEUED = "HeartbeatEnqueued"
# Seconds since the least recently redeemed due connection was redeemed; alarm well before 30 days.
METRIC_HEARTBEAT_OLDEST_IDLE = "HeartbeatOldestIdleSeconds"

logger = Logger(service=SERVICE)
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)
tracer = Tracer(service=SERVICE)


def count(name: str, value: int = 1) -> None:
    """Add ``value`` to the counter ``name``; flushed with the invocation's other metrics."""
    metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)


def count_failure(kind: str) -> None:
    """Emit one ``RedemptionFailures`` data point with the error kind as a dimension.

    A separate metric object carries the ``kind`` dimension, so the invocation's shared metrics
    keep their own dimensions.
    """
    # single_metric prints its data point without checking POWERTOOLS_METRICS_DISABLED itself.
    if is_metrics_disabled():
        return
    with single_metric(
        name=METRIC_FAILURES,
        unit=MetricUnit.Count,
        value=1,
        namespace=NAMESPACE,
        default_dimensions={"service": SERVICE},
    ) as metric:
        metric.add_dimension(name="kind", value=kind)
