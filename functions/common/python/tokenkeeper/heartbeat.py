"""The heartbeat: redeem every active connection before Salesforce's idle window closes.

Salesforce expires a refresh token that stays unused for 30 days, and every redemption restarts
that window. A scheduled run finds the connections last redeemed more than a threshold ago with
one Query on the sparse ``heartbeat-due`` index and redeems each through
:meth:`TokenRefresher.keep_alive`, the refresh function's own lease and compare-and-swap path.
A connection a caller redeemed meanwhile is skipped, so no refresh token is redeemed twice.

Two ways to run:
- direct: one invocation redeems due connections on a bounded thread pool until its time runs
  short, and leaves the rest due for the next run;
- fan-out: the scheduler puts due connection ids on an SQS queue and workers redeem them, each
  failed message returned as a partial batch failure so SQS retries it.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping

import boto3
from botocore.exceptions import BotoCoreError, ClientError
from aws_lambda_powertools.metrics import MetricUnit

from tokenkeeper import observability as obs
from tokenkeeper.announcements import (
    DETAIL_TYPE_REAUTHORIZATION_REQUIRED,
    DETAIL_TYPE_RECOVERED,
    Announcement,
    Announcer,
)
from tokenkeeper.config import Settings, read_number
from tokenkeeper.errors import (
    ConfigurationError,
    ConnectionInactiveError,
    ConnectionNotFoundError,
    InvalidEventError,
    ReauthorizationRequiredError,
    StoreError,
    TokenKeeperError,
)
from tokenkeeper.refresher import TokenRefresher
from tokenkeeper.runtime import AWS_CLIENT_CONFIG, Runtime
from tokenkeeper.store import ConnectionStore, DueConnection

__all__ = [
    "ENV_IDLE_WINDOW_DAYS",
    "ENV_HEARTBEAT_THRESHOLD_DAYS",
    "ENV_HEARTBEAT_PERIOD_HOURS",
    "ENV_HEARTBEAT_FAILED_RUNS_TOLERATED",
    "ENV_HEARTBEAT_CONCURRENCY",
    "ENV_HEARTBEAT_JITTER_MS",
    "ENV_HEARTBEAT_SAFETY_MARGIN_SECONDS",
    "ENV_EVENT_BUS_NAME",
    "ENV_HEARTBEAT_QUEUE_URL",
    "OUTCOME_REFRESHED",
    "OUTCOME_SKIPPED",
    "OUTCOME_REAUTHORIZATION_REQUIRED",
    "OUTCOME_FAILED",
    "HeartbeatConfig",
    "Heartbeat",
    "HeartbeatRuntime",
    "KeepAliveFailedError",
    "Outcome",
    "RunSummary",
    "validate_schedule",
]

ENV_IDLE_WINDOW_DAYS = "TOKENKEEPER_IDLE_WINDOW_DAYS"
ENV_HEARTBEAT_THRESHOLD_DAYS = "TOKENKEEPER_HEARTBEAT_THRESHOLD_DAYS"
ENV_HEARTBEAT_PERIOD_HOURS = "TOKENKEEPER_HEARTBEAT_PERIOD_HOURS"
ENV_HEARTBEAT_FAILED_RUNS_TOLERATED = "TOKENKEEPER_HEARTBEAT_FAILED_RUNS_TOLERATED"
ENV_HEARTBEAT_CONCURRENCY = "TOKENKEEPER_HEARTBEAT_CONCURRENCY"
ENV_HEARTBEAT_JITTER_MS = "TOKENKEEPER_HEARTBEAT_JITTER_MS"
ENV_HEARTBEAT_SAFETY_MARGIN_SECONDS = "TOKENKEEPER_HEARTBEAT_SAFETY_MARGIN_SECONDS"
ENV_EVENT_BUS_NAME = "TOKENKEEPER_EVENT_BUS_NAME"
ENV_HEARTBEAT_QUEUE_URL = "TOKENKEEPER_HEARTBEAT_QUEUE_URL"

# Salesforce's refresh token policy "Expire refresh token if not used for 30 days".
DEFAULT_IDLE_WINDOW_DAYS = 30.0
DEFAULT_THRESHOLD_DAYS = 20.0
DEFAULT_PERIOD_HOURS = 24.0
DEFAULT_FAILED_RUNS_TOLERATED = 3
DEFAULT_CONCURRENCY = 8
MAX_CONCURRENCY = 64
# Each redemption starts after a random delay of up to this much, so a run does not send a burst.
DEFAULT_JITTER_MS = 100
DEFAULT_EVENT_BUS_NAME = "default"
# Time kept back for a run's own bookkeeping: the summary, metrics and announcements.
SCHEDULE_MARGIN_DAYS = 1.0
QUERY_PAGE_SIZE = 100
# SendMessageBatch accepts at most 10 entries per request.
SEND_BATCH_SIZE = 10
SEND_ATTEMPTS = 3

OUTCOME_REFRESHED = "refreshed"
OUTCOME_SKIPPED = "skipped"
OUTCOME_REAUTHORIZATION_REQUIRED = "reauthorization_required"
OUTCOME_FAILED = "failed"


class KeepAliveFailedError(TokenKeeperError):
    """A queued connection could not be kept alive this time; SQS delivers its message again."""

    kind = "keep_alive_failed"
    retryable = True


def validate_schedule(
    window_days: float, threshold_days: float, period_hours: float, failed_runs_tolerated: int
) -> None:
    """Raise :class:`ConfigurationError` if a connection could go idle for a whole window.

    A connection becomes due ``threshold_days`` after its last redemption. In the worst case it
    becomes due just after a run, then the next ``failed_runs_tolerated`` runs fail, and the run
    after those redeems it: ``period_hours x (1 + failed_runs_tolerated)`` later. That gap plus
    a margin of ``SCHEDULE_MARGIN_DAYS`` (a run's own length, clocks, the index's replication
    lag) must fit inside ``window_days - threshold_days``. The CDK stack calls this at synth.
    """
    named = (
        f"{ENV_IDLE_WINDOW_DAYS}={window_days:g}, {ENV_HEARTBEAT_THRESHOLD_DAYS}={threshold_days:g}, "
        f"{ENV_HEARTBEAT_PERIOD_HOURS}={period_hours:g}, {ENV_HEARTBEAT_FAILED_RUNS_TOLERATED}={failed_runs_tolerated}"
    )
    if window_days <= 0 or threshold_days <= 0 or period_hours <= 0:
        raise ConfigurationError(f"The heartbeat schedule needs positive values ({named}).")
    if isinstance(failed_runs_tolerated, bool) or not isinstance(failed_runs_tolerated, int) or failed_runs_tolerated < 0:
        raise ConfigurationError(
            f"{ENV_HEARTBEAT_FAILED_RUNS_TOLERATED}={failed_runs_tolerated!r} must be a whole number, 0 or more."
        )
    if threshold_days >= window_days:
        raise ConfigurationError(
            f"The heartbeat threshold must be shorter than the idle window ({named}); connections would "
            "expire before they become due. Lower the threshold."
        )

    slack_days = window_days - threshold_days
    worst_gap_days = period_hours / 24 * (1 + failed_runs_tolerated)
    if worst_gap_days + SCHEDULE_MARGIN_DAYS > slack_days:
        raise ConfigurationError(
            f"The heartbeat schedule can let a connection expire ({named}): a connection due just after "
            f"a run waits up to {worst_gap_days:g} days ({period_hours:g} h x (1 + {failed_runs_tolerated} "
            f"failed runs)), which with a {SCHEDULE_MARGIN_DAYS:g}-day margin exceeds the {slack_days:g} days "
            "between the threshold and the end of the window. Lower the threshold or run more often."
        )


@dataclass(frozen=True)
class HeartbeatConfig:
    """Validated heartbeat settings; see the ``ENV_*`` constants for the variables that set them."""

    idle_window_days: float = DEFAULT_IDLE_WINDOW_DAYS
    threshold_days: float = DEFAULT_THRESHOLD_DAYS
    period_hours: float = DEFAULT_PERIOD_HOURS
    failed_runs_tolerated: int = DEFAULT_FAILED_RUNS_TOLERATED
    concurrency: int = DEFAULT_CONCURRENCY
    jitter_ms: int = DEFAULT_JITTER_MS
    # None: one worst-case keep_alive, the lease wait plus the lease (see ``margin_seconds``).
    safety_margin_seconds: float | None = None
    event_bus_name: str = DEFAULT_EVENT_BUS_NAME
    queue_url: str | None = None

    def __post_init__(self) -> None:
        validate_schedule(self.idle_window_days, self.threshold_days, self.period_hours, self.failed_runs_tolerated)
        if not 1 <= self.concurrency <= MAX_CONCURRENCY:
            raise ConfigurationError(
                f"{ENV_HEARTBEAT_CONCURRENCY}={self.concurrency} is out of range; use 1 to {MAX_CONCURRENCY}."
            )
        if self.safety_margin_seconds is not None and self.safety_margin_seconds < 0:
            raise ConfigurationError(f"{ENV_HEARTBEAT_SAFETY_MARGIN_SECONDS} must not be negative.")

    @property
    def threshold_seconds(self) -> float:
        return self.threshold_days * 86400

    def margin_seconds(self, settings: Settings) -> float:
        """Return the time a run keeps back when it stops taking work.

        A keep_alive started just before that point may wait for another caller's lease
        (``max_wait_seconds``) and then hold its own for every attempt (``lease_seconds``).
        """
        if self.safety_margin_seconds is not None:
            return self.safety_margin_seconds
        return settings.max_wait_seconds + settings.lease_seconds

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None, **overrides) -> "HeartbeatConfig":
        """Build the configuration from ``environ`` (default ``os.environ``); keyword arguments win."""
        environ = os.environ if environ is None else environ
        values = {
            "idle_window_days": read_number(environ, ENV_IDLE_WINDOW_DAYS, DEFAULT_IDLE_WINDOW_DAYS, float),
            "threshold_days": read_number(environ, ENV_HEARTBEAT_THRESHOLD_DAYS, DEFAULT_THRESHOLD_DAYS, float),
            "period_hours": read_number(environ, ENV_HEARTBEAT_PERIOD_HOURS, DEFAULT_PERIOD_HOURS, float),
            "failed_runs_tolerated": read_number(
                environ, ENV_HEARTBEAT_FAILED_RUNS_TOLERATED, DEFAULT_FAILED_RUNS_TOLERATED, int
            ),
            "concurrency": read_number(environ, ENV_HEARTBEAT_CONCURRENCY, DEFAULT_CONCURRENCY, int),
            "jitter_ms": read_number(environ, ENV_HEARTBEAT_JITTER_MS, DEFAULT_JITTER_MS, int),
            "safety_margin_seconds": read_number(environ, ENV_HEARTBEAT_SAFETY_MARGIN_SECONDS, None, float),
            "event_bus_name": (environ.get(ENV_EVENT_BUS_NAME) or "").strip() or DEFAULT_EVENT_BUS_NAME,
            "queue_url": (environ.get(ENV_HEARTBEAT_QUEUE_URL) or "").strip() or None,
        }
        values.update(overrides)
        return cls(**values)


@dataclass(frozen=True)
class Outcome:
    """The result of the heartbeat for one connection."""

    connection_id: str
    result: str
    error_kind: str | None = None
    recovered: bool = False
    # A configuration error, which fails every connection alike, so the run stops taking work.
    systemic: bool = False
    announcement: Announcement | None = None


@dataclass
class RunSummary:
    """Counts of one run; ``due`` is a lower bound when the run stopped early."""

    mode: str
    due: int = 0
    refreshed: int = 0
    skipped: int = 0
    failed: int = 0
    reauthorization_required: int = 0
    recovered: int = 0
    not_started: int = 0
    enqueued: int = 0
    oldest_idle_seconds: float = 0.0
    stopped_reason: str | None = None
    failed_ids: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, outcome: Outcome) -> None:
        with self._lock:
            if outcome.result == OUTCOME_REFRESHED:
                self.refreshed += 1
            elif outcome.result == OUTCOME_SKIPPED:
                self.skipped += 1
            elif outcome.result == OUTCOME_REAUTHORIZATION_REQUIRED:
                self.reauthorization_required += 1
            else:
                self.failed += 1
                self.failed_ids.append(outcome.connection_id)
            if outcome.recovered:
                self.recovered += 1

    def note_due(self, due: DueConnection, now: float) -> None:
        self.due += 1
        self.oldest_idle_seconds = max(self.oldest_idle_seconds, now - due.last_redeemed_at)

    def to_log(self) -> dict:
        """Return the summary as the fields of the run's log line; ids of failures are capped."""
        return {
            "mode": self.mode,
            "due": self.due,
            "refreshed": self.refreshed,
            "skipped": self.skipped,
            "failed": self.failed,
            "reauthorization_required": self.reauthorization_required,
            "recovered": self.recovered,
            "not_started": self.not_started,
            "enqueued": self.enqueued,
            "oldest_idle_seconds": round(self.oldest_idle_seconds),
            "complete": self.stopped_reason is None,
            "stopped_reason": self.stopped_reason,
            "failed_connection_ids": self.failed_ids[:20],
        }

    def emit_metrics(self) -> None:
        """Add one data point per counter to the invocation's EMF metrics."""
        for name, value in (
            (obs.METRIC_HEARTBEAT_DUE, self.due),
            (obs.METRIC_HEARTBEAT_REFRESHED, self.refreshed),
            (obs.METRIC_HEARTBEAT_SKIPPED, self.skipped),
            (obs.METRIC_HEARTBEAT_FAILED, self.failed),
            (obs.METRIC_HEARTBEAT_REAUTHORIZATION_REQUIRED, self.reauthorization_required),
            (obs.METRIC_HEARTBEAT_RECOVERED, self.recovered),
            (obs.METRIC_HEARTBEAT_NOT_STARTED, self.not_started),
            (obs.METRIC_HEARTBEAT_ENQUEUED, self.enqueued),
        ):
            obs.count(name, value)
        if self.mode == "worker":
            # A worker handles only its batch, so the oldest idle age comes from the scheduler alone.
            return
        obs.metrics.add_metric(
            name=obs.METRIC_HEARTBEAT_OLDEST_IDLE, unit=MetricUnit.Seconds, value=round(self.oldest_idle_seconds)
        )


