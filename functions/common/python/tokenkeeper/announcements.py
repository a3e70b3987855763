"""Announce connection changes an operator acts on as EventBridge events.

Each event carries ids, counts and error kinds only, never a token. The source is
``tokenkeeper``. A rule on the bus routes the detail types below to whatever notifies the ISV,
such as email, a ticket or the app's own admin page.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from botocore.exceptions import BotoCoreError, ClientError

from tokenkeeper import observability as obs

__all__ = [
    "EVENT_SOURCE",
    "DETAIL_TYPE_REAUTHORIZATION_REQUIRED",
    "DETAIL_TYPE_RECOVERED",
    "Announcement",
    "Announcer",
]

EVENT_SOURCE = "tokenkeeper"
DETAIL_TYPE_REAUTHORIZATION_REQUIRED = "Connection Reauthorization Required"
DETAIL_TYPE_RECOVERED = "Connection Recovered"
# PutEvents accepts at most 10 entries per request.
PUT_EVENTS_BATCH = 10


@dataclass(frozen=True)
class Announcement:
    """One event about one connection; ``detail`` contains ids, counts and error kinds only."""

    detail_type: str
    connection_id: str
    detail: dict


class Announcer:
    """Send announcements to one EventBridge bus, 10 entries per PutEvents request."""

    def __init__(self, events_client, bus_name: str):
        self._events = events_client
        self._bus_name = bus_name

    def announce(self, announcements: list[Announcement]) -> int:
        """Send every announcement; return how many EventBridge did not accept.

        A failed announcement is logged with its connection id and counted, never raised: the
        connection's state is already stored, and the next run does not announce it again.
        """
        failed = 0
        for start in range(0, len(announcements), PUT_EVENTS_BATCH):
            batch = announcements[start : start + PUT_EVENTS_BATCH]
            failed += self._put(batch)
        if failed:
            obs.count(obs.METRIC_ANNOUNCEMENTS_FAILED, failed)
        return failed

    def _put(self, batch: list[Announcement]) -> int:
        entries = [
            {
                "Source": EVENT_SOURCE,
                "DetailType": item.detail_type,
                "Detail": json.dumps({"connection_id": item.connection_id, **item.detail}),
                "EventBusName": self._bus_name,
            }
            for item in batch
        ]
        try:
            answer = self._events.put_events(Entries=entries)
        except (ClientError, BotoCoreError) as exc:
            obs.logger.error(
                "Announcing connection changes failed",
                extra={"bus": self._bus_name, "connection_ids": [item.connection_id for item in batch], "reason": str(exc)},
            )
            return len(batch)

        failed = 0
        for item, result in zip(batch, answer.get("Entries", [])):
            if result.get("ErrorCode"):
                failed += 1
                obs.logger.error(
                    "EventBridge rejected an announcement",
                    extra={
                        "bus": self._bus_name,
                        "connection_id": item.connection_id,
                        "detail_type": item.detail_type,
                        "error_code": result.get("ErrorCode"),
                    },
                )
        return failed
