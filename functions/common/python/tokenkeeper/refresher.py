"""The refresh protocol: one redemption of any refresh token, and its result stored first.

1. Serve a valid access token from this container's memory, else from the item (strong read).
2. Otherwise take the single-flight lease with a conditional write on the version that was read.
   Callers that lose wait with backoff and jitter and return what the winner stored.
3. The lease holder redeems the refresh token through the proxy, retrying only what is safe.
4. It stores version + 1 with a compare-and-swap on the version it read, removing the lease in the
   same write, and only then returns the access token.
5. A rotated token that cannot be written goes to a rescue record, which the next holder adopts
   instead of redeeming the old token again.

Both the refresh function and the heartbeat call :meth:`TokenRefresher.get_token`; there is no
other path that redeems a refresh token.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Callable, TypeVar

from tokenkeeper import observability as obs
from tokenkeeper.config import LEASE_MARGIN_SECONDS, Settings
from tokenkeeper.errors import (
    ConnectionInactiveError,
    ConnectionNotFoundError,
    InvalidEventError,
    LeaseWaitTimeoutError,
    ProxyConnectionError,
    ReauthorizationRequiredError,
    SalesforceResponseError,
    SalesforceUnavailableError,
    StoreError,
    TokenBusyError,
    TokenKeeperError,
)
from tokenkeeper.salesforce import SalesforceClient, TokenResponse
from tokenkeeper.store import STATUS_ACTIVE, Connection, ConnectionStore

T = TypeVar("T")

__all__ = ["AccessToken", "KeepAliveResult", "TokenRefresher", "SOURCE_MEMORY", "SOURCE_STORE", "SOURCE_REDEEMED"]

SOURCE_MEMORY = "memory"
SOURCE_STORE = "store"
SOURCE_REDEEMED = "redeemed"

MAX_MIN_TTL_SECONDS = 86400
STORE_WRITE_ATTEMPTS = 4
BACKOFF_BASE_SECONDS = 0.05
BACKOFF_CAP_SECONDS = 1.0
REDEEM_BACKOFF_BASE_SECONDS = 0.5
REDEEM_BACKOFF_CAP_SECONDS = 4.0
# An estimate of the lease time one DynamoDB write may take, the SDK's own retries included.
# NOTE: a DynamoDB call that hangs instead of failing can take connect + read timeout per SDK
# attempt, which is longer. The rescue write can then land after the lease expired.
WRITE_RESERVE_SECONDS = LEASE_MARGIN_SECONDS / 2


@dataclass(frozen=True)
class AccessToken:
    """A valid access token for one connection and where it came from."""

    connection_id: str
    access_token: str = field(repr=False)
    instance_url: str | None
    expires_at: float
    source: str
    version: int

    def to_payload(self) -> dict:
        return {
            "connection_id": self.connection_id,
            "access_token": self.access_token,
            "instance_url": self.instance_url,
            "expires_at": int(self.expires_at),
            "source": self.source,
            "version": self.version,
        }


@dataclass(frozen=True)
class KeepAliveResult:
    """The result of :meth:`TokenRefresher.keep_alive` for one connection."""

    connection_id: str
    # False when the connection was redeemed after the cutoff by someone else; nothing was sent.
    redeemed: bool
    version: int
    # ``consecutive_failures`` on the item as this call first read it.
    failures_before: int


class TokenRefresher:
    """Return valid access tokens, redeeming refresh tokens single-flight across containers."""

    def __init__(
        self,
        store: ConnectionStore,
        salesforce: SalesforceClient,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ):
        self._store = store
        self._salesforce = salesforce
        self._settings = settings
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._instance_id = uuid.uuid4().hex[:12]
        self._cache: dict[str, AccessToken] = {}
        self._cache_lock = threading.Lock()

    # The entry point --------------------------------------------------------------------------

    def get_token(self, connection_id: str, *, min_ttl_seconds: int = 300, force: bool = False) -> AccessToken:
        """Return an access token valid for at least ``min_ttl_seconds``; redeem only when needed.

        With ``force`` the caller gets a token redeemed after the call began, even if the stored
        one is still valid; concurrent forced calls still cause a single redemption.
        """
        _check_arguments(connection_id, min_ttl_seconds, force)
        if not force:
            cached = self._from_memory(connection_id, min_ttl_seconds)
            if cached:
                obs.count(obs.METRIC_CACHE_HITS)
                return cached

        seen_version: int | None = None

        def stored_answer(record: Connection) -> AccessToken | None:
            nonlocal seen_version
            if seen_version is None:
                seen_version = record.version
            # A forced call accepts only a version stored after it began.
            if force and record.version <= seen_version:
                return None
            answer = self._usable(record, min_ttl_seconds, SOURCE_STORE)
            if answer is None:
                return None
            obs.count(obs.METRIC_CACHE_HITS)
            return self._remember(answer)

        return self._single_flight(
            connection_id,
            stored_answer,
            "try again, and check the refresh function's logs for a slow or failing redemption.",
        )

    def keep_alive(self, connection_id: str, *, due_before: float) -> KeepAliveResult:
        """Redeem the refresh token if it was last redeemed before ``due_before`` (epoch seconds).

        This is :meth:`get_token`'s lease and compare-and-swap path with another freshness test:
        a connection counts as fresh by ``last_redeemed_at``, not by its access token, because
        Salesforce's idle window only restarts when the refresh token is used. A connection that
        a caller redeemed meanwhile, before or while this call waited for the lease, is skipped.
        """
        _check_arguments(connection_id, 0, False)
        failures_before: int | None = None

        def skip_if_fresh(record: Connection) -> KeepAliveResult | None:
            nonlocal failures_before
            if failures_before is None:
                failures_before = record.consecutive_failures
            if (record.last_redeemed_at or 0.0) >= due_before:
                return KeepAliveResult(connection_id, False, record.version, failures_before)
            return None

        outcome = self._single_flight(connection_id, skip_if_fresh, "the next heartbeat run tries again.")
        if isinstance(outcome, KeepAliveResult):
            return outcome
        # A stale read ends in the newer version someone else stored, not in a redemption.
        return KeepAliveResult(connection_id, outcome.source == SOURCE_REDEEMED, outcome.version, failures_before)

    def _single_flight(self, connection_id: str, settled: Callable[[Connection], T | None], advice: str) -> T | AccessToken:
        """Return ``settled(record)`` once it is not None, or redeem under the lease, or wait.

        Every read is strongly consistent. The caller that takes the lease redeems, and the others
        wait with backoff until ``settled`` accepts what the lease holder stored or the wait ends.
        """
        deadline = self._clock() + self._settings.max_wait_seconds
        waits = 0
        while True:
            record = self._read_active(connection_id)
            answer = settled(record)
            if answer is not None:
                return answer

            now = self._clock()
            if not record.lease_is_live(now):
                owner = f"{self._instance_id}/{uuid.uuid4().hex[:12]}"
                lease_until = now + self._settings.lease_seconds
                if self._store.acquire_lease(
                    connection_id, version=record.version, owner=owner, until=lease_until, now=now
                ):
                    return self._redeem_under_lease(record, owner, lease_until)

            if waits == 0:
                obs.count(obs.METRIC_LEASE_WAITS)
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise LeaseWaitTimeoutError(
                    f"Another caller held the refresh lease of connection {connection_id!r} for longer than "
                    f"{self._settings.max_wait_seconds:g} s; {advice}",
                    connection_id=connection_id,
                )
            self._sleep(min(remaining, self._backoff(waits, BACKOFF_BASE_SECONDS, BACKOFF_CAP_SECONDS)))
            waits += 1

    def forget(self, connection_id: str) -> None:
        """Drop the container's cached access token of ``connection_id``."""
        with self._cache_lock:
            self._cache.pop(connection_id, None)

    # Reading ----------------------------------------------------------------------------------

    def _read_active(self, connection_id: str) -> Connection:
        record = self._store.get(connection_id)
        if record is None:
            self.forget(connection_id)
            raise ConnectionNotFoundError(
                f"No connection {connection_id!r} exists; connect the subscriber org first.",
                connection_id=connection_id,
            )
        if record.status != STATUS_ACTIVE:
            self.forget(connection_id)
            raise ConnectionInactiveError(
                f"Connection {connection_id!r} is {record.status}; "
                + _INACTIVE_ADVICE.get(record.status, "it cannot be refreshed."),
                connection_id=connection_id,
                status=record.status,
            )
        return record

    def _from_memory(self, connection_id: str, min_ttl_seconds: int) -> AccessToken | None:
        with self._cache_lock:
            cached = self._cache.get(connection_id)
        if cached and cached.expires_at - self._clock() >= self._needed_ttl(min_ttl_seconds, None):
            return replace(cached, source=SOURCE_MEMORY)
        return None

    def _usable(self, record: Connection, min_ttl_seconds: int, source: str) -> AccessToken | None:
        if not record.access_token or record.access_token_expires_at is None:
            return None
        needed = self._needed_ttl(min_ttl_seconds, record.session_seconds)
        if record.access_token_expires_at - self._clock() < needed:
            return None
        return AccessToken(
            connection_id=record.connection_id,
            access_token=record.access_token,
            instance_url=record.instance_url,
            expires_at=record.access_token_expires_at,
            source=source,
            version=record.version,
        )

    def _needed_ttl(self, min_ttl_seconds: int, session_seconds: int | None) -> float:
        # A request for more time than half a session would redeem on every call, because no
        # access token lives that long. Such a request is served with half a session instead.
        session = session_seconds or self._settings.default_session_seconds
        return max(min(min_ttl_seconds, session / 2), self._settings.expiry_leeway_seconds)

    def _remember(self, answer: AccessToken) -> AccessToken:
        with self._cache_lock:
            self._cache[answer.connection_id] = answer
        return answer

    # Redeeming under the lease ----------------------------------------------------------------

    def _redeem_under_lease(self, record: Connection, owner: str, lease_until: float) -> AccessToken:
        connection_id = record.connection_id
        rescued = self._store.get_rescue(connection_id, record.version + 1)
        if rescued is not None:
            return self._adopt_rescue(record, rescued, owner)

        # A lease left behind by another owner means that holder stopped mid-redemption, and a
        # recorded transient failure may have been a rotation whose response was lost. Either way
        # Salesforce may have rotated the token, so a rejection of it may be a rotation lost.
        ambiguous = bool(record.lease_owner) or record.last_error_kind in _UNCONFIRMED_KINDS
        last_error: TokenKeeperError | None = None
        for attempt in range(self._settings.redeem_attempts):
            lease_until = self._ensure_lease_time(record, owner, lease_until)
            try:
                response = self._salesforce.redeem_refresh_token(record.token_host, record.refresh_token)
            except TokenBusyError as exc:
                last_error = exc
            except (SalesforceUnavailableError, SalesforceResponseError, ProxyConnectionError) as exc:
                ambiguous = ambiguous or getattr(exc, "ambiguous", isinstance(exc, SalesforceResponseError))
                last_error = exc
            except ReauthorizationRequiredError as exc:
                return self._handle_dead_chain(record, owner, exc, ambiguous)
            except TokenKeeperError as exc:
                self._fail(record, owner, exc, count=False)
                raise
            else:
                return self._store_rotation(record, response, lease_until, owner)

            obs.logger.warning(
                "Redemption attempt failed",
                extra={"attempt": attempt + 1, "error_kind": last_error.kind, "reason": last_error.message},
            )
            if attempt + 1 < self._settings.redeem_attempts:
                self._sleep(self._backoff(attempt, REDEEM_BACKOFF_BASE_SECONDS, REDEEM_BACKOFF_CAP_SECONDS))
                newer = self._store.get(connection_id)
                if newer is not None and newer.version > record.version:
                    # Another caller stored a newer version meanwhile, so this read is stale.
                    self._store.release_lease(connection_id, owner=owner)
                    return self._read_newer(newer)

        assert last_error is not None
        self._fail(record, owner, last_error, count=True)
        last_error.connection_id = connection_id
        raise last_error

    def _ensure_lease_time(self, record: Connection, owner: str, lease_until: float) -> float:
        """Extend the lease before an attempt unless it outlasts the attempt with a margin."""
        attempt_budget = (
            self._settings.connect_timeout_seconds + self._settings.read_timeout_seconds + LEASE_MARGIN_SECONDS
        )
        now = self._clock()
        if lease_until - now >= attempt_budget:
            return lease_until
        extended = now + self._settings.lease_seconds
        if not self._store.extend_lease(record.connection_id, owner=owner, until=extended):
            raise LeaseWaitTimeoutError(
                f"The refresh lease of connection {record.connection_id!r} was lost before a redemption "
                "attempt; no request was sent. Try again.",
                connection_id=record.connection_id,
            )
        return extended

    def _handle_dead_chain(
        self, record: Connection, owner: str, exc: ReauthorizationRequiredError, ambiguous: bool
    ) -> AccessToken:
        connection_id = record.connection_id
        latest = self._store.get(connection_id)
        if latest is not None and latest.version > record.version:
            self._store.release_lease(connection_id, owner=owner)
            return self._read_newer(latest)

        exc.connection_id = connection_id
        if ambiguous:
            exc.rotation_lost_in_transit = True
            exc.message = (
                f"Connection {connection_id!r}: the refresh token was most likely rotated by a request whose "
                "response was lost in transit (a read timeout, a dropped connection, a server error, or a lease "
                "holder that stopped before storing it), so the new token never arrived "
                f"and Salesforce now rejects the old one ({exc.error}). The subscriber must authorize the app again."
            )
            exc.args = (exc.message,)
        marked = self._store.mark_reauthorization_required(
            connection_id, version=record.version, error_kind=exc.kind, now=self._clock()
        )
        self.forget(connection_id)
        obs.count_failure(exc.kind)
        obs.logger.error(
            "Refresh token chain is dead; reauthorization required",
            extra={"error_kind": exc.kind, "oauth_error": exc.error, "rotation_lost_in_transit": ambiguous, "marked": marked},
        )
        raise exc

    def _fail(self, record: Connection, owner: str, exc: TokenKeeperError, *, count: bool) -> None:
        exc.connection_id = record.connection_id
        try:
            self._store.record_failure(
                record.connection_id, version=record.version, error_kind=exc.kind, now=self._clock(), count=count
            )
            self._store.release_lease(record.connection_id, owner=owner)
        except StoreError as store_exc:
            # The lease expires by itself; the original error is what the caller must see.
            obs.logger.warning("Could not record the failure", extra={"error_kind": store_exc.kind})
        obs.count_failure(exc.kind)
        obs.logger.error("Redemption failed", extra={"error_kind": exc.kind, "reason": exc.message})

    def _read_newer(self, newer: Connection) -> AccessToken:
        answer = self._usable(newer, 0, SOURCE_STORE)
        if answer is None:
            raise LeaseWaitTimeoutError(
                f"Connection {newer.connection_id!r} moved to version {newer.version} while this call waited, "
                "but its access token is not usable; try again.",
                connection_id=newer.connection_id,
            )
        return self._remember(answer)

    # Storing the result -----------------------------------------------------------------------

    def _store_rotation(
        self, record: Connection, response: TokenResponse, lease_until: float | None = None, owner: str | None = None
    ) -> AccessToken:
        connection_id = record.connection_id
        now = self._clock()
        session = record.session_seconds or self._settings.default_session_seconds
        refresh_token = response.refresh_token or record.refresh_token
        saved = self._write_rotation(record, response, refresh_token, now + session, now, lease_until)
        if saved is None:
            self._rescue(record, refresh_token, response.access_token, now)
            if owner is not None:
                self._release_after_rescue(connection_id, owner)
            answer = AccessToken(
                connection_id=connection_id,
                access_token=response.access_token,
                instance_url=response.instance_url or record.instance_url,
                expires_at=now + session,
                source=SOURCE_REDEEMED,
                version=record.version + 1,
            )
            obs.count(obs.METRIC_REDEMPTIONS)
            return self._remember(answer)

        obs.count(obs.METRIC_REDEMPTIONS)
        obs.logger.info(
            "Refresh token redeemed and stored",
            extra={"version_before": record.version, "version_after": saved.version, "rotated": bool(response.refresh_token)},
        )
        if record.session_seconds is None:
            saved = self._learn_session_length(saved)
        answer = self._usable(saved, 0, SOURCE_REDEEMED)
        assert answer is not None
        return self._remember(answer)

    def _write_rotation(
        self,
        record: Connection,
        response: TokenResponse,
        refresh_token: str,
        expires_at: float,
        now: float,
        lease_until: float | None = None,
    ) -> Connection | None:
        """Write version + 1, retrying transient store failures; None means it could not be written.

        Retries stop while the lease still has time for one more write and the rescue write, so
        that the rescue record exists before another caller can take the expired lease and redeem
        the rotated-out token.
        """
        for attempt in range(STORE_WRITE_ATTEMPTS):
            try:
                saved = self._store.save_rotation(
                    record,
                    refresh_token=refresh_token,
                    access_token=response.access_token,
                    access_token_expires_at=expires_at,
                    instance_url=response.instance_url,
                    org_id=response.org_id,
                    user_id=response.user_id,
                    session_seconds=record.session_seconds,
                    now=now,
                )
            except StoreError as exc:
                obs.logger.warning(
                    "Storing the rotated token failed",
                    extra={"attempt": attempt + 1, "error_kind": exc.kind, "reason": exc.message},
                )
                pause = self._backoff(attempt, BACKOFF_BASE_SECONDS * 4, BACKOFF_CAP_SECONDS * 2)
                if lease_until is not None and self._clock() + pause + 2 * WRITE_RESERVE_SECONDS > lease_until:
                    obs.logger.warning("The lease ends too soon for another attempt; rescuing the rotated token")
                    return None
                if attempt + 1 < STORE_WRITE_ATTEMPTS:
                    self._sleep(pause)
                continue
            return saved if saved is not None else self._find_own_write(record, refresh_token, response.access_token)
        return None

    def _find_own_write(self, record: Connection, refresh_token: str, access_token: str) -> Connection | None:
        """Return the item if an earlier attempt of this write was applied, else None.

        When a write's answer is lost, the SDK sends it again, and the repeat fails its version
        condition although the first attempt already stored exactly this rotation.
        """
        try:
            latest = self._store.get(record.connection_id)
        except StoreError:
            return None
        if latest is None or latest.version != record.version + 1:
            return None
        if latest.refresh_token != refresh_token or latest.access_token != access_token:
            return None
        obs.logger.info("A repeated rotation write found its first attempt applied", extra={"version_after": latest.version})
        return latest

    def _rescue(self, record: Connection, refresh_token: str, access_token: str, now: float) -> None:
        """Keep a rotated token that could not be stored on the item, so it is never dropped."""
        connection_id = record.connection_id
        version = record.version + 1
        for attempt in range(STORE_WRITE_ATTEMPTS):
            try:
                self._store.save_rescue(
                    connection_id, version=version, refresh_token=refresh_token, access_token=access_token, now=now
                )
            except StoreError:
                self._sleep(self._backoff(attempt, BACKOFF_BASE_SECONDS * 4, BACKOFF_CAP_SECONDS * 2))
                continue
            obs.count(obs.METRIC_TOKENS_RESCUED)
            obs.logger.error(
                "Rotated token stored in a rescue record; the next redemption adopts it",
                extra={"rescued_version": version},
            )
            return
        obs.count(obs.METRIC_TOKENS_RESCUED)
        obs.logger.critical(
            "Rotated token could not be stored anywhere; restore the connection from Salesforce",
            extra={"rescued_version": version},
        )
        raise StoreError(
            f"The rotated refresh token of connection {connection_id!r} could not be written to DynamoDB after "
            f"{STORE_WRITE_ATTEMPTS} attempts, nor to its rescue record.",
            connection_id=connection_id,
        )

    def _release_after_rescue(self, connection_id: str, owner: str) -> None:
        """Release the lease, so the next caller adopts the rescue record without waiting it out."""
        try:
            self._store.release_lease(connection_id, owner=owner)
        except StoreError as exc:
            # The lease expires by itself; until then other callers wait for it.
            obs.logger.warning("Could not release the lease after a rescue", extra={"error_kind": exc.kind})

    def _adopt_rescue(self, record: Connection, rescued, owner: str) -> AccessToken:
        """Store a rescued version + 1 as the current version instead of redeeming version ``v`` again."""
        now = self._clock()
        session = record.session_seconds or self._settings.default_session_seconds
        response = TokenResponse(
            access_token=rescued.access_token or "",
            refresh_token=rescued.refresh_token,
            instance_url=None,
            issued_at=None,
            identity_url=None,
            scope=None,
        )
        # The rescued access token may have expired. Recording it as expired makes the next call
        # redeem the rescued refresh token, which is the newest of the chain.
        saved = self._write_rotation(record, response, rescued.refresh_token, now - 1, now)
        if saved is None:
            self._store.release_lease(record.connection_id, owner=owner)
            raise StoreError(
                f"The rescued token of connection {record.connection_id!r} could not be restored; try again.",
                connection_id=record.connection_id,
            )
        obs.logger.warning("Adopted a rescued token", extra={"version_after": saved.version})
        return self.get_token(record.connection_id, min_ttl_seconds=int(session / 4))

    def _learn_session_length(self, saved: Connection) -> Connection:
        """Ask introspection for the access token's ``exp`` once per connection and remember it."""
        try:
            details = self._salesforce.introspect(saved.token_host, saved.access_token or "")
        except TokenKeeperError as exc:
            obs.logger.warning(
                "Introspection failed; using the default session length",
                extra={"error_kind": exc.kind, "reason": exc.message},
            )
            return saved
        exp, iat = details.get("exp"), details.get("iat")
        if not details.get("active") or not isinstance(exp, (int, float)) or not isinstance(iat, (int, float)):
            return saved
        session = int(exp - iat)
        if not 60 <= session <= 86400:
            return saved
        expires_at = min(float(exp), (saved.last_redeemed_at or self._clock()) + session)
        try:
            updated = self._store.update_expiry(
                saved.connection_id, version=saved.version, expires_at=expires_at, session_seconds=session
            )
        except StoreError:
            updated = False
        if not updated:
            return saved
        return replace(saved, access_token_expires_at=expires_at, session_seconds=session)

    def _backoff(self, attempt: int, base: float, cap: float) -> float:
        # Full jitter: a uniform wait up to the exponential bound spreads waiting callers apart.
        return self._rng.uniform(0, min(cap, base * (2**attempt)))


