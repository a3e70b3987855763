"""Salesforce's OAuth endpoints: token, introspect and revoke, and their errors.

Each call here is one HTTP request without retries. The refresh protocol decides what to retry,
because only it can tell whether a retry could replay a rotated refresh token. Responses and
request bodies are never logged: both carry tokens.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import ssl
import traceback
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urlencode, urlsplit

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

from tokenkeeper import observability as obs
from tokenkeeper.errors import (
    ClientCredentialsError,
    ConfigurationError,
    EgressBlockedError,
    ProxyAuthenticationError,
    ProxyConnectionError,
    ProxyUrlError,
    ReauthorizationRequiredError,
    SalesforceHostError,
    SalesforceOAuthError,
    SalesforceResponseError,
    SalesforceUnavailableError,
    TokenBusyError,
)
from tokenkeeper.transport import PROXY_URL_NAME, ProxyUrl

__all__ = ["ClientCredentials", "TokenResponse", "SalesforceClient", "validate_token_host"]

TOKEN_PATH = "/services/oauth2/token"
INTROSPECT_PATH = "/services/oauth2/introspect"
REVOKE_PATH = "/services/oauth2/revoke"
LOGIN_HOSTS = frozenset({"login.salesforce.com", "test.salesforce.com"})
MY_DOMAIN_SUFFIX = ".my.salesforce.com"
# Larger token responses are not plausible; a bigger body is an error page or garbage.
MAX_RESPONSE_BYTES = 64 * 1024
# RFC 6749, appendix A: access and refresh tokens are 1*VSCHAR, printable ASCII 0x20 to 0x7E.
_VSCHAR = frozenset(chr(code) for code in range(0x20, 0x7F))
# Salesforce's tokens are about 100 characters long. Both tokens of a version are sealed by one
# KMS Encrypt call, whose plaintext limit is 4096 bytes, so longer tokens could not be stored.
MAX_TOKEN_CHARS = 2000


@dataclass(frozen=True)
class ClientCredentials:
    """The External Client App's consumer key and secret."""

    client_id: str
    client_secret: str = field(repr=False)


@dataclass(frozen=True)
class TokenResponse:
    """A successful token endpoint response. ``refresh_token`` and ``instance_url`` may be absent."""

    access_token: str = field(repr=False)
    refresh_token: str | None = field(repr=False)
    instance_url: str | None
    issued_at: str | None
    identity_url: str | None
    scope: str | None

    @property
    def org_id(self) -> str | None:
        return _identity_part(self.identity_url, -2)

    @property
    def user_id(self) -> str | None:
        return _identity_part(self.identity_url, -1)


def _identity_part(identity_url: str | None, index: int) -> str | None:
    if not identity_url:
        return None
    parts = identity_url.rstrip("/").split("/")
    return parts[index] if len(parts) >= 3 else None


def validate_token_host(host: str, *, allow_loopback: bool = False) -> str:
    """Return ``host`` if client credentials and tokens may be sent to it, else raise.

    Only Salesforce login hosts qualify: ``login.salesforce.com``, ``test.salesforce.com`` and My
    Domain hosts under ``my.salesforce.com``, sandboxes included. A loopback address with a port
    is accepted only when ``allow_loopback`` is set, which only the local emulator setup does.
    """
    if not isinstance(host, str) or not host:
        raise SalesforceHostError("The token host is missing; use login.salesforce.com, test.salesforce.com or a My Domain host.")
    normalized = host.strip().lower().rstrip(".")
    if normalized in LOGIN_HOSTS or (
        normalized.endswith(MY_DOMAIN_SUFFIX) and len(normalized) > len(MY_DOMAIN_SUFFIX) and _is_dns_name(normalized)
    ):
        return normalized
    if allow_loopback and _is_loopback_with_port(normalized):
        return normalized
    raise SalesforceHostError(
        f"The token host {host!r} is not a Salesforce login host; use login.salesforce.com, "
        "test.salesforce.com or the org's My Domain host (NAME.my.salesforce.com)."
    )


def _is_dns_name(host: str) -> bool:
    return all(label and label.replace("-", "").isalnum() for label in host.split("."))


