"""The operator's reads and writes on the connection table.

Summaries are read with a projection that leaves out the sealed tokens, so listing connections
makes no KMS call and no token ever reaches the operator's process. Pending authorizations (a
PKCE code verifier waiting for its authorization code) live in the same table under
``pending#<state>``, their verifier sealed with KMS under that key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from botocore.exceptions import BotoCoreError, ClientError

from tokenkeeper.crypto import SealedTokens
from tokenkeeper.errors import StoreError
from tokenkeeper.store import (
    HEARTBEAT_PARTITION_VALUE,
    RESCUE_PREFIX,
    STATUS_ACTIVE,
    STATUS_REVOKED,
    ConnectionStore,
)

__all__ = [
    "IDLE_WINDOW_SECONDS",
    "PENDING_PREFIX",
    "AdminStore",
    "ConnectionSummary",
    "PendingAuthorization",
    "SummaryPage",
]

# Salesforce expires a refresh token that stays unused for 30 days (a sliding window).
IDLE_WINDOW_SECONDS = 30 * 86400
PENDING_PREFIX = "pending#"

_SUMMARY_ATTRIBUTES = (
    "connection_id",
    "status",
    "version",
    "token_host",
    "instance_url",
    "org_id",
    "user_id",
    "last_redeemed_at",
    "access_token_expires_at",
    "consecutive_failures",
    "last_error_kind",
    "last_error_at",
    "created_at",
    "updated_at",
    "lease_expires_at",
)
# DynamoDB reserves several of these words (status, version), so every name goes through a placeholder.
_PROJECTION_NAMES = {f"#a{index}": name for index, name in enumerate(_SUMMARY_ATTRIBUTES)}
_PROJECTION = ", ".join(_PROJECTION_NAMES)


@dataclass(frozen=True)
class ConnectionSummary:
    """The operator's view of a connection: its state and timestamps, never a token."""

    connection_id: str
    status: str
    version: int
    token_host: str
    instance_url: str | None = None
    org_id: str | None = None
    user_id: str | None = None
    last_redeemed_at: float | None = None
    access_token_expires_at: float | None = None
    consecutive_failures: int = 0
    last_error_kind: str | None = None
    last_error_at: float | None = None
    created_at: float | None = None
    updated_at: float | None = None
    lease_expires_at: float | None = None

    def idle_days_left(self, now: float) -> float | None:
        """Days until Salesforce's 30-day idle window closes, or None when it does not apply.

        It does not apply to a connection that was never redeemed or is no longer active, because
        no redemption keeps such a chain alive.
        """
        if self.last_redeemed_at is None or self.status != STATUS_ACTIVE:
            return None
        return (self.last_redeemed_at + IDLE_WINDOW_SECONDS - now) / 86400

    def to_payload(self, now: float) -> dict:
        days_left = self.idle_days_left(now)
        return {
            "connection_id": self.connection_id,
            "status": self.status,
            "version": self.version,
            "token_host": self.token_host,
            "instance_url": self.instance_url,
            "org_id": self.org_id,
            "user_id": self.user_id,
            "last_redeemed_at": _whole(self.last_redeemed_at),
            "idle_days_left": round(days_left, 1) if days_left is not None else None,
            "access_token_expires_at": _whole(self.access_token_expires_at),
            "consecutive_failures": self.consecutive_failures,
            "last_error_kind": self.last_error_kind,
            "last_error_at": _whole(self.last_error_at),
            "created_at": _whole(self.created_at),
            "updated_at": _whole(self.updated_at),
            "lease_live": bool(self.lease_expires_at and self.lease_expires_at > now),
        }


@dataclass(frozen=True)
class SummaryPage:
    """One page of a table scan; ``next_key`` is None on the last page."""

    connections: list[ConnectionSummary]
    next_key: dict | None


@dataclass(frozen=True)
class PendingAuthorization:
    """A started authorization: the PKCE verifier and where the code exchange must go."""

    state: str
    connection_id: str
    token_host: str
    redirect_uri: str
    code_verifier: str = field(repr=False)
    expires_at: float = 0.0