class Heartbeat:
    """Find due connections and keep each alive through the refresher; see the module docstring."""

    def __init__(
        self,
        refresher: TokenRefresher,
        store: ConnectionStore,
        settings: Settings,
        config: HeartbeatConfig,
        *,
        announcer: Announcer | None = None,
        sqs_client=None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ):
        self._refresher = refresher
        self._store = store
        self._settings = settings
        self._config = config
        self._announcer = announcer
        self._sqs = sqs_client
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()

    # Direct mode ------------------------------------------------------------------------------

    def run(self, remaining_ms: Callable[[], int]) -> RunSummary:
        """Keep every due connection alive, until ``remaining_ms()`` falls below the safety margin.

        Connections not started stay due, so an unfinished run loses nothing but time.
        """
        now = self._clock()
        due_before = now - self._config.threshold_seconds
        summary = RunSummary(mode="direct")
        stop = threading.Event()
        slots = threading.BoundedSemaphore(self._config.concurrency)
        announced: list[Outcome] = []

        def finish(done) -> None:
            # The slot is released last, so the dispatcher sees a configuration error before it
            # can start the next connection.
            try:
                outcome = done.result()
                summary.add(outcome)
                if outcome.systemic:
                    stop.set()
                if outcome.announcement is not None:
                    announced.append(outcome)
            finally:
                slots.release()

        with ThreadPoolExecutor(max_workers=self._config.concurrency, thread_name_prefix="heartbeat") as pool:
            for page in self._due_pages(due_before, summary):
                for index, due in enumerate(page):
                    summary.note_due(due, now)
                    reason = self._take_slot(slots, stop, remaining_ms)
                    if reason is not None:
                        summary.stopped_reason = reason
                        summary.not_started += len(page) - index
                        for rest in page[index + 1 :]:
                            summary.note_due(rest, now)
                        break
                    future = pool.submit(self._keep_alive_after_jitter, due.connection_id, due_before)
                    future.add_done_callback(finish)
                if summary.stopped_reason:
                    break

        if summary.stopped_reason == "deadline" and summary.not_started == summary.due:
            obs.logger.error(
                "The heartbeat had too little time to start any redemption; raise the function's timeout",
                extra={
                    "remaining_seconds": round(remaining_ms() / 1000, 1),
                    "safety_margin_seconds": self._config.margin_seconds(self._settings),
                },
            )
        self.announce(announced)
        return summary

    def _take_slot(self, slots: threading.BoundedSemaphore, stop: threading.Event, remaining_ms) -> str | None:
        """Wait for a free worker; return why the run must stop instead, or None."""
        reason = self._reason_to_stop(stop, remaining_ms)
        if reason is not None:
            return reason
        slots.acquire()
        # Waiting for a free worker can take a whole redemption, so the time is checked again.
        reason = self._reason_to_stop(stop, remaining_ms)
        if reason is not None:
            slots.release()
        return reason

    def _reason_to_stop(self, stop: threading.Event, remaining_ms: Callable[[], int]) -> str | None:
        if stop.is_set():
            return "configuration_error"
        if remaining_ms() / 1000 <= self._config.margin_seconds(self._settings):
            return "deadline"
        return None

    def _due_pages(self, due_before: float, summary: RunSummary) -> Iterator[list[DueConnection]]:
        # Redeemed connections move past ``due_before`` in the index, so paging forward never
        # returns them again. The loop ends when DynamoDB returns no LastEvaluatedKey.
        next_key = None
        while True:
            try:
                page = self._store.query_due(due_before, limit=QUERY_PAGE_SIZE, exclusive_start_key=next_key)
            except StoreError as exc:
                obs.logger.error("Querying due connections failed; the rest stay due", extra={"reason": exc.message})
                summary.stopped_reason = "query_failed"
                return
            if page.connections:
                yield page.connections
            next_key = page.next_key
            if not next_key:
                return

    def _keep_alive_after_jitter(self, connection_id: str, due_before: float) -> Outcome:
        self._sleep(self._rng.uniform(0, self._config.jitter_ms / 1000))
        return self.keep_alive(connection_id, due_before)

    # One connection ---------------------------------------------------------------------------

    def keep_alive(self, connection_id: str, due_before: float) -> Outcome:
        """Redeem one connection unless it was redeemed after ``due_before``.

        Every error is caught and returned as an outcome, so one connection cannot end a run.
        """
        obs.logger.thread_safe_append_keys(connection_id=connection_id)
        try:
            return self._keep_alive(connection_id, due_before)
        finally:
            obs.logger.thread_safe_remove_keys(["connection_id"])

    def _keep_alive(self, connection_id: str, due_before: float) -> Outcome:
        try:
            result = self._refresher.keep_alive(connection_id, due_before=due_before)
        except ReauthorizationRequiredError as exc:
            announcement = Announcement(
                DETAIL_TYPE_REAUTHORIZATION_REQUIRED,
                connection_id,
                {"error_kind": exc.kind, "oauth_error": exc.error, "rotation_lost_in_transit": exc.rotation_lost_in_transit},
            )
            return Outcome(connection_id, OUTCOME_REAUTHORIZATION_REQUIRED, exc.kind, announcement=announcement)
        except (ConnectionInactiveError, ConnectionNotFoundError) as exc:
            # The index lags the table: the connection left the active set after the query.
            return Outcome(connection_id, OUTCOME_SKIPPED, exc.kind)
        except ConfigurationError as exc:
            # Wrong proxy credentials, a blocked egress IP or a bad client secret.
            obs.logger.error(
                "Heartbeat redemption failed on configuration; the run stops taking work",
                extra={"error_kind": exc.kind, "reason": exc.message},
            )
            return Outcome(connection_id, OUTCOME_FAILED, exc.kind, systemic=True)
        except TokenKeeperError as exc:
            obs.logger.warning(
                "Heartbeat redemption failed; the connection stays due",
                extra={"error_kind": exc.kind, "reason": exc.message},
            )
            return Outcome(connection_id, OUTCOME_FAILED, exc.kind)
        except Exception:  # noqa: BLE001 (one connection's unexpected error must not end the run)
            obs.logger.exception("Heartbeat redemption failed unexpectedly; the connection stays due")
            return Outcome(connection_id, OUTCOME_FAILED, "internal")

        if not result.redeemed:
            return Outcome(connection_id, OUTCOME_SKIPPED)
        if result.failures_before > 0:
            announcement = Announcement(
                DETAIL_TYPE_RECOVERED,
                connection_id,
                {"failed_attempts_before": result.failures_before, "version": result.version},
            )
            return Outcome(connection_id, OUTCOME_REFRESHED, recovered=True, announcement=announcement)
        return Outcome(connection_id, OUTCOME_REFRESHED)

    def announce(self, outcomes: list[Outcome]) -> None:
        """Send the announcements that ``outcomes`` carry to the event bus."""
        announcements = [outcome.announcement for outcome in outcomes if outcome.announcement is not None]
        if not announcements:
            return
        if self._announcer is None:
            obs.logger.error(
                "No event bus configured; connection changes were not announced",
                extra={"connection_ids": [item.connection_id for item in announcements]},
            )
            return
        self._announcer.announce(announcements)

    # Fan-out mode -----------------------------------------------------------------------------

    def enqueue_due(self, remaining_ms: Callable[[], int]) -> RunSummary:
        """Put every due connection id on the heartbeat queue for the workers to redeem."""
        if not self._config.queue_url or self._sqs is None:
            raise ConfigurationError(f"Fan-out needs {ENV_HEARTBEAT_QUEUE_URL} and an SQS client.")
        now = self._clock()
        due_before = now - self._config.threshold_seconds
        summary = RunSummary(mode="fan_out")
        for page in self._due_pages(due_before, summary):
            for due in page:
                summary.note_due(due, now)
            for start in range(0, len(page), SEND_BATCH_SIZE):
                batch = page[start : start + SEND_BATCH_SIZE]
                sent = self._send_batch(batch, due_before)
                summary.enqueued += sent
                summary.failed += len(batch) - sent
            # Sending is quick, so the margin here only needs to cover one more page.
            if remaining_ms() < ENQUEUE_MARGIN_MS:
                summary.stopped_reason = "deadline"
                break
        return summary

    def _send_batch(self, batch: list[DueConnection], due_before: float) -> int:
        """Send one SendMessageBatch, retrying entries SQS rejected; return how many were accepted."""
        pending = {
            str(position): {
                "Id": str(position),
                "MessageBody": json.dumps({"connection_id": due.connection_id, "due_before": due_before}),
            }
            for position, due in enumerate(batch)
        }
        for _ in range(SEND_ATTEMPTS):
            try:
                answer = self._sqs.send_message_batch(QueueUrl=self._config.queue_url, Entries=list(pending.values()))
            except (ClientError, BotoCoreError) as exc:
                obs.logger.warning("SendMessageBatch failed", extra={"reason": str(exc)})
                continue
            for accepted in answer.get("Successful", []):
                pending.pop(accepted["Id"], None)
            if not pending:
                break
        if pending:
            obs.logger.error(
                "SQS rejected heartbeat messages; those connections stay due for the next run",
                extra={"connection_ids": [batch[int(key)].connection_id for key in pending]},
            )
        return len(batch) - len(pending)

    def process_message(self, body: str) -> Outcome:
        """Keep alive the connection named by one queue message (see :func:`parse_message`)."""
        message = parse_message(body)
        return self.keep_alive(message["connection_id"], message["due_before"])


