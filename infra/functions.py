"""The shared layer, the refresh function and the conventions every function of the product follows."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping

from aws_cdk import AssetHashType, Duration, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_destinations as destinations
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sqs as sqs
from cdk_nag import NagPackSuppression, NagSuppressions
from constructs import Construct

from infra.bundling import pinned_requirement, shared_layer_bundling_options
from infra.config import StackConfig
from infra.secrets import TokenKeeperSecrets
from infra.storage import TokenStorage

__all__ = [
    "TokenKeeperFunctions",
    "RUNTIME",
    "SERVICE_NAME",
    "METRICS_NAMESPACE",
    "REFRESH_TIMEOUT",
    "powertools_layer_arn",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
COMMON_DIR = REPO_ROOT / "functions" / "common"
REFRESH_DIR = REPO_ROOT / "functions" / "refresh"
REQUIREMENTS_FILE = REPO_ROOT / "requirements.txt"
# The packages the shared layer installs at the versions pinned in requirements.txt. PySocks lets
# urllib3 reach the proxy with a socks5:// or socks5h:// proxy URL (urllib3.contrib.socks).
LAYER_PACKAGES = ("urllib3", "pysocks")

RUNTIME = lambda_.Runtime.PYTHON_3_14
ARCHITECTURE = lambda_.Architecture.ARM_64
MEMORY_SIZE_MB = 256
SERVICE_NAME = "tokenkeeper"
METRICS_NAMESPACE = "TokenKeeper"
POWERTOOLS_ACCOUNT = "017000801446"

# The retry budget of one refresh call, equal to the runtime defaults in tokenkeeper.config (a
# test compares them). The timeout must outlast the longest path: waiting for another holder's
# lease, then every redemption attempt, then the store and, if it fails, the rescue write.
# Stopping in between could lose a token that Salesforce has already rotated.
CONNECT_TIMEOUT_SECONDS = 3.05
READ_TIMEOUT_SECONDS = 20.0
REDEEM_ATTEMPTS = 3
MAX_WAIT_SECONDS = 25.0
# Secret reads on a cold start, the conditional store with its retries and the rescue write.
STORE_MARGIN_SECONDS = 15.0
REFRESH_TIMEOUT = Duration.seconds(
    math.ceil(
        MAX_WAIT_SECONDS + (CONNECT_TIMEOUT_SECONDS + READ_TIMEOUT_SECONDS) * REDEEM_ATTEMPTS + STORE_MARGIN_SECONDS
    )
)

# Asynchronous invocations (the heartbeat may use them) are retried twice, then sent to the DLQ.
ASYNC_RETRY_ATTEMPTS = 2
ASYNC_MAX_EVENT_AGE = Duration.hours(1)
DLQ_RETENTION = Duration.days(14)

_XRAY_REASON = (
    "Active tracing adds xray:PutTraceSegments and xray:PutTelemetryRecords, which X-Ray only "
    "grants on Resource '*' because it has no resource-level permissions."
)


def powertools_layer_arn(region: str, runtime: lambda_.Runtime, layer_version: int) -> str:
    """Build the ARN of the official Powertools for AWS Lambda (Python) v3 layer for arm64.

    The pattern is arn:aws:lambda:{region}:017000801446:layer:AWSLambdaPowertoolsPythonV3-{python_version}-arm64:{version},
    where python_version is the runtime name without its dot, such as python314.
    """
    python_version = runtime.name.replace(".", "")
    layer_name = f"AWSLambdaPowertoolsPythonV3-{python_version}-arm64"
    return f"arn:aws:lambda:{region}:{POWERTOOLS_ACCOUNT}:layer:{layer_name}:{layer_version}"


class TokenKeeperFunctions(Construct):
    """The shared layer, the refresh function with its DLQ, and a builder for further functions.

    :meth:`add_function` gives every function of the product the same runtime, layers, JSON logs
    into a retained log group, active tracing and a role of its own with no managed policy. The
    heartbeat function is meant to be built with it and given access with
    :meth:`grant_token_access`.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: StackConfig,
        storage: TokenStorage,
        secrets: TokenKeeperSecrets,
    ) -> None:
        super().__init__(scope, construct_id)
        self._config = config
        self._storage = storage
        self._secrets = secrets

        self.shared_layer = lambda_.LayerVersion(
            self,
            "SharedLayer",
            description="Token Keeper shared code (tokenkeeper package), urllib3 and PySocks",
            code=lambda_.Code.from_asset(
                str(COMMON_DIR),
                asset_hash_type=AssetHashType.OUTPUT,
                bundling=shared_layer_bundling_options(
                    COMMON_DIR / "python" / "tokenkeeper",
                    [pinned_requirement(REQUIREMENTS_FILE, package) for package in LAYER_PACKAGES],
                ),
            ),
            compatible_runtimes=[RUNTIME],
            compatible_architectures=[ARCHITECTURE],
        )
        self.powertools_layer = lambda_.LayerVersion.from_layer_version_arn(
            self,
            "PowertoolsLayer",
            powertools_layer_arn(config.region, RUNTIME, config.powertools_layer_version),
        )

        self.refresh_dlq = sqs.Queue(
            self,
            "RefreshDeadLetters",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            retention_period=DLQ_RETENTION,
        )
        NagSuppressions.add_resource_suppressions(
            self.refresh_dlq.node.default_child,
            [
                NagPackSuppression(
                    id="AwsSolutions-SQS3",
                    reason="This queue is itself the dead-letter destination of the refresh function's "
                    "asynchronous invocations; nothing consumes it automatically that could fail again.",
                )
            ],
            apply_to_children=False,
        )

        self.refresh = self.add_function(
            "Refresh",
            code_directory=REFRESH_DIR,
            description="Return a valid Salesforce access token, redeeming the refresh token through the proxy",
            timeout=REFRESH_TIMEOUT,
            reserved_concurrency=config.reserved_concurrency,
            on_failure=destinations.SqsDestination(self.refresh_dlq),
        )
        self.grant_token_access(self.refresh)
        # An event with an "action" field runs the operator's actions, which also scan and delete.
        storage.grant_operator_actions(self.refresh)

    @property
    def token_environment(self) -> Mapping[str, str]:
        """The environment variables the tokenkeeper package reads at cold start."""
        return {
            "TOKENKEEPER_TABLE_NAME": self._storage.table.table_name,
            "TOKENKEEPER_CLIENT_SECRET_ID": self._secrets.client_credentials_id,
            "TOKENKEEPER_PROXY_SECRET_ID": self._secrets.proxy_url_id,
            "TOKENKEEPER_TOKEN_KEY_ID": self._storage.token_key.key_arn,
            "POWERTOOLS_SERVICE_NAME": SERVICE_NAME,
            "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE,
            # Return values carry access tokens and must never reach X-Ray.
            "POWERTOOLS_TRACER_CAPTURE_RESPONSE": "false",
        }

    def add_function(
        self,
        construct_id: str,
        *,
        code_directory: Path,
        description: str,
        timeout: Duration,
        handler: str = "app.handler",
        reserved_concurrency: int | None = None,
        on_failure: lambda_.IDestination | None = None,
        environment: Mapping[str, str] | None = None,
    ) -> lambda_.Function:
        """Build a function from ``code_directory`` with the shared conventions. ``handler`` is ``module.function``."""
        role = iam.Role(
            self,
            f"{construct_id}Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"Token Keeper {construct_id} function",
        )
        log_group = logs.LogGroup(
            self,
            f"{construct_id}Logs",
            retention=self._config.log_retention,
            removal_policy=RemovalPolicy.RETAIN,
        )
        # The log group exists before the function, so the role needs no logs:CreateLogGroup.
        log_group.grant_write(role)

        function = lambda_.Function(
            self,
            construct_id,
            description=description,
            runtime=RUNTIME,
            architecture=ARCHITECTURE,
            handler=handler,
            code=lambda_.Code.from_asset(str(code_directory), exclude=["__pycache__", "*.pyc", "tests"]),
            layers=[self.shared_layer, self.powertools_layer],
            memory_size=MEMORY_SIZE_MB,
            timeout=timeout,
            role=role,
            environment={**self.token_environment, **(environment or {})},
            tracing=lambda_.Tracing.ACTIVE,
            log_group=log_group,
            logging_format=lambda_.LoggingFormat.JSON,
            application_log_level_v2=lambda_.ApplicationLogLevel.INFO,
            system_log_level_v2=lambda_.SystemLogLevel.WARN,
            reserved_concurrent_executions=reserved_concurrency,
            on_failure=on_failure,
            retry_attempts=ASYNC_RETRY_ATTEMPTS,
            max_event_age=ASYNC_MAX_EVENT_AGE,
        )

        # CDK references the role with GetAtt and also lists it in DependsOn. cfn-lint reports
        # the redundant DependsOn as W3005, which is harmless, so this resource ignores that check.
        function.node.default_child.add_metadata("cfn-lint", {"config": {"ignore_checks": ["W3005"]}})

        default_policy = role.node.find_child("DefaultPolicy").node.default_child
        NagSuppressions.add_resource_suppressions(
            default_policy,
            [NagPackSuppression(id="AwsSolutions-IAM5", reason=_XRAY_REASON, applies_to=["Resource::*"])],
            apply_to_children=False,
        )
        return function

    def grant_token_access(self, function: lambda_.Function) -> None:
        """Grant what the refresh protocol needs: item access, both secrets and the two keys."""
        self._storage.grant_item_access(function)
        self._secrets.grant_read(function)
        self._storage.grant_token_sealing(function)
        region = Stack.of(self).region
        self._storage.grant_data_key_decrypt(
            function,
            via_services=[f"dynamodb.{region}.amazonaws.com", f"secretsmanager.{region}.amazonaws.com"],
        )

    def grant_invoke_refresh(self, grantee: iam.IGrantable) -> iam.Grant:
        """Grant lambda:InvokeFunction on the refresh function's unqualified ARN only."""
        return iam.Grant.add_to_principal(
            grantee=grantee,
            actions=["lambda:InvokeFunction"],
            resource_arns=[self.refresh.function_arn],
        )
