"""The heartbeat: a scheduled function that redeems every connection before Salesforce's idle window closes.

In ``single`` mode the scheduled function redeems the due connections itself on a thread pool.
In ``fanout`` mode it puts their ids on an SQS queue, and a worker function subscribed to the
queue redeems them. Both read their schedule settings from the environment variables set here,
and :mod:`infra.config` has already checked those settings at synth with the runtime's own
``validate_schedule``.
"""

from __future__ import annotations

import math

from aws_cdk import Duration
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as event_sources
from aws_cdk import aws_sqs as sqs
from cdk_nag import NagPackSuppression, NagSuppressions
from constructs import Construct

from infra.config import StackConfig
from infra.events import TokenKeeperEvents
from infra.functions import DLQ_RETENTION, REFRESH_TIMEOUT, REPO_ROOT, TokenKeeperFunctions
from infra.storage import TokenStorage

__all__ = [
    "TokenKeeperHeartbeat",
    "HEARTBEAT_DIR",
    "SCHEDULER_TIMEOUT",
    "SCHEDULER_RESERVED_CONCURRENCY",
    "WORKER_BATCH_SIZE",
    "WORKER_TIMEOUT",
    "QUEUE_VISIBILITY_TIMEOUT",
    "QUEUE_MAX_RECEIVE_COUNT",
    "expected_interval",
]

HEARTBEAT_DIR = REPO_ROOT / "functions" / "heartbeat"

# Lambda's maximum. A single-mode run stops taking work when its remaining time falls to one
# worst-case redemption, and leaves the rest due for the next run.
SCHEDULER_TIMEOUT = Duration.minutes(15)
# One run at a time, so two overlapping runs never query and redeem the same connections.
SCHEDULER_RESERVED_CONCURRENCY = 1
# The rule retries delivering the scheduled event to Lambda this often and for this long.
SCHEDULE_TARGET_RETRY_ATTEMPTS = 2
SCHEDULE_TARGET_MAX_EVENT_AGE = Duration.hours(1)

# A worker redeems its batch one message after another, and each redemption may take as long as
# one refresh call, so the timeout covers the whole batch at that worst case.
WORKER_BATCH_SIZE = 5
WORKER_TIMEOUT = Duration.seconds(int(REFRESH_TIMEOUT.to_seconds()) * WORKER_BATCH_SIZE)
# Lambda's guidance for SQS event sources: a visibility timeout of at least six times the
# function timeout, so a message is not delivered again while a throttled batch is retried.
QUEUE_VISIBILITY_TIMEOUT = Duration.seconds(int(WORKER_TIMEOUT.to_seconds()) * 6)
# Deliveries of one message before SQS moves it to the dead-letter queue.
QUEUE_MAX_RECEIVE_COUNT = 3
QUEUE_RETENTION = Duration.days(4)
# The worker keeps one redemption in flight, so its Salesforce connection pool needs one connection.
WORKER_CONCURRENCY = 1

_DLQ_REASON = (
    "This queue is itself the dead-letter queue of the heartbeat queue. An operator reads and "
    "deletes its messages, so nothing consumes it automatically that could fail again."
)


