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
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk.assertions import Annotations, Match

from infra import functions as functions_module
from infra.bundling import pinned_requirement
from infra.config import DEFAULTS, ConfigError, StackConfig, load_config
from infra.functions import REFRESH_TIMEOUT, RUNTIME, powertools_layer_arn
from infra.heartbeat import WORKER_TIMEOUT
from infra.monitoring import ALARMED_FAILURE_KINDS
from infra.stack import TokenKeeperStack
from infra.storage import PENDING_EXPIRY_ATTRIBUTE

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


def suppressions(synthesized) -> set[tuple]:
    """Return every cdk-nag suppression in the template as (logical id, rule, IAM5 applies_to)."""
    found = set()
    for resource_id, resource in synthesized.template.to_json()["Resources"].items():
        for rule in resource.get("Metadata", {}).get("cdk_nag", {}).get("rules_to_suppress", []):
            found.add((resource_id, rule["id"], tuple(rule.get("applies_to", ()))))
            assert len(rule["reason"]) >= 60, f"{rule['id']} on {resource_id} needs a reason that says why"
    return found


def xray_suppression(synthesized, function) -> tuple:
    policy = function.role.node.find_child("DefaultPolicy")
    return (logical_id(synthesized, policy), "AwsSolutions-IAM5", ("Resource::*",))


def test_nag_suppressions_are_the_expected_few(synthesized):
    stack = synthesized.stack
    # Every suppression in the stack. A new suppression must be added here on purpose.
    expected = {
        (logical_id(synthesized, stack.secrets.client_credentials), "AwsSolutions-SMG4", ()),
        (logical_id(synthesized, stack.secrets.proxy_url), "AwsSolutions-SMG4", ()),
        (logical_id(synthesized, stack.functions.refresh_dlq), "AwsSolutions-SQS3", ()),
        xray_suppression(synthesized, stack.functions.refresh),
        xray_suppression(synthesized, stack.heartbeat.scheduler),
    }

    assert suppressions(synthesized) == expected


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