# Kinds of failure after which Salesforce may have rotated the token: a 5xx, a read timeout or a
# dropped connection, or a response that could not be read. A rate limit is "transient" too, so
# after one a rejection is reported as a possible lost rotation although none happened.
_UNCONFIRMED_KINDS = frozenset({SalesforceUnavailableError.kind, SalesforceResponseError.kind})

_INACTIVE_ADVICE = {
    "reauthorization_required": "the subscriber must authorize the app again to start a new token chain.",
    "disabled": "enable it again before requesting tokens.",
    "revoked": "its tokens were revoked; connect the subscriber org again.",
}


def _check_arguments(connection_id, min_ttl_seconds, force) -> None:
    if not isinstance(connection_id, str) or not connection_id:
        raise InvalidEventError(f"connection_id must be a non-empty string, got {connection_id!r}.")
    if isinstance(min_ttl_seconds, bool) or not isinstance(min_ttl_seconds, int):
        raise InvalidEventError(f"min_ttl_seconds must be a whole number of seconds, got {min_ttl_seconds!r}.")
    if not 0 <= min_ttl_seconds <= MAX_MIN_TTL_SECONDS:
        raise InvalidEventError(
            f"min_ttl_seconds={min_ttl_seconds} is out of range; use 0 to {MAX_MIN_TTL_SECONDS} seconds."
        )
    if not isinstance(force, bool):
        raise InvalidEventError(f"force must be true or false, got {force!r}.")