class AdminStore(ConnectionStore):
    """:class:`ConnectionStore` plus the operator's reads, status changes and pending authorizations."""

    @classmethod
    def of(cls, store: ConnectionStore) -> "AdminStore":
        """Return an admin store on the same table, DynamoDB client and KMS key as ``store``."""
        return cls(store._db, store._table, store._cipher)

    # Summaries --------------------------------------------------------------------------------

    def summary(self, connection_id: str) -> ConnectionSummary | None:
        """Return the connection's summary (strongly consistent read), or None when there is none."""
        answer = self._request(
            "get_item",
            connection_id,
            Key=_key(connection_id),
            ConsistentRead=True,
            ProjectionExpression=_PROJECTION,
            ExpressionAttributeNames=_PROJECTION_NAMES,
        )
        item = answer.get("Item")
        if not item or _is_auxiliary(connection_id):
            return None
        return _summary(item)

    def scan_summaries(self, *, limit: int = 100, exclusive_start_key: dict | None = None) -> SummaryPage:
        """Return one page of connection summaries in table order.

        NOTE: this is a Scan, which reads (and bills) every item of the table, pending
        authorizations and rescue records included. It is meant for the operator's ``list``,
        not for anything that runs per request; the heartbeat queries its sparse index instead.
        ``limit`` bounds the items read, so a page may hold fewer connections than ``limit``.
        """
        request = {
            "ProjectionExpression": _PROJECTION,
            "ExpressionAttributeNames": _PROJECTION_NAMES,
            "Limit": limit,
        }
        if exclusive_start_key:
            request["ExclusiveStartKey"] = exclusive_start_key
        answer = self._request("scan", None, **request)
        connections = [
            _summary(item) for item in answer.get("Items", []) if not _is_auxiliary(item["connection_id"]["S"])
        ]
        return SummaryPage(connections, answer.get("LastEvaluatedKey"))

    # Status changes ---------------------------------------------------------------------------

    def set_status(self, connection_id: str, *, status: str, allowed_from: tuple[str, ...], now: float) -> bool:
        """Set ``status`` if the current status is one of ``allowed_from``; return False otherwise.

        Only active connections carry the heartbeat index key, so it is added or removed here too.
        """
        names = {"#status": "status", "#id": "connection_id"}
        values = {":status": {"S": status}, ":now": _number(now)}
        allowed = []
        for index, allowed_status in enumerate(allowed_from):
            values[f":from{index}"] = {"S": allowed_status}
            allowed.append(f":from{index}")
        if status == STATUS_ACTIVE:
            update = "SET #status = :status, updated_at = :now, heartbeat_partition = :partition"
            values[":partition"] = {"S": HEARTBEAT_PARTITION_VALUE}
        else:
            update = "SET #status = :status, updated_at = :now REMOVE heartbeat_partition"
        return self._conditional_update(
            connection_id,
            UpdateExpression=update,
            ConditionExpression=f"attribute_exists(#id) AND #status IN ({', '.join(allowed)})",
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
        )

    def acquire_admin_lease(self, connection_id: str, *, version: int, owner: str, until: float, now: float) -> bool:
        """Take the refresh lease on ``version`` whatever the status, unless the connection is revoked.

        Unlike :meth:`acquire_lease` this also works on disabled connections and dead chains, so
        revocation waits for any redemption still in flight instead of racing it.
        """
        return self._conditional_update(
            connection_id,
            UpdateExpression="SET #owner = :owner, #lease_until = :until",
            ConditionExpression=(
                "attribute_exists(#id) AND #version = :version AND #status <> :revoked "
                "AND (attribute_not_exists(#owner) OR #lease_until < :now OR #owner = :owner)"
            ),
            ExpressionAttributeNames={
                "#id": "connection_id",
                "#status": "status",
                "#version": "version",
                "#owner": "lease_owner",
                "#lease_until": "lease_expires_at",
            },
            ExpressionAttributeValues={
                ":owner": {"S": owner},
                ":until": _number(until),
                ":now": _number(now),
                ":version": _number(version),
                ":revoked": {"S": STATUS_REVOKED},
            },
        )

    def mark_revoked(self, connection_id: str, *, version: int, owner: str, now: float) -> bool:
        """Mark the connection revoked and overwrite its tokens with an empty sealed value.

        The version moves on, so a redemption that started from an older read cannot store
        a token over the erased one. Only the holder of the lease on ``version`` may do this.
        NOTE: rescue records (``rescue#<id>#<version>``) are not searched for and stay as they are.
        """
        erased = self._cipher.seal(connection_id, SealedTokens(refresh_token="", access_token=None))
        return self._conditional_update(
            connection_id,
            UpdateExpression=(
                "SET #status = :revoked, tokens = :erased, #version = :next, updated_at = :now, revoked_at = :now "
                "REMOVE heartbeat_partition, access_token_expires_at, #owner, #lease_until"
            ),
            ConditionExpression="#version = :version AND #owner = :owner",
            ExpressionAttributeNames={
                "#status": "status",
                "#version": "version",
                "#owner": "lease_owner",
                "#lease_until": "lease_expires_at",
            },
            ExpressionAttributeValues={
                ":revoked": {"S": STATUS_REVOKED},
                ":erased": {"B": erased},
                ":next": _number(version + 1),
                ":now": _number(now),
                ":version": _number(version),
                ":owner": {"S": owner},
            },
        )

    # Pending authorizations -------------------------------------------------------------------

    def put_pending(self, pending: PendingAuthorization, *, now: float) -> None:
        """Store a pending authorization; a state is random, so an existing one is never replaced."""
        key = PENDING_PREFIX + pending.state
        sealed = self._cipher.seal_text(key, pending.code_verifier)
        try:
            self._request(
                "put_item",
                pending.connection_id,
                Item={
                    "connection_id": {"S": key},
                    "pending_connection_id": {"S": pending.connection_id},
                    "token_host": {"S": pending.token_host},
                    "redirect_uri": {"S": pending.redirect_uri},
                    # Every item keeps its sealed secret in ``tokens``; here it is the code verifier.
                    "tokens": {"B": sealed},
                    # Whole epoch seconds, the form DynamoDB time to live documents.
                    "expires_at": _number(math.ceil(pending.expires_at)),
                    "created_at": _number(now),
                },
                ConditionExpression="attribute_not_exists(connection_id)",
            )
        except _ConditionFailed:
            raise StoreError("A pending authorization with this state already exists; start again.") from None

    def take_pending(self, state: str) -> PendingAuthorization | None:
        """Delete and return the pending authorization of ``state``, or None when there is none.

        The delete returns the old item, so each pending authorization is used at most once even
        when two exchanges race with the same state.
        """
        key = PENDING_PREFIX + state
        try:
            answer = self._request(
                "delete_item",
                None,
                Key=_key(key),
                ConditionExpression="attribute_exists(connection_id)",
                ReturnValues="ALL_OLD",
            )
        except _ConditionFailed:
            return None
        item = answer.get("Attributes") or {}
        return PendingAuthorization(
            state=state,
            connection_id=item["pending_connection_id"]["S"],
            token_host=item["token_host"]["S"],
            redirect_uri=item["redirect_uri"]["S"],
            code_verifier=self._cipher.open_text(key, item["tokens"]["B"]),
            expires_at=float(item["expires_at"]["N"]),
        )

    # DynamoDB calls ---------------------------------------------------------------------------

    def _request(self, method: str, connection_id: str | None, **request) -> dict:
        try:
            return getattr(self._db, method)(TableName=self._table, **request)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "ClientError")
            if code == "ConditionalCheckFailedException":
                raise _ConditionFailed() from None
            raise StoreError(f"DynamoDB {method} on table {self._table!r} failed ({code}).", connection_id=connection_id) from None
        except BotoCoreError as exc:
            raise StoreError(
                f"DynamoDB {method} on table {self._table!r} failed ({type(exc).__name__}).", connection_id=connection_id
            ) from None


