"""The Token Keeper stack: storage, secrets, functions and monitoring composed together."""

from __future__ import annotations

from aws_cdk import CfnOutput, Stack
from aws_cdk import aws_iam as iam
from constructs import Construct

from infra.config import StackConfig
from infra.functions import TokenKeeperFunctions
from infra.monitoring import TokenKeeperMonitoring
from infra.secrets import TokenKeeperSecrets
from infra.storage import TokenStorage

__all__ = ["TokenKeeperStack"]


class TokenKeeperStack(Stack):
    """Stack that keeps Salesforce refresh token chains alive for the Lambdas that invoke its refresh function.

    The heartbeat function is added later through :attr:`functions` (``add_function``,
    ``grant_token_access``), :attr:`storage` (``grant_heartbeat_query``) and :attr:`monitoring`
    (``add_heartbeat_alarms``), with the schedule and idle window in :attr:`config`.
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