def _is_loopback_with_port(host: str) -> bool:
    address, _, port = host.rpartition(":")
    if not port.isdigit():
        return False
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False


class SalesforceClient:
    """Send OAuth requests to Salesforce through one pool and translate the responses.

    ``credentials`` is a callable so that a rotated client secret is picked up from the secrets
    cache without rebuilding the client.
    """

    def __init__(
        self,
        pool: urllib3.PoolManager,
        credentials: Callable[[], ClientCredentials],
        *,
        proxy: ProxyUrl | None = None,
        allow_loopback_hosts: bool = False,
    ):
        self._pool = pool
        self._credentials = credentials
        self._proxy = proxy
        self._allow_loopback_hosts = allow_loopback_hosts

    def redeem_refresh_token(self, host: str, refresh_token: str) -> TokenResponse:
        """Redeem ``refresh_token`` once. Under rotation the old token is invalid from here on."""
        credentials = self._credentials()
        fields = {
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": credentials.client_id,
            "client_secret": credentials.client_secret,
            "format": "json",
        }
        return _token_response(self._post(host, TOKEN_PATH, fields))

    def exchange_code(self, host: str, code: str, *, code_verifier: str, redirect_uri: str) -> TokenResponse:
        """Exchange an authorization code for the first tokens of a chain (web server flow + PKCE)."""
        credentials = self._credentials()
        fields = {
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": code_verifier,
            "redirect_uri": redirect_uri,
            "client_id": credentials.client_id,
            "client_secret": credentials.client_secret,
            "format": "json",
        }
        return _token_response(self._post(host, TOKEN_PATH, fields))

    def introspect(self, host: str, token: str, *, token_type_hint: str = "access_token") -> dict:
        """Return the introspection fields (``active``, ``exp`` and others) of ``token``."""
        credentials = self._credentials()
        fields = {
            "token": token,
            "token_type_hint": token_type_hint,
            "client_id": credentials.client_id,
            "client_secret": credentials.client_secret,
        }
        body = self._post(host, INTROSPECT_PATH, fields)
        if not isinstance(body, dict) or not isinstance(body.get("active"), bool):
            raise SalesforceResponseError("The introspection response has no boolean 'active' field.")
        return body

    def revoke(self, host: str, token: str) -> None:
        """Revoke ``token``; revoking a refresh token also revokes its access tokens."""
        self._post(host, REVOKE_PATH, {"token": token}, expect_json=False)

    def fetch_egress_address(self, url: str) -> str:
        """Request an IP echo service through the proxy and return the source address it saw.

        The service must return ``{"ip": "<address>"}`` over HTTPS, as ``https://ip.quotaguard.com``
        does. No client credential is sent. A pool keeps tunnels alive, and a tunnel keeps its
        egress address, so a caller that wants to see every address uses a new client per call.
        """
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise ConfigurationError(f"The IP echo URL {url!r} is invalid; use an https:// URL such as https://ip.quotaguard.com.")
        host = parts.netloc.rpartition("@")[2]
        try:
            response = self._pool.request(
                "GET",
                url,
                headers={"Accept": "application/json"},
                redirect=False,
                preload_content=False,
            )
        except HTTPError as exc:
            raise self._translate_transport_error(exc, host) from None
        try:
            data = response.read(MAX_RESPONSE_BYTES + 1, decode_content=True)
        except (ProtocolError, ReadTimeoutError) as exc:
            raise SalesforceUnavailableError(f"The connection to {host} broke while reading the response ({type(exc).__name__}).") from None
        finally:
            response.release_conn()
        return _echoed_address(response.status, data, host)

    def _post(self, host: str, path: str, fields: dict, *, expect_json: bool = True):
        host = validate_token_host(host, allow_loopback=self._allow_loopback_hosts)
        url = f"https://{host}{path}"
        try:
            response = self._pool.request(
                "POST",
                url,
                body=urlencode(fields),
                headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
                redirect=False,
                preload_content=False,
            )
        except HTTPError as exc:
            raise self._translate_transport_error(exc, host) from None
        try:
            data = response.read(MAX_RESPONSE_BYTES + 1, decode_content=True)
        except (ProtocolError, ReadTimeoutError) as exc:
            raise SalesforceUnavailableError(
                f"The connection to {host} broke while reading the response ({type(exc).__name__}); "
                "Salesforce may have processed the request.",
                ambiguous=True,
            ) from None
        finally:
            response.release_conn()
        return _interpret(response.status, response.headers.get("Content-Type", ""), data, host, expect_json)

    def _translate_transport_error(self, exc: HTTPError, host: str) -> Exception:
        """Map a urllib3 failure to the product's error, deciding whether Salesforce may have acted.

        urllib3 reports some failures inside an established tunnel as ``ProxyError`` too (it
        resets its tunnel flag when the connection is closed), so the decision rests on
        the innermost cause: only a refused, unreachable or timed-out connection, or a tunnel the
        proxy declined, proves that the request never reached Salesforce. Anything else counts
        as ambiguous.
        """
        proxy_text = self._proxy.masked if self._proxy else "the proxy"
        causes = _causes(exc)
        detail = " ".join(str(cause) for cause in causes)

        if "Tunnel connection failed: 407" in detail:
            return ProxyAuthenticationError(
                f"The proxy {proxy_text} returned 407 Proxy Authentication Required: the user name "
                f"or password in {PROXY_URL_NAME} is wrong. Copy both from the QuotaGuard dashboard "
                "into the proxy URL secret."
            )
        if _is_tls_proxy_handshake_failure(self._proxy, causes):
            if _proxy_answered_plain_http(detail):
                return ProxyUrlError(
                    f"{PROXY_URL_NAME} uses the https:// scheme but {proxy_text} does not speak TLS; "
                    "use http:// for QuotaGuard Static, or the TLS endpoint QuotaGuard Shield gives."
                )
            return ProxyConnectionError(
                f"The TLS handshake with the proxy {proxy_text} failed ({_reason(causes)}), so nothing reached "
                f"Salesforce. {PROXY_URL_NAME} uses the https:// scheme, which needs a proxy that speaks TLS "
                "(QuotaGuard Shield); for QuotaGuard Static use http://."
            )
        # PySocks is optional (only the socks5 schemes need it), so its error is matched by name.
        if any(type(cause).__name__ == "SOCKS5AuthError" for cause in causes):
            return ProxyAuthenticationError(
                f"The SOCKS5 proxy {proxy_text} rejected the user name or password in {PROXY_URL_NAME}. "
                "Copy both from the QuotaGuard dashboard into the proxy URL secret."
            )
        if "Tunnel connection failed" in detail:
            return ProxyConnectionError(
                f"The proxy {proxy_text} declined to open a tunnel to {host} ({_tunnel_status(detail)}); "
                "nothing reached Salesforce. Check QuotaGuard's status page."
            )
        if any(isinstance(cause, _NOT_SENT) for cause in causes):
            return ProxyConnectionError(
                f"Could not connect through {proxy_text} to {host} ({_reason(causes)}); nothing reached "
                "Salesforce. Check the proxy host and port in the proxy URL secret."
            )
        if isinstance(exc, SSLError) or any(isinstance(cause, ssl.SSLCertVerificationError) for cause in causes):
            return ProxyConnectionError(
                f"TLS to {host} failed ({_reason(causes)}); the certificate could not be verified, so no "
                "credential was sent."
            )
        if _timed_out_in_tunnel(causes):
            return ProxyConnectionError(
                f"The proxy {proxy_text} did not respond to the tunnel request for {host} within the connect "
                "timeout; nothing reached Salesforce. Check QuotaGuard's status page."
            )
        if isinstance(exc, ReadTimeoutError) or any(isinstance(cause, ReadTimeoutError) for cause in causes):
            return SalesforceUnavailableError(
                f"{host} did not respond within the read timeout; Salesforce may have processed the request.",
                ambiguous=True,
            )
        return SalesforceUnavailableError(
            f"The connection to {host} broke after the request was sent ({_reason(causes)}); Salesforce "
            "may have processed the request.",
            ambiguous=True,
        )


