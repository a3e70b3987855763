"""The HTTP transport to Salesforce: a proxy URL parser and the urllib3 pool built from it.

QuotaGuard gives a proxy URL with Basic credentials in it (``QUOTAGUARDSTATIC_URL``). urllib3 does
not read credentials from a proxy URL by itself, so they are percent-decoded here and sent as a
``Proxy-Authorization`` header on the CONNECT request. Nothing in this module puts the password in
a message: :attr:`ProxyUrl.masked` is the only form that is ever logged or raised.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import urllib3
from urllib3.util import Timeout

from tokenkeeper.errors import ProxyUrlError

__all__ = ["PROXY_URL_NAME", "ProxyUrl", "build_pool"]

# The name operators know the value by, used in every message about it.
PROXY_URL_NAME = "QUOTAGUARDSTATIC_URL"

SUPPORTED_SCHEMES = {
    "http": "QuotaGuard Static: plain HTTP to the proxy, HTTPS tunneled with CONNECT",
    "https": "QuotaGuard Shield: TLS to the proxy itself, HTTPS tunneled inside it",
    "socks5": "SOCKS5, the proxy resolves nothing",
    "socks5h": "SOCKS5 with host names resolved by the proxy",
}
DEFAULT_PORTS = {"http": 9293, "https": 9294, "socks5": 1080, "socks5h": 1080}
RESERVED_IN_CREDENTIALS = "# @ : /"


@dataclass(frozen=True)
class ProxyUrl:
    """A validated proxy URL with percent-decoded credentials."""

    scheme: str
    host: str
    port: int
    username: str = field(repr=False)
    password: str = field(repr=False)

    @classmethod
    def parse(cls, raw: str) -> "ProxyUrl":
        """Validate ``raw`` and split it; raise :class:`ProxyUrlError` that names what to fix."""
        if not isinstance(raw, str) or not raw.strip():
            raise ProxyUrlError(f"{PROXY_URL_NAME} is empty; store the proxy URL from the QuotaGuard dashboard.")
        raw = raw.strip()
        if raw.startswith("{"):
            raise ProxyUrlError(
                f"{PROXY_URL_NAME} is stored as JSON; store the plain URL http://USER:PASSWORD@HOST:PORT as the "
                "secret's whole value."
            )
        scheme, separator, _rest = raw.partition("://")
        if not separator:
            raise ProxyUrlError(
                f"{PROXY_URL_NAME} has no scheme; write it as http://USER:PASSWORD@HOST:PORT."
            )
        scheme = scheme.lower()
        if scheme not in SUPPORTED_SCHEMES:
            raise ProxyUrlError(
                f"{PROXY_URL_NAME} uses the unsupported scheme {scheme!r}; use one of "
                f"{', '.join(sorted(SUPPORTED_SCHEMES))}."
            )

        parts = urlsplit(raw)
        userinfo, at, hostport = parts.netloc.rpartition("@")
        # A reserved character left unencoded in the password moves the rest of the URL into the
        # path, query or fragment, or leaves several '@' or ':' in the user information.
        if parts.path not in ("", "/") or parts.query or parts.fragment or "@" in userinfo or userinfo.count(":") > 1:
            raise ProxyUrlError(
                f"{PROXY_URL_NAME} could not be split into credentials, host and port: the user name "
                f"or password likely contains one of {RESERVED_IN_CREDENTIALS} unencoded. Percent-encode "
                "them (# as %23, @ as %40, : as %3A, / as %2F)."
            )
        if not at or ":" not in userinfo:
            raise ProxyUrlError(
                f"{PROXY_URL_NAME} has no credentials; write it as {scheme}://USER:PASSWORD@HOST:PORT "
                "with the user name and password from the QuotaGuard dashboard."
            )
        encoded_user, _, encoded_password = userinfo.partition(":")
        if not encoded_user or not encoded_password:
            raise ProxyUrlError(f"{PROXY_URL_NAME} has an empty user name or password.")

        host, port = _split_host_port(hostport, scheme)
        return cls(scheme=scheme, host=host, port=port, username=unquote(encoded_user), password=unquote(encoded_password))

    @property
    def masked(self) -> str:
        """The URL with the password replaced, safe for logs and messages."""
        return f"{self.scheme}://{self.username}:****@{self._host_for_url}:{self.port}"

    @property
    def endpoint(self) -> str:
        """The URL without credentials, as urllib3 takes it."""
        return f"{self.scheme}://{self._host_for_url}:{self.port}"

    @property
    def _host_for_url(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    def __str__(self) -> str:
        return self.masked


def _split_host_port(hostport: str, scheme: str) -> tuple[str, int]:
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = hostport.partition(":")
    if not host:
        raise ProxyUrlError(f"{PROXY_URL_NAME} has no host; write it as {scheme}://USER:PASSWORD@HOST:PORT.")
    if not port_text:
        return host, DEFAULT_PORTS[scheme]
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ProxyUrlError(f"{PROXY_URL_NAME} has the invalid port {port_text!r}; use a number from 1 to 65535.")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ProxyUrlError(f"{PROXY_URL_NAME} has the invalid host {host!r}.") from None
    return host, int(port_text)


def build_pool(
    proxy: ProxyUrl,
    *,
    connect_timeout: float,
    read_timeout: float,
    ca_certs: str | None = None,
    maxsize: int = 4,
) -> urllib3.PoolManager:
    """Build the pool manager that sends every Salesforce request through ``proxy``.

    Retries are off: the caller decides what may be retried, because a retried token request
    after a read timeout can replay a rotated refresh token. TLS to Salesforce is always verified;
    ``ca_certs`` replaces the system bundle only where a private certificate authority is in use.
    """
    timeout = Timeout(connect=connect_timeout, read=read_timeout)
    common = {
        "timeout": timeout,
        "retries": False,
        "cert_reqs": "CERT_REQUIRED",
        "ca_certs": ca_certs,
        "maxsize": maxsize,
        "block": False,
    }
    if proxy.scheme.startswith("socks5"):
        try:
            from urllib3.contrib.socks import SOCKSProxyManager
        except ImportError:
            raise ProxyUrlError(
                f"{PROXY_URL_NAME} uses the {proxy.scheme}:// scheme, which needs the PySocks package; "
                "install it next to urllib3 (pip install 'urllib3[socks]'), or use an http:// or https:// proxy URL."
            ) from None

        return SOCKSProxyManager(
            f"{proxy.scheme}://{proxy._host_for_url}:{proxy.port}",
            username=proxy.username,
            password=proxy.password,
            **common,
        )

    proxy_headers = urllib3.make_headers(proxy_basic_auth=f"{proxy.username}:{proxy.password}")
    extra = {}
    if proxy.scheme == "https" and ca_certs:
        extra["proxy_ssl_context"] = _proxy_ssl_context(ca_certs)
    return urllib3.ProxyManager(proxy.endpoint, proxy_headers=proxy_headers, **common, **extra)


def _proxy_ssl_context(ca_certs: str):
    from urllib3.util.ssl_ import create_urllib3_context

    context = create_urllib3_context()
    context.load_verify_locations(cafile=ca_certs)
    return context
