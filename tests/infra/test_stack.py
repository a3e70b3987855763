"""Checks of the synthesized stack: cdk-nag, cfn-lint, the key properties and the context validation."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk.assertions import Annotations, Match

from infra import functions as functions_module
from infra.bundling import pinned_requirement
from infra.config import DEFAULTS, ConfigError, StackConfig
from infra.functions import REFRESH_TIMEOUT, RUNTIME, powertools_layer_arn
from infra.monitoring import ALARMED_FAILURE_KINDS
from infra.stack import TokenKeeperStack

REPO_ROOT = Path(__file__).resolve().parents[2]
NAG_RULES = Match.string_like_regexp("AwsSolutions-.*")

def logical_id(synthesized, construct) -> str:
    element = construct if hasattr(construct, "logical_id") else construct.node.default_child
    return synthesized.stack.resolve(element.logical_id)


def get_att_arn(logical: str) -> dict:
    return {"Fn::GetAtt": [logical, "Arn"]}


def normalized(statement: dict) -> str:
    """Render a policy statement with Action and Resource always as lists, for set comparison."""
    copy = dict(statement)
    for key in ("Action", "Resource"):
        value = copy.get(key)
        if value is not None and not isinstance(value, list):
            copy[key] = [value]
    return json.dumps(copy, sort_keys=True)


def role_statements(synthesized, role_logical_id: str) -> list[dict]:
    policies = [
        body
        for body in synthesized.resources("AWS::IAM::Policy").values()
        if {"Ref": role_logical_id} in body["Properties"]["Roles"]
    ]
    assert len(policies) == 1, f"expected one policy on {role_logical_id}, found {len(policies)}"
    return policies[0]["Properties"]["PolicyDocument"]["Statement"]


def run_cfn_lint(template: dict, region: str, tmp_path: Path) -> subprocess.CompletedProcess:
    path = tmp_path / "template.json"
    path.write_text(json.dumps(template), encoding="utf-8")
    cfn_lint = Path(sys.executable).parent / "cfn-lint"
    return subprocess.run(
        [str(cfn_lint), "--regions", region, "--", str(path)], capture_output=True, text=True, check=False
    )


# --- cdk-nag and cfn-lint -------------------------------------------------------------------


def test_nag_reports_no_errors(synthesized):
    errors = Annotations.from_stack(synthesized.stack).find_error("*", NAG_RULES)

    assert errors == [], "\n".join(f"{e.id}: {e.entry.data}" for e in errors)


def test_nag_reports_no_warnings(synthesized):
    warnings = Annotations.from_stack(synthesized.stack).find_warning("*", NAG_RULES)

    assert warnings == [], "\n".join(f"{w.id}: {w.entry.data}" for w in warnings)


def test_nag_suppressions_are_the_expected_few(synthesized):
    stack = synthesized.stack
    refresh_policy = stack.functions.refresh.role.node.find_child("DefaultPolicy")
    # Every suppression in the stack: (logical id, rule, IAM5 applies_to). A new suppression must
    # be added here on purpose.
    expected = {
        (logical_id(synthesized, stack.secrets.client_credentials), "AwsSolutions-SMG4", ()),
        (logical_id(synthesized, stack.secrets.proxy_url), "AwsSolutions-SMG4", ()),
        (logical_id(synthesized, stack.functions.refresh_dlq), "AwsSolutions-SQS3", ()),
        (logical_id(synthesized, refresh_policy), "AwsSolutions-IAM5", ("Resource::*",)),
    }

    found = set()
    for resource_id, resource in synthesized.template.to_json()["Resources"].items():
        for rule in resource.get("Metadata", {}).get("cdk_nag", {}).get("rules_to_suppress", []):
            found.add((resource_id, rule["id"], tuple(rule.get("applies_to", ()))))
            assert len(rule["reason"]) >= 60, f"{rule['id']} on {resource_id} needs a reason that says why"

    assert found == expected


def test_cfn_lint_reports_nothing(synthesized, tmp_path):
    result = run_cfn_lint(synthesized.template.to_json(), DEFAULTS["region"], tmp_path)

    assert result.stdout == "", result.stdout
    assert result.returncode == 0, result.stderr


# --- storage ------------------------------------------------------------------------------------


def test_table_encrypted_with_data_key(synthesized):
    _, table = synthesized.only("AWS::DynamoDB::Table")
    data_key = logical_id(synthesized, synthesized.stack.storage.data_key)

    assert table["Properties"]["SSESpecification"] == {
        "KMSMasterKeyId": get_att_arn(data_key),
        "SSEEnabled": True,
        "SSEType": "KMS",
    }


def test_table_protected_against_loss(synthesized):
    _, table = synthesized.only("AWS::DynamoDB::Table")

    assert table["Properties"]["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert table["Properties"]["DeletionProtectionEnabled"] is True
    assert table["DeletionPolicy"] == "Retain"
    assert table["UpdateReplacePolicy"] == "Retain"
    assert table["Properties"]["BillingMode"] == "PAY_PER_REQUEST"


def test_table_keys_and_heartbeat_index(synthesized):
    _, table = synthesized.only("AWS::DynamoDB::Table")
    properties = table["Properties"]

    assert properties["KeySchema"] == [{"AttributeName": "connection_id", "KeyType": "HASH"}]
    assert properties["GlobalSecondaryIndexes"] == [
        {
            "IndexName": "heartbeat-due",
            "KeySchema": [
                {"AttributeName": "heartbeat_partition", "KeyType": "HASH"},
                {"AttributeName": "last_redeemed_at", "KeyType": "RANGE"},
            ],
            "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": ["status", "consecutive_failures"]},
        }
    ]
    types = {item["AttributeName"]: item["AttributeType"] for item in properties["AttributeDefinitions"]}
    assert types == {"connection_id": "S", "heartbeat_partition": "S", "last_redeemed_at": "N"}


def test_storage_keys_rotate_and_are_retained(synthesized):
    storage = synthesized.stack.storage
    keys = synthesized.resources("AWS::KMS::Key")

    for key in (storage.data_key, storage.token_key):
        body = keys[logical_id(synthesized, key)]
        assert body["Properties"]["EnableKeyRotation"] is True
        assert body["DeletionPolicy"] == "Retain"


# --- secrets ------------------------------------------------------------------------------------


def test_secrets_created_without_values(synthesized):
    secrets = synthesized.resources("AWS::SecretsManager::Secret")
    data_key = logical_id(synthesized, synthesized.stack.storage.data_key)

    assert len(secrets) == 2
    for body in secrets.values():
        assert "SecretString" not in body["Properties"]
        assert body["Properties"]["KmsKeyId"] == get_att_arn(data_key)


# --- refresh function ------------------------------------------------------------------------


def refresh_function(synthesized) -> dict:
    return synthesized.resources("AWS::Lambda::Function")[logical_id(synthesized, synthesized.stack.functions.refresh)]


def test_refresh_runtime_and_tracing(synthesized):
    properties = refresh_function(synthesized)["Properties"]

    assert properties["Runtime"] == "python3.14"
    assert properties["Architectures"] == ["arm64"]
    assert properties["Handler"] == "app.handler"
    assert properties["MemorySize"] == 256
    assert properties["TracingConfig"] == {"Mode": "Active"}
    assert properties["ReservedConcurrentExecutions"] == DEFAULTS["reserved_concurrency"]


def test_refresh_logs_as_json_to_retained_group(synthesized):
    properties = refresh_function(synthesized)["Properties"]
    log_groups = synthesized.resources("AWS::Logs::LogGroup")
    group_id = properties["LoggingConfig"]["LogGroup"]["Ref"]

    assert properties["LoggingConfig"]["LogFormat"] == "JSON"
    assert log_groups[group_id]["Properties"]["RetentionInDays"] == DEFAULTS["log_retention_days"]
    assert log_groups[group_id]["DeletionPolicy"] == "Retain"


def test_refresh_environment(synthesized):
    stack = synthesized.stack
    variables = refresh_function(synthesized)["Properties"]["Environment"]["Variables"]

    assert variables == {
        "TOKENKEEPER_TABLE_NAME": {"Ref": logical_id(synthesized, stack.storage.table)},
        "TOKENKEEPER_CLIENT_SECRET_ID": {"Ref": logical_id(synthesized, stack.secrets.client_credentials)},
        "TOKENKEEPER_PROXY_SECRET_ID": {"Ref": logical_id(synthesized, stack.secrets.proxy_url)},
        "TOKENKEEPER_TOKEN_KEY_ID": get_att_arn(logical_id(synthesized, stack.storage.token_key)),
        "POWERTOOLS_SERVICE_NAME": "tokenkeeper",
        "POWERTOOLS_METRICS_NAMESPACE": "TokenKeeper",
        "POWERTOOLS_TRACER_CAPTURE_RESPONSE": "false",
    }


def test_refresh_layers(synthesized):
    layers = refresh_function(synthesized)["Properties"]["Layers"]
    shared = logical_id(synthesized, synthesized.stack.functions.shared_layer)

    assert layers == [
        {"Ref": shared},
        "arn:aws:lambda:us-east-1:017000801446:layer:AWSLambdaPowertoolsPythonV3-python314-arm64:"
        f"{DEFAULTS['powertools_layer_version']}",
    ]


def test_refresh_policy_is_exact(synthesized):
    stack = synthesized.stack
    function = refresh_function(synthesized)
    role = function["Properties"]["Role"]["Fn::GetAtt"][0]
    region = DEFAULTS["region"]
    expected = [
        {
            "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
            "Effect": "Allow",
            "Resource": get_att_arn(function["Properties"]["LoggingConfig"]["LogGroup"]["Ref"]),
        },
        {"Action": ["xray:PutTraceSegments", "xray:PutTelemetryRecords"], "Effect": "Allow", "Resource": "*"},
        {
            "Action": ["sqs:SendMessage", "sqs:GetQueueAttributes", "sqs:GetQueueUrl"],
            "Effect": "Allow",
            "Resource": get_att_arn(logical_id(synthesized, stack.functions.refresh_dlq)),
        },
        {
            "Action": ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"],
            "Effect": "Allow",
            "Resource": get_att_arn(logical_id(synthesized, stack.storage.table)),
        },
        {
            "Action": "secretsmanager:GetSecretValue",
            "Effect": "Allow",
            "Resource": [
                {"Ref": logical_id(synthesized, stack.secrets.client_credentials)},
                {"Ref": logical_id(synthesized, stack.secrets.proxy_url)},
            ],
        },
        {
            "Action": ["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey"],
            "Condition": {
                "ForAllValues:StringEquals": {"kms:EncryptionContextKeys": ["connection_id"]},
                "Null": {"kms:EncryptionContextKeys": "false"},
            },
            "Effect": "Allow",
            "Resource": get_att_arn(logical_id(synthesized, stack.storage.token_key)),
        },
        {
            "Action": "kms:Decrypt",
            "Condition": {
                "StringEquals": {
                    "kms:ViaService": [f"dynamodb.{region}.amazonaws.com", f"secretsmanager.{region}.amazonaws.com"]
                }
            },
            "Effect": "Allow",
            "Resource": get_att_arn(logical_id(synthesized, stack.storage.data_key)),
        },
    ]

    statements = role_statements(synthesized, role)

    assert len(statements) == len(expected)
    assert {normalized(s) for s in statements} == {normalized(s) for s in expected}


def test_refresh_role_has_no_managed_policy(synthesized):
    role_id = refresh_function(synthesized)["Properties"]["Role"]["Fn::GetAtt"][0]
    role = synthesized.resources("AWS::IAM::Role")[role_id]

    assert "ManagedPolicyArns" not in role["Properties"]
    assert role["Properties"]["AssumeRolePolicyDocument"]["Statement"] == [
        {"Action": "sts:AssumeRole", "Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}}
    ]


def test_refresh_timeout_outlasts_retry_budget(synthesized):
    timeout = refresh_function(synthesized)["Properties"]["Timeout"]
    budget = (
        functions_module.MAX_WAIT_SECONDS
        + (functions_module.CONNECT_TIMEOUT_SECONDS + functions_module.READ_TIMEOUT_SECONDS)
        * functions_module.REDEEM_ATTEMPTS
    )

    assert timeout == REFRESH_TIMEOUT.to_seconds()
    assert timeout >= budget + functions_module.STORE_MARGIN_SECONDS
    assert timeout <= 900


def test_retry_budget_matches_runtime_defaults():
    from tokenkeeper import config as runtime_config

    assert functions_module.CONNECT_TIMEOUT_SECONDS == runtime_config.DEFAULT_CONNECT_TIMEOUT_SECONDS
    assert functions_module.READ_TIMEOUT_SECONDS == runtime_config.DEFAULT_READ_TIMEOUT_SECONDS
    assert functions_module.REDEEM_ATTEMPTS == runtime_config.DEFAULT_REDEEM_ATTEMPTS
    assert functions_module.MAX_WAIT_SECONDS == runtime_config.DEFAULT_MAX_WAIT_SECONDS


def test_refresh_failures_go_to_encrypted_dlq(synthesized):
    stack = synthesized.stack
    dlq_id = logical_id(synthesized, stack.functions.refresh_dlq)
    _, invoke_config = synthesized.only("AWS::Lambda::EventInvokeConfig")
    queue = synthesized.resources("AWS::SQS::Queue")[dlq_id]
    _, queue_policy = synthesized.only("AWS::SQS::QueuePolicy")

    assert invoke_config["Properties"]["DestinationConfig"] == {"OnFailure": {"Destination": get_att_arn(dlq_id)}}
    assert invoke_config["Properties"]["FunctionName"] == {"Ref": logical_id(synthesized, stack.functions.refresh)}
    assert queue["Properties"]["SqsManagedSseEnabled"] is True
    assert queue_policy["Properties"]["PolicyDocument"]["Statement"][0]["Condition"] == {
        "Bool": {"aws:SecureTransport": "false"}
    }
    assert queue_policy["Properties"]["PolicyDocument"]["Statement"][0]["Effect"] == "Deny"


def test_shared_layer_bundles_package_and_urllib3(synthesized):
    layer_id = logical_id(synthesized, synthesized.stack.functions.shared_layer)
    layer = synthesized.resources("AWS::Lambda::LayerVersion")[layer_id]
    # The asset's S3 key is its hash; the assembly stages it as asset.<hash>.
    asset_hash = layer["Properties"]["Content"]["S3Key"].removesuffix(".zip")
    site = synthesized.assembly_dir / f"asset.{asset_hash}" / "python"
    urllib3_pin = pinned_requirement(REPO_ROOT / "requirements.txt", "urllib3")
    urllib3_version = urllib3_pin.split("==")[1]

    assert (site / "tokenkeeper" / "config.py").is_file()
    assert (site / "urllib3" / "__init__.py").is_file()
    assert (site / f"urllib3-{urllib3_version}.dist-info").is_dir()
    assert list(site.rglob("__pycache__")) == []
    assert layer["Properties"]["CompatibleRuntimes"] == ["python3.14"]
    assert layer["Properties"]["CompatibleArchitectures"] == ["arm64"]


def test_refresh_arn_exported(synthesized):
    outputs = synthesized.template.to_json()["Outputs"]

    assert outputs["RefreshFunctionArn"]["Value"] == get_att_arn(
        logical_id(synthesized, synthesized.stack.functions.refresh)
    )
    assert outputs["RefreshFunctionArn"]["Export"] == {"Name": "TokenKeeper-RefreshFunctionArn"}


# --- monitoring -----------------------------------------------------------------------------


def alarm_index(synthesized) -> dict[tuple, dict]:
    """Map (namespace, metric name, dimensions) to the alarm body, for single-metric alarms."""
    index = {}
    for body in synthesized.resources("AWS::CloudWatch::Alarm").values():
        properties = body["Properties"]
        dimensions = tuple(sorted((d["Name"], json.dumps(d["Value"])) for d in properties.get("Dimensions", [])))
        index[(properties["Namespace"], properties["MetricName"], dimensions)] = body
    return index


def test_alarms_cover_function_and_custom_metrics(synthesized):
    refresh = json.dumps({"Ref": logical_id(synthesized, synthesized.stack.functions.refresh)})
    dlq_name = json.dumps(
        {"Fn::GetAtt": [logical_id(synthesized, synthesized.stack.functions.refresh_dlq), "QueueName"]}
    )
    service = ("service", json.dumps("tokenkeeper"))
    expected = [
        ("AWS/Lambda", "Errors", (("FunctionName", refresh),)),
        ("AWS/Lambda", "Throttles", (("FunctionName", refresh),)),
        ("AWS/SQS", "ApproximateNumberOfMessagesVisible", (("QueueName", dlq_name),)),
        ("TokenKeeper", "TokensRescued", (service,)),
        *[
            ("TokenKeeper", "RedemptionFailures", tuple(sorted([("kind", json.dumps(kind)), service])))
            for kind in ("egress_not_allowlisted", "proxy_authentication_failed", "chain_dead")
        ],
    ]

    index = alarm_index(synthesized)

    assert sorted(index) == sorted(expected)


def test_alarms_notify_topic_on_first_data_point(synthesized):
    topic = {"Ref": logical_id(synthesized, synthesized.stack.monitoring.topic)}

    for body in synthesized.resources("AWS::CloudWatch::Alarm").values():
        properties = body["Properties"]
        assert properties["AlarmActions"] == [topic]
        assert properties["OKActions"] == [topic]
        assert properties["Threshold"] == 1
        assert properties["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
        assert properties["TreatMissingData"] == "notBreaching"


def test_alarm_topic_encrypted_and_ssl_only(synthesized):
    _, topic = synthesized.only("AWS::SNS::Topic")
    _, topic_policy = synthesized.only("AWS::SNS::TopicPolicy")
    topic_key = synthesized.resources("AWS::KMS::Key")[topic["Properties"]["KmsMasterKeyId"]["Fn::GetAtt"][0]]
    key_statements = topic_key["Properties"]["KeyPolicy"]["Statement"]

    assert topic_key["Properties"]["EnableKeyRotation"] is True
    assert {"Service": "cloudwatch.amazonaws.com"} in [s["Principal"] for s in key_statements]
    assert topic_policy["Properties"]["PolicyDocument"]["Statement"][0]["Condition"] == {
        "Bool": {"aws:SecureTransport": "false"}
    }
    assert synthesized.resources("AWS::SNS::Subscription") == {}


def test_dashboard_shows_the_alarmed_figures(synthesized):
    _, dashboard = synthesized.only("AWS::CloudWatch::Dashboard")
    body = json.dumps(dashboard["Properties"]["DashboardBody"])

    for metric in ("TokenRequests", "Redemptions", "CacheHits", "RedemptionFailures", "TokensRescued"):
        assert metric in body
    assert dashboard["Properties"]["DashboardName"] == "TokenKeeper"


def test_metric_names_match_runtime():
    from infra import monitoring
    from tokenkeeper import observability

    assert monitoring.METRICS_NAMESPACE == observability.NAMESPACE
    assert monitoring.SERVICE_NAME == observability.SERVICE
    assert monitoring.METRIC_REQUESTS == observability.METRIC_REQUESTS
    assert monitoring.METRIC_REDEMPTIONS == observability.METRIC_REDEMPTIONS
    assert monitoring.METRIC_CACHE_HITS == observability.METRIC_CACHE_HITS
    assert monitoring.METRIC_FAILURES == observability.METRIC_FAILURES
    assert monitoring.METRIC_TOKENS_RESCUED == observability.METRIC_TOKENS_RESCUED


def test_alarmed_failure_kinds_exist_in_runtime():
    from tokenkeeper import errors

    runtime_kinds = {cls.kind for cls in vars(errors).values() if isinstance(cls, type) and hasattr(cls, "kind")}

    assert set(ALARMED_FAILURE_KINDS) <= runtime_kinds


# --- context variants and extension points ---------------------------------------------------

VARIANT_CONTEXT = {
    **DEFAULTS,
    "stack_name": "AcmeTokens",
    "region": "eu-west-1",
    "alarm_email": "ops@example.com",
    "client_secret_name": "acme/salesforce-client",
    "proxy_secret_name": "acme/quotaguard",
    "reserved_concurrency": "20",
}


def add_heartbeat(stack: TokenKeeperStack, code_directory: Path) -> None:
    """Add what the heartbeat will: a function, its index query, its alarms and an invoker."""
    heartbeat = stack.functions.add_function(
        "Heartbeat",
        code_directory=code_directory,
        description="Test heartbeat",
        timeout=Duration.minutes(5),
    )
    stack.functions.grant_token_access(heartbeat)
    stack.storage.grant_heartbeat_query(heartbeat)
    stack.grant_invoke_refresh(heartbeat)
    stack.monitoring.add_heartbeat_alarms(
        heartbeat_function=heartbeat,
        expected_interval=Duration.days(1),
        oldest_idle_age=cloudwatch.Metric(
            namespace="TokenKeeper", metric_name="OldestIdleSeconds", dimensions_map={"service": "tokenkeeper"}
        ),
        max_idle_age=Duration.days(20),
    )


@pytest.fixture(scope="module")
def variant(tmp_path_factory, synthesize_stack):
    code = tmp_path_factory.mktemp("heartbeat")
    (code / "app.py").write_text("def handler(event, context):\n    return None\n", encoding="utf-8")
    return synthesize_stack(
        VARIANT_CONTEXT,
        tmp_path_factory.mktemp("variant.out"),
        bundling=False,
        extend=lambda stack: add_heartbeat(stack, code),
    )


def test_variant_passes_nag_and_cfn_lint(variant, tmp_path):
    annotations = Annotations.from_stack(variant.stack)

    assert annotations.find_error("*", NAG_RULES) == []
    assert annotations.find_warning("*", NAG_RULES) == []
    result = run_cfn_lint(variant.template.to_json(), "eu-west-1", tmp_path)
    assert result.stdout == "", result.stdout


def test_imported_secrets_used_by_name(variant):
    refresh = variant.resources("AWS::Lambda::Function")[logical_id(variant, variant.stack.functions.refresh)]
    variables = refresh["Properties"]["Environment"]["Variables"]
    role = refresh["Properties"]["Role"]["Fn::GetAtt"][0]
    secret_statement = next(
        s for s in role_statements(variant, role) if s["Action"] == "secretsmanager:GetSecretValue"
    )

    assert variant.resources("AWS::SecretsManager::Secret") == {}
    assert variables["TOKENKEEPER_CLIENT_SECRET_ID"] == "acme/salesforce-client"
    assert variables["TOKENKEEPER_PROXY_SECRET_ID"] == "acme/quotaguard"
    rendered = json.dumps(secret_statement["Resource"])
    assert ":secret:acme/salesforce-client-??????" in rendered
    assert ":secret:acme/quotaguard-??????" in rendered


def test_variant_context_reaches_resources(variant):
    refresh = variant.resources("AWS::Lambda::Function")[logical_id(variant, variant.stack.functions.refresh)]
    _, subscription = variant.only("AWS::SNS::Subscription")
    outputs = variant.template.to_json()["Outputs"]

    assert refresh["Properties"]["ReservedConcurrentExecutions"] == 20
    assert ":eu-west-1:017000801446:" in refresh["Properties"]["Layers"][1]
    assert subscription["Properties"]["Protocol"] == "email"
    assert subscription["Properties"]["Endpoint"] == "ops@example.com"
    assert outputs["RefreshFunctionArn"]["Export"] == {"Name": "AcmeTokens-RefreshFunctionArn"}


def test_heartbeat_extension_grants_index_query_and_invoke(variant):
    functions = variant.resources("AWS::Lambda::Function")
    refresh_id = logical_id(variant, variant.stack.functions.refresh)
    heartbeat_role = next(
        body["Properties"]["Role"]["Fn::GetAtt"][0] for key, body in functions.items() if key != refresh_id
    )
    table_id = logical_id(variant, variant.stack.storage.table)

    statements = role_statements(variant, heartbeat_role)

    assert {
        "Action": "dynamodb:Query",
        "Effect": "Allow",
        "Resource": {"Fn::Join": ["", [get_att_arn(table_id), "/index/heartbeat-due"]]},
    } in statements
    assert {"Action": "lambda:InvokeFunction", "Effect": "Allow", "Resource": get_att_arn(refresh_id)} in statements


def test_heartbeat_alarms_added(variant):
    index = alarm_index(variant)
    missing = next(body for key, body in index.items() if key[:2] == ("AWS/Lambda", "Invocations"))
    idle = index[("TokenKeeper", "OldestIdleSeconds", (("service", json.dumps("tokenkeeper")),))]

    assert missing["Properties"]["ComparisonOperator"] == "LessThanThreshold"
    assert missing["Properties"]["TreatMissingData"] == "breaching"
    assert missing["Properties"]["Period"] == 86400
    assert idle["Properties"]["Threshold"] == 20 * 86400


# --- context validation ------------------------------------------------------------------------


def test_cdk_json_context_equals_defaults(cdk_json_context):
    assert cdk_json_context == dict(DEFAULTS)


def test_config_accepts_command_line_strings():
    config = StackConfig.from_mapping({"reserved_concurrency": "20", "log_retention_days": "365"})

    assert config.reserved_concurrency == 20
    assert config.log_retention_days == 365


@pytest.mark.parametrize(
    "schedule", ["rate(1 day)", "rate(12 hours)", "rate(29 days)", "cron(0 3 * * ? *)"]
)
def test_config_accepts_schedule(schedule):
    assert StackConfig.from_mapping({"heartbeat_schedule": schedule}).heartbeat_schedule == schedule


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("reserved_concurrency", 0),
        ("reserved_concurrency", "ten"),
        ("reserved_concurrency", True),
        ("reserved_concurrency", 2.5),
        ("log_retention_days", 45),
        ("region", "Virginia"),
        ("region", "cn-north-1"),
        ("region", "us-gov-west-1"),
        ("stack_name", "1tokens"),
        ("stack_name", "token_keeper"),
        ("heartbeat_schedule", "rate(30 days)"),
        ("heartbeat_schedule", "rate(1 days)"),
        ("heartbeat_schedule", "rate(2 day)"),
        ("heartbeat_schedule", "every day"),
        ("heartbeat_schedule", "cron(0 3 * * ?)"),
        ("idle_window_days", 0),
        ("proxy_mode", "shield"),
        ("alarm_email", "ops"),
        ("client_secret_name", "bad name!"),
        ("powertools_layer_version", "latest"),
    ],
)
def test_config_rejects_invalid_value(key, value):
    with pytest.raises(ConfigError) as caught:
        StackConfig.from_mapping({key: value})

    assert caught.value.key == key
    assert f"{key}=" in str(caught.value)
    assert "cdk.json" in str(caught.value)


def test_config_rejects_schedule_longer_than_idle_window():
    with pytest.raises(ConfigError) as caught:
        StackConfig.from_mapping({"heartbeat_schedule": "rate(7 days)", "idle_window_days": 7})

    assert "idle window of 7 days" in str(caught.value)


# --- helpers -------------------------------------------------------------------------------------


def test_powertools_layer_arn_pattern():
    arn = powertools_layer_arn("ap-southeast-2", RUNTIME, 7)

    assert arn == "arn:aws:lambda:ap-southeast-2:017000801446:layer:AWSLambdaPowertoolsPythonV3-python314-arm64:7"


def test_pinned_requirement_missing_raises(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("urllib3>=2\nboto3==1.0  # comment\n", encoding="utf-8")

    assert pinned_requirement(requirements, "boto3") == "boto3==1.0"
    with pytest.raises(ValueError, match="does not pin urllib3"):
        pinned_requirement(requirements, "urllib3")


def test_grant_invoke_refresh_on_consumer_role(variant):
    # Other stacks call this stack method, and it must grant the unqualified ARN only.
    statements = [
        statement
        for body in variant.resources("AWS::IAM::Policy").values()
        for statement in body["Properties"]["PolicyDocument"]["Statement"]
        if statement["Action"] == "lambda:InvokeFunction"
    ]

    assert statements == [
        {
            "Action": "lambda:InvokeFunction",
            "Effect": "Allow",
            "Resource": get_att_arn(logical_id(variant, variant.stack.functions.refresh)),
        }
    ]


# --- the command-line tool -----------------------------------------------------------------------


@pytest.mark.synth
def test_cdk_cli_synth_succeeds(tmp_path):
    cdk_cli = REPO_ROOT / "node_modules" / "aws-cdk"
    npx = shutil.which("npx")
    if not cdk_cli.is_dir() or npx is None:
        pytest.fail(
            "The CDK command-line tool is not installed: node_modules/aws-cdk or npx is missing. "
            "Run `make install` (npm ci) first."
        )
    environment = {
        **os.environ,
        "CDK_DISABLE_VERSION_CHECK": "1",
        "CDK_DISABLE_CLI_TELEMETRY": "true",
        "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "1",
        "AWS_EC2_METADATA_DISABLED": "true",
        # app.py runs with this interpreter, as `make synth` runs it with the project's venv.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    output = tmp_path / "cdk.out"

    result = subprocess.run(
        [npx, "--no-install", "cdk", "--no-notices", "synth", "--quiet", "--output", str(output)],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    template = json.loads((output / "TokenKeeper.template.json").read_text(encoding="utf-8"))
    assert "AWS::Lambda::Function" in {body["Type"] for body in template["Resources"].values()}