# Failures that happen before any byte of the request can reach Salesforce.
_NOT_SENT = (ConnectTimeoutError, NewConnectionError, ConnectionRefusedError, socket.gaierror)
# Functions of urllib3 (2.x) and http.client that send CONNECT and read the proxy's status line.
_TUNNEL_FRAMES = frozenset({"_prepare_proxy", "_tunnel"})


def _timed_out_in_tunnel(causes: list[BaseException]) -> bool:
    """Tell whether a socket timeout struck while waiting for the proxy's CONNECT response.

    urllib3 reports that timeout as a ``ReadTimeoutError`` like one after the request was sent,
    so only the traceback shows that the request itself never left.
    """
    for cause in causes:
        if isinstance(cause, TimeoutError) and cause.__traceback__ is not None:
            if any(frame.name in _TUNNEL_FRAMES for frame in traceback.extract_tb(cause.__traceback__)):
                return True
    return False
# urllib3 (2.x) wraps a failure with this message only while the connection to the proxy itself
# is being set up: for an https:// proxy that includes the TLS handshake with the proxy.
_PROXY_SETUP_FAILED = "Unable to connect to proxy"
# Phrases of OpenSSL's error when a TLS client receives a plain HTTP response (urllib3 matches them too).
_PLAIN_HTTP_SIGNS = ("wrong version number", "wrong_version_number", "unknown protocol", "record layer failure")


