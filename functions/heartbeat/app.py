"""The heartbeat function: keep every connection's refresh token inside Salesforce's idle window.

``handler`` runs on an EventBridge schedule. Without a queue configured, it redeems the due
connections itself. With ``TOKENKEEPER_HEARTBEAT_QUEUE_URL`` set, it puts their ids on that queue
instead. ``worker_handler`` is subscribed to the queue: it redeems them and reports each failed
message as a partial batch failure, so SQS delivers it again and in the end to the dead-letter queue.
Both log the run's summary, which contains counts and ids only, never a token.
"""

from __future__ import annotations

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from tokenkeeper.errors import InvalidEventError
from tokenkeeper.heartbeat import OUTCOME_FAILED, HeartbeatRuntime, KeepAliveFailedError, Outcome, RunSummary
from tokenkeeper.observability import logger, metrics, tracer
from tokenkeeper.runtime import ContainerSlot

_runtime: ContainerSlot[HeartbeatRuntime] = ContainerSlot(lambda: HeartbeatRuntime.from_environment())
# Tests and the local world call these to read or replace the container's runtime.
get_runtime = _runtime.get
set_runtime = _runtime.set


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
@tracer.capture_lambda_handler(capture_response=False)
def handler(event: dict, context: LambdaContext) -> dict:
    runtime = get_runtime()
    heartbeat = runtime.heartbeat
    if runtime.config.queue_url:
        summary = heartbeat.enqueue_due(context.get_remaining_time_in_millis)
    else:
        summary = heartbeat.run(context.get_remaining_time_in_millis)
    return _report(summary)


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
@tracer.capture_lambda_handler(capture_response=False)
def worker_handler(event: dict, context: LambdaContext) -> dict:
    heartbeat = get_runtime().heartbeat
    summary = RunSummary(mode="worker")
    outcomes: list[Outcome] = []

    def keep_alive(record: SQSRecord) -> None:
        try:
            outcome = heartbeat.process_message(record.body)
        except InvalidEventError as exc:
            # Redelivery cannot fix it, but SQS moves it to the dead-letter queue for inspection.
            logger.error("Heartbeat message is invalid", extra={"message_id": record.message_id, "reason": exc.message})
            summary.failed += 1
            raise
        outcomes.append(outcome)
        summary.add(outcome)
        if outcome.result == OUTCOME_FAILED:
            raise KeepAliveFailedError(
                f"Keeping connection {outcome.connection_id!r} alive failed ({outcome.error_kind}); "
                "SQS delivers the message again.",
                connection_id=outcome.connection_id,
            )

    # A new processor per invocation: a warm container must not carry one batch's records into the next.
    processor = BatchProcessor(event_type=EventType.SQS)
    response = process_partial_response(event=event, record_handler=keep_alive, processor=processor, context=context)
    heartbeat.announce(outcomes)
    summary.due = len(event.get("Records", []))
    _report(summary)
    return response


def _report(summary: RunSummary) -> dict:
    fields = summary.to_log()
    logger.info("Heartbeat run finished", extra=fields)
    summary.emit_metrics()
    return fields