class _ConditionFailed(Exception):
    """A conditional write's condition was false."""


def _is_auxiliary(connection_id: str) -> bool:
    return connection_id.startswith((PENDING_PREFIX, RESCUE_PREFIX))


def _summary(item: dict) -> ConnectionSummary:
    def text(name: str) -> str | None:
        value = item.get(name)
        return value["S"] if value else None

    def number(name: str) -> float | None:
        value = item.get(name)
        return float(value["N"]) if value else None

    return ConnectionSummary(
        connection_id=item["connection_id"]["S"],
        status=item["status"]["S"],
        version=int(item["version"]["N"]),
        token_host=item["token_host"]["S"],
        instance_url=text("instance_url"),
        org_id=text("org_id"),
        user_id=text("user_id"),
        last_redeemed_at=number("last_redeemed_at"),
        access_token_expires_at=number("access_token_expires_at"),
        consecutive_failures=int(number("consecutive_failures") or 0),
        last_error_kind=text("last_error_kind"),
        last_error_at=number("last_error_at"),
        created_at=number("created_at"),
        updated_at=number("updated_at"),
        lease_expires_at=number("lease_expires_at"),
    )


def _key(connection_id: str) -> dict:
    return {"connection_id": {"S": connection_id}}


def _number(value: float | int) -> dict:
    if isinstance(value, float):
        return {"N": repr(round(value, 3))}
    return {"N": str(value)}


def _whole(value: float | None) -> int | None:
    return int(value) if value is not None else None
