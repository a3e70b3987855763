"""The operator's actions: connect an org, check the proxy's egress, and administer connections.

Both the command-line tool (:mod:`tokenkeeper.cli`) and the refresh function (an event with an
``"action"`` field) run these. Every action returns a JSON-serializable dict that never contains
a token, a client secret or a proxy password, and raises a :class:`~tokenkeeper.errors.TokenKeeperError`
when it fails.

Connecting an org uses the web server flow with PKCE. ``authorize-url`` creates the code verifier
and a random ``state``, and stores the verifier sealed with KMS in a pending authorization keyed by
the state, valid for :data:`PENDING_AUTHORIZATION_SECONDS`. The operator gets only the URL
and the state. ``connect`` looks the state up, which is the state check, and deletes the pending
authorization so that it works once. It then exchanges the code through the proxy with the
verifier and the client secret, and stores the first refresh token as a new connection. When the
proxy fails before the code reaches Salesforce, the pending authorization is stored again.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import ipaddress
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import parse_qs, urlencode, urlsplit

from tokenkeeper.admin_store import AdminStore, ConnectionSummary, PendingAuthorization
from tokenkeeper.errors import (
    AuthorizationStateError,
    ConfigurationError,
    ConnectionExistsError,
    ConnectionInactiveError,
    ConnectionNotFoundError,
    InvalidEventError,
    LeaseWaitTimeoutError,
    ProxyAuthenticationError,
    ProxyConnectionError,
    ProxyUrlError,
    SalesforceOAuthError,
    SalesforceResponseError,
    TokenKeeperError,
)
from tokenkeeper.observability import logger
from tokenkeeper.salesforce import SalesforceClient, validate_token_host
from tokenkeeper.store import (
    STATUS_ACTIVE,
    STATUS_DISABLED,
    STATUS_REAUTHORIZATION_REQUIRED,
    STATUS_REVOKED,
    Connection,
)
from tokenkeeper.transport import build_pool

__all__ = [
    "ACTIONS",
    "DEFAULT_ECHO_URL",
    "Operations",
    "code_challenge",
    "new_code_verifier",
    "new_state",
    "parse_action_request",
    "validate_connection_id",
]

AUTHORIZE_PATH = "/services/oauth2/authorize"
DEFAULT_LOGIN_HOST = "login.salesforce.com"
# Salesforce's authorization codes are valid for 15 minutes; the pending verifier lives as long.
PENDING_AUTHORIZATION_SECONDS = 15 * 60
# 64 random bytes give an 86-character verifier, inside PKCE's 43 to 128 characters.
CODE_VERIFIER_BYTES = 64
STATE_BYTES = 32
UNRESERVED_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")

# QuotaGuard's own IP echo service, which returns {"ip": "<source address>"}.
DEFAULT_ECHO_URL = "https://ip.quotaguard.com"
DEFAULT_ECHO_ATTEMPTS = 10
MAX_ECHO_ATTEMPTS = 100

# A connection counts as due when idle this long: the heartbeat's default threshold, which leaves
# 10 days of Salesforce's 30-day idle window for retries.
DEFAULT_DUE_AFTER_DAYS = 20.0
# Bounds a full-table listing; at 100 items a page this is 100,000 items.
MAX_SCAN_PAGES = 1000
SCAN_PAGE_ITEMS = 100
# How long revocation waits for a redemption in flight to release the lease.
REVOKE_LEASE_SECONDS = 60.0
REVOKE_WAIT_SECONDS = 30.0
REVOKE_POLL_SECONDS = 0.5

# Long enough for an 18-character org id with a prefix or a UUID, too short for a refresh token.
CONNECTION_ID_MAX_LENGTH = 64
CONNECTION_ID_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-")

ProgressCallback = Callable[[int, int, str, str], None]


# PKCE and state ------------------------------------------------------------------------------


def new_code_verifier() -> str:
    """Return a PKCE code verifier: 86 unreserved characters from the ``secrets`` module."""
    return secrets.token_urlsafe(CODE_VERIFIER_BYTES)


def code_challenge(code_verifier: str) -> str:
    """Return the S256 code challenge: unpadded base64url of the verifier's SHA-256 digest."""
    digest = hashlib.sha256(code_verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def new_state() -> str:
    """Return a random ``state`` value (43 URL-safe characters) that ties a redirect to its request."""
    return secrets.token_urlsafe(STATE_BYTES)


def validate_connection_id(connection_id: Any) -> str:
    """Return ``connection_id`` if it is a valid id, else raise :class:`InvalidEventError`.

    An invalid value is described, never repeated, because a token pasted by mistake into this
    field must not reach a log line or an error message.
    """
    if not isinstance(connection_id, str) or not connection_id:
        shown = "an empty string" if connection_id == "" else f"a value of type {type(connection_id).__name__}"
        raise InvalidEventError(f"connection_id is missing or not a string (got {shown}); pass the connection's id.")
    outside = sum(1 for character in connection_id if character not in CONNECTION_ID_CHARACTERS)
    if len(connection_id) > CONNECTION_ID_MAX_LENGTH or outside:
        raise InvalidEventError(
            f"connection_id is invalid ({len(connection_id)} characters, {outside} of them not allowed); use up to "
            f"{CONNECTION_ID_MAX_LENGTH} letters, digits and . _ : - characters."
        )
    return connection_id


def _validate_redirect_uri(redirect_uri: Any) -> str:
    """Accept an https:// callback URL, or http:// on a loopback host as Salesforce also allows."""
    if not isinstance(redirect_uri, str) or not redirect_uri:
        raise InvalidEventError("redirect_uri is missing; pass the callback URL registered on the External Client App.")
    parts = urlsplit(redirect_uri)
    loopback = parts.hostname in ("localhost",) or _is_loopback(parts.hostname)
    if parts.scheme == "https" and parts.hostname or parts.scheme == "http" and loopback:
        return redirect_uri
    raise InvalidEventError(
        f"redirect_uri {redirect_uri!r} is invalid; use the https:// callback URL registered on the External Client App."
    )


def _is_loopback(host: str | None) -> bool:
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


# The actions ---------------------------------------------------------------------------------


class Operations:
    """Run the operator's actions against one :class:`~tokenkeeper.runtime.Runtime`."""

    def __init__(
        self,
        runtime,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        progress: ProgressCallback | None = None,
    ):
        self._runtime = runtime
        self._store = AdminStore.of(runtime.store)
        self._clock = clock
        self._sleep = sleep
        self._progress = progress or _log_progress

    # Connecting an org ------------------------------------------------------------------------

    def authorize_url(
        self,
        connection_id: str,
        *,
        redirect_uri: str,
        host: str = DEFAULT_LOGIN_HOST,
        scope: str | None = None,
    ) -> dict:
        """Start the web server flow: store a pending authorization and return the URL to open."""
        validate_connection_id(connection_id)
        redirect_uri = _validate_redirect_uri(redirect_uri)
        host = validate_token_host(host, allow_loopback=self._runtime.settings.allow_loopback_hosts)
        if self._store.summary(connection_id) is not None:
            raise _exists(connection_id)

        verifier = new_code_verifier()
        state = new_state()
        now = self._clock()
        pending = PendingAuthorization(
            state=state,
            connection_id=connection_id,
            token_host=host,
            redirect_uri=redirect_uri,
            code_verifier=verifier,
            expires_at=now + PENDING_AUTHORIZATION_SECONDS,
        )
        self._store.put_pending(pending, now=now)

        query = {
            "response_type": "code",
            "client_id": self._runtime.client_credentials().client_id,
            "redirect_uri": redirect_uri,
            "code_challenge": code_challenge(verifier),
            "code_challenge_method": "S256",
            "state": state,
        }
        if scope:
            query["scope"] = scope
        logger.info("Authorization started", extra={"connection_id": connection_id, "token_host": host})
        return {
            "connection_id": connection_id,
            "url": f"https://{host}{AUTHORIZE_PATH}?{urlencode(query)}",
            "state": state,
            "expires_at": int(pending.expires_at),
        }

    def connect(self, *, code: str | None = None, state: str | None = None, callback_url: str | None = None) -> dict:
        """Finish the web server flow: check ``state``, exchange ``code`` and store the new connection.

        ``callback_url`` is the whole URL Salesforce redirected the browser to, as an alternative
        to passing ``code`` and ``state``.
        """
        code, state = _code_and_state(code, state, callback_url)
        pending = self._store.take_pending(state)
        if pending is None:
            raise AuthorizationStateError(
                "The state matches no pending authorization: it was mistyped, already used, or belongs to "
                "another table. Run authorize-url again and use the new URL."
            )
        now = self._clock()
        if now > pending.expires_at:
            raise AuthorizationStateError(
                f"The authorization for connection {pending.connection_id!r} expired "
                f"{int(now - pending.expires_at)} s ago; run authorize-url again.",
                connection_id=pending.connection_id,
            )
        if self._store.summary(pending.connection_id) is not None:
            raise _exists(pending.connection_id)

        try:
            salesforce = self._runtime.salesforce()
            answer = salesforce.exchange_code(
                pending.token_host, code, code_verifier=pending.code_verifier, redirect_uri=pending.redirect_uri
            )
        except (ProxyUrlError, ProxyAuthenticationError, ProxyConnectionError):
            # The code never reached Salesforce and is still valid, so the same redirect may be
            # used again once the proxy is fixed.
            self._store.put_pending(pending, now=now)
            raise
        if not answer.refresh_token:
            raise SalesforceResponseError(
                "Salesforce issued no refresh token; add the refresh_token (offline access) scope to the "
                "External Client App and connect again.",
                connection_id=pending.connection_id,
            )

        connection = Connection(
            connection_id=pending.connection_id,
            status=STATUS_ACTIVE,
            version=1,
            token_host=pending.token_host,
            refresh_token=answer.refresh_token,
            access_token=answer.access_token,
            access_token_expires_at=now + self._runtime.settings.default_session_seconds,
            instance_url=answer.instance_url,
            org_id=answer.org_id,
            user_id=answer.user_id,
            last_redeemed_at=now,
            created_at=now,
        )
        try:
            self._runtime.store.create(connection)
        except ConnectionExistsError:
            # Someone stored this id between the check above and now; the new chain would be
            # orphaned, so it is revoked instead of kept.
            self._revoke_quietly(salesforce, pending.token_host, answer.refresh_token, pending.connection_id)
            raise
        logger.info("Connection created", extra={"connection_id": connection.connection_id, "org_id": connection.org_id})
        return {"connected": True, **self._summary_or_raise(connection.connection_id).to_payload(self._clock())}

    # Egress -----------------------------------------------------------------------------------

    def check_egress(
        self,
        *,
        expected: list[str],
        url: str = DEFAULT_ECHO_URL,
        attempts: int = DEFAULT_ECHO_ATTEMPTS,
    ) -> dict:
        """Ask an IP echo service ``attempts`` times through the proxy and compare the addresses.

        ``status`` is ``ok`` when every expected address appeared and nothing else did. It is
        ``warning`` when some expected address never appeared: with two load-balanced IPs that is
        unlikely in many attempts but possible. It is ``failed`` when an unexpected address
        appeared or no request succeeded.
        """
        wanted = _parse_addresses(expected)
        if not 1 <= attempts <= MAX_ECHO_ATTEMPTS:
            raise InvalidEventError(f"attempts={attempts} is invalid; use a number from 1 to {MAX_ECHO_ATTEMPTS}.")

        seen: collections.Counter = collections.Counter()
        errors: collections.Counter = collections.Counter()
        for attempt in range(1, attempts + 1):
            try:
                address = self._fetch_egress_address(url)
            except ConfigurationError:
                # A wrong proxy password or URL fails every attempt alike, so it ends the check.
                raise
            except TokenKeeperError as exc:
                errors[exc.kind] += 1
                self._progress(attempt, attempts, url, f"failed: {exc.message}")
                continue
            seen[address] += 1
            self._progress(attempt, attempts, url, address)

        missing = sorted(set(wanted) - set(seen))
        unexpected = sorted(set(seen) - set(wanted))
        if unexpected:
            status = "failed"
            message = (
                f"Unexpected egress address {', '.join(unexpected)}: requests are not leaving through the static "
                "IPs passed with --expect. Check the proxy URL secret and the addresses on the QuotaGuard dashboard."
            )
        elif not seen:
            status = "failed"
            message = f"None of {_requests(attempts)} through the proxy succeeded."
        elif missing:
            status = "warning"
            message = (
                f"Only {', '.join(sorted(seen))} appeared in {_requests(attempts)}; {', '.join(missing)} did not. "
                "Run again with more attempts; both IPs must be on the Refresh Token IP Allowlist either way."
            )
        else:
            status = "ok"
            message = f"All expected addresses appeared in {_requests(attempts)}, and no other."
        return {
            "status": status,
            "message": message,
            "url": url,
            "attempts": attempts,
            "addresses": dict(sorted(seen.items())),
            "expected": wanted,
            "missing": missing,
            "unexpected": unexpected,
            "errors": dict(errors),
        }

    # Reading connections ----------------------------------------------------------------------

    def list_connections(self, *, limit: int | None = None) -> dict:
        """Return every connection's summary, sorted by id; ``limit`` caps how many."""
        summaries = self._all_summaries(limit=limit)
        now = self._clock()
        return {"connections": [summary.to_payload(now) for summary in summaries], "count": len(summaries)}

    def show(self, connection_id: str) -> dict:
        """Return one connection's summary."""
        validate_connection_id(connection_id)
        return self._summary_or_raise(connection_id).to_payload(self._clock())

    # Changing connections ---------------------------------------------------------------------

    def refresh(self, connection_id: str, *, force: bool = False) -> dict:
        """Get a valid access token through the refresh protocol (lease, rotation, store).

        With ``force`` the refresh token is redeemed even if the stored access token is still
        valid, which also restarts Salesforce's idle window. The token itself is not returned.
        """
        validate_connection_id(connection_id)
        token = self._runtime.refresher().get_token(connection_id, force=force)
        return {
            "connection_id": connection_id,
            "version": token.version,
            "source": token.source,
            "expires_at": int(token.expires_at),
        }

    def refresh_all_due(self, *, due_after_days: float = DEFAULT_DUE_AFTER_DAYS) -> dict:
        """Refresh every active connection idle for more than ``due_after_days``, one at a time."""
        if not 0 <= due_after_days <= 30:
            raise InvalidEventError(f"due_after_days={due_after_days} is invalid; use a number of days from 0 to 30.")
        cutoff = self._clock() - due_after_days * 86400
        due = [
            summary.connection_id
            for summary in self._all_summaries()
            if summary.status == STATUS_ACTIVE and (summary.last_redeemed_at or 0.0) < cutoff
        ]
        return self._run_bulk("refresh", due, lambda connection_id: self.refresh(connection_id, force=True))

    def disable(self, connection_id: str) -> dict:
        """Stop serving and refreshing a connection; its tokens stay stored and it can be enabled again."""
        validate_connection_id(connection_id)
        changed = self._store.set_status(
            connection_id,
            status=STATUS_DISABLED,
            allowed_from=(STATUS_ACTIVE, STATUS_REAUTHORIZATION_REQUIRED),
            now=self._clock(),
        )
        summary = self._summary_or_raise(connection_id)
        if not changed and summary.status != STATUS_DISABLED:
            raise ConnectionInactiveError(
                f"Connection {connection_id!r} is {summary.status} and cannot be disabled.",
                connection_id=connection_id,
                status=summary.status,
            )
        return {"changed": changed, **summary.to_payload(self._clock())}

    def disable_all(self) -> dict:
        """Disable every active connection, one at a time."""
        active = [summary.connection_id for summary in self._all_summaries() if summary.status == STATUS_ACTIVE]
        return self._run_bulk("disable", active, self.disable)

    def enable(self, connection_id: str) -> dict:
        """Serve and refresh a disabled connection again."""
        validate_connection_id(connection_id)
        changed = self._store.set_status(
            connection_id, status=STATUS_ACTIVE, allowed_from=(STATUS_DISABLED,), now=self._clock()
        )
        summary = self._summary_or_raise(connection_id)
        if not changed and summary.status != STATUS_ACTIVE:
            advice = "connect the org again under a new id" if summary.status == STATUS_REVOKED else "connect the org again"
            raise ConnectionInactiveError(
                f"Connection {connection_id!r} is {summary.status}, not disabled, so it cannot be enabled; {advice}.",
                connection_id=connection_id,
                status=summary.status,
            )
        return {"changed": changed, **summary.to_payload(self._clock())}

    def revoke(self, connection_id: str) -> dict:
        """Revoke the refresh token at Salesforce through the proxy, then mark the connection revoked.

        The refresh lease is taken first, so no redemption is in flight while the token is
        revoked. The stored tokens are overwritten with an empty sealed value afterwards.
        """
        validate_connection_id(connection_id)
        record, owner = self._lease_for_revocation(connection_id)
        if record is None:
            return {"changed": False, **self._summary_or_raise(connection_id).to_payload(self._clock())}

        salesforce_result = "revoked"
        try:
            if record.refresh_token:
                self._runtime.salesforce().revoke(record.token_host, record.refresh_token)
            else:
                salesforce_result = "no token stored"
        except SalesforceOAuthError as exc:
            if exc.error != "invalid_token":
                self._store.release_lease(connection_id, owner=owner)
                raise
            # Salesforce rejects the token as invalid: it expired, was rotated out or was revoked before.
            salesforce_result = "already invalid"
        except TokenKeeperError:
            self._store.release_lease(connection_id, owner=owner)
            raise

        if not self._store.mark_revoked(connection_id, version=record.version, owner=owner, now=self._clock()):
            raise LeaseWaitTimeoutError(
                f"Connection {connection_id!r} changed while it was being revoked; the token was revoked at "
                "Salesforce, run revoke again to mark it.",
                connection_id=connection_id,
            )
        logger.info("Connection revoked", extra={"connection_id": connection_id, "salesforce": salesforce_result})
        return {
            "changed": True,
            "salesforce": salesforce_result,
            **self._summary_or_raise(connection_id).to_payload(self._clock()),
        }

    # Helpers ----------------------------------------------------------------------------------

    def _lease_for_revocation(self, connection_id: str) -> tuple[Connection | None, str]:
        """Return the record under a fresh lease, or None when it is already revoked."""
        owner = f"operator/{uuid.uuid4().hex[:12]}"
        deadline = time.monotonic() + REVOKE_WAIT_SECONDS
        while True:
            record = self._runtime.store.get(connection_id)
            if record is None:
                raise ConnectionNotFoundError(f"No connection {connection_id!r} exists.", connection_id=connection_id)
            if record.status == STATUS_REVOKED:
                return None, owner
            now = self._clock()
            if not record.lease_is_live(now) and self._store.acquire_admin_lease(
                connection_id, version=record.version, owner=owner, until=now + REVOKE_LEASE_SECONDS, now=now
            ):
                return record, owner
            if time.monotonic() >= deadline:
                raise LeaseWaitTimeoutError(
                    f"A redemption of connection {connection_id!r} held the lease for over {REVOKE_WAIT_SECONDS:g} s; "
                    "run revoke again.",
                    connection_id=connection_id,
                )
            self._sleep(REVOKE_POLL_SECONDS)

    def _fetch_egress_address(self, url: str) -> str:
        """Ask the echo service once over a new pool, so the request opens a new tunnel."""
        settings = self._runtime.settings
        proxy = self._runtime.secrets.proxy_url()
        pool = build_pool(
            proxy,
            connect_timeout=settings.connect_timeout_seconds,
            read_timeout=settings.read_timeout_seconds,
            ca_certs=settings.ca_bundle,
            maxsize=1,
        )
        try:
            client = SalesforceClient(
                pool, self._runtime.client_credentials, proxy=proxy, allow_loopback_hosts=settings.allow_loopback_hosts
            )
            return client.fetch_egress_address(url)
        finally:
            pool.clear()

    def _revoke_quietly(self, salesforce, host: str, refresh_token: str, connection_id: str) -> None:
        try:
            salesforce.revoke(host, refresh_token)
        except TokenKeeperError as exc:
            logger.warning(
                "Could not revoke an orphaned refresh token",
                extra={"connection_id": connection_id, "error_kind": exc.kind, "reason": exc.message},
            )

    def _summary_or_raise(self, connection_id: str) -> ConnectionSummary:
        summary = self._store.summary(connection_id)
        if summary is None:
            raise ConnectionNotFoundError(f"No connection {connection_id!r} exists.", connection_id=connection_id)
        return summary

    def _all_summaries(self, *, limit: int | None = None) -> list[ConnectionSummary]:
        summaries: list[ConnectionSummary] = []
        start_key = None
        for _page in range(MAX_SCAN_PAGES):
            page = self._store.scan_summaries(limit=SCAN_PAGE_ITEMS, exclusive_start_key=start_key)
            summaries.extend(page.connections)
            start_key = page.next_key
            if start_key is None or (limit is not None and len(summaries) >= limit):
                break
        summaries.sort(key=lambda summary: summary.connection_id)
        return summaries[:limit] if limit is not None else summaries

    def _run_bulk(self, action: str, connection_ids: list[str], run: Callable[[str], dict]) -> dict:
        results = []
        failed = 0
        total = len(connection_ids)
        for index, connection_id in enumerate(connection_ids, start=1):
            try:
                outcome = run(connection_id)
                results.append({"connection_id": connection_id, "ok": True, "result": outcome})
                self._progress(index, total, connection_id, "done")
            except TokenKeeperError as exc:
                failed += 1
                results.append({"connection_id": connection_id, "ok": False, "error": exc.to_payload()})
                self._progress(index, total, connection_id, f"failed: {exc.message}")
        return {"action": action, "total": total, "succeeded": total - failed, "failed": failed, "results": results}


def _exists(connection_id: str) -> ConnectionExistsError:
    return ConnectionExistsError(
        f"Connection {connection_id!r} already exists; revoke it first, or connect the org under another id.",
        connection_id=connection_id,
    )


def _code_and_state(code: str | None, state: str | None, callback_url: str | None) -> tuple[str, str]:
    if callback_url:
        if code or state:
            raise InvalidEventError("Pass either callback_url or code and state, not both.")
        query = parse_qs(urlsplit(callback_url).query)
        if "error" in query:
            error = query["error"][0]
            description = query.get("error_description", [""])[0]
            raise SalesforceOAuthError(
                f"Salesforce redirected with an error instead of a code ({error}: {description}); the user may "
                "have denied access. Run authorize-url again.",
                error=error,
                error_description=description,
            )
        code = query.get("code", [None])[0]
        state = query.get("state", [None])[0]
    if not code or not isinstance(code, str):
        raise InvalidEventError("The authorization code is missing; pass code, or the whole callback_url.")
    if not state or not isinstance(state, str):
        raise AuthorizationStateError("The state is missing; pass the state from the redirect, or the whole callback_url.")
    return code, state


def _parse_addresses(values: list[str]) -> list[str]:
    if not values:
        raise InvalidEventError("Pass the proxy's static IPs to expect (both of them for QuotaGuard).")
    addresses = []
    for value in values:
        try:
            addresses.append(str(ipaddress.ip_address(value.strip())))
        except (ValueError, AttributeError):
            raise InvalidEventError(f"The expected address {value!r} is not an IP address.") from None
    return sorted(set(addresses))


def _log_progress(index: int, total: int, subject: str, outcome: str) -> None:
    logger.info("Progress", extra={"step": index, "total": total, "subject": subject, "outcome": outcome})


# Dispatch ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Argument:
    """One argument of an action: its JSON type and whether it must be present."""

    kind: type | tuple[type, ...]
    required: bool = False


@dataclass(frozen=True)
class Action:
    """An action's arguments and the function that runs it."""

    arguments: dict[str, Argument]
    run: Callable[..., dict]


def _refresh(
    operations: Operations,
    *,
    connection_id: str | None = None,
    force: bool = False,
    all_due: bool = False,
    due_after_days: float = DEFAULT_DUE_AFTER_DAYS,
) -> dict:
    if bool(connection_id) == bool(all_due):
        raise InvalidEventError("Pass either connection_id or all_due=true.")
    if connection_id:
        return operations.refresh(connection_id, force=force)
    return operations.refresh_all_due(due_after_days=due_after_days)


def _disable(operations: Operations, *, connection_id: str | None = None, all: bool = False) -> dict:
    if bool(connection_id) == bool(all):
        raise InvalidEventError("Pass either connection_id or all=true.")
    return operations.disable(connection_id) if connection_id else operations.disable_all()


ACTIONS: dict[str, Action] = {
    "authorize-url": Action(
        {
            "connection_id": Argument(str, required=True),
            "redirect_uri": Argument(str, required=True),
            "host": Argument(str),
            "scope": Argument(str),
        },
        lambda operations, **arguments: operations.authorize_url(**arguments),
    ),
    "connect": Action(
        {"code": Argument(str), "state": Argument(str), "callback_url": Argument(str)},
        lambda operations, **arguments: operations.connect(**arguments),
    ),
    "check-egress": Action(
        {"expected": Argument(list, required=True), "url": Argument(str), "attempts": Argument(int)},
        lambda operations, **arguments: operations.check_egress(**arguments),
    ),
    "list": Action({"limit": Argument(int)}, lambda operations, **arguments: operations.list_connections(**arguments)),
    "show": Action({"connection_id": Argument(str, required=True)}, lambda operations, **arguments: operations.show(**arguments)),
    "refresh": Action(
        {
            "connection_id": Argument(str),
            "force": Argument(bool),
            "all_due": Argument(bool),
            "due_after_days": Argument((int, float)),
        },
        _refresh,
    ),
    "disable": Action({"connection_id": Argument(str), "all": Argument(bool)}, _disable),
    "enable": Action({"connection_id": Argument(str, required=True)}, lambda operations, **arguments: operations.enable(**arguments)),
    "revoke": Action({"connection_id": Argument(str, required=True)}, lambda operations, **arguments: operations.revoke(**arguments)),
}


def parse_action_request(event: dict) -> tuple[str, dict]:
    """Validate an ``{"action": ..., <arguments>}`` event strictly; return the name and the arguments."""
    name = event.get("action")
    if name not in ACTIONS:
        raise InvalidEventError(f"action {name!r} is unknown; use one of {', '.join(sorted(ACTIONS))}.")
    action = ACTIONS[name]
    arguments = {key: value for key, value in event.items() if key != "action"}
    unknown = sorted(set(arguments) - set(action.arguments))
    if unknown:
        raise InvalidEventError(
            f"The {name} action has no fields {', '.join(map(repr, unknown))}; allowed are "
            f"{', '.join(sorted(action.arguments)) or 'none'}."
        )
    for field_name, argument in action.arguments.items():
        if field_name not in arguments:
            if argument.required:
                raise InvalidEventError(f"The {name} action needs the field {field_name!r}.")
            continue
        value = arguments[field_name]
        # bool is an int in Python; a JSON true must not pass as a number.
        wrong_bool = isinstance(value, bool) and argument.kind is not bool
        if wrong_bool or not isinstance(value, argument.kind):
            raise InvalidEventError(f"The field {field_name!r} of the {name} action has the wrong type ({type(value).__name__}).")
    if name == "check-egress" and not all(isinstance(item, str) for item in arguments["expected"]):
        raise InvalidEventError("The field 'expected' of the check-egress action must be a list of IP address strings.")
    return name, arguments


def run_action(operations: Operations, name: str, arguments: dict) -> dict:
    """Run the action ``name`` with already validated ``arguments``."""
    return ACTIONS[name].run(operations, **arguments)


def _requests(count: int) -> str:
    return "1 request" if count == 1 else f"{count} requests"