# Sending a page of messages takes well under this; the scheduler stops with this much left.
ENQUEUE_MARGIN_MS = 10_000


def parse_message(body: str) -> dict:
    """Parse a heartbeat queue message; raise :class:`InvalidEventError` naming the problem."""
    try:
        message = json.loads(body)
    except (TypeError, ValueError):
        raise InvalidEventError("A heartbeat message is not JSON; expected {\"connection_id\", \"due_before\"}.") from None
    if not isinstance(message, dict):
        raise InvalidEventError("A heartbeat message must be a JSON object with connection_id and due_before.")
    connection_id = message.get("connection_id")
    due_before = message.get("due_before")
    if not isinstance(connection_id, str) or not connection_id:
        raise InvalidEventError(f"A heartbeat message has an invalid connection_id {connection_id!r}.")
    if isinstance(due_before, bool) or not isinstance(due_before, (int, float)):
        raise InvalidEventError(f"A heartbeat message has an invalid due_before {due_before!r}; expected epoch seconds.")
    return {"connection_id": connection_id, "due_before": float(due_before)}


class HeartbeatRuntime:
    """The heartbeat function's container objects, built once: the shared runtime and its clients.

    The refresher, and with it the Salesforce secrets and the proxy, is built on first use, so a
    fan-out scheduler that only queries and enqueues never reads them.
    """

    def __init__(
        self,
        runtime: Runtime,
        config: HeartbeatConfig,
        *,
        session: boto3.session.Session | None = None,
        events_client=None,
        sqs_client=None,
        clock: Callable[[], float] = time.time,
    ):
        session = session or boto3.session.Session()
        self.runtime = runtime
        self.config = config
        events_client = events_client or session.client("events", config=AWS_CLIENT_CONFIG)
        if sqs_client is None and config.queue_url:
            sqs_client = session.client("sqs", config=AWS_CLIENT_CONFIG)
        self.heartbeat = Heartbeat(
            _LazyRefresher(runtime),
            runtime.store,
            runtime.settings,
            config,
            announcer=Announcer(events_client, config.event_bus_name),
            sqs_client=sqs_client,
            clock=clock,
        )

    @classmethod
    def from_environment(cls) -> "HeartbeatRuntime":
        """Build everything from the environment variables the stack sets."""
        config = HeartbeatConfig.from_environment()
        # One pooled Salesforce connection per worker thread, so none is opened and thrown away.
        runtime = Runtime(Settings.from_environment(), pool_maxsize=config.concurrency)
        return cls(runtime, config)


class _LazyRefresher:
    """Build the runtime's refresher on the first call that needs it."""

    def __init__(self, runtime: Runtime):
        self._runtime = runtime

    def __getattr__(self, name: str):
        return getattr(self._runtime.refresher(), name)
