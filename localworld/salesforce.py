"""A local Salesforce OAuth server for tests and the demo.

It serves the token, introspection and revocation endpoints over HTTPS on loopback. Refresh Token
Rotation is always on, the idle timeout (30 days by default) runs on an injectable clock, and the
Refresh Token IP Allowlist checks the TCP peer address. Behaviour follows what Salesforce
documents for the refresh token flow, the web server flow with PKCE, token introspection and
revocation. Where the documentation is silent, the emulator makes the strictest reasonable choice
and a comment at that spot says so.

Switches for latency and faults (scripted responses, connections dropped after a rotation) and
counters for what clients did let tests drive and observe the product from outside. Token values
are never logged.
"""

from __future__ import annotations

import base64
import binascii
import collections
import copy
import dataclasses
import hashlib
import hmac
import http.server
import ipaddress
import json
import logging
import re
import secrets
import socket
import ssl
import string
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["SalesforceEmulator", "EmulatorStats"]

logger = logging.getLogger(__name__)

TOKEN_PATH = "/services/oauth2/token"
INTROSPECT_PATH = "/services/oauth2/introspect"
REVOKE_PATH = "/services/oauth2/revoke"
IP_ECHO_PATH = "/ip"

# The emulator models a production org, whose identity URLs start with the production login host.
IDENTITY_URL_PREFIX = "https://login.salesforce.com/id"
SCOPE = "api refresh_token"
DEFAULT_USER_ID = "005000000000001AAA"
DEFAULT_USERNAME = "user@example.com"
ORG_STATUSES = ("active", "locked", "closed", "suspended")

AUTHORIZATION_CODE_LIFETIME_SECONDS = 15 * 60
MAX_REQUEST_BODY_BYTES = 64 * 1024
# Bounds the TLS handshake and idle keep-alive connections, so a silent client cannot hold a
# handler thread for long.
CONNECTION_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 5.0

# Prefixes imitate the shape of Salesforce tokens: access tokens start with the 15-character org
# id and "!", refresh tokens with "5Aep861", authorization codes with "aPrx".
_TOKEN_ALPHABET = string.ascii_letters + string.digits + "._"
ACCESS_TOKEN_RANDOM_CHARS = 96
REFRESH_TOKEN_RANDOM_CHARS = 80
AUTHORIZATION_CODE_RANDOM_CHARS = 80

# RFC 7636: 43 to 128 characters from the unreserved set.
_CODE_VERIFIER_PATTERN = re.compile(r"[A-Za-z0-9\-._~]{43,128}")

EXPIRED_TOKEN = "expired access/refresh token"
AUTHENTICATION_FAILURE = "authentication failure"
IP_RESTRICTED = "ip restricted"
TOKEN_BUSY = "token request is already being processed"
INVALID_CODE_VERIFIER = "invalid code verifier"
INVALID_AUTHORIZATION_CODE = "invalid authorization code"
EXPIRED_AUTHORIZATION_CODE = "expired authorization code"
REDIRECT_URI_MISMATCH = "redirect_uri mismatch"
INVALID_CLIENT_CREDENTIALS = "invalid client credentials"
GRANT_TYPE_NOT_SUPPORTED = "grant type not supported"
USER_INACTIVE = "user inactive"

_SERVICE_UNAVAILABLE_PAGE = (
    "<!DOCTYPE html>\n<html><head><title>Service Unavailable</title></head>"
    "<body><h1>Service Unavailable</h1><p>The server is temporarily unable to service your"
    " request. Please try again later.</p></body></html>\n"
)


@dataclasses.dataclass
class EmulatorStats:
    """Counters of what clients did, as seen by the emulator.

    ``errors`` counts the ``(error, error_description)`` pairs that the token endpoint generated.
    Responses scripted with ``fail_next`` or ``answer_next_with`` count only in
    ``scripted_responses``.
    """

    token_requests: int = 0
    redemptions: int = 0
    code_exchanges: int = 0
    by_source: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    errors: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    replays_detected: int = 0
    chains_revoked: int = 0
    scripted_responses: int = 0
    connections_dropped: int = 0


class _OAuthError(Exception):
    """An OAuth error response: HTTP 400 with a JSON ``error`` and ``error_description``."""

    def __init__(self, error: str, description: str):
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description


@dataclasses.dataclass
class _Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json;charset=UTF-8"
    no_store: bool = True
    drop_connection: bool = False


@dataclasses.dataclass
class _Client:
    client_id: str
    client_secret: str


@dataclasses.dataclass(eq=False)
class _Chain:
    """The refresh tokens that descend from one authorization, of which only the last is valid."""

    client: _Client
    user_id: str
    username: str
    current_refresh_token: str = ""
    revoked: bool = False
    password_changed: bool = False
    access_tokens: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(eq=False)
