"""The Token Keeper stack: storage, secrets, functions and monitoring composed together."""

from __future__ import annotations

from aws_cdk import CfnOutput, Duration, Stack
from aws_cdk import aws_iam as iam
from constructs import Construct

from infra.callback import TokenKeeperCallback
from infra.config import StackConfig
from infra.events import TokenKeeperEvents
from infra.functions import TokenKeeperFunctions
from infra.heartbeat import TokenKeeperHeartbeat, expected_interval
from infra.monitoring import TokenKeeperMonitoring
from infra.secrets import TokenKeeperSecrets
from infra.storage import TokenStorage

__all__ = ["TokenKeeperStack"]


class TokenKeeperStack(Stack):
    """Stack that keeps Salesforce refresh token chains alive for the Lambdas that invoke its refresh function.

    The refresh function serves tokens, the heartbeat redeems idle connections on a schedule and
    announces changes on :attr:`announcements`, and the optional callback (``enable_callback``)
    finishes connecting an org after the admin's consent in the browser.
    """

    def __init__(self, scope: Construct, construct_id: str, *, config: StackConfig, **kwargs) -> None:
        super().__init__(
            scope,
            construct_id,
            description="Salesforce token keeper: refresh token chains and their alarms",
            **kwargs,
        )
        self.config = config

        self.storage = TokenStorage(self, "Storage")
        self.secrets = TokenKeeperSecrets(
            self,
            "Secrets",
            encryption_key=self.storage.data_key,
            client_secret_name=config.client_secret_name,
            proxy_secret_name=config.proxy_secret_name,
        )
        self.functions = TokenKeeperFunctions(
            self, "Functions", config=config, storage=self.storage, secrets=self.secrets
        )
        self.monitoring = TokenKeeperMonitoring(
            self,
            "Monitoring",
            refresh_function=self.functions.refresh,
            refresh_dlq=self.functions.refresh_dlq,
            alarm_email=config.alarm_email,
            dashboard_name=config.stack_name,
        )

        self.announcements = TokenKeeperEvents(self, "Announcements", bus_name=f"{config.stack_name}-events")
        self.heartbeat = TokenKeeperHeartbeat(
            self,
            "Heartbeat",
            config=config,
            functions=self.functions,
            storage=self.storage,
            announcements=self.announcements,
        )
        self.monitoring.add_heartbeat_alarms(
            heartbeat_function=self.heartbeat.scheduler,
            expected_interval=expected_interval(config.heartbeat_period_hours),
            max_idle_age=Duration.seconds(round(config.heartbeat_max_idle_days * 86400)),
            idle_window=Duration.days(config.idle_window_days),
            worker_function=self.heartbeat.worker,
            worker_dlq=self.heartbeat.dead_letter_queue,
        )

        self.callback: TokenKeeperCallback | None = None
        if config.enable_callback:
            self.callback = TokenKeeperCallback(
                self, "Callback", functions=self.functions, storage=self.storage, secrets=self.secrets
            )

        self._add_outputs()

    def grant_invoke_refresh(self, grantee: iam.IGrantable) -> iam.Grant:
        """Allow ``grantee`` (another function's role) to invoke the refresh function."""
        return self.functions.grant_invoke_refresh(grantee)

    def _add_outputs(self) -> None:
        CfnOutput(
            self,
            "RefreshFunctionArn",
            value=self.functions.refresh.function_arn,
            description="Invoke this function to get a valid access token for a connection",
            export_name=f"{self.stack_name}-RefreshFunctionArn",
        )
        CfnOutput(self, "RefreshFunctionName", value=self.functions.refresh.function_name)
        # Not exported: every change publishes a new layer version, and an imported export cannot change.
        CfnOutput(
            self,
            "SharedLayerArn",
            value=self.functions.shared_layer.layer_version_arn,
            description="Layer with the tokenkeeper package, for callers that use tokenkeeper.client",
        )
        CfnOutput(self, "TableName", value=self.storage.table.table_name)
        CfnOutput(
            self,
            "ClientSecretId",
            value=self.secrets.client_credentials_id,
            description="Secret for the External Client App's client id and secret (JSON)",
        )
        CfnOutput(
            self,
            "ProxySecretId",
            value=self.secrets.proxy_url_id,
            description="Secret for the QuotaGuard Static proxy URL (plain text)",
        )
        CfnOutput(self, "AlarmTopicArn", value=self.monitoring.topic.topic_arn)
        CfnOutput(self, "DeadLetterQueueUrl", value=self.functions.refresh_dlq.queue_url)

        CfnOutput(self, "HeartbeatFunctionName", value=self.heartbeat.scheduler.function_name)
        if self.heartbeat.dead_letter_queue is not None:
            CfnOutput(self, "HeartbeatDeadLetterQueueUrl", value=self.heartbeat.dead_letter_queue.queue_url)
        CfnOutput(
            self,
            "EventBusName",
            value=self.announcements.bus.event_bus_name,
            description="Bus of the tokenkeeper announcements. Add a rule here to act on them",
        )
        CfnOutput(self, "EventBusArn", value=self.announcements.bus.event_bus_arn)

        if self.callback is not None:
            CfnOutput(
                self,
                "CallbackUrl",
                value=self.callback.url.url,
                description="Register this as the External Client App's callback URL",
            )