class TokenKeeperHeartbeat(Construct):
    """The scheduled heartbeat function and, in fanout mode, its queue, dead-letter queue and worker.

    :attr:`scheduler` and :attr:`schedule` always exist. :attr:`queue`, :attr:`dead_letter_queue`
    and :attr:`worker` exist in fanout mode and are None in single mode.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: StackConfig,
        functions: TokenKeeperFunctions,
        storage: TokenStorage,
        announcements: TokenKeeperEvents,
    ) -> None:
        super().__init__(scope, construct_id)
        self._functions = functions
        self._storage = storage
        self._announcements = announcements

        schedule_environment = {
            "TOKENKEEPER_IDLE_WINDOW_DAYS": str(config.idle_window_days),
            "TOKENKEEPER_HEARTBEAT_THRESHOLD_DAYS": f"{config.heartbeat_threshold_days:g}",
            "TOKENKEEPER_HEARTBEAT_PERIOD_HOURS": f"{config.heartbeat_period_hours:g}",
            "TOKENKEEPER_HEARTBEAT_FAILED_RUNS_TOLERATED": str(config.heartbeat_failed_runs_tolerated),
        }
        bus_environment = {"TOKENKEEPER_EVENT_BUS_NAME": announcements.bus.event_bus_name}

        self.queue: sqs.Queue | None = None
        self.dead_letter_queue: sqs.Queue | None = None
        self.worker: lambda_.Function | None = None

        if config.heartbeat_fanout:
            self.dead_letter_queue, self.queue = self._queues()
            self.scheduler = functions.add_function(
                "Heartbeat",
                code_directory=HEARTBEAT_DIR,
                description="Queue every connection due for a redemption, on the heartbeat schedule",
                timeout=SCHEDULER_TIMEOUT,
                reserved_concurrency=SCHEDULER_RESERVED_CONCURRENCY,
                environment={
                    **schedule_environment,
                    "TOKENKEEPER_HEARTBEAT_QUEUE_URL": self.queue.queue_url,
                },
            )
            self._grant_fanout_scheduler(self.scheduler, self.queue)
            self.worker = self._worker(config, {**schedule_environment, **bus_environment}, self.queue)
        else:
            self.scheduler = functions.add_function(
                "Heartbeat",
                code_directory=HEARTBEAT_DIR,
                description="Redeem every connection due for a redemption, on the heartbeat schedule",
                timeout=SCHEDULER_TIMEOUT,
                reserved_concurrency=SCHEDULER_RESERVED_CONCURRENCY,
                environment={
                    **schedule_environment,
                    **bus_environment,
                    "TOKENKEEPER_HEARTBEAT_CONCURRENCY": str(config.heartbeat_concurrency),
                },
            )
            self._grant_redemption(self.scheduler)
            storage.grant_heartbeat_query(self.scheduler)

        self.schedule = events.Rule(
            self,
            "Schedule",
            description=f"Token Keeper heartbeat: {config.heartbeat_schedule}",
            schedule=events.Schedule.expression(config.heartbeat_schedule),
            targets=[
                targets.LambdaFunction(
                    self.scheduler,
                    retry_attempts=SCHEDULE_TARGET_RETRY_ATTEMPTS,
                    max_event_age=SCHEDULE_TARGET_MAX_EVENT_AGE,
                )
            ],
        )

    def _queues(self) -> tuple[sqs.Queue, sqs.Queue]:
        dead_letter_queue = sqs.Queue(
            self,
            "DeadLetters",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            retention_period=DLQ_RETENTION,
        )
        NagSuppressions.add_resource_suppressions(
            dead_letter_queue.node.default_child,
            [NagPackSuppression(id="AwsSolutions-SQS3", reason=_DLQ_REASON)],
            apply_to_children=False,
        )
        queue = sqs.Queue(
            self,
            "Queue",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            visibility_timeout=QUEUE_VISIBILITY_TIMEOUT,
            retention_period=QUEUE_RETENTION,
            dead_letter_queue=sqs.DeadLetterQueue(queue=dead_letter_queue, max_receive_count=QUEUE_MAX_RECEIVE_COUNT),
        )
        return dead_letter_queue, queue

    def _worker(self, config: StackConfig, environment: dict[str, str], queue: sqs.Queue) -> lambda_.Function:
        worker = self._functions.add_function(
            "HeartbeatWorker",
            code_directory=HEARTBEAT_DIR,
            handler="app.worker_handler",
            description="Redeem the connections the heartbeat queued, one message after another",
            timeout=WORKER_TIMEOUT,
            environment={**environment, "TOKENKEEPER_HEARTBEAT_CONCURRENCY": str(WORKER_CONCURRENCY)},
        )
        self._grant_redemption(worker)
        worker.add_event_source(
            event_sources.SqsEventSource(
                queue,
                batch_size=WORKER_BATCH_SIZE,
                max_concurrency=config.heartbeat_concurrency,
                report_batch_item_failures=True,
            )
        )
        return worker

    def _grant_redemption(self, function: lambda_.Function) -> None:
        """Grant what redeeming a connection needs: the refresher's access and the announcements bus."""
        self._functions.grant_token_access(function)
        self._announcements.grant_put_events(function)

    def _grant_fanout_scheduler(self, function: lambda_.Function, queue: sqs.Queue) -> None:
        """Grant the index query and SendMessage only: the fan-out scheduler never reads a token or secret."""
        self._storage.grant_heartbeat_query(function)
        region = function.stack.region
        self._storage.grant_data_key_decrypt(function, via_services=[f"dynamodb.{region}.amazonaws.com"])
        iam.Grant.add_to_principal(grantee=function, actions=["sqs:SendMessage"], resource_arns=[queue.queue_arn])


def expected_interval(period_hours: float) -> Duration:
    """Return ``period_hours`` as a Duration rounded up to whole minutes, as CloudWatch periods require."""
    return Duration.seconds(math.ceil(period_hours * 60) * 60)