class _RefreshToken:
    chain: _Chain
    issued_at: float


@dataclasses.dataclass(eq=False)
class _AccessToken:
    chain: _Chain
    issued_at: float
    expires_at: float
    revoked: bool = False


@dataclasses.dataclass(eq=False)
class _AuthorizationCode:
    client: _Client
    user_id: str
    username: str
    redirect_uri: str
    code_challenge: str | None
    expires_at: float
    used: bool = False
    chain: _Chain | None = None


@dataclasses.dataclass
class _Claim:
    """A token request that passed the early checks and owns its grant's in-flight slot."""

    client: _Client
    grant_type: str
    in_flight_key: tuple[str, str]
    form: dict[str, str]


class SalesforceEmulator:
    """An HTTPS server that behaves like Salesforce's OAuth endpoints for one org.

    ``allowed_source_addresses`` is the Refresh Token IP Allowlist: addresses or CIDR ranges
    whose connections may use the token endpoint. ``None`` turns the allowlist off, and an
    empty tuple blocks every source. ``idle_timeout_seconds=None`` makes refresh tokens valid
    until revoked. ``max_grants_per_user`` revokes a user's oldest chain for a client once a new
    one exceeds it. ``None`` keeps every chain.
    """

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext,
        host: str = "127.0.0.1",
        port: int = 0,
        allowed_source_addresses: Iterable[str] | None = ("127.0.0.2", "127.0.0.3"),
        clock: Callable[[], float] = time.time,
        session_seconds: int = 7200,
        idle_timeout_seconds: int | None = 30 * 86400,
        org_id: str = "00D000000000001EAA",
        max_grants_per_user: int | None = None,
    ):
        _require_loopback(host)
        self._ssl_context = ssl_context
        self._requested_address = (host, port)
        self._clock = clock
        self._session_seconds = session_seconds
        self._idle_timeout_seconds = idle_timeout_seconds
        self._org_id = org_id
        # Third parties report a limit of 5 grants per user and app, with the oldest revoked.
        # Salesforce does not document it, so the limit stays off unless a test enables it.
        self._max_grants_per_user = max_grants_per_user

        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: _EmulatorHTTPServer | None = None
        self._serve_thread: threading.Thread | None = None
        self._open_connections: set[socket.socket] = set()

        self._allowed_networks = _parse_allowlist(allowed_source_addresses)
        self._org_status = "active"
        self._inactive_users: set[str] = set()
        self._clients: dict[str, _Client] = {}
        self._chains: list[_Chain] = []
        self._refresh_tokens: dict[str, _RefreshToken] = {}
        self._access_tokens: dict[str, _AccessToken] = {}
        self._authorization_codes: dict[str, _AuthorizationCode] = {}
        self._in_flight: set[tuple[str, str]] = set()

        self._latency_seconds = 0.0
        self._scripted_responses: collections.deque[_Response] = collections.deque()
        self._drops_after_issue = 0
        self._stats = EmulatorStats()

    # Lifecycle

    def start(self) -> SalesforceEmulator:
        """Bind the listening socket and serve requests on a background thread."""
        if self._server is not None:
            raise RuntimeError("SalesforceEmulator is already started; create a new one instead")

        self._server = _EmulatorHTTPServer(self._requested_address, _RequestHandler, self)
        self._serve_thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"salesforce-emulator-{self.port}",
            daemon=True,
        )
        self._serve_thread.start()
        logger.debug("Salesforce emulator listening on %s", self.base_url)
        return self

    def stop(self) -> None:
        """Stop serving, close the listening socket and every open client connection."""
        server = self._server
        if server is None or self._stopping.is_set():
            return

        # Wakes requests that wait out latency_seconds, so they finish at once.
        self._stopping.set()
        server.shutdown()
        with self._lock:
            connections = list(self._open_connections)
        for connection in connections:
            _shutdown_quietly(connection)
        server.server_close()
        if self._serve_thread is not None:
            self._serve_thread.join(STOP_TIMEOUT_SECONDS)
        logger.debug("Salesforce emulator on %s stopped", self.base_url)

    def __enter__(self) -> SalesforceEmulator:
        """Start the emulator unless it is already running."""
        if self._server is None:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def host(self) -> str:
        return self._requested_address[0]

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("SalesforceEmulator is not started; call start() first")
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        """The server's URL, ``https://HOST:PORT``, also returned as ``instance_url``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"

    # Setup

    def register_client(self, client_id: str, client_secret: str) -> None:
        """Register a connected app (confidential client) with its consumer key and secret."""
        with self._lock:
            self._clients[client_id] = _Client(client_id, client_secret)

    def create_refresh_token(
        self,
        client_id: str,
        *,
        user_id: str = DEFAULT_USER_ID,
        username: str = DEFAULT_USERNAME,
    ) -> str:
        """Start a new chain as if the user had authorized the client, and return its token.

        The token's idle clock starts now.
        """
        with self._lock:
            client = self._registered_client(client_id)
            chain = self._start_chain(client, user_id, username)
            return chain.current_refresh_token

    def create_authorization_code(
        self,
        client_id: str,
        *,
        redirect_uri: str,
        code_challenge: str | None,
        code_challenge_method: str = "S256",
        user_id: str = DEFAULT_USER_ID,
        username: str = DEFAULT_USERNAME,
    ) -> str:
        """Return a single-use authorization code, as the authorize endpoint would redirect with.

        With ``code_challenge=None`` the code is redeemed without PKCE.
        """
        if code_challenge is not None and code_challenge_method != "S256":
            raise ValueError(
                f"code_challenge_method {code_challenge_method!r} is not supported; use 'S256'"
            )

        with self._lock:
            client = self._registered_client(client_id)
            code = _random_token("aPrx", AUTHORIZATION_CODE_RANDOM_CHARS)
            self._authorization_codes[code] = _AuthorizationCode(
                client=client,
                user_id=user_id,
                username=username,
                redirect_uri=redirect_uri,
                code_challenge=code_challenge,
                expires_at=self._clock() + AUTHORIZATION_CODE_LIFETIME_SECONDS,
            )
            return code

    def set_allowed_source_addresses(self, addresses: Iterable[str] | None) -> None:
        """Replace the Refresh Token IP Allowlist. ``None`` turns it off."""
        networks = _parse_allowlist(addresses)
        with self._lock:
            self._allowed_networks = networks

    # State changes an administrator or a user could cause

    def revoke_chain_of(self, refresh_token: str) -> None:
        """Revoke the chain that the token belongs to, as if the user revoked the app's access."""
        with self._lock:
            record = self._refresh_tokens.get(refresh_token)
            if record is None:
                raise KeyError("the refresh token is unknown to this emulator")
            self._revoke_chain(record.chain)

    def deactivate_user(self, user_id: str) -> None:
        """Make the token endpoint reject the user's tokens with ``inactive_user``."""
        with self._lock:
            self._inactive_users.add(user_id)

    def activate_user(self, user_id: str) -> None:
        with self._lock:
            self._inactive_users.discard(user_id)

    def change_user_password(self, user_id: str) -> None:
        """Make the user's existing chains fail with ``invalid_grant`` "authentication failure".

        Chains created afterwards work.
        """
        # The error follows third-party reports. Salesforce does not document which error a
        # refresh token gets after its user's password changes.
        with self._lock:
            for chain in self._chains:
                if chain.user_id == user_id:
                    chain.password_changed = True

    def set_org_status(self, status: str) -> None:
        """Set the org to ``active``, ``locked``, ``closed`` or ``suspended``.

        Any status but ``active`` makes the token endpoint return ``inactive_org``.
        """
        if status not in ORG_STATUSES:
            raise ValueError(f"invalid org status {status!r}; expected one of {ORG_STATUSES}")
        with self._lock:
            self._org_status = status

    # Latency and fault switches

    @property
    def latency_seconds(self) -> float:
        """Delay, in seconds, before the token endpoint sends each response."""
        with self._lock:
            return self._latency_seconds

    @latency_seconds.setter
    def latency_seconds(self, value: float) -> None:
        if value < 0:
            raise ValueError(f"latency_seconds must be >= 0, got {value}")
        with self._lock:
            self._latency_seconds = float(value)

    def fail_next(self, count: int, *, status: int = 503, body: str | None = None) -> None:
        """Respond to the next ``count`` token requests with ``status`` and an HTML page.

        Such requests change no state, as if a load balancer in front of Salesforce failed.
        """
        page = _SERVICE_UNAVAILABLE_PAGE if body is None else body
        self.answer_next_with(count, status, page, "text/html; charset=UTF-8")

    def answer_next_with(
        self,
        count: int,
        status: int,
        body: str | bytes,
        content_type: str = "application/json;charset=UTF-8",
    ) -> None:
        """Respond to the next ``count`` token requests with exactly this status, body and type.

        Such requests change no state. Scripted responses queue behind earlier ones.
        """
        _check_count(count)
        if not 200 <= status <= 599:
            raise ValueError(f"status must be between 200 and 599, got {status}")

        raw_body = body.encode("utf-8") if isinstance(body, str) else bytes(body)
        response = _Response(status, raw_body, content_type, no_store=False)
        with self._lock:
            self._scripted_responses.extend(copy.copy(response) for _ in range(count))

    def drop_after_issue_next(self, count: int = 1) -> None:
        """Close the connection without a response after each of the next ``count`` token issues.

        The grant is processed in full, so a refresh token is rotated and the new one is lost to
        the client: the ambiguous failure that a read timeout also causes.
        """
        _check_count(count)
        with self._lock:
            self._drops_after_issue += count

    def clear_faults(self) -> None:
        """Forget pending scripted responses and drops, and set latency back to zero."""
        with self._lock:
            self._scripted_responses.clear()
            self._drops_after_issue = 0
            self._latency_seconds = 0.0

    # Observations

    @property
    def stats(self) -> EmulatorStats:
        """A snapshot of the counters, unaffected by later requests."""
        with self._lock:
            return copy.deepcopy(self._stats)

    def reset_stats(self) -> None:
        with self._lock:
            self._stats = EmulatorStats()

    def chain_state(self, refresh_token: str) -> str:
        """Return the token's state: current, rotated, expired, revoked or unknown.

        ``expired`` is a current token that has been idle for longer than the idle timeout.
        Every token of a revoked chain is ``revoked``.
        """
        with self._lock:
            record = self._refresh_tokens.get(refresh_token)
            if record is None:
                return "unknown"
            if record.chain.revoked:
                return "revoked"
            if record.chain.current_refresh_token != refresh_token:
                return "rotated"
            if self._is_idle_expired(record):
                return "expired"
            return "current"

    def current_refresh_token_of(self, refresh_token: str) -> str | None:
        """Return the valid refresh token of the token's chain, or None if the chain is revoked.

        Tests use it to learn the token that a dropped response carried.
        """
        with self._lock:
            record = self._refresh_tokens.get(refresh_token)
            if record is None:
                raise KeyError("the refresh token is unknown to this emulator")
            if record.chain.revoked:
                return None
            return record.chain.current_refresh_token

    def issued_tokens(self) -> set[str]:
        """Return every refresh token, access token and authorization code issued so far.

        The suite scans captured output for these values to prove that no token is logged.
        """
        with self._lock:
            return (
                set(self._refresh_tokens)
                | set(self._access_tokens)
                | set(self._authorization_codes)
            )

    def introspect(self, token: str) -> dict[str, Any]:
        """Return what the introspection endpoint returns for the token, without client checks."""
        with self._lock:
            return self._introspection_result(token, client=None)

    # Token endpoint. The request handler calls _begin_token_request, waits out the latency and
    # then calls _complete_token_request, so a request owns its token's in-flight slot for the
    # whole wait. A second request for the same token in that window is the concurrent case.

    def _begin_token_request(
        self, source: str, authorization: str | None, form: dict[str, str]
    ) -> _Response | _Claim:
        with self._lock:
            self._stats.token_requests += 1
            self._stats.by_source[source] += 1
            if self._scripted_responses:
                self._stats.scripted_responses += 1
                return self._scripted_responses.popleft()

            try:
                # The allowlist comes first: a blocked source learns nothing about the client.
                self._check_source(source)
                client = self._authenticate_client(authorization, form)
                claim = self._claim_grant(client, form)
            except _OAuthError as error:
                return self._token_error_response(error)
            return claim

    def _complete_token_request(self, claim: _Claim) -> _Response:
        with self._lock:
            try:
                if claim.grant_type == "refresh_token":
                    payload = self._redeem_refresh_token(claim)
                else:
                    payload = self._exchange_authorization_code(claim)
            except _OAuthError as error:
                return self._token_error_response(error)
            finally:
                self._in_flight.discard(claim.in_flight_key)

            response = _Response(200, _json_bytes(payload))
            if self._drops_after_issue > 0:
                self._drops_after_issue -= 1
                self._stats.connections_dropped += 1
                response.drop_connection = True
            return response

    def _sleep_latency(self) -> None:
        with self._lock:
            latency = self._latency_seconds
        if latency > 0:
            self._stopping.wait(latency)

    def _check_source(self, source: str) -> None:
        if self._allowed_networks is None:
            return
        address = ipaddress.ip_address(source)
        if any(address in network for network in self._allowed_networks):
            return
        # NOTE: Salesforce does not document the response to a source outside the Refresh Token
        # IP Allowlist. Its nearest documented analogue, "ip restricted", is used.
        raise _OAuthError("invalid_grant", IP_RESTRICTED)

    def _authenticate_client(self, authorization: str | None, form: dict[str, str]) -> _Client:
        client_id, client_secret = _client_credentials(authorization, form)
        if not client_id:
            raise _OAuthError("invalid_client_id", INVALID_CLIENT_CREDENTIALS)

        client = self._clients.get(client_id)
        if client is None:
            raise _OAuthError("invalid_client_id", INVALID_CLIENT_CREDENTIALS)
        # Every client is confidential and must send its secret, also on the refresh token
        # flow. That is the strictest setting a connected app offers.
        if client_secret is None or not hmac.compare_digest(
            client_secret.encode("utf-8"), client.client_secret.encode("utf-8")
        ):
            raise _OAuthError("invalid_client", INVALID_CLIENT_CREDENTIALS)
        return client

    def _claim_grant(self, client: _Client, form: dict[str, str]) -> _Claim:
        grant_type = _required_field(form, "grant_type")
        if grant_type == "refresh_token":
            in_flight_key = ("refresh_token", _required_field(form, "refresh_token"))
        elif grant_type == "authorization_code":
            _required_field(form, "redirect_uri")
            in_flight_key = ("authorization_code", _required_field(form, "code"))
        else:
            raise _OAuthError("unsupported_grant_type", GRANT_TYPE_NOT_SUPPORTED)

        # NOTE: Salesforce does not document whether the rejected concurrent request harms the
        # chain. The emulator leaves the chain intact, so the client learns of the conflict only
        # from the error response.
        if in_flight_key in self._in_flight:
            raise _OAuthError("invalid_grant", TOKEN_BUSY)
        self._in_flight.add(in_flight_key)
        return _Claim(client, grant_type, in_flight_key, form)

    def _redeem_refresh_token(self, claim: _Claim) -> dict[str, str]:
        record = self._refresh_tokens.get(claim.form["refresh_token"])
        if record is None or record.chain.client is not claim.client:
            raise _OAuthError("invalid_grant", EXPIRED_TOKEN)

        chain = record.chain
        if chain.revoked:
            raise _OAuthError("invalid_grant", EXPIRED_TOKEN)
        if chain.current_refresh_token != claim.form["refresh_token"]:
            # Rotation's replay rule: presenting a rotated-out token revokes the whole chain.
            self._stats.replays_detected += 1
            self._revoke_chain(chain)
            logger.debug(
                "Replay of a rotated-out refresh token revoked the chain of user %s, client %s",
                chain.user_id,
                chain.client.client_id,
            )
            raise _OAuthError("invalid_grant", EXPIRED_TOKEN)
        if self._is_idle_expired(record):
            raise _OAuthError("invalid_grant", EXPIRED_TOKEN)
        self._check_user_and_org(chain.user_id)
        if chain.password_changed:
            raise _OAuthError("invalid_grant", AUTHENTICATION_FAILURE)

        self._rotate(chain)
        access_token = self._issue_access_token(chain)
        self._stats.redemptions += 1
        return self._token_payload(chain, access_token)

    def _exchange_authorization_code(self, claim: _Claim) -> dict[str, str]:
        code = self._authorization_codes.get(claim.form["code"])
        if code is None or code.client is not claim.client:
            raise _OAuthError("invalid_grant", INVALID_AUTHORIZATION_CODE)
        if code.used:
            # NOTE: RFC 6749 section 4.1.2 recommends revoking the tokens issued for a reused
            # code. Salesforce does not document its behaviour, so the stricter rule applies.
            if code.chain is not None:
                self._revoke_chain(code.chain)
            raise _OAuthError("invalid_grant", INVALID_AUTHORIZATION_CODE)
        if self._clock() > code.expires_at:
            raise _OAuthError("invalid_grant", EXPIRED_AUTHORIZATION_CODE)
        if claim.form["redirect_uri"] != code.redirect_uri:
            raise _OAuthError("invalid_grant", REDIRECT_URI_MISMATCH)
        if code.code_challenge is not None:
            _verify_code_verifier(claim.form.get("code_verifier"), code.code_challenge)
        self._check_user_and_org(code.user_id)

        code.used = True
        code.chain = self._start_chain(code.client, code.user_id, code.username)
        access_token = self._issue_access_token(code.chain)
        self._stats.code_exchanges += 1
        return self._token_payload(code.chain, access_token)

    def _check_user_and_org(self, user_id: str) -> None:
        if self._org_status != "active":
            raise _OAuthError("inactive_org", f"org {self._org_status}")
        if user_id in self._inactive_users:
            raise _OAuthError("inactive_user", USER_INACTIVE)

    def _token_error_response(self, error: _OAuthError) -> _Response:
        self._stats.errors[(error.error, error.description)] += 1
        return _error_response(error)

    # Chains and tokens

    def _registered_client(self, client_id: str) -> _Client:
        client = self._clients.get(client_id)
        if client is None:
            raise KeyError(f"client {client_id!r} is not registered; call register_client first")
        return client

    def _start_chain(self, client: _Client, user_id: str, username: str) -> _Chain:
        chain = _Chain(client=client, user_id=user_id, username=username)
        self._chains.append(chain)
        self._rotate(chain)
        self._enforce_grant_limit(client, user_id)
        return chain

    def _enforce_grant_limit(self, client: _Client, user_id: str) -> None:
        if self._max_grants_per_user is None:
            return
        live_chains = [
            chain
            for chain in self._chains
            if chain.client is client and chain.user_id == user_id and not chain.revoked
        ]
        excess = len(live_chains) - self._max_grants_per_user
        for chain in live_chains[: max(excess, 0)]:
            self._revoke_chain(chain)

    def _rotate(self, chain: _Chain) -> str:
        """Issue the chain's next refresh token, which invalidates the previous one."""
        token = _random_token("5Aep861", REFRESH_TOKEN_RANDOM_CHARS)
        self._refresh_tokens[token] = _RefreshToken(chain=chain, issued_at=self._clock())
        chain.current_refresh_token = token
        return token

    def _issue_access_token(self, chain: _Chain) -> str:
        token = _random_token(f"{self._org_id[:15]}!", ACCESS_TOKEN_RANDOM_CHARS)
        issued_at = self._clock()
        self._access_tokens[token] = _AccessToken(
            chain=chain, issued_at=issued_at, expires_at=issued_at + self._session_seconds
        )
        chain.access_tokens.append(token)
        return token

    def _revoke_chain(self, chain: _Chain) -> None:
        if chain.revoked:
            return
        chain.revoked = True
        for token in chain.access_tokens:
            self._access_tokens[token].revoked = True
        self._stats.chains_revoked += 1

    def _is_idle_expired(self, record: _RefreshToken) -> bool:
        # Salesforce does not document whether a freshly rotated token's idle clock starts at
        # issue. The emulator assumes it does, so every redemption restarts the window.
        if self._idle_timeout_seconds is None:
            return False
        return self._clock() - record.issued_at > self._idle_timeout_seconds

    def _identity_url(self, user_id: str) -> str:
        return f"{IDENTITY_URL_PREFIX}/{self._org_id}/{user_id}"

    def _token_payload(self, chain: _Chain, access_token: str) -> dict[str, str]:
        identity_url = self._identity_url(chain.user_id)
        # issued_at is a string of milliseconds since the epoch, as in every published example.
        # There is no expires_in, because the access token lives for the org's session timeout.
        issued_at = str(int(self._access_tokens[access_token].issued_at * 1000))
        return {
            "access_token": access_token,
            "refresh_token": chain.current_refresh_token,
            "signature": _signature(chain.client.client_secret, identity_url, issued_at),
            "scope": SCOPE,
            "instance_url": self.base_url,
            "id": identity_url,
            "token_type": "Bearer",
            "issued_at": issued_at,
        }

    # Introspection and revocation endpoints

    def _handle_introspect(self, authorization: str | None, form: dict[str, str]) -> _Response:
        with self._lock:
            try:
                client = self._authenticate_client(authorization, form)
                token = _required_field(form, "token")
            except _OAuthError as error:
                return _error_response(error)
            return _Response(200, _json_bytes(self._introspection_result(token, client)))

    def _introspection_result(self, token: str, client: _Client | None) -> dict[str, Any]:
        inactive = {"active": False}
        access = self._access_tokens.get(token)
        refresh = self._refresh_tokens.get(token)

        if access is not None:
            chain = access.chain
            if access.revoked or self._clock() >= access.expires_at:
                return inactive
            issued_at, expires_at, token_type = access.issued_at, access.expires_at, "access_token"
        elif refresh is not None:
            chain = refresh.chain
            if chain.revoked or chain.current_refresh_token != token:
                return inactive
            if self._is_idle_expired(refresh):
                return inactive
            issued_at, token_type = refresh.issued_at, "refresh_token"
            # A refresh token has no fixed expiry. Its exp here is the end of its idle window,
            # which is the earliest moment it stops working if left unused.
            expires_at = (
                None
                if self._idle_timeout_seconds is None
                else issued_at + self._idle_timeout_seconds
            )
        else:
            return inactive

        # Only the client the token was issued to may learn about it.
        if client is not None and chain.client is not client:
            return inactive

        result: dict[str, Any] = {
            "active": True,
            "scope": SCOPE,
            "client_id": chain.client.client_id,
            "username": chain.username,
            "sub": self._identity_url(chain.user_id),
            "token_type": token_type,
            "iat": int(issued_at),
            "nbf": int(issued_at),
        }
        if expires_at is not None:
            result["exp"] = int(expires_at)
        return result

    def _handle_revoke(self, form: dict[str, str]) -> _Response:
        with self._lock:
            try:
                token = _required_field(form, "token")
                self._revoke_token(token)
            except _OAuthError as error:
                return _error_response(error)
            return _Response(200, b"", content_type="text/plain;charset=UTF-8")

    def _revoke_token(self, token: str) -> None:
        access = self._access_tokens.get(token)
        if access is not None and not access.revoked:
            access.revoked = True
            return

        refresh = self._refresh_tokens.get(token)
        # A rotated-out token is no longer valid, so revoking it is an error and not a replay.
        if refresh is None or refresh.chain.revoked:
            raise _OAuthError("invalid_token", "invalid token")
        if refresh.chain.current_refresh_token != token:
            raise _OAuthError("invalid_token", "invalid token")
        self._revoke_chain(refresh.chain)

    def _track_connection(self, connection: socket.socket, *, is_open: bool) -> None:
        with self._lock:
            if is_open:
                self._open_connections.add(connection)
            else:
                self._open_connections.discard(connection)
        # A connection accepted just before stop() took its snapshot is closed here instead.
        if is_open and self._stopping.is_set():
            _shutdown_quietly(connection)


