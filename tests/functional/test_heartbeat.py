"""The heartbeat against the local world: due connections, outcomes, deadlines, fan-out, announcements.

Each test gets its own DynamoDB table, so the heartbeat's index query returns only that test's
connections. Each also gets its own EventBridge bus with a rule that sends every event to an SQS
queue, where the test reads the announcements back.
"""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest

from localworld.aws import create_token_table
from localworld.lambdas import LocalContext, load_function
from localworld.leakcheck import assert_no_secrets
from tokenkeeper.announcements import DETAIL_TYPE_REAUTHORIZATION_REQUIRED, DETAIL_TYPE_RECOVERED, EVENT_SOURCE
from tokenkeeper import heartbeat as heartbeat_module
from tokenkeeper.errors import ConfigurationError
from tokenkeeper.heartbeat import (
    ENV_HEARTBEAT_FAILED_RUNS_TOLERATED,
    ENV_HEARTBEAT_PERIOD_HOURS,
    ENV_HEARTBEAT_THRESHOLD_DAYS,
    ENV_IDLE_WINDOW_DAYS,
    HeartbeatConfig,
    HeartbeatRuntime,
    validate_schedule,
)
from tokenkeeper.runtime import Runtime
from tokenkeeper.store import STATUS_ACTIVE, STATUS_REAUTHORIZATION_REQUIRED

DAY = 86400
FUNCTION_NAME = "tokenkeeper-heartbeat"


class CountdownContext(LocalContext):
    """A Lambda context whose remaining time runs down with the wall clock, as Lambda's does."""

    def __init__(self, budget_ms: int):
        super().__init__(function_name=FUNCTION_NAME, remaining_time_ms=budget_ms)
        self._started = time.monotonic()

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int(self.remaining_time_ms - (time.monotonic() - self._started) * 1000))


