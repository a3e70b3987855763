"""Alarms, the SNS topic they notify and the operations dashboard.

The custom metrics come from the runtime as CloudWatch embedded metric format (EMF) records in the
``TokenKeeper`` namespace, each with the dimension ``service=tokenkeeper``. ``RedemptionFailures``
carries a second dimension, ``kind``, the error kind of the failed redemption.
"""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_sqs as sqs
from constructs import Construct

import infra.config  # noqa: F401  (puts the runtime package on sys.path)
from infra.functions import METRICS_NAMESPACE, SERVICE_NAME

# The runtime's own metric names, so an alarm cannot watch a metric the functions do not emit.
from tokenkeeper.observability import (
    METRIC_REQUESTS,
    METRIC_REDEMPTIONS,
    METRIC_CACHE_HITS,
    METRIC_FAILURES,
    METRIC_TOKENS_RESCUED,
    METRIC_ANNOUNCEMENTS_FAILED,
    METRIC_HEARTBEAT_DUE,
    METRIC_HEARTBEAT_REFRESHED,
    METRIC_HEARTBEAT_SKIPPED,
    METRIC_HEARTBEAT_FAILED,
    METRIC_HEARTBEAT_REAUTHORIZATION_REQUIRED,
    METRIC_HEARTBEAT_RECOVERED,
    METRIC_HEARTBEAT_NOT_STARTED,
    METRIC_HEARTBEAT_ENQUEUED,
    METRIC_HEARTBEAT_OLDEST_IDLE,
)

__all__ = ["TokenKeeperMonitoring", "ALARMED_FAILURE_KINDS"]


# Failure kinds that need an operator: a configuration problem or a chain that needs the customer
# to authorize again. Transient kinds are retried by the runtime and only shown on the dashboard.
ALARMED_FAILURE_KINDS = ("egress_not_allowlisted", "proxy_authentication_failed", "chain_dead")

# Not emitted by the runtime: a metric filter counts the run summaries whose Query on the
# heartbeat-due index failed, because such a run still emits HeartbeatOldestIdleSeconds.
# NOTE: the pattern matches the top-level field that the Powertools logger writes. A test checks
# it against that logger's output, not against a deployed log group.
METRIC_HEARTBEAT_QUERY_FAILED = "HeartbeatQueryFailed"
HEARTBEAT_QUERY_FAILED_PATTERN = '{ $.stopped_reason = "query_failed" }'
HEARTBEAT_RUN_COUNTERS = (
    METRIC_HEARTBEAT_DUE,
    METRIC_HEARTBEAT_REFRESHED,
    METRIC_HEARTBEAT_SKIPPED,
    METRIC_HEARTBEAT_FAILED,
    METRIC_HEARTBEAT_REAUTHORIZATION_REQUIRED,
    METRIC_HEARTBEAT_RECOVERED,
    METRIC_HEARTBEAT_NOT_STARTED,
    METRIC_HEARTBEAT_ENQUEUED,
)

PERIOD = Duration.minutes(5)
# Scheduled intervals without a finished heartbeat run before HeartbeatMissing fires.
HEARTBEAT_MISSING_PERIODS = 2
# A run emits one data point per counter, so hourly sums show each run as one bar.
HEARTBEAT_WIDGET_PERIOD = Duration.hours(1)