class _EmulatorHTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, handler_class, emulator: SalesforceEmulator):
        self.emulator = emulator
        super().__init__(address, handler_class)

    def handle_error(self, request, client_address) -> None:
        # Clients that fail the TLS handshake or hang up are routine in fault tests.
        logger.debug("Connection from %s ended with an error", client_address[0], exc_info=True)


class _RequestHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "SalesforceEmulator"
    sys_version = ""
    timeout = CONNECTION_TIMEOUT_SECONDS
    server: _EmulatorHTTPServer

    # Connection setup: TLS is wrapped here, in the handler thread, so the accept loop performs
    # no handshake and a slow client delays only its own thread.

    def setup(self) -> None:
        self.request.settimeout(CONNECTION_TIMEOUT_SECONDS)
        self.request = self.server.emulator._ssl_context.wrap_socket(
            self.request, server_side=True
        )
        self.server.emulator._track_connection(self.request, is_open=True)
        super().setup()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.emulator._track_connection(self.request, is_open=False)
            self.request.close()

    # Routing

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if path == IP_ECHO_PATH:
            self._send(_Response(200, _json_bytes({"ip": self.client_address[0]}), no_store=False))
        elif path in (TOKEN_PATH, INTROSPECT_PATH, REVOKE_PATH):
            self._send(_plain_error_response(405, "method not allowed"))
        else:
            self._send(_plain_error_response(404, "not found"))

    def do_POST(self) -> None:
        # The body is read before routing so that a kept-alive connection stays in step.
        body = self._read_body()
        if body is None:
            return
        path = urllib.parse.urlsplit(self.path).path
        if path not in (TOKEN_PATH, INTROSPECT_PATH, REVOKE_PATH):
            self._send(_plain_error_response(404, "not found"))
            return

        try:
            form = self._parse_form(body)
        except _OAuthError as error:
            self._send(_error_response(error))
            return

        emulator = self.server.emulator
        authorization = self.headers.get("Authorization")
        if path == TOKEN_PATH:
            self._handle_token(form, authorization)
        elif path == INTROSPECT_PATH:
            self._send(emulator._handle_introspect(authorization, form))
        else:
            self._send(emulator._handle_revoke(form))

    def _handle_token(self, form: dict[str, str], authorization: str | None) -> None:
        emulator = self.server.emulator
        outcome = emulator._begin_token_request(self.client_address[0], authorization, form)
        emulator._sleep_latency()
        if isinstance(outcome, _Claim):
            outcome = emulator._complete_token_request(outcome)
        self._send(outcome)

    # Request body

    def _read_body(self) -> bytes | None:
        """Read the body, or send an error response and return None when it cannot be read."""
        body = self._read_declared_body()
        if body is None:
            # An unread body would be taken for the next request, so the connection ends.
            self.close_connection = True
        return body

    def _read_declared_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            message = "chunked bodies are not supported; send Content-Length"
            self._send(_plain_error_response(411, message))
            return None
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            self._send(_plain_error_response(400, "invalid Content-Length"))
            return None
        if not 0 <= length <= MAX_REQUEST_BODY_BYTES:
            self._send(_plain_error_response(413, f"body exceeds {MAX_REQUEST_BODY_BYTES} bytes"))
            return None
        return self.rfile.read(length)

    def _parse_form(self, body: bytes) -> dict[str, str]:
        content_type = self.headers.get("Content-Type", "")
        # A body of another type is not parsed, so its fields count as missing.
        if content_type.split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
            return {}

        try:
            pairs = urllib.parse.parse_qsl(
                body.decode("utf-8"), keep_blank_values=True, strict_parsing=False
            )
        except UnicodeDecodeError:
            raise _OAuthError("invalid_request", "the body is not valid UTF-8") from None

        form: dict[str, str] = {}
        for name, value in pairs:
            # RFC 6749 section 3.2: request parameters must not be repeated.
            if name in form:
                raise _OAuthError("invalid_request", f"repeated parameter {name}")
            form[name] = value
        return form

    # Response

    def _send(self, response: _Response) -> None:
        if response.drop_connection:
            self._drop_connection()
            return

        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        if response.no_store:
            self.send_header("Cache-Control", "no-store")
            self.send_header("Pragma", "no-cache")
        self.end_headers()
        self.wfile.write(response.body)

    def _drop_connection(self) -> None:
        # Closes TCP without a TLS close_notify or any HTTP bytes, as a proxy or load balancer
        # that loses the upstream connection mid-response would.
        self.close_connection = True
        _shutdown_quietly(self.connection)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # Logs the path without its query string, which could carry a token.
        path = urllib.parse.urlsplit(self.path).path
        logger.debug("%s %s %s from %s", self.command, path, code, self.client_address[0])

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("Request from %s: " + format, self.client_address[0], *args)


