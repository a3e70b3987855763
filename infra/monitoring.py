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
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from infra.functions import METRICS_NAMESPACE, SERVICE_NAME

__all__ = ["TokenKeeperMonitoring", "ALARMED_FAILURE_KINDS"]

METRIC_REQUESTS = "TokenRequests"
METRIC_REDEMPTIONS = "Redemptions"
METRIC_CACHE_HITS = "CacheHits"
METRIC_FAILURES = "RedemptionFailures"
METRIC_TOKENS_RESCUED = "TokensRescued"

# Failure kinds that need an operator: a configuration problem or a chain that needs the customer
# to authorize again. Transient kinds are retried by the runtime and only shown on the dashboard.
ALARMED_FAILURE_KINDS = ("egress_not_allowlisted", "proxy_authentication_failed", "chain_dead")

PERIOD = Duration.minutes(5)


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
        treat_missing_data: cloudwatch.TreatMissingData = cloudwatch.TreatMissingData.NOT_BREACHING,
    ) -> cloudwatch.Alarm:
        """Create an alarm over one period that notifies the topic when it fires and when it recovers."""
        alarm = cloudwatch.Alarm(
            self,
            construct_id,
            metric=metric,
            alarm_description=description,
            threshold=threshold,
            comparison_operator=comparison,
            evaluation_periods=1,
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
        oldest_idle_age: cloudwatch.IMetric,
        max_idle_age: Duration,
    ) -> list[cloudwatch.Alarm]:
        """Alarm when the heartbeat has not run for one ``expected_interval`` or a connection idles too long.

        ``oldest_idle_age`` is the heartbeat's own metric: the age, in seconds, of the connection
        redeemed longest ago. ``max_idle_age`` is the age at which operators must act. Set it below
        the Salesforce idle window, so that there is time to act before the token expires.
        """
        invocations = heartbeat_function.metric_invocations(period=expected_interval, statistic="Sum")
        missing = self.add_alarm(
            "HeartbeatMissing",
            metric=invocations,
            description="The heartbeat did not run in its scheduled interval, so idle refresh tokens may expire.",
            threshold=1,
            comparison=cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD,
            treat_missing_data=cloudwatch.TreatMissingData.BREACHING,
        )
        idle = self.add_alarm(
            "OldestIdleAge",
            metric=oldest_idle_age,
            description="A connection has not been redeemed for longer than the allowed idle age.",
            threshold=max_idle_age.to_seconds(),
        )
        return [missing, idle]

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