class TokenKeeperMonitoring(Construct):
    """An encrypted SNS topic, the refresh function's alarms and a dashboard with the same figures."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        refresh_function: lambda_.IFunction,
        refresh_dlq: sqs.IQueue,
        alarm_email: str = "",
        dashboard_name: str,
    ) -> None:
        super().__init__(scope, construct_id)

        topic_key = kms.Key(
            self,
            "AlarmTopicKey",
            description="Token Keeper: encrypts the alarm topic",
            enable_key_rotation=True,
            # Alarm notifications are not kept, so nothing needs the key after the stack is gone.
            removal_policy=RemovalPolicy.DESTROY,
        )
        # CloudWatch needs this key to publish to the encrypted topic. The AWS managed key for SNS
        # cannot be used, because its key policy does not allow CloudWatch and cannot be changed.
        topic_key.add_to_resource_policy(
            iam.PolicyStatement(
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                actions=["kms:Decrypt", "kms:GenerateDataKey*"],
                resources=["*"],
            )
        )
        self.topic = sns.Topic(
            self,
            "AlarmTopic",
            display_name="Token Keeper alarms",
            master_key=topic_key,
            enforce_ssl=True,
        )
        if alarm_email:
            self.topic.add_subscription(subscriptions.EmailSubscription(alarm_email))

        self.alarms: list[cloudwatch.Alarm] = []
        self._add_function_alarms(refresh_function, refresh_dlq)
        self._add_custom_metric_alarms()

        self.dashboard = cloudwatch.Dashboard(self, "Dashboard", dashboard_name=dashboard_name)
        self._add_dashboard_widgets(refresh_function, refresh_dlq)

    def add_alarm(
        self,
        construct_id: str,
        *,
        metric: cloudwatch.IMetric,
        description: str,
        threshold: float = 1,
        comparison: cloudwatch.ComparisonOperator = cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
        evaluation_periods: int = 1,
        treat_missing_data: cloudwatch.TreatMissingData = cloudwatch.TreatMissingData.NOT_BREACHING,
    ) -> cloudwatch.Alarm:
        """Create an alarm that fires when all ``evaluation_periods`` breach, and notifies the topic when it fires and recovers."""
        alarm = cloudwatch.Alarm(
            self,
            construct_id,
            metric=metric,
            alarm_description=description,
            threshold=threshold,
            comparison_operator=comparison,
            evaluation_periods=evaluation_periods,
            treat_missing_data=treat_missing_data,
        )
        alarm.add_alarm_action(cloudwatch_actions.SnsAction(self.topic))
        alarm.add_ok_action(cloudwatch_actions.SnsAction(self.topic))
        self.alarms.append(alarm)
        return alarm

    def add_heartbeat_alarms(
        self,
        *,
        heartbeat_function: lambda_.IFunction,
        expected_interval: Duration,
        max_idle_age: Duration,
        idle_window: Duration,
        worker_function: lambda_.IFunction | None = None,
        worker_dlq: sqs.IQueue | None = None,
    ) -> list[cloudwatch.Alarm]:
        """Add the heartbeat's alarms and dashboard rows, and return the alarms.

        ``expected_interval`` is the time between two scheduled runs. ``max_idle_age`` is the
        longest idle age the schedule allows, below ``idle_window``, the age at which Salesforce
        expires a refresh token. ``worker_function`` and ``worker_dlq`` exist in fanout mode only.
        """
        # The scheduled run emits the oldest idle age once when it finishes, also when nothing is
        # due, so a period without a data point is a period without a finished run.
        runs = heartbeat_metric(METRIC_HEARTBEAT_OLDEST_IDLE, statistic="SampleCount", period=expected_interval)
        alarms = [
            self.add_alarm(
                "HeartbeatMissing",
                metric=runs,
                description="No heartbeat run finished in two scheduled intervals, so idle refresh tokens may expire.",
                threshold=1,
                comparison=cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD,
                evaluation_periods=HEARTBEAT_MISSING_PERIODS,
                treat_missing_data=cloudwatch.TreatMissingData.BREACHING,
            ),
            self.add_alarm(
                "HeartbeatOldestIdleAge",
                metric=heartbeat_metric(METRIC_HEARTBEAT_OLDEST_IDLE, statistic="Maximum", period=expected_interval),
                description="A due connection has been idle longer than the heartbeat schedule allows. It "
                f"expires when idle for {idle_window.to_days():g} days.",
                threshold=max_idle_age.to_seconds(),
                comparison=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            ),
            self.add_alarm(
                "HeartbeatQueryFailed",
                metric=self._query_failures(heartbeat_function),
                description="A heartbeat run could not query the heartbeat-due index, so the connections it did "
                "not read stay due. See the heartbeat logs.",
            ),
            self.add_alarm(
                "HeartbeatReauthorizationRequired",
                metric=heartbeat_metric(METRIC_HEARTBEAT_REAUTHORIZATION_REQUIRED, statistic="Sum", period=PERIOD),
                description="The heartbeat found a dead refresh token chain. The subscriber's admin must connect again.",
            ),
        ]
        if worker_dlq is not None:
            alarms.append(
                self.add_alarm(
                    "HeartbeatDeadLetters",
                    metric=worker_dlq.metric_approximate_number_of_messages_visible(period=PERIOD, statistic="Maximum"),
                    description="A heartbeat message failed on every delivery and is in the heartbeat dead-letter queue.",
                )
            )
        self._add_heartbeat_widgets(heartbeat_function, worker_function, worker_dlq, max_idle_age, idle_window, alarms)
        return alarms

    def _add_function_alarms(self, function: lambda_.IFunction, dlq: sqs.IQueue) -> None:
        self.add_alarm(
            "RefreshErrors",
            metric=function.metric_errors(period=PERIOD, statistic="Sum"),
            description="The refresh function failed with an unhandled error or a timeout.",
        )
        self.add_alarm(
            "RefreshThrottles",
            metric=function.metric_throttles(period=PERIOD, statistic="Sum"),
            description="The refresh function was throttled at its reserved concurrency.",
        )
        self.add_alarm(
            "RefreshDeadLetters",
            metric=dlq.metric_approximate_number_of_messages_visible(period=PERIOD, statistic="Maximum"),
            description="An asynchronous refresh invocation failed after its retries and is in the DLQ.",
        )

    def _add_custom_metric_alarms(self) -> None:
        descriptions = {
            "egress_not_allowlisted": "Salesforce rejected the proxy's egress address because the org's IP "
            "allowlist lacks a QuotaGuard static IP.",
            "proxy_authentication_failed": "The proxy rejected its credentials with HTTP 407, so the proxy URL "
            "secret is wrong or outdated.",
            "chain_dead": "A refresh token chain was revoked or expired, so the customer must authorize again.",
        }
        for kind in ALARMED_FAILURE_KINDS:
            self.add_alarm(
                f"RedemptionFailures{_pascal_case(kind)}",
                metric=failure_metric(kind),
                description=descriptions[kind],
            )
        self.add_alarm(
            "TokensRescued",
            metric=custom_metric(METRIC_TOKENS_RESCUED),
            description="A rotated token could not be written to its connection item. See the refresh logs.",
        )

    def _add_dashboard_widgets(self, function: lambda_.IFunction, dlq: sqs.IQueue) -> None:
        # SEARCH shows every failure kind the runtime emits, including the ones without an alarm.
        all_failures = cloudwatch.MathExpression(
            expression=(
                f"SEARCH('{{{METRICS_NAMESPACE},kind,service}} MetricName=\"{METRIC_FAILURES}\"', 'Sum', "
                f"{int(PERIOD.to_seconds())})"
            ),
            label="",
            period=PERIOD,
        )
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="Token requests, redemptions and cache hits",
                left=[
                    custom_metric(METRIC_REQUESTS),
                    custom_metric(METRIC_REDEMPTIONS),
                    custom_metric(METRIC_CACHE_HITS),
                ],
                width=12,
            ),
            cloudwatch.GraphWidget(title="Redemption failures by kind", left=[all_failures], width=12),
        )
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="Tokens rescued and dead letters",
                left=[
                    custom_metric(METRIC_TOKENS_RESCUED),
                    dlq.metric_approximate_number_of_messages_visible(period=PERIOD, statistic="Maximum"),
                ],
                width=12,
            ),
            cloudwatch.GraphWidget(
                title="Refresh function",
                left=[
                    function.metric_invocations(period=PERIOD, statistic="Sum"),
                    function.metric_errors(period=PERIOD, statistic="Sum"),
                    function.metric_throttles(period=PERIOD, statistic="Sum"),
                ],
                right=[function.metric_duration(period=PERIOD, statistic="p99")],
                width=12,
            ),
        )
        self.dashboard.add_widgets(cloudwatch.AlarmStatusWidget(title="Alarms", alarms=self.alarms, width=24))

    def _query_failures(self, heartbeat_function: lambda_.IFunction) -> cloudwatch.Metric:
        """Count the heartbeat's run summaries with ``stopped_reason`` ``query_failed`` in its JSON logs."""
        metric_filter = logs.MetricFilter(
            self,
            "HeartbeatQueryFailedFilter",
            log_group=heartbeat_function.log_group,
            filter_pattern=logs.FilterPattern.literal(HEARTBEAT_QUERY_FAILED_PATTERN),
            metric_namespace=METRICS_NAMESPACE,
            metric_name=METRIC_HEARTBEAT_QUERY_FAILED,
            metric_value="1",
        )
        return metric_filter.metric(statistic="Sum", period=PERIOD)

    def _add_heartbeat_widgets(
        self,
        scheduler: lambda_.IFunction,
        worker: lambda_.IFunction | None,
        worker_dlq: sqs.IQueue | None,
        max_idle_age: Duration,
        idle_window: Duration,
        alarms: list[cloudwatch.Alarm],
    ) -> None:
        period = HEARTBEAT_WIDGET_PERIOD
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="Heartbeat runs",
                left=[heartbeat_metric(name, statistic="Sum", period=period) for name in HEARTBEAT_RUN_COUNTERS],
                width=12,
            ),
            cloudwatch.GraphWidget(
                title="Oldest idle due connection (seconds)",
                left=[heartbeat_metric(METRIC_HEARTBEAT_OLDEST_IDLE, statistic="Maximum", period=period)],
                left_annotations=[
                    cloudwatch.HorizontalAnnotation(value=max_idle_age.to_seconds(), label="Alarm"),
                    cloudwatch.HorizontalAnnotation(value=idle_window.to_seconds(), label="Salesforce idle window"),
                ],
                width=12,
            ),
        )
        functions = [scheduler] if worker is None else [scheduler, worker]
        queue_metrics = [heartbeat_metric(METRIC_ANNOUNCEMENTS_FAILED, statistic="Sum", period=period)]
        if worker_dlq is not None:
            queue_metrics.append(worker_dlq.metric_approximate_number_of_messages_visible(period=period, statistic="Maximum"))
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="Heartbeat functions",
                left=[
                    metric
                    for function in functions
                    for metric in (
                        function.metric_invocations(period=period, statistic="Sum"),
                        function.metric_errors(period=period, statistic="Sum"),
                        function.metric_throttles(period=period, statistic="Sum"),
                    )
                ],
                right=[function.metric_duration(period=period, statistic="Maximum") for function in functions],
                width=12,
            ),
            cloudwatch.GraphWidget(title="Announcements failed and heartbeat dead letters", left=queue_metrics, width=12),
        )
        self.dashboard.add_widgets(cloudwatch.AlarmStatusWidget(title="Heartbeat alarms", alarms=alarms, width=24))


def heartbeat_metric(name: str, *, statistic: str, period: Duration) -> cloudwatch.Metric:
    """Return the heartbeat metric ``name``, emitted with the ``service`` dimension only."""
    return cloudwatch.Metric(
        namespace=METRICS_NAMESPACE,
        metric_name=name,
        dimensions_map={"service": SERVICE_NAME},
        statistic=statistic,
        period=period,
    )


def custom_metric(name: str) -> cloudwatch.Metric:
    """Return the counter ``name``, emitted with the ``service`` dimension only, summed per period."""
    return cloudwatch.Metric(
        namespace=METRICS_NAMESPACE,
        metric_name=name,
        dimensions_map={"service": SERVICE_NAME},
        statistic="Sum",
        period=PERIOD,
    )


def failure_metric(kind: str) -> cloudwatch.Metric:
    """Return the ``RedemptionFailures`` counter of one error kind, summed per period."""
    return cloudwatch.Metric(
        namespace=METRICS_NAMESPACE,
        metric_name=METRIC_FAILURES,
        dimensions_map={"service": SERVICE_NAME, "kind": kind},
        statistic="Sum",
        period=PERIOD,
    )


def _pascal_case(snake: str) -> str:
    return "".join(part.capitalize() for part in snake.split("_"))