def _is_tls_proxy_handshake_failure(proxy: ProxyUrl | None, causes: list[BaseException]) -> bool:
    """Tell whether the TLS handshake with an https:// proxy failed, before any tunnel existed.

    A plain HTTP proxy either responds to the TLS ClientHello with an HTTP error (OpenSSL then reports
    a wrong version number) or waits for a complete HTTP request line, so the handshake times out.
    """
    if proxy is None or proxy.scheme != "https":
        return False
    if not (causes and _PROXY_SETUP_FAILED in str(causes[0])):
        return False
    return any(isinstance(cause, (ssl.SSLError, SSLError, TimeoutError, socket.timeout)) for cause in causes[1:])


def _proxy_answered_plain_http(detail: str) -> bool:
    lowered = detail.lower()
    return any(sign in lowered for sign in _PLAIN_HTTP_SIGNS)


def _causes(exc: BaseException) -> list[BaseException]:
    """Return ``exc`` and the errors it wraps, outermost first."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain and len(chain) < 10:
        chain.append(current)
        reason = getattr(current, "reason", None)
        if isinstance(reason, BaseException):
            current = reason
        elif current.args and isinstance(current.args[-1], BaseException):
            current = current.args[-1]
        else:
            current = current.__cause__ or current.__context__
    return chain


def _echoed_address(status: int, data: bytes, host: str) -> str:
    if status == 407:
        raise ProxyAuthenticationError(
            f"The proxy returned 407 Proxy Authentication Required: the user name or password in {PROXY_URL_NAME} is wrong."
        )
    if status != 200:
        raise SalesforceResponseError(f"The IP echo service at {host} returned HTTP {status}; check the echo URL.")
    try:
        body = json.loads(data.decode("utf-8"))
        return str(ipaddress.ip_address(body["ip"]))
    except (UnicodeDecodeError, ValueError, TypeError, KeyError):
        raise SalesforceResponseError(
            f"The IP echo service at {host} did not return a JSON object like {{\"ip\": \"203.0.113.10\"}}."
        ) from None


def _tunnel_status(detail: str) -> str:
    _, _, status = detail.partition("Tunnel connection failed: ")
    return status.split(")")[0].split("'")[0].strip() or "no status"


def _reason(causes: list[BaseException]) -> str:
    """Name the innermost cause by its type, which carries no URL or credential."""
    return type(causes[-1]).__name__


def _interpret(status: int, content_type: str, data: bytes, host: str, expect_json: bool):
    if len(data) > MAX_RESPONSE_BYTES:
        raise SalesforceResponseError(f"{host} returned HTTP {status} with a body over {MAX_RESPONSE_BYTES} bytes.")
    if status >= 500 or status == 429:
        raise SalesforceUnavailableError(f"{host} returned HTTP {status}; the request will be retried.", ambiguous=True)
    if status == 200 and not expect_json:
        return None
    try:
        body = json.loads(data.decode("utf-8")) if data else None
    except (UnicodeDecodeError, ValueError):
        body = None
    if not isinstance(body, dict):
        raise SalesforceResponseError(
            f"{host} returned HTTP {status} with a body that is not a JSON object "
            f"(Content-Type {content_type or 'missing'}); a proxy or gateway error page is likely."
        )
    if status == 200:
        return body
    raise _oauth_error(status, body, host)


def _oauth_error(status: int, body: dict, host: str) -> Exception:
    error = body.get("error") if isinstance(body.get("error"), str) else ""
    description = body.get("error_description") if isinstance(body.get("error_description"), str) else ""
    lowered = description.lower()
    said = f"{error}: {description}" if description else error or f"HTTP {status}"

    if error == "invalid_grant" and "ip restricted" in lowered:
        return EgressBlockedError(
            f"Salesforce blocked the request by source address ({said}). Register both QuotaGuard static "
            "IPs on the External Client App's Refresh Token IP Allowlist, and check the request went "
            f"through the proxy in {PROXY_URL_NAME}."
        )
    if error == "invalid_grant" and "already being processed" in lowered:
        return TokenBusyError(f"Salesforce is still processing another redemption of this refresh token ({said}).")
    if error in {"invalid_client", "invalid_client_id"}:
        return ClientCredentialsError(
            f"Salesforce rejected the client credentials ({said}); check the consumer key and secret in "
            "the client credentials secret against the External Client App."
        )
    if error in {"inactive_user", "inactive_org"} or (
        error == "invalid_grant" and ("expired" in lowered or "authentication failure" in lowered or "revoked" in lowered)
    ):
        return ReauthorizationRequiredError(
            f"Salesforce no longer accepts this refresh token ({said}); the subscriber must authorize the app again.",
            error=error,
            error_description=description,
        )
    if error == "rate_limit_exceeded":
        return SalesforceUnavailableError(f"Salesforce rate-limited the request ({said}).", ambiguous=False)
    return SalesforceOAuthError(
        f"Salesforce rejected the request with HTTP {status} ({said}).",
        error=error,
        error_description=description,
        status=status,
    )


def _token_response(body: dict) -> TokenResponse:
    access_token = body.get("access_token")
    if access_token is None or access_token == "":
        raise SalesforceResponseError("The token response has no access_token.")
    _check_token(access_token, "access_token")
    # A missing refresh_token means rotation is off. A present but malformed one is rejected,
    # because keeping the old token would store one that Salesforce may already have rotated out.
    refresh_token = body.get("refresh_token")
    if refresh_token is not None:
        _check_token(refresh_token, "refresh_token")

    def optional_text(name: str) -> str | None:
        value = body.get(name)
        return value if isinstance(value, str) and value else None

    instance_url = optional_text("instance_url")
    if instance_url is not None and not _is_https_url(instance_url):
        # Callers send the access token to instance_url, so only an https URL replaces the stored one.
        obs.logger.warning("The token response's instance_url is not an https URL; the stored one is kept")
        instance_url = None
    return TokenResponse(
        access_token=access_token,
        refresh_token=refresh_token,
        instance_url=instance_url,
        issued_at=optional_text("issued_at"),
        identity_url=optional_text("id"),
        scope=optional_text("scope"),
    )


def _check_token(value, name: str) -> None:
    """Raise :class:`SalesforceResponseError` unless ``value`` has the form of an OAuth token."""
    if isinstance(value, str) and 0 < len(value) <= MAX_TOKEN_CHARS and set(value) <= _VSCHAR:
        return
    shape = f"a string of {len(value)} characters" if isinstance(value, str) else f"a JSON {_JSON_TYPES.get(type(value), 'value')}"
    raise SalesforceResponseError(
        f"The token response's {name} is {shape}, not a token of 1 to {MAX_TOKEN_CHARS} printable ASCII "
        "characters; a proxy or gateway may have altered the response."
    )


_JSON_TYPES = {bool: "boolean", int: "number", float: "number", list: "array", dict: "object"}


def _is_https_url(value: str) -> bool:
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme == "https" and bool(parts.hostname) and not parts.username and set(value) <= _VSCHAR
