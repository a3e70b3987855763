"""The Powertools logger, metrics and tracer every module of the product shares.

Metric names are constants here so that the stack's alarms and dashboard, the heartbeat and the
refresh function use one spelling. Values logged or measured are ids, counts and error kinds;
no token, client secret or proxy password is ever passed to any of these objects.
"""

from __future__ import annotations

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit, single_metric

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
]

SERVICE = "tokenkeeper"
NAMESPACE = "TokenKeeper"

METRIC_REQUESTS = "TokenRequests"
METRIC_REDEMPTIONS = "Redemptions"
METRIC_CACHE_HITS = "CacheHits"
METRIC_FAILURES = "RedemptionFailures"
METRIC_LEASE_WAITS = "LeaseWaits"
METRIC_TOKENS_RESCUED = "TokensRescued"

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
    with single_metric(
        name=METRIC_FAILURES,
        unit=MetricUnit.Count,
        value=1,
        namespace=NAMESPACE,
        default_dimensions={"service": SERVICE},
    ) as metric:
        metric.add_dimension(name="kind", value=kind)