# Helpers


def _require_loopback(host: str) -> None:
    if host == "localhost":
        return
    try:
        is_loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        is_loopback = False
    if not is_loopback:
        raise ValueError(f"host {host!r} is not a loopback address; use one in 127.0.0.0/8 or ::1")


def _parse_allowlist(
    addresses: Iterable[str] | None,
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None:
    if addresses is None:
        return None
    if isinstance(addresses, str):
        raise TypeError("allowed_source_addresses must be a collection of addresses, not a str")
    return tuple(ipaddress.ip_network(address, strict=False) for address in addresses)


def _check_count(count: int) -> None:
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")


def _random_token(prefix: str, random_chars: int) -> str:
    return prefix + "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(random_chars))


def _required_field(form: dict[str, str], name: str) -> str:
    value = form.get(name, "")
    if not value:
        raise _OAuthError("invalid_request", f"missing required parameter {name}")
    return value


def _client_credentials(
    authorization: str | None, form: dict[str, str]
) -> tuple[str | None, str | None]:
    """Return the client id and secret from a Basic header if present, else from the form."""
    form_client_id = form.get("client_id") or None
    if not authorization:
        return form_client_id, form.get("client_secret") or None

    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic":
        raise _OAuthError("invalid_client", INVALID_CLIENT_CREDENTIALS)
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise _OAuthError("invalid_client", INVALID_CLIENT_CREDENTIALS) from None
    if ":" not in decoded:
        raise _OAuthError("invalid_client", INVALID_CLIENT_CREDENTIALS)

    # RFC 6749 section 2.3.1 form-encodes both parts before joining them with ":".
    raw_id, _, raw_secret = decoded.partition(":")
    client_id = urllib.parse.unquote_plus(raw_id)
    if form_client_id is not None and form_client_id != client_id:
        raise _OAuthError("invalid_client", INVALID_CLIENT_CREDENTIALS)
    return client_id, urllib.parse.unquote_plus(raw_secret)


def _verify_code_verifier(code_verifier: str | None, code_challenge: str) -> None:
    if not code_verifier:
        raise _OAuthError("invalid_request", "missing required parameter code_verifier")
    if not _CODE_VERIFIER_PATTERN.fullmatch(code_verifier):
        raise _OAuthError("invalid_grant", INVALID_CODE_VERIFIER)

    digest = hashlib.sha256(code_verifier.encode("ascii")).digest()
    expected = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
    if not hmac.compare_digest(expected, code_challenge):
        raise _OAuthError("invalid_grant", INVALID_CODE_VERIFIER)


def _signature(client_secret: str, identity_url: str, issued_at: str) -> str:
    """Return Salesforce's response signature: Base64 HMAC-SHA256 of id + issued_at.

    The HMAC is keyed with the client secret, so a client can check that the response is genuine.
    """
    mac = hmac.new(
        client_secret.encode("utf-8"), (identity_url + issued_at).encode("utf-8"), hashlib.sha256
    )
    return base64.b64encode(mac.digest()).decode("ascii")


def _json_bytes(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode("utf-8")


def _error_response(error: _OAuthError) -> _Response:
    # The access log line that follows names the path and the source address.
    logger.debug("Rejected an OAuth request: %s (%s)", error.error, error.description)
    body = {"error": error.error, "error_description": error.description}
    return _Response(400, _json_bytes(body))


def _plain_error_response(status: int, message: str) -> _Response:
    return _Response(status, _json_bytes({"message": message}), no_store=False)


def _shutdown_quietly(connection: socket.socket) -> None:
    # The plain socket method ends TCP and leaves the TLS object alone, which SSLSocket.shutdown
    # would reset under a thread that is still reading from it.
    try:
        socket.socket.shutdown(connection, socket.SHUT_RDWR)
    except OSError:
        # The peer may have closed first, which leaves nothing to shut down.
        pass