class Setup:
    """One test's table, runtime, event bus and announcement queue in the session's world."""

    def __init__(self, world):
        suffix = uuid.uuid4().hex[:10]
        self.world = world
        self.table = f"hb-{suffix}"
        create_token_table(world.aws.client("dynamodb"), self.table)
        self.events = world.aws.client("events")
        self.sqs = world.aws.client("sqs")
        self.bus = f"hb-bus-{suffix}"
        self.events.create_event_bus(Name=self.bus)
        self.announcements_url = self.sqs.create_queue(QueueName=f"hb-announcements-{suffix}")["QueueUrl"]
        queue_arn = self.sqs.get_queue_attributes(QueueUrl=self.announcements_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        self.events.put_rule(Name="announcements", EventBusName=self.bus, EventPattern=json.dumps({"source": [EVENT_SOURCE]}))
        self.events.put_targets(Rule="announcements", EventBusName=self.bus, Targets=[{"Id": "queue", "Arn": queue_arn}])
        self.runtime = self.new_runtime()
        self.module = load_function("heartbeat")

    def new_runtime(self) -> Runtime:
        """Build a container's runtime on this test's table; each call is a new container."""
        world = self.world
        return Runtime(
            world.settings(table_name=self.table),
            session=world.aws.session,
            dynamodb_client=world.aws.client("dynamodb"),
            secrets_client=world.aws.client("secretsmanager"),
            kms_client=world.aws.client("kms"),
            clock=world.clock,
            pool_maxsize=8,
        )

    def use(self, **config) -> HeartbeatRuntime:
        """Aim the heartbeat function at this test's table and bus with ``config`` overrides."""
        options = {"concurrency": 4, "jitter_ms": 20, "event_bus_name": self.bus, **config}
        runtime = HeartbeatRuntime(
            self.runtime,
            HeartbeatConfig(**options),
            session=self.world.aws.session,
            events_client=self.events,
            sqs_client=self.sqs,
            clock=self.world.clock,
        )
        self.module.set_runtime(runtime)
        return runtime

    def seed(self, count: int, *, idle_days: float, prefix: str = "org") -> list[str]:
        """Seed ``count`` connections idle ``idle_days``, the first one the longest by a minute each."""
        identifiers = []
        for position in range(count):
            identifier = f"{prefix}-{uuid.uuid4().hex[:12]}"
            idle = idle_days * DAY + (count - position) * 60
            self.world.seed_connection(identifier, idle_seconds=idle, runtime=self.runtime)
            identifiers.append(identifier)
        return identifiers

    def item(self, connection_id: str):
        return self.runtime.store.get(connection_id)

    def due_ids(self, idle_days: float = 20) -> set[str]:
        page = self.runtime.store.query_due(self.world.clock() - idle_days * DAY, limit=1000)
        return {due.connection_id for due in page.connections}

    def announcements(self, expected: int) -> list[dict]:
        """Read announcements from the queue until ``expected`` arrived or 10 s passed."""
        events: list[dict] = []
        deadline = time.monotonic() + 10
        while len(events) < expected and time.monotonic() < deadline:
            answer = self.sqs.receive_message(QueueUrl=self.announcements_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
            for message in answer.get("Messages", []):
                events.append(json.loads(message["Body"]))
                self.sqs.delete_message(QueueUrl=self.announcements_url, ReceiptHandle=message["ReceiptHandle"])
        return events

    def context(self, remaining_ms: int = 900_000) -> LocalContext:
        return LocalContext(function_name=FUNCTION_NAME, remaining_time_ms=remaining_ms)


@pytest.fixture
def setup(fresh_world):
    test_setup = Setup(fresh_world)
    yield test_setup
    test_setup.module.set_runtime(None)


# Which connections are due -------------------------------------------------------------------


def test_heartbeat_redeems_connection_idle_29_days(setup):
    # GIVEN one connection idle for 29 days and one redeemed 5 days ago
    setup.use()
    [idle] = setup.seed(1, idle_days=29)
    [recent] = setup.seed(1, idle_days=5)
    old_refresh_token = setup.item(idle).refresh_token

    # WHEN the heartbeat runs
    summary = setup.module.handler({}, setup.context())

    # THEN only the idle one was redeemed, and its chain moved on at Salesforce
    assert summary["due"] == 1
    assert summary["refreshed"] == 1
    assert summary["failed"] == 0
    assert summary["complete"] is True
    assert summary["oldest_idle_seconds"] >= 29 * DAY
    redeemed = setup.item(idle)
    assert redeemed.version == 2
    assert redeemed.last_redeemed_at >= setup.world.clock() - 60
    assert setup.world.salesforce.chain_state(old_refresh_token) == "rotated"
    assert setup.world.salesforce.chain_state(redeemed.refresh_token) == "current"
    assert setup.item(recent).version == 1
    assert setup.due_ids() == set()


def test_query_due_pages_oldest_first(setup):
    identifiers = setup.seed(5, idle_days=21)
    setup.seed(1, idle_days=2)
    idle_before = setup.world.clock() - 20 * DAY

    seen, next_key = [], None
    for _ in range(10):
        page = setup.runtime.store.query_due(idle_before, limit=2, exclusive_start_key=next_key)
        seen.extend(due.connection_id for due in page.connections)
        next_key = page.next_key
        if not next_key:
            break

    assert seen == identifiers
    assert next_key is None


def test_heartbeat_pages_through_many_due(setup, monkeypatch):
    # GIVEN more due connections than one index page holds
    monkeypatch.setattr(heartbeat_module, "QUERY_PAGE_SIZE", 2)
    setup.use()
    identifiers = setup.seed(7, idle_days=21)

    summary = setup.module.handler({}, setup.context())

    assert summary["due"] == 7
    assert summary["refreshed"] == 7
    assert all(setup.item(identifier).version == 2 for identifier in identifiers)


def test_heartbeat_logs_summary_and_emits_metrics(setup, product_log, capfd):
    setup.use()
    setup.seed(2, idle_days=22)

    setup.module.handler({}, setup.context())

    lines = [json.loads(line) for line in product_log.getvalue().splitlines()]
    [summary] = [line for line in lines if line.get("message") == "Heartbeat run finished"]
    assert summary["due"] == 2
    assert summary["refreshed"] == 2
    assert summary["skipped"] == 0
    assert summary["reauthorization_required"] == 0
    output = capfd.readouterr().out
    assert_no_secrets(output)
    emf = [json.loads(line) for line in output.splitlines() if '"_aws"' in line]
    names = {metric["Name"] for blob in emf for directive in blob["_aws"]["CloudWatchMetrics"] for metric in directive["Metrics"]}
    assert {"HeartbeatDue", "HeartbeatRefreshed", "HeartbeatSkipped", "HeartbeatFailed"} <= names
    assert {"HeartbeatReauthorizationRequired", "HeartbeatOldestIdleSeconds"} <= names
    assert any(blob.get("HeartbeatRefreshed") in (2, [2]) for blob in emf)


def test_heartbeat_idle_31_days_requires_reauthorization_once(setup):
    # GIVEN a connection whose refresh token went unused for 31 days at Salesforce
    setup.use()
    [expired] = setup.seed(1, idle_days=0)
    setup.world.clock.advance(31 * DAY)
    refresh_token = setup.item(expired).refresh_token
    assert setup.world.salesforce.chain_state(refresh_token) == "expired"

    # WHEN the heartbeat runs twice
    first = setup.module.handler({}, setup.context())
    requests_after_first = setup.world.salesforce.stats.token_requests
    second = setup.module.handler({}, setup.context())

    # THEN the first run marks it and announces it, and the second does not try it again
    assert first["reauthorization_required"] == 1
    assert first["refreshed"] == 0
    item = setup.item(expired)
    assert item.status == STATUS_REAUTHORIZATION_REQUIRED
    assert expired not in setup.due_ids()
    assert second["due"] == 0
    assert setup.world.salesforce.stats.token_requests == requests_after_first
    [event] = setup.announcements(1)
    assert event["source"] == EVENT_SOURCE
    assert event["detail-type"] == DETAIL_TYPE_REAUTHORIZATION_REQUIRED
    assert event["detail"]["connection_id"] == expired
    assert event["detail"]["oauth_error"] == "invalid_grant"
    assert refresh_token not in json.dumps(event)


# Failures --------------------------------------------------------------------------------------


def test_heartbeat_failures_do_not_stop_other_connections(setup):
    # GIVEN five due connections: the oldest meets three 503s, the second has a revoked chain
    setup.use(concurrency=1)
    unavailable, revoked, *healthy = setup.seed(5, idle_days=25)
    setup.world.salesforce.revoke_chain_of(setup.item(revoked).refresh_token)
    setup.world.salesforce.fail_next(3)

    # WHEN the heartbeat runs
    summary = setup.module.handler({}, setup.context())

    # THEN the others are redeemed, the transient failure is counted and stays due
    assert summary["due"] == 5
    assert summary["refreshed"] == 3
    assert summary["failed"] == 1
    assert summary["failed_connection_ids"] == [unavailable]
    assert summary["reauthorization_required"] == 1
    assert all(setup.item(identifier).version == 2 for identifier in healthy)
    failed = setup.item(unavailable)
    assert failed.status == STATUS_ACTIVE
    assert failed.version == 1
    assert failed.consecutive_failures == 1
    assert failed.last_error_kind == "transient"
    assert setup.item(revoked).status == STATUS_REAUTHORIZATION_REQUIRED
    assert setup.due_ids() == {unavailable}


def test_heartbeat_announces_recovered_connection(setup):
    # GIVEN a connection whose redemption failed in the last run
    setup.use(concurrency=1)
    [flaky] = setup.seed(1, idle_days=21)
    setup.world.salesforce.fail_next(3)
    first = setup.module.handler({}, setup.context())
    assert first["failed"] == 1

    # WHEN the next run succeeds
    second = setup.module.handler({}, setup.context())

    # THEN the failure count is back to zero and the recovery is announced
    assert second["refreshed"] == 1
    assert second["recovered"] == 1
    item = setup.item(flaky)
    assert item.version == 2
    assert item.consecutive_failures == 0
    [event] = setup.announcements(1)
    assert event["detail-type"] == DETAIL_TYPE_RECOVERED
    assert event["detail"] == {"connection_id": flaky, "failed_attempts_before": 1, "version": 2}


def test_heartbeat_stops_run_on_configuration_error(setup):
    # GIVEN a proxy URL with a wrong password: every redemption would fail alike
    setup.use(concurrency=1, jitter_ms=0)
    setup.seed(4, idle_days=21)
    setup.world.set_proxy_url(setup.world.proxy.url(password="not-the-password"))

    summary = setup.module.handler({}, setup.context())

    assert summary["failed"] == 1
    assert summary["stopped_reason"] == "configuration_error"
    assert summary["not_started"] == 3
    assert summary["complete"] is False
    assert len(setup.due_ids()) == 4


# Races and deadlines ----------------------------------------------------------------------------


def test_heartbeat_skips_connection_a_caller_just_redeemed(setup):
    # GIVEN the heartbeat found a connection due, then a caller redeemed it
    heartbeat = setup.use().heartbeat
    [connection] = setup.seed(1, idle_days=25)
    due_before = setup.world.clock() - 20 * DAY
    setup.new_runtime().refresher().get_token(connection, force=True)
    redemptions = setup.world.salesforce.stats.redemptions

    # WHEN the heartbeat reaches it
    outcome = heartbeat.keep_alive(connection, due_before)

    # THEN it is skipped without a request to Salesforce
    assert outcome.result == "skipped"
    assert setup.world.salesforce.stats.redemptions == redemptions
    assert setup.item(connection).version == 2


def test_heartbeat_and_caller_at_once_redeem_once(setup):
    # GIVEN slow redemptions, so the caller's and the heartbeat's overlap
    setup.use()
    [connection] = setup.seed(1, idle_days=25)
    setup.world.salesforce.latency_seconds = 0.5
    before = setup.world.salesforce.stats
    caller = setup.new_runtime().refresher()
    answers: list = []
    thread = threading.Thread(target=lambda: answers.append(caller.get_token(connection, force=True)))

    # WHEN a caller forces a refresh while the heartbeat runs
    thread.start()
    summary = setup.module.handler({}, setup.context())
    thread.join(timeout=30)

    # THEN the refresh token was redeemed once, and both saw version 2
    after = setup.world.salesforce.stats
    assert after.redemptions - before.redemptions == 1
    assert after.replays_detected == before.replays_detected
    assert summary["refreshed"] + summary["skipped"] == 1
    assert answers[0].version == 2
    assert setup.item(connection).version == 2


def test_heartbeat_deadline_leaves_rest_due(setup):
    # GIVEN eight due connections, slow redemptions and a run with about one second left
    setup.use(concurrency=1, jitter_ms=0, safety_margin_seconds=0)
    identifiers = setup.seed(8, idle_days=21)
    tokens = {identifier: setup.item(identifier).refresh_token for identifier in identifiers}
    setup.world.salesforce.latency_seconds = 0.25

    # WHEN the run's time runs out
    summary = setup.module.handler({}, CountdownContext(budget_ms=1000))

    # THEN it stopped taking work, and everything not redeemed is still due and unchanged
    assert summary["stopped_reason"] == "deadline"
    assert 1 <= summary["refreshed"] < 8
    assert summary["refreshed"] + summary["not_started"] == 8
    left = setup.due_ids()
    assert len(left) == summary["not_started"]
    for identifier in left:
        assert setup.item(identifier).version == 1
        assert setup.world.salesforce.chain_state(tokens[identifier]) == "current"

    # WHEN the next run has time; THEN it finishes the rest and no chain was lost
    setup.world.salesforce.latency_seconds = 0
    second = setup.module.handler({}, setup.context())
    assert second["refreshed"] == summary["not_started"]
    for identifier in identifiers:
        item = setup.item(identifier)
        assert item.version == 2
        assert setup.world.salesforce.chain_state(item.refresh_token) == "current"


# Fan-out ----------------------------------------------------------------------------------------


def _sqs_event(messages: list[dict]) -> dict:
    return {
        "Records": [
            {
                "messageId": message["MessageId"],
                "receiptHandle": message["ReceiptHandle"],
                "body": message["Body"],
                "attributes": {"ApproximateReceiveCount": "1"},
                "messageAttributes": {},
                "md5OfBody": message["MD5OfBody"],
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:tokenkeeper-heartbeat",
                "awsRegion": "us-east-1",
            }
            for message in messages
        ]
    }


def _receive_all(sqs, queue_url: str, expected: int) -> list[dict]:
    messages: list[dict] = []
    deadline = time.monotonic() + 10
    while len(messages) < expected and time.monotonic() < deadline:
        answer = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        messages.extend(answer.get("Messages", []))
    return messages


def test_heartbeat_fan_out_through_sqs(setup):
    # GIVEN fan-out mode, four due connections (one with a revoked chain) and one not due
    queue_url = setup.sqs.create_queue(QueueName=f"hb-work-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    setup.use(queue_url=queue_url)
    unavailable, revoked, *healthy = setup.seed(4, idle_days=23)
    setup.seed(1, idle_days=3)
    setup.world.salesforce.revoke_chain_of(setup.item(revoked).refresh_token)

    # WHEN the scheduler runs
    scheduled = setup.module.handler({}, setup.context())

    # THEN it enqueued the due ids without redeeming anything
    assert scheduled["mode"] == "fan_out"
    assert scheduled["due"] == 4
    assert scheduled["enqueued"] == 4
    assert all(setup.item(identifier).version == 1 for identifier in [unavailable, *healthy])
    messages = _receive_all(setup.sqs, queue_url, 4)
    bodies = {json.loads(message["Body"])["connection_id"]: message for message in messages}
    assert set(bodies) == {unavailable, revoked, *healthy}

    # WHEN a worker gets them, the first meeting three 503s, plus one malformed message
    ordered = [bodies[unavailable], bodies[revoked], *(bodies[identifier] for identifier in healthy)]
    malformed = {**messages[0], "MessageId": "malformed-1", "Body": "not json"}
    setup.world.salesforce.fail_next(3)
    response = setup.module.worker_handler(_sqs_event([*ordered, malformed]), setup.context())

    # THEN only the transient failure and the malformed message go back to SQS
    failures = {item["itemIdentifier"] for item in response["batchItemFailures"]}
    assert failures == {bodies[unavailable]["MessageId"], "malformed-1"}
    assert all(setup.item(identifier).version == 2 for identifier in healthy)
    assert setup.item(revoked).status == STATUS_REAUTHORIZATION_REQUIRED
    assert setup.item(unavailable).consecutive_failures == 1
    [event] = setup.announcements(1)
    assert event["detail"]["connection_id"] == revoked

    # WHEN SQS delivers the failed message again; THEN it is redeemed and the recovery announced
    again = setup.module.worker_handler(_sqs_event([bodies[unavailable]]), setup.context())
    assert again["batchItemFailures"] == []
    assert setup.item(unavailable).version == 2
    [recovered] = setup.announcements(1)
    assert recovered["detail-type"] == DETAIL_TYPE_RECOVERED


def test_heartbeat_worker_skips_connection_redeemed_after_scheduling(setup):
    queue_url = setup.sqs.create_queue(QueueName=f"hb-work-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    setup.use(queue_url=queue_url)
    [connection] = setup.seed(1, idle_days=23)
    setup.module.handler({}, setup.context())
    setup.new_runtime().refresher().get_token(connection, force=True)
    redemptions = setup.world.salesforce.stats.redemptions

    response = setup.module.worker_handler(_sqs_event(_receive_all(setup.sqs, queue_url, 1)), setup.context())

    assert response["batchItemFailures"] == []
    assert setup.world.salesforce.stats.redemptions == redemptions
    assert setup.item(connection).version == 2


# Configuration ----------------------------------------------------------------------------------


def test_validate_schedule_accepts_defaults():
    validate_schedule(30, 20, 24, 3)
    config = HeartbeatConfig.from_environment({})

    assert config.idle_window_days == 30
    assert config.threshold_days == 20
    assert config.period_hours == 24
    assert config.failed_runs_tolerated == 3


@pytest.mark.parametrize(
    ("window", "threshold", "period", "tolerated", "expected"),
    [
        (30, 20, 72, 3, "12 days"),
        (30, 28, 24, 3, "2 days"),
        (30, 25, 24, 4, "5 days"),
        (30, 30, 24, 3, "shorter than the idle window"),
        (30, 0, 24, 3, "positive"),
        (30, 20, -1, 3, "positive"),
        (30, 20, 24, -1, "whole number"),
    ],
)
def test_validate_schedule_rejects_unsafe_values(window, threshold, period, tolerated, expected):
    with pytest.raises(ConfigurationError) as raised:
        validate_schedule(window, threshold, period, tolerated)

    message = str(raised.value)
    assert expected in message
    assert ENV_HEARTBEAT_FAILED_RUNS_TOLERATED in message


def test_heartbeat_config_from_environment_names_values():
    environ = {
        ENV_IDLE_WINDOW_DAYS: "30",
        ENV_HEARTBEAT_THRESHOLD_DAYS: "27",
        ENV_HEARTBEAT_PERIOD_HOURS: "24",
        ENV_HEARTBEAT_FAILED_RUNS_TOLERATED: "3",
    }

    with pytest.raises(ConfigurationError) as raised:
        HeartbeatConfig.from_environment(environ)

    message = str(raised.value)
    assert f"{ENV_HEARTBEAT_THRESHOLD_DAYS}=27" in message
    assert f"{ENV_IDLE_WINDOW_DAYS}=30" in message
    assert f"{ENV_HEARTBEAT_PERIOD_HOURS}=24" in message


@pytest.mark.parametrize(
    ("name", "raw"),
    [("TOKENKEEPER_HEARTBEAT_CONCURRENCY", "0"), ("TOKENKEEPER_HEARTBEAT_CONCURRENCY", "many"), (ENV_HEARTBEAT_PERIOD_HOURS, "nan")],
)
def test_heartbeat_config_rejects_bad_variable(name, raw):
    with pytest.raises(ConfigurationError) as raised:
        HeartbeatConfig.from_environment({name: raw})

    assert name in str(raised.value)


# The benchmark's code path ----------------------------------------------------------------------


def test_heartbeat_benchmark_runs_small():
    from bench.heartbeat import run_heartbeat_benchmark

    result = run_heartbeat_benchmark(connections=40, latency=0.0, jitter_ms=0, sequential_sample=5, local_world_connections=0)

    assert result["connections"] == 40
    assert result["redeemed_twice"] == 0
    assert result["failed"] == 0
    assert result["stale_after_run"] == 0
    assert result["refreshed"] + result["skipped"] == result["due"]
    assert result["peak_rss_mb"] > 0
    assert "local_world" not in result


def test_heartbeat_timeout_below_margin_logs_error(setup, product_log):
    setup.use(safety_margin_seconds=120)
    [connection] = setup.seed(1, idle_days=21)

    summary = setup.module.handler({}, setup.context(remaining_ms=60_000))

    assert summary["stopped_reason"] == "deadline"
    assert summary["not_started"] == 1
    assert setup.item(connection).version == 1
    lines = [json.loads(line) for line in product_log.getvalue().splitlines()]
    errors = [line for line in lines if line["level"] == "ERROR"]
    assert errors[0]["safety_margin_seconds"] == 120
    assert "raise the function's timeout" in errors[0]["message"]
