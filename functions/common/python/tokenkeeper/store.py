"""The connection items in DynamoDB and the conditional writes that keep a token chain whole.

Every write that matters is conditional. The lease write requires that no live lease exists and
that the version is the one the caller read. The rotation write requires that the version has not
moved since. A failed condition is an outcome, not an error, because another caller got there first.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

from botocore.exceptions import BotoCoreError, ClientError

from tokenkeeper.crypto import KmsTokenCipher, SealedTokens
from tokenkeeper.errors import ConnectionExistsError, StoreError

__all__ = [
    "STATUS_ACTIVE",
    "STATUS_REAUTHORIZATION_REQUIRED",
    "STATUS_DISABLED",
    "STATUS_REVOKED",
    "HEARTBEAT_INDEX",
    "Connection",
    "ConnectionStore",
    "DueConnection",
    "DuePage",
]

STATUS_ACTIVE = "active"
STATUS_REAUTHORIZATION_REQUIRED = "reauthorization_required"
STATUS_DISABLED = "disabled"
STATUS_REVOKED = "revoked"
STATUSES = (STATUS_ACTIVE, STATUS_REAUTHORIZATION_REQUIRED, STATUS_DISABLED, STATUS_REVOKED)

# The heartbeat's sparse index: items carry heartbeat_partition only while their status is active.
HEARTBEAT_INDEX = "heartbeat-due"
HEARTBEAT_PARTITION_VALUE = "active"
RESCUE_PREFIX = "rescue#"

_NAMES = {
    "#id": "connection_id",
    "#status": "status",
    "#version": "version",
    "#owner": "lease_owner",
    "#lease_until": "lease_expires_at",
}


@dataclass(frozen=True)
class Connection:
    """One connection item with its tokens opened."""

    connection_id: str
    status: str
    version: int
    token_host: str
    refresh_token: str = field(repr=False)
    access_token: str | None = field(default=None, repr=False)
    access_token_expires_at: float | None = None
    instance_url: str | None = None
    org_id: str | None = None
    user_id: str | None = None
    session_seconds: int | None = None
    last_redeemed_at: float | None = None
    lease_owner: str | None = None
    lease_expires_at: float | None = None
    consecutive_failures: int = 0
    last_error_kind: str | None = None
    created_at: float | None = None

    def lease_is_live(self, now: float) -> bool:
        return bool(self.lease_owner) and (self.lease_expires_at or 0) > now


@dataclass(frozen=True)
class DueConnection:
    """A key of the heartbeat index: which connection, and when it was last redeemed (epoch seconds)."""

    connection_id: str
    last_redeemed_at: float


@dataclass(frozen=True)
class DuePage:
    """One page of due connections, oldest first; ``next_key`` is None on the last page."""

    connections: list[DueConnection]
    next_key: dict | None


class ConnectionStore:
    """Read and conditionally write connection items; tokens are sealed with :class:`KmsTokenCipher`."""

    def __init__(self, dynamodb_client, table_name: str, cipher: KmsTokenCipher):
        self._db = dynamodb_client
        self._table = table_name
        self._cipher = cipher

    # Reads ------------------------------------------------------------------------------------

    def get(self, connection_id: str) -> Connection | None:
        """Return the connection read with strong consistency, or None when there is none."""
        answer = self._call("GetItem", connection_id, Key=_key(connection_id), ConsistentRead=True)
        item = answer.get("Item")
        return self._from_item(item) if item else None

    def query_due(self, idle_before: float, *, limit: int = 100, exclusive_start_key: dict | None = None) -> DuePage:
        """Return active connections last redeemed before ``idle_before``, oldest first.

        One Query on the sparse heartbeat index, never a Scan: only active items carry its
        partition key. The index is eventually consistent, so a caller re-reads an item before
        acting on it. Pass the returned ``next_key`` as ``exclusive_start_key`` for the next page.
        """
        request = {
            "IndexName": HEARTBEAT_INDEX,
            "KeyConditionExpression": "heartbeat_partition = :partition AND last_redeemed_at < :idle_before",
            "ExpressionAttributeValues": {
                ":partition": {"S": HEARTBEAT_PARTITION_VALUE},
                ":idle_before": _number(float(idle_before)),
            },
            "ScanIndexForward": True,
            "Limit": limit,
        }
        if exclusive_start_key:
            request["ExclusiveStartKey"] = exclusive_start_key
        answer = self._call("Query", None, **request)
        connections = [
            DueConnection(item["connection_id"]["S"], float(item["last_redeemed_at"]["N"]))
            for item in answer.get("Items", [])
        ]
        return DuePage(connections, answer.get("LastEvaluatedKey"))

    # Creation ---------------------------------------------------------------------------------

    def create(self, connection: Connection) -> Connection:
        """Store a new connection; never overwrite an existing one."""
        item = self._to_item(connection)
        try:
            self._call(
                "PutItem",
                connection.connection_id,
                Item=item,
                ConditionExpression="attribute_not_exists(#id)",
                ExpressionAttributeNames={"#id": "connection_id"},
            )
        except _ConditionFailed:
            raise ConnectionExistsError(
                f"Connection {connection.connection_id!r} already exists; choose another id, or revoke the "
                "existing connection first.",
                connection_id=connection.connection_id,
            ) from None
        return connection

    # The lease --------------------------------------------------------------------------------

    def acquire_lease(self, connection_id: str, *, version: int, owner: str, until: float, now: float) -> bool:
        """Take the single-flight lease; return False if someone else holds it or the version moved.

        Race this condition settles, for two callers A and B that both read version 7:
            A: read v7 ... acquire(v7) -> ok ........ redeem ... save v8
            B: read v7 ...... acquire(v7) -> fails (A's lease is live) -> re-read, wait
        Checking the version as well stops a caller whose read is stale from taking a lease after
        A released it, because it would then redeem a refresh token A already rotated.
        """
        lease_free = "(attribute_not_exists(#owner) OR #lease_until < :now OR #owner = :owner)"
        still_current = "#version = :version AND #status = :active"
        return self._conditional_update(
            connection_id,
            UpdateExpression="SET #owner = :owner, #lease_until = :until",
            ConditionExpression=f"attribute_exists(#id) AND {still_current} AND {lease_free}",
            ExpressionAttributeNames=_NAMES,
            ExpressionAttributeValues={
                ":owner": {"S": owner},
                ":until": _number(until),
                ":now": _number(now),
                ":version": _number(version),
                ":active": {"S": STATUS_ACTIVE},
            },
        )

    def extend_lease(self, connection_id: str, *, owner: str, until: float) -> bool:
        """Push the lease expiry out, only while ``owner`` still holds it."""
        return self._conditional_update(
            connection_id,
            UpdateExpression="SET #lease_until = :until",
            ConditionExpression="#owner = :owner",
            ExpressionAttributeNames={"#owner": "lease_owner", "#lease_until": "lease_expires_at"},
            ExpressionAttributeValues={":owner": {"S": owner}, ":until": _number(until)},
        )

    def release_lease(self, connection_id: str, *, owner: str) -> bool:
        """Drop the lease if ``owner`` still holds it; a lease someone else took is left alone."""
        return self._conditional_update(
            connection_id,
            UpdateExpression="REMOVE #owner, #lease_until",
            ConditionExpression="#owner = :owner",
            ExpressionAttributeNames={"#owner": "lease_owner", "#lease_until": "lease_expires_at"},
            ExpressionAttributeValues={":owner": {"S": owner}},
        )

    # Outcomes of a redemption -----------------------------------------------------------------

    def save_rotation(
        self,
        current: Connection,
        *,
        refresh_token: str,
        access_token: str,
        access_token_expires_at: float,
        instance_url: str | None,
        org_id: str | None,
        user_id: str | None,
        session_seconds: int | None,
        now: float,
    ) -> Connection | None:
        """Store version ``current.version + 1`` if the item is still at ``current.version``.

        Returns the new connection, or None when the version moved (the caller's write lost).
        The lease is removed in the same write, so the next caller sees the new version and no
        lease at once.
        """
        updated = replace(
            current,
            version=current.version + 1,
            refresh_token=refresh_token,
            access_token=access_token,
            access_token_expires_at=access_token_expires_at,
            instance_url=instance_url or current.instance_url,
            org_id=org_id or current.org_id,
            user_id=user_id or current.user_id,
            session_seconds=session_seconds or current.session_seconds,
            last_redeemed_at=now,
            lease_owner=None,
            lease_expires_at=None,
            consecutive_failures=0,
            last_error_kind=None,
        )
        blob = self._cipher.seal(current.connection_id, SealedTokens(refresh_token, access_token))
        assignments = [
            "#version = :next",
            "tokens = :tokens",
            "access_token_expires_at = :expires",
            "last_redeemed_at = :now",
            "heartbeat_partition = :partition",
            "consecutive_failures = :zero",
            "updated_at = :now",
        ]
        values = {
            ":next": _number(updated.version),
            ":tokens": {"B": blob},
            ":expires": _number(access_token_expires_at),
            ":now": _number(now),
            ":partition": {"S": HEARTBEAT_PARTITION_VALUE},
            ":zero": _number(0),
            ":version": _number(current.version),
        }
        for name, value in (
            ("instance_url", updated.instance_url),
            ("org_id", updated.org_id),
            ("user_id", updated.user_id),
        ):
            if value:
                assignments.append(f"{name} = :{name}")
                values[f":{name}"] = {"S": value}
        if updated.session_seconds:
            assignments.append("session_seconds = :session")
            values[":session"] = _number(updated.session_seconds)

        saved = self._conditional_update(
            current.connection_id,
            UpdateExpression="SET " + ", ".join(assignments) + " REMOVE #owner, #lease_until, last_error_kind",
            ConditionExpression="#version = :version",
            ExpressionAttributeNames={"#version": "version", "#owner": "lease_owner", "#lease_until": "lease_expires_at"},
            ExpressionAttributeValues=values,
        )
        return updated if saved else None

    def update_expiry(self, connection_id: str, *, version: int, expires_at: float, session_seconds: int) -> bool:
        """Record the expiry learned by introspection, only on the version it belongs to."""
        return self._conditional_update(
            connection_id,
            UpdateExpression="SET access_token_expires_at = :expires, session_seconds = :session",
            ConditionExpression="#version = :version",
            ExpressionAttributeNames={"#version": "version"},
            ExpressionAttributeValues={
                ":expires": _number(expires_at),
                ":session": _number(session_seconds),
                ":version": _number(version),
            },
        )

    def mark_reauthorization_required(self, connection_id: str, *, version: int, error_kind: str, now: float) -> bool:
        """Mark the chain dead, only if no other caller stored a newer version meanwhile."""
        return self._conditional_update(
            connection_id,
            UpdateExpression=(
                "SET #status = :status, last_error_kind = :kind, last_error_at = :now, updated_at = :now "
                "REMOVE heartbeat_partition, #owner, #lease_until"
            ),
            ConditionExpression="#version = :version",
            ExpressionAttributeNames={
                "#status": "status",
                "#version": "version",
                "#owner": "lease_owner",
                "#lease_until": "lease_expires_at",
            },
            ExpressionAttributeValues={
                ":status": {"S": STATUS_REAUTHORIZATION_REQUIRED},
                ":kind": {"S": error_kind},
                ":now": _number(now),
                ":version": _number(version),
            },
        )

    def record_failure(self, connection_id: str, *, version: int, error_kind: str, now: float, count: bool) -> bool:
        """Note a failed redemption on ``version``; ``count`` adds one to ``consecutive_failures``."""
        update = "SET last_error_kind = :kind, last_error_at = :now, updated_at = :now"
        values = {":kind": {"S": error_kind}, ":now": _number(now), ":version": _number(version)}
        if count:
            update += " ADD consecutive_failures :one"
            values[":one"] = _number(1)
        return self._conditional_update(
            connection_id,
            UpdateExpression=update,
            ConditionExpression="#version = :version",
            ExpressionAttributeNames={"#version": "version"},
            ExpressionAttributeValues=values,
        )

    def save_rescue(self, connection_id: str, *, version: int, refresh_token: str, access_token: str | None, now: float) -> None:
        """Keep a rotated token that could not be stored on its item, sealed, under its own key."""
        blob = self._cipher.seal(connection_id, SealedTokens(refresh_token, access_token))
        rescue_id = f"{RESCUE_PREFIX}{connection_id}#{version}"
        self._call(
            "PutItem",
            connection_id,
            Item={
                "connection_id": {"S": rescue_id},
                "rescued_connection_id": {"S": connection_id},
                "version": _number(version),
                "tokens": {"B": blob},
                "rescued_at": _number(now),
            },
        )

    def get_rescue(self, connection_id: str, version: int) -> SealedTokens | None:
        """Return the rescued tokens of ``version``, or None when there are none."""
        rescue_id = f"{RESCUE_PREFIX}{connection_id}#{version}"
        answer = self._call("GetItem", connection_id, Key=_key(rescue_id), ConsistentRead=True)
        item = answer.get("Item")
        if not item:
            return None
        return self._cipher.open(connection_id, item["tokens"]["B"])

    # Item conversion --------------------------------------------------------------------------

    def _to_item(self, connection: Connection) -> dict:
        blob = self._cipher.seal(
            connection.connection_id, SealedTokens(connection.refresh_token, connection.access_token)
        )
        created_at = connection.created_at or time.time()
        item = {
            "connection_id": {"S": connection.connection_id},
            "status": {"S": connection.status},
            "version": _number(connection.version),
            "token_host": {"S": connection.token_host},
            "tokens": {"B": blob},
            "consecutive_failures": _number(connection.consecutive_failures),
            "created_at": _number(created_at),
            # The heartbeat's index sorts by this attribute, so a new chain counts as used at creation.
            "last_redeemed_at": _number(connection.last_redeemed_at or created_at),
        }
        optional = {
            "access_token_expires_at": connection.access_token_expires_at,
            "instance_url": connection.instance_url,
            "org_id": connection.org_id,
            "user_id": connection.user_id,
            "session_seconds": connection.session_seconds,
        }
        for name, value in optional.items():
            if value is None or value == "":
                continue
            item[name] = {"S": value} if isinstance(value, str) else _number(value)
        if connection.status == STATUS_ACTIVE:
            item["heartbeat_partition"] = {"S": HEARTBEAT_PARTITION_VALUE}
        return item

    def _from_item(self, item: dict) -> Connection:
        connection_id = item["connection_id"]["S"]
        tokens = self._cipher.open(connection_id, item["tokens"]["B"])
        return Connection(
            connection_id=connection_id,
            status=item["status"]["S"],
            version=int(item["version"]["N"]),
            token_host=item["token_host"]["S"],
            refresh_token=tokens.refresh_token,
            access_token=tokens.access_token,
            access_token_expires_at=_optional_number(item, "access_token_expires_at"),
            instance_url=_optional_text(item, "instance_url"),
            org_id=_optional_text(item, "org_id"),
            user_id=_optional_text(item, "user_id"),
            session_seconds=_optional_int(item, "session_seconds"),
            last_redeemed_at=_optional_number(item, "last_redeemed_at"),
            lease_owner=_optional_text(item, "lease_owner"),
            lease_expires_at=_optional_number(item, "lease_expires_at"),
            consecutive_failures=_optional_int(item, "consecutive_failures") or 0,
            last_error_kind=_optional_text(item, "last_error_kind"),
            created_at=_optional_number(item, "created_at"),
        )

    # DynamoDB calls ---------------------------------------------------------------------------

    def _conditional_update(self, connection_id: str, **request) -> bool:
        try:
            self._call("UpdateItem", connection_id, Key=_key(connection_id), **request)
        except _ConditionFailed:
            return False
        return True

    def _call(self, operation: str, connection_id: str | None, **request) -> dict:
        method = getattr(self._db, _SNAKE[operation])
        try:
            return method(TableName=self._table, **request)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "ClientError")
            if code == "ConditionalCheckFailedException":
                raise _ConditionFailed() from None
            raise StoreError(
                f"DynamoDB {operation} on table {self._table!r} failed ({code}).", connection_id=connection_id
            ) from None
        except BotoCoreError as exc:
            raise StoreError(
                f"DynamoDB {operation} on table {self._table!r} failed ({type(exc).__name__}).",
                connection_id=connection_id,
            ) from None


class _ConditionFailed(Exception):
    """A conditional write's condition was false."""


_SNAKE = {"GetItem": "get_item", "PutItem": "put_item", "UpdateItem": "update_item", "Query": "query"}


def _key(connection_id: str) -> dict:
    return {"connection_id": {"S": connection_id}}


def _number(value: float | int) -> dict:
    if isinstance(value, float):
        return {"N": repr(round(value, 3))}
    return {"N": str(value)}


def _optional_text(item: dict, name: str) -> str | None:
    value = item.get(name)
    return value["S"] if value else None


def _optional_number(item: dict, name: str) -> float | None:
    value = item.get(name)
    return float(value["N"]) if value else None


def _optional_int(item: dict, name: str) -> int | None:
    value = item.get(name)
    return int(float(value["N"])) if value else None