def test_table_expires_pending_authorizations(synthesized):
    _, table = synthesized.only("AWS::DynamoDB::Table")

    assert table["Properties"]["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}


class RecordingDynamoDB:
    """A DynamoDB client that records the items put and accepts every write."""

    def __init__(self) -> None:
        self.items: list[dict] = []

    def put_item(self, **request) -> dict:
        self.items.append(request["Item"])
        return {}


class PlainCipher:
    """A cipher stand-in: the test looks at attribute names, not at sealed bytes."""

    def seal(self, connection_id, tokens) -> bytes:
        return b"sealed"

    def seal_text(self, context_id, text) -> bytes:
        return b"sealed"


def test_ttl_attribute_only_on_pending_items():
    from tokenkeeper.admin_store import PENDING_PREFIX, AdminStore, PendingAuthorization
    from tokenkeeper.operations import PENDING_AUTHORIZATION_SECONDS
    from tokenkeeper.store import STATUS_ACTIVE, Connection

    # GIVEN a pending authorization and a connection written by the runtime's own store
    database = RecordingDynamoDB()
    store = AdminStore(database, "connections", PlainCipher())
    now = 1_800_000_000.0
    pending = PendingAuthorization(
        state="state-1",
        connection_id="org-1",
        token_host="login.salesforce.com",
        redirect_uri="https://example.com/callback",
        code_verifier="verifier",
        expires_at=now + PENDING_AUTHORIZATION_SECONDS,
    )
    connection = Connection(
        connection_id="org-2",
        status=STATUS_ACTIVE,
        version=1,
        token_host="login.salesforce.com",
        refresh_token="refresh",
        access_token="access",
        access_token_expires_at=now + 7200,
        last_redeemed_at=now,
        created_at=now,
    )

    # WHEN both are stored
    store.put_pending(pending, now=now)
    store.create(connection)

    # THEN only the pending item carries the time to live attribute, as epoch seconds
    pending_item, connection_item = database.items
    assert pending_item["connection_id"] == {"S": PENDING_PREFIX + "state-1"}
    assert float(pending_item[PENDING_EXPIRY_ATTRIBUTE]["N"]) == now + 900
    assert PENDING_EXPIRY_ATTRIBUTE not in connection_item
    assert "access_token_expires_at" in connection_item


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
        # The operator's actions: list and the bulk actions scan, connect deletes a pending item.
        {
            "Action": ["dynamodb:Scan", "dynamodb:DeleteItem"],
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
    refresh_ref = {"Ref": logical_id(synthesized, stack.functions.refresh)}
    invoke_config = next(
        body
        for body in synthesized.resources("AWS::Lambda::EventInvokeConfig").values()
        if body["Properties"]["FunctionName"] == refresh_ref
    )
    queue = synthesized.resources("AWS::SQS::Queue")[dlq_id]
    _, queue_policy = synthesized.only("AWS::SQS::QueuePolicy")

    assert invoke_config["Properties"]["DestinationConfig"] == {"OnFailure": {"Destination": get_att_arn(dlq_id)}}
    assert queue["Properties"]["SqsManagedSseEnabled"] is True
    assert queue_policy["Properties"]["PolicyDocument"]["Statement"][0]["Condition"] == {
        "Bool": {"aws:SecureTransport": "false"}
    }
    assert queue_policy["Properties"]["PolicyDocument"]["Statement"][0]["Effect"] == "Deny"


def pinned_version(package: str) -> str:
    return pinned_requirement(REPO_ROOT / "requirements.txt", package).split("==")[1]


def shared_layer(synthesized) -> tuple[dict, Path]:
    """Return the layer's template body and the ``python/`` directory of its bundled asset."""
    layer_id = logical_id(synthesized, synthesized.stack.functions.shared_layer)
    layer = synthesized.resources("AWS::Lambda::LayerVersion")[layer_id]
    # The asset's S3 key is its hash; the assembly stages it as asset.<hash>.
    asset_hash = layer["Properties"]["Content"]["S3Key"].removesuffix(".zip")
    return layer, synthesized.assembly_dir / f"asset.{asset_hash}" / "python"


def test_shared_layer_bundles_pinned_packages(synthesized):
    layer, site = shared_layer(synthesized)
    dist_infos = {path.name.lower() for path in site.glob("*.dist-info")}

    assert (site / "tokenkeeper" / "config.py").is_file()
    assert (site / "urllib3" / "__init__.py").is_file()
    # urllib3.contrib.socks imports PySocks as the top-level module socks.
    assert (site / "urllib3" / "contrib" / "socks.py").is_file()
    assert (site / "socks.py").is_file()
    assert dist_infos == {f"urllib3-{pinned_version('urllib3')}.dist-info", f"pysocks-{pinned_version('pysocks')}.dist-info"}
    assert list(site.rglob("__pycache__")) == []
    assert layer["Properties"]["CompatibleRuntimes"] == ["python3.14"]
    assert layer["Properties"]["CompatibleArchitectures"] == ["arm64"]


def test_shared_layer_imports_socks_support(synthesized, tmp_path):
    _, site = shared_layer(synthesized)
    # Lambda puts a layer's python/ directory on sys.path; here it goes first, as on Lambda.
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "import socks, urllib3.contrib.socks; "
        "print(socks.__file__); print(urllib3.contrib.socks.__file__)"
    )

    result = subprocess.run(
        [sys.executable, "-I", "-B", "-c", script, str(site)], capture_output=True, text=True, check=False, cwd=tmp_path
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [str(site / "socks.py"), str(site / "urllib3" / "contrib" / "socks.py")]


def test_refresh_arn_exported(synthesized):
    outputs = synthesized.template.to_json()["Outputs"]

    assert outputs["RefreshFunctionArn"]["Value"] == get_att_arn(
        logical_id(synthesized, synthesized.stack.functions.refresh)
    )
    assert outputs["RefreshFunctionArn"]["Export"] == {"Name": "TokenKeeper-RefreshFunctionArn"}


# --- monitoring -----------------------------------------------------------------------------


def alarm_index(synthesized) -> dict[tuple, dict]:
    """Map (namespace, metric name, dimensions) to the alarm body, for single-metric alarms.

    Alarms on HeartbeatOldestIdleSeconds, the one metric with two alarms, add the statistic to the key.
    """
    index = {}
    for body in synthesized.resources("AWS::CloudWatch::Alarm").values():
        properties = body["Properties"]
        dimensions = tuple(sorted((d["Name"], json.dumps(d["Value"])) for d in properties.get("Dimensions", [])))
        key = (properties["Namespace"], properties["MetricName"], dimensions)
        if properties["MetricName"] == "HeartbeatOldestIdleSeconds":
            key += (properties["Statistic"],)
        index[key] = body
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
        # The heartbeat's missing-run and oldest-idle alarms share one metric, with two statistics.
        ("TokenKeeper", "HeartbeatOldestIdleSeconds", (service,), "SampleCount"),
        ("TokenKeeper", "HeartbeatOldestIdleSeconds", (service,), "Maximum"),
        ("TokenKeeper", "HeartbeatReauthorizationRequired", (service,)),
        ("TokenKeeper", "HeartbeatQueryFailed", ()),
    ]

    index = alarm_index(synthesized)

    assert sorted(index) == sorted(expected)


def refresh_alarms(synthesized) -> list[dict]:
    heartbeat_ids = {logical_id(synthesized, alarm) for alarm in heartbeat_alarm_constructs(synthesized.stack)}
    return [body for key, body in synthesized.resources("AWS::CloudWatch::Alarm").items() if key not in heartbeat_ids]


def heartbeat_alarm_constructs(stack) -> list:
    monitoring = stack.monitoring
    names = (
        "HeartbeatMissing",
        "HeartbeatOldestIdleAge",
        "HeartbeatQueryFailed",
        "HeartbeatReauthorizationRequired",
        "HeartbeatDeadLetters",
    )
    return [monitoring.node.try_find_child(name) for name in names if monitoring.node.try_find_child(name)]


def test_alarms_notify_topic_on_first_data_point(synthesized):
    topic = {"Ref": logical_id(synthesized, synthesized.stack.monitoring.topic)}
    alarms = refresh_alarms(synthesized)

    assert len(alarms) == 7
    for body in alarms:
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


# --- heartbeat, single mode (the stack as cdk.json configures it) -----------------------------

HEARTBEAT_VARIABLES = {
    "TOKENKEEPER_IDLE_WINDOW_DAYS",
    "TOKENKEEPER_HEARTBEAT_THRESHOLD_DAYS",
    "TOKENKEEPER_HEARTBEAT_PERIOD_HOURS",
    "TOKENKEEPER_HEARTBEAT_FAILED_RUNS_TOLERATED",
    "TOKENKEEPER_HEARTBEAT_CONCURRENCY",
    "TOKENKEEPER_EVENT_BUS_NAME",
    "TOKENKEEPER_HEARTBEAT_QUEUE_URL",
}


def function_body(synthesized, function) -> dict:
    return synthesized.resources("AWS::Lambda::Function")[logical_id(synthesized, function)]


def function_statements(synthesized, function) -> list[dict]:
    return role_statements(synthesized, function_body(synthesized, function)["Properties"]["Role"]["Fn::GetAtt"][0])


def token_environment(synthesized) -> dict:
    """The variables every function gets, as the refresh function has them."""
    return refresh_function(synthesized)["Properties"]["Environment"]["Variables"]


def common_statements(synthesized, function) -> list[dict]:
    """The log and X-Ray statements every function's policy starts with."""
    log_group = function_body(synthesized, function)["Properties"]["LoggingConfig"]["LogGroup"]["Ref"]
    return [
        {"Action": ["logs:CreateLogStream", "logs:PutLogEvents"], "Effect": "Allow", "Resource": get_att_arn(log_group)},
        {"Action": ["xray:PutTraceSegments", "xray:PutTelemetryRecords"], "Effect": "Allow", "Resource": "*"},
    ]


def refresh_statement(synthesized, first_action: str) -> dict:
    """The refresh function's statement whose first action is ``first_action``."""
    statements = function_statements(synthesized, synthesized.stack.functions.refresh)
    return next(s for s in statements if (s["Action"] if isinstance(s["Action"], str) else s["Action"][0]) == first_action)


def index_query_statement(synthesized) -> dict:
    table_id = logical_id(synthesized, synthesized.stack.storage.table)
    return {
        "Action": "dynamodb:Query",
        "Effect": "Allow",
        "Resource": {"Fn::Join": ["", [get_att_arn(table_id), "/index/heartbeat-due"]]},
    }


def put_events_statement(synthesized) -> dict:
    bus_id = logical_id(synthesized, synthesized.stack.announcements.bus)
    return {"Action": "events:PutEvents", "Effect": "Allow", "Resource": get_att_arn(bus_id)}


def assert_same_statements(actual: list[dict], expected: list[dict]) -> None:
    assert len(actual) == len(expected)
    assert {normalized(s) for s in actual} == {normalized(s) for s in expected}


def test_heartbeat_runs_like_refresh_function(synthesized):
    heartbeat = function_body(synthesized, synthesized.stack.heartbeat.scheduler)["Properties"]
    refresh = refresh_function(synthesized)["Properties"]
    log_group = synthesized.resources("AWS::Logs::LogGroup")[heartbeat["LoggingConfig"]["LogGroup"]["Ref"]]

    for key in ("Runtime", "Architectures", "Layers", "TracingConfig", "MemorySize"):
        assert heartbeat[key] == refresh[key], key
    assert heartbeat["LoggingConfig"]["LogFormat"] == "JSON"
    assert log_group["Properties"]["RetentionInDays"] == DEFAULTS["log_retention_days"]
    assert heartbeat["Handler"] == "app.handler"
    assert heartbeat["Timeout"] == 900
    assert heartbeat["ReservedConcurrentExecutions"] == 1


def test_heartbeat_schedule_targets_scheduler(synthesized):
    scheduler_id = logical_id(synthesized, synthesized.stack.heartbeat.scheduler)
    rule_id, rule = synthesized.only("AWS::Events::Rule")
    permissions = [
        body["Properties"]
        for body in synthesized.resources("AWS::Lambda::Permission").values()
        if body["Properties"]["Principal"] == "events.amazonaws.com"
    ]

    assert rule["Properties"]["ScheduleExpression"] == "rate(1 day)"
    assert "EventBusName" not in rule["Properties"]
    assert rule["Properties"]["Targets"] == [
        {
            "Arn": get_att_arn(scheduler_id),
            "Id": "Target0",
            "RetryPolicy": {"MaximumEventAgeInSeconds": 3600, "MaximumRetryAttempts": 2},
        }
    ]
    assert permissions == [
        {
            "Action": "lambda:InvokeFunction",
            "FunctionName": get_att_arn(scheduler_id),
            "Principal": "events.amazonaws.com",
            "SourceArn": get_att_arn(rule_id),
        }
    ]


def test_heartbeat_environment_single_mode(synthesized):
    variables = function_body(synthesized, synthesized.stack.heartbeat.scheduler)["Properties"]["Environment"]["Variables"]
    bus_id = logical_id(synthesized, synthesized.stack.announcements.bus)

    assert variables == {
        **token_environment(synthesized),
        "TOKENKEEPER_IDLE_WINDOW_DAYS": "30",
        "TOKENKEEPER_HEARTBEAT_THRESHOLD_DAYS": "20",
        "TOKENKEEPER_HEARTBEAT_PERIOD_HOURS": "24",
        "TOKENKEEPER_HEARTBEAT_FAILED_RUNS_TOLERATED": "3",
        "TOKENKEEPER_HEARTBEAT_CONCURRENCY": "8",
        "TOKENKEEPER_EVENT_BUS_NAME": {"Ref": bus_id},
    }


def test_heartbeat_variable_names_match_runtime():
    from tokenkeeper import heartbeat

    runtime_names = {value for name, value in vars(heartbeat).items() if name.startswith("ENV_")}

    assert HEARTBEAT_VARIABLES <= runtime_names


def test_heartbeat_policy_single_mode_is_exact(synthesized):
    scheduler = synthesized.stack.heartbeat.scheduler
    expected = [
        *common_statements(synthesized, scheduler),
        index_query_statement(synthesized),
        refresh_statement(synthesized, "dynamodb:GetItem"),
        refresh_statement(synthesized, "secretsmanager:GetSecretValue"),
        refresh_statement(synthesized, "kms:Encrypt"),
        refresh_statement(synthesized, "kms:Decrypt"),
        put_events_statement(synthesized),
    ]

    assert_same_statements(function_statements(synthesized, scheduler), expected)


def test_heartbeat_role_has_no_managed_policy(synthesized):
    role_id = function_body(synthesized, synthesized.stack.heartbeat.scheduler)["Properties"]["Role"]["Fn::GetAtt"][0]
    role = synthesized.resources("AWS::IAM::Role")[role_id]

    assert "ManagedPolicyArns" not in role["Properties"]


def test_single_mode_has_no_queue_or_worker(synthesized):
    outputs = synthesized.template.to_json()["Outputs"]

    assert synthesized.stack.heartbeat.worker is None
    assert list(synthesized.resources("AWS::SQS::Queue")) == [
        logical_id(synthesized, synthesized.stack.functions.refresh_dlq)
    ]
    assert synthesized.resources("AWS::Lambda::EventSourceMapping") == {}
    assert "HeartbeatDeadLetterQueueUrl" not in outputs


def test_event_bus_named_and_output(synthesized):
    bus_id, bus = synthesized.only("AWS::Events::EventBus")
    outputs = synthesized.template.to_json()["Outputs"]

    assert bus["Properties"]["Name"] == "TokenKeeper-events"
    assert outputs["EventBusName"]["Value"] == {"Ref": bus_id}
    assert outputs["EventBusArn"]["Value"] == get_att_arn(bus_id)


def test_heartbeat_alarms_single_mode(synthesized):
    service = (("service", json.dumps("tokenkeeper")),)
    index = alarm_index(synthesized)
    missing = index[("TokenKeeper", "HeartbeatOldestIdleSeconds", service, "SampleCount")]["Properties"]
    oldest = index[("TokenKeeper", "HeartbeatOldestIdleSeconds", service, "Maximum")]["Properties"]
    reauthorization = index[("TokenKeeper", "HeartbeatReauthorizationRequired", service)]["Properties"]
    topic = [{"Ref": logical_id(synthesized, synthesized.stack.monitoring.topic)}]

    assert missing["Period"] == 86400
    assert missing["EvaluationPeriods"] == 2
    assert "DatapointsToAlarm" not in missing
    assert missing["ComparisonOperator"] == "LessThanThreshold"
    assert missing["Threshold"] == 1
    assert missing["TreatMissingData"] == "breaching"

    assert oldest["Period"] == 86400
    assert oldest["ComparisonOperator"] == "GreaterThanThreshold"
    # 20 days due threshold + 24 hours x (1 + 3 failed runs), 6 days before the 30-day window.
    assert oldest["Threshold"] == 24 * 86400
    assert oldest["TreatMissingData"] == "notBreaching"

    assert reauthorization["Statistic"] == "Sum"
    assert reauthorization["Period"] == 300
    assert reauthorization["Threshold"] == 1
    assert reauthorization["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"

    for properties in (missing, oldest, reauthorization):
        assert properties["AlarmActions"] == topic
        assert properties["OKActions"] == topic


def test_heartbeat_query_failures_counted_from_logs(synthesized):
    _, metric_filter = synthesized.only("AWS::Logs::MetricFilter")
    scheduler = function_body(synthesized, synthesized.stack.heartbeat.scheduler)["Properties"]
    alarm = alarm_index(synthesized)[("TokenKeeper", "HeartbeatQueryFailed", ())]["Properties"]

    assert metric_filter["Properties"] == {
        "FilterPattern": '{ $.stopped_reason = "query_failed" }',
        "LogGroupName": {"Ref": scheduler["LoggingConfig"]["LogGroup"]["Ref"]},
        "MetricTransformations": [
            {"MetricName": "HeartbeatQueryFailed", "MetricNamespace": "TokenKeeper", "MetricValue": "1"}
        ],
    }
    assert alarm["Statistic"] == "Sum"
    assert alarm["Threshold"] == 1
    assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"


def test_query_failure_pattern_matches_runtime_log():
    import io
    import logging
    import re

    from aws_lambda_powertools import Logger
    from tokenkeeper.heartbeat import RunSummary

    from infra.monitoring import HEARTBEAT_QUERY_FAILED_PATTERN

    stream = io.StringIO()
    logger = Logger(service="tokenkeeper-pattern-test", logger_handler=logging.StreamHandler(stream))
    summary = RunSummary(mode="direct", stopped_reason="query_failed")
    # The heartbeat function logs its summary this way, as the fields of one JSON line.
    logger.info("Heartbeat run finished", extra=summary.to_log())
    record = json.loads(stream.getvalue().strip())
    field, value = re.fullmatch(r'\{ \$\.(\w+) = "([^"]+)" \}', HEARTBEAT_QUERY_FAILED_PATTERN).groups()

    assert record[field] == value


def test_dashboard_shows_heartbeat_metrics(synthesized):
    _, dashboard = synthesized.only("AWS::CloudWatch::Dashboard")
    body = json.dumps(dashboard["Properties"]["DashboardBody"])
    scheduler_id = logical_id(synthesized, synthesized.stack.heartbeat.scheduler)

    for metric in (
        "HeartbeatDue",
        "HeartbeatRefreshed",
        "HeartbeatSkipped",
        "HeartbeatFailed",
        "HeartbeatReauthorizationRequired",
        "HeartbeatRecovered",
        "HeartbeatNotStarted",
        "HeartbeatEnqueued",
        "HeartbeatOldestIdleSeconds",
        "AnnouncementsFailed",
    ):
        assert f'\\"{metric}\\"' in body, metric
    assert json.dumps({"Ref": scheduler_id}) in body


def test_heartbeat_metric_names_match_runtime():
    from infra import monitoring
    from tokenkeeper import observability

    assert monitoring.METRIC_ANNOUNCEMENTS_FAILED == observability.METRIC_ANNOUNCEMENTS_FAILED
    assert monitoring.METRIC_HEARTBEAT_DUE == observability.METRIC_HEARTBEAT_DUE
    assert monitoring.METRIC_HEARTBEAT_REFRESHED == observability.METRIC_HEARTBEAT_REFRESHED
    assert monitoring.METRIC_HEARTBEAT_SKIPPED == observability.METRIC_HEARTBEAT_SKIPPED
    assert monitoring.METRIC_HEARTBEAT_FAILED == observability.METRIC_HEARTBEAT_FAILED
    assert monitoring.METRIC_HEARTBEAT_REAUTHORIZATION_REQUIRED == observability.METRIC_HEARTBEAT_REAUTHORIZATION_REQUIRED
    assert monitoring.METRIC_HEARTBEAT_RECOVERED == observability.METRIC_HEARTBEAT_RECOVERED
    assert monitoring.METRIC_HEARTBEAT_NOT_STARTED == observability.METRIC_HEARTBEAT_NOT_STARTED
    assert monitoring.METRIC_HEARTBEAT_ENQUEUED == observability.METRIC_HEARTBEAT_ENQUEUED
    assert monitoring.METRIC_HEARTBEAT_OLDEST_IDLE == observability.METRIC_HEARTBEAT_OLDEST_IDLE


def test_no_callback_by_default(synthesized):
    outputs = synthesized.template.to_json()["Outputs"]

    assert synthesized.stack.callback is None
    assert synthesized.resources("AWS::Lambda::Url") == {}
    assert "CallbackUrl" not in outputs



# --- context variants and extension points ---------------------------------------------------

VARIANT_CONTEXT = {
    **DEFAULTS,
    "stack_name": "AcmeTokens",
    "region": "eu-west-1",
    "alarm_email": "ops@example.com",
    "client_secret_name": "acme/salesforce-client",
    "proxy_secret_name": "acme/quotaguard",
    "reserved_concurrency": "20",
    "heartbeat_schedule": "cron(0 */12 * * ? *)",
    "heartbeat_period_hours": "12",
    "heartbeat_threshold_days": "15",
    "heartbeat_failed_runs_tolerated": "2",
    "heartbeat_concurrency": "4",
    "heartbeat_mode": "fanout",
    "enable_callback": "true",
}
# 15 days due threshold + 12 hours x (1 + 2 failed runs).
VARIANT_MAX_IDLE_SECONDS = 15 * 86400 + 3 * 12 * 3600


def add_consumer(stack: TokenKeeperStack) -> None:
    """Add what an ISV's own function would: a role that may invoke the refresh function."""
    consumer = iam.Role(stack, "Consumer", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"))
    stack.grant_invoke_refresh(consumer)


@pytest.fixture(scope="module")
def variant(tmp_path_factory, synthesize_stack):
    return synthesize_stack(
        {key: value for key, value in VARIANT_CONTEXT.items() if value is not None},
        tmp_path_factory.mktemp("variant.out"),
        bundling=False,
        extend=add_consumer,
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


def test_variant_nag_suppressions_are_the_expected_few(variant):
    stack = variant.stack
    expected = {
        (logical_id(variant, stack.functions.refresh_dlq), "AwsSolutions-SQS3", ()),
        (logical_id(variant, stack.heartbeat.dead_letter_queue), "AwsSolutions-SQS3", ()),
        xray_suppression(variant, stack.functions.refresh),
        xray_suppression(variant, stack.heartbeat.scheduler),
        xray_suppression(variant, stack.heartbeat.worker),
        xray_suppression(variant, stack.callback.function),
    }

    assert suppressions(variant) == expected


# --- heartbeat, fanout mode, and the callback (the variant) -----------------------------------


def test_fanout_schedule_uses_cron(variant):
    _, rule = variant.only("AWS::Events::Rule")

    assert rule["Properties"]["ScheduleExpression"] == "cron(0 */12 * * ? *)"
    assert rule["Properties"]["Targets"][0]["Arn"] == get_att_arn(logical_id(variant, variant.stack.heartbeat.scheduler))


def test_fanout_queue_encrypted_with_dead_letter_queue(variant):
    heartbeat = variant.stack.heartbeat
    queues = variant.resources("AWS::SQS::Queue")
    queue = queues[logical_id(variant, heartbeat.queue)]["Properties"]
    dead_letters = queues[logical_id(variant, heartbeat.dead_letter_queue)]["Properties"]

    assert queue["SqsManagedSseEnabled"] is True
    assert queue["VisibilityTimeout"] == 6 * WORKER_TIMEOUT.to_seconds()
    assert queue["RedrivePolicy"] == {
        "deadLetterTargetArn": get_att_arn(logical_id(variant, heartbeat.dead_letter_queue)),
        "maxReceiveCount": 3,
    }
    assert dead_letters["SqsManagedSseEnabled"] is True
    assert dead_letters["MessageRetentionPeriod"] == 14 * 86400


def test_fanout_queues_reject_plain_http(variant):
    heartbeat = variant.stack.heartbeat
    policies = variant.resources("AWS::SQS::QueuePolicy").values()

    for queue in (heartbeat.queue, heartbeat.dead_letter_queue):
        queue_ref = {"Ref": logical_id(variant, queue)}
        policy = next(body for body in policies if body["Properties"]["Queues"] == [queue_ref])
        statement = policy["Properties"]["PolicyDocument"]["Statement"][0]
        assert statement["Effect"] == "Deny"
        assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_fanout_worker_event_source(variant):
    heartbeat = variant.stack.heartbeat
    _, mapping = variant.only("AWS::Lambda::EventSourceMapping")

    assert mapping["Properties"] == {
        "BatchSize": 5,
        "EventSourceArn": get_att_arn(logical_id(variant, heartbeat.queue)),
        "FunctionName": {"Ref": logical_id(variant, heartbeat.worker)},
        "FunctionResponseTypes": ["ReportBatchItemFailures"],
        "ScalingConfig": {"MaximumConcurrency": 4},
    }


def test_fanout_worker_function(variant):
    worker = function_body(variant, variant.stack.heartbeat.worker)["Properties"]

    assert worker["Handler"] == "app.worker_handler"
    # Five redemptions one after another, each as long as one refresh call at worst.
    assert worker["Timeout"] == 5 * REFRESH_TIMEOUT.to_seconds()
    assert worker["Timeout"] <= 900
    assert "ReservedConcurrentExecutions" not in worker


def test_fanout_scheduler_environment(variant):
    heartbeat = variant.stack.heartbeat
    variables = function_body(variant, heartbeat.scheduler)["Properties"]["Environment"]["Variables"]

    assert variables == {
        **token_environment(variant),
        "TOKENKEEPER_IDLE_WINDOW_DAYS": "30",
        "TOKENKEEPER_HEARTBEAT_THRESHOLD_DAYS": "15",
        "TOKENKEEPER_HEARTBEAT_PERIOD_HOURS": "12",
        "TOKENKEEPER_HEARTBEAT_FAILED_RUNS_TOLERATED": "2",
        "TOKENKEEPER_HEARTBEAT_QUEUE_URL": {"Ref": logical_id(variant, heartbeat.queue)},
    }


def test_fanout_worker_environment(variant):
    variables = function_body(variant, variant.stack.heartbeat.worker)["Properties"]["Environment"]["Variables"]

    assert variables == {
        **token_environment(variant),
        "TOKENKEEPER_IDLE_WINDOW_DAYS": "30",
        "TOKENKEEPER_HEARTBEAT_THRESHOLD_DAYS": "15",
        "TOKENKEEPER_HEARTBEAT_PERIOD_HOURS": "12",
        "TOKENKEEPER_HEARTBEAT_FAILED_RUNS_TOLERATED": "2",
        "TOKENKEEPER_HEARTBEAT_CONCURRENCY": "1",
        "TOKENKEEPER_EVENT_BUS_NAME": {"Ref": logical_id(variant, variant.stack.announcements.bus)},
    }


def test_fanout_scheduler_policy_is_exact(variant):
    scheduler = variant.stack.heartbeat.scheduler
    expected = [
        *common_statements(variant, scheduler),
        index_query_statement(variant),
        {
            "Action": "kms:Decrypt",
            "Condition": {"StringEquals": {"kms:ViaService": ["dynamodb.eu-west-1.amazonaws.com"]}},
            "Effect": "Allow",
            "Resource": get_att_arn(logical_id(variant, variant.stack.storage.data_key)),
        },
        {
            "Action": "sqs:SendMessage",
            "Effect": "Allow",
            "Resource": get_att_arn(logical_id(variant, variant.stack.heartbeat.queue)),
        },
    ]

    assert_same_statements(function_statements(variant, scheduler), expected)


def test_fanout_worker_policy_is_exact(variant):
    worker = variant.stack.heartbeat.worker
    expected = [
        *common_statements(variant, worker),
        refresh_statement(variant, "dynamodb:GetItem"),
        refresh_statement(variant, "secretsmanager:GetSecretValue"),
        refresh_statement(variant, "kms:Encrypt"),
        refresh_statement(variant, "kms:Decrypt"),
        put_events_statement(variant),
        {
            "Action": [
                "sqs:ReceiveMessage",
                "sqs:ChangeMessageVisibility",
                "sqs:GetQueueUrl",
                "sqs:DeleteMessage",
                "sqs:GetQueueAttributes",
            ],
            "Effect": "Allow",
            "Resource": get_att_arn(logical_id(variant, variant.stack.heartbeat.queue)),
        },
    ]

    assert_same_statements(function_statements(variant, worker), expected)


def test_fanout_alarms(variant):
    service = (("service", json.dumps("tokenkeeper")),)
    index = alarm_index(variant)
    dead_letters_name = json.dumps(
        {"Fn::GetAtt": [logical_id(variant, variant.stack.heartbeat.dead_letter_queue), "QueueName"]}
    )
    missing = index[("TokenKeeper", "HeartbeatOldestIdleSeconds", service, "SampleCount")]["Properties"]
    oldest = index[("TokenKeeper", "HeartbeatOldestIdleSeconds", service, "Maximum")]["Properties"]
    dead_letters = index[("AWS/SQS", "ApproximateNumberOfMessagesVisible", (("QueueName", dead_letters_name),))]

    assert missing["Period"] == 12 * 3600
    assert missing["EvaluationPeriods"] == 2
    assert oldest["Period"] == 12 * 3600
    assert oldest["Threshold"] == VARIANT_MAX_IDLE_SECONDS
    assert dead_letters["Properties"]["Statistic"] == "Maximum"
    assert dead_letters["Properties"]["Threshold"] == 1
    assert dead_letters["Properties"]["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"


def test_fanout_outputs(variant):
    outputs = variant.template.to_json()["Outputs"]
    bus_id, bus = variant.only("AWS::Events::EventBus")

    assert outputs["HeartbeatDeadLetterQueueUrl"]["Value"] == {
        "Ref": logical_id(variant, variant.stack.heartbeat.dead_letter_queue)
    }
    assert bus["Properties"]["Name"] == "AcmeTokens-events"
    assert outputs["EventBusName"]["Value"] == {"Ref": bus_id}


def test_callback_function_url_public(variant):
    callback = variant.stack.callback
    callback_id = logical_id(variant, callback.function)
    url_id, url = variant.only("AWS::Lambda::Url")
    permissions = sorted(
        (
            body["Properties"]
            for body in variant.resources("AWS::Lambda::Permission").values()
            if body["Properties"]["FunctionName"] == get_att_arn(callback_id)
        ),
        key=lambda properties: properties["Action"],
    )
    outputs = variant.template.to_json()["Outputs"]

    assert url["Properties"] == {"AuthType": "NONE", "TargetFunctionArn": get_att_arn(callback_id)}
    assert permissions == [
        {
            "Action": "lambda:InvokeFunction",
            "FunctionName": get_att_arn(callback_id),
            "InvokedViaFunctionUrl": True,
            "Principal": "*",
        },
        {
            "Action": "lambda:InvokeFunctionUrl",
            "FunctionName": get_att_arn(callback_id),
            "FunctionUrlAuthType": "NONE",
            "Principal": "*",
        },
    ]
    assert outputs["CallbackUrl"]["Value"] == {"Fn::GetAtt": [url_id, "FunctionUrl"]}


def test_callback_function(variant):
    callback = function_body(variant, variant.stack.callback.function)["Properties"]

    assert callback["Handler"] == "app.handler"
    assert callback["Timeout"] == 60
    assert callback["ReservedConcurrentExecutions"] == 5
    assert callback["Environment"]["Variables"] == token_environment(variant)


def test_callback_policy_is_exact(variant):
    function = variant.stack.callback.function
    token_key = refresh_statement(variant, "kms:Encrypt")
    expected = [
        *common_statements(variant, function),
        {
            "Action": ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:DeleteItem"],
            "Effect": "Allow",
            "Resource": get_att_arn(logical_id(variant, variant.stack.storage.table)),
        },
        refresh_statement(variant, "secretsmanager:GetSecretValue"),
        {**token_key, "Action": ["kms:Encrypt", "kms:Decrypt"]},
        refresh_statement(variant, "kms:Decrypt"),
    ]

    assert_same_statements(function_statements(variant, function), expected)



# --- context validation ------------------------------------------------------------------------


def test_cdk_json_context_equals_defaults(cdk_json_context):
    assert cdk_json_context == dict(DEFAULTS)


def test_config_accepts_command_line_strings():
    config = StackConfig.from_mapping({"reserved_concurrency": "20", "log_retention_days": "365"})

    assert config.reserved_concurrency == 20
    assert config.log_retention_days == 365


@pytest.mark.parametrize(
    ("schedule", "period_hours"), [("rate(1 day)", 24), ("rate(12 hours)", 12), ("rate(2 days)", 48), ("rate(30 minutes)", 0.5)]
)
def test_config_derives_period_from_rate(schedule, period_hours):
    config = StackConfig.from_mapping({"heartbeat_schedule": schedule})

    assert config.heartbeat_schedule == schedule
    assert config.heartbeat_period_hours == period_hours


def test_config_accepts_cron_with_period():
    config = StackConfig.from_mapping({"heartbeat_schedule": "cron(0 3 * * ? *)", "heartbeat_period_hours": "24"})

    assert config.heartbeat_schedule == "cron(0 3 * * ? *)"
    assert config.heartbeat_period_hours == 24


def test_config_heartbeat_defaults():
    config = StackConfig.from_mapping({})

    assert config.heartbeat_threshold_days == 20
    assert config.heartbeat_period_hours == 24
    assert config.heartbeat_failed_runs_tolerated == 3
    assert config.heartbeat_concurrency == 8
    assert config.heartbeat_mode == "single"
    assert config.enable_callback is False
    assert config.heartbeat_max_idle_days == 24


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
        ("heartbeat_schedule", "rate(29 days)"),
        ("heartbeat_schedule", "rate(4 days)"),
        ("heartbeat_schedule", "rate(90 hours)"),
        ("heartbeat_period_hours", 12),
        ("heartbeat_threshold_days", 0),
        ("heartbeat_threshold_days", "soon"),
        ("heartbeat_failed_runs_tolerated", -1),
        ("heartbeat_concurrency", 0),
        ("heartbeat_concurrency", 65),
        ("heartbeat_mode", "direct"),
        ("enable_callback", "yes"),
        ("enable_callback", 1),
        ("idle_window_days", 0),
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


@pytest.mark.parametrize("value", ["static", "shield"])
def test_config_rejects_removed_proxy_mode(value):
    with pytest.raises(ConfigError) as caught:
        StackConfig.from_mapping({"proxy_mode": value})

    assert caught.value.key == "proxy_mode"
    assert "scheme of the proxy URL secret" in str(caught.value)
    assert "Remove it from the context block of cdk.json" in str(caught.value)


def test_load_config_rejects_removed_proxy_mode():
    context = {"proxy_mode": "static"}

    with pytest.raises(ConfigError) as caught:
        load_config(context.get)

    assert caught.value.key == "proxy_mode"


def test_config_rejects_threshold_not_below_window():
    with pytest.raises(ConfigError) as caught:
        StackConfig.from_mapping({"heartbeat_threshold_days": 30})

    assert "heartbeat_threshold_days=30" in str(caught.value)
    assert "threshold must be shorter than the idle window" in str(caught.value)


def test_config_rejects_cron_without_period():
    with pytest.raises(ConfigError) as caught:
        StackConfig.from_mapping({"heartbeat_schedule": "cron(0 3 * * ? *)"})

    assert caught.value.key == "heartbeat_period_hours"
    assert "heartbeat_period_hours=24" in str(caught.value)


def test_config_fanout_needs_two_workers():
    with pytest.raises(ConfigError) as caught:
        StackConfig.from_mapping({"heartbeat_mode": "fanout", "heartbeat_concurrency": 1})

    assert caught.value.key == "heartbeat_concurrency"
    assert "fanout" in str(caught.value)


def test_config_unsafe_schedule_names_values():
    with pytest.raises(ConfigError) as caught:
        StackConfig.from_mapping({"heartbeat_schedule": "rate(3 days)"})
    message = str(caught.value)

    assert caught.value.key == "heartbeat_schedule"
    assert "idle_window_days=30" in message
    assert "heartbeat_threshold_days=20" in message
    assert "heartbeat_schedule='rate(3 days)' (a run every 72 hours)" in message
    assert "heartbeat_failed_runs_tolerated=3" in message
    assert "exceeds the 10 days between the threshold and the end of the window" in message


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


def cdk_cli_command() -> tuple[str, dict]:
    """Return npx and the environment that keeps the CDK command-line tool off the network."""
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
    return npx, environment


@pytest.mark.synth
def test_cdk_cli_synth_succeeds(tmp_path):
    npx, environment = cdk_cli_command()
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


@pytest.mark.synth
def test_cdk_cli_synth_rejects_unsafe_schedule(tmp_path):
    npx, environment = cdk_cli_command()

    result = subprocess.run(
        [
            npx, "--no-install", "cdk", "--no-notices", "synth", "--quiet",
            "--output", str(tmp_path / "cdk.out"),
            "-c", "heartbeat_schedule=rate(3 days)",
        ],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )  # fmt: skip

    assert result.returncode != 0
    assert "heartbeat_schedule='rate(3 days)' (a run every 72 hours)" in result.stderr
    assert "idle_window_days=30" in result.stderr
    assert "heartbeat_threshold_days=20" in result.stderr
    assert "heartbeat_failed_runs_tolerated=3" in result.stderr
    assert not (tmp_path / "cdk.out" / "TokenKeeper.template.json").exists()
