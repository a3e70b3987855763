"""A small SOCKS5 proxy on loopback with user name and password authentication.

It replaces QuotaGuard's SOCKS5 endpoint in tests: RFC 1928 CONNECT only, RFC 1929 user name and
password authentication (no other method is offered), and every upstream connection leaves from
127.0.0.2 and 127.0.0.3 in turn, like the HTTP proxy's egress pair. Only loopback destinations
are accepted, so the proxy can never reach beyond the test machine.
"""

from __future__ import annotations

import collections
import hmac
import ipaddress
import itertools
import logging
import selectors
import socket
import socketserver
import struct
import threading

from localworld.egress import EGRESS_ADDRESSES

__all__ = ["LocalSocksProxy"]

logger = logging.getLogger(__name__)

SOCKS_VERSION = 5
AUTH_VERSION = 1
METHOD_USERNAME_PASSWORD = 0x02
METHOD_NONE_ACCEPTABLE = 0xFF
COMMAND_CONNECT = 0x01
ADDRESS_IPV4 = 0x01
ADDRESS_DOMAIN = 0x03
ADDRESS_IPV6 = 0x04
REPLY_SUCCEEDED = 0x00
REPLY_GENERAL_FAILURE = 0x01
REPLY_NOT_ALLOWED = 0x02
REPLY_CONNECTION_REFUSED = 0x05
REPLY_COMMAND_NOT_SUPPORTED = 0x07
REPLY_ADDRESS_NOT_SUPPORTED = 0x08

# Bounds the handshake and idle tunnels, so a silent client cannot hold a thread for long.
IDLE_TIMEOUT_SECONDS = 30.0
UPSTREAM_CONNECT_TIMEOUT_SECONDS = 5.0
RELAY_CHUNK_BYTES = 64 * 1024


class _HandshakeError(Exception):
    """The client broke the protocol or failed authentication; the connection is closed."""


class LocalSocksProxy:
    """A threaded SOCKS5 server on 127.0.0.1 with a free port; see the module docstring."""

    def __init__(self, username: str, password: str):
        self.username = username
        self.password = password
        self._egress = itertools.cycle(EGRESS_ADDRESSES)
        self._lock = threading.Lock()
        self._tunnels: collections.Counter = collections.Counter()
        self._server: _SocksServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def egress_addresses(self) -> tuple[str, ...]:
        return EGRESS_ADDRESSES

    def url(self, *, username: str | None = None, password: str | None = None, scheme: str = "socks5h") -> str:
        """Return the proxy URL with percent-encoded credentials."""
        from urllib.parse import quote

        user = quote(username if username is not None else self.username, safe="")
        secret = quote(password if password is not None else self.password, safe="")
        return f"{scheme}://{user}:{secret}@127.0.0.1:{self.port}"

    def start(self) -> "LocalSocksProxy":
        self._server = _SocksServer(("127.0.0.1", 0), _SocksHandler, self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="socks-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def tunnels(self) -> collections.Counter:
        """Count the upstream connections opened so far, by egress address."""
        with self._lock:
            return collections.Counter(self._tunnels)

    def _next_egress(self) -> str:
        with self._lock:
            source = next(self._egress)
            self._tunnels[source] += 1
            return source

    def _credentials_match(self, username: bytes, password: bytes) -> bool:
        user_ok = hmac.compare_digest(username, self.username.encode("utf-8"))
        password_ok = hmac.compare_digest(password, self.password.encode("utf-8"))
        return user_ok and password_ok


class _SocksServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, handler_class, proxy: LocalSocksProxy):
        self.proxy = proxy
        super().__init__(address, handler_class)

    def handle_error(self, request, client_address) -> None:
        # Clients that hang up mid-handshake are routine in fault tests.
        logger.debug("SOCKS connection from %s ended with an error", client_address[0], exc_info=True)


class _SocksHandler(socketserver.BaseRequestHandler):
    server: _SocksServer

    def handle(self) -> None:
        client: socket.socket = self.request
        client.settimeout(IDLE_TIMEOUT_SECONDS)
        try:
            self._negotiate_method(client)
            self._authenticate(client)
            upstream = self._connect(client)
        except (_HandshakeError, OSError) as exc:
            logger.debug("SOCKS handshake failed: %s", exc)
            return
        with upstream:
            _relay(client, upstream)

    def _negotiate_method(self, client: socket.socket) -> None:
        version, count = _read_exactly(client, 2)
        if version != SOCKS_VERSION:
            raise _HandshakeError(f"unsupported SOCKS version {version}")
        methods = _read_exactly(client, count)
        if METHOD_USERNAME_PASSWORD not in methods:
            client.sendall(bytes([SOCKS_VERSION, METHOD_NONE_ACCEPTABLE]))
            raise _HandshakeError("the client offered no user name and password authentication")
        client.sendall(bytes([SOCKS_VERSION, METHOD_USERNAME_PASSWORD]))

    def _authenticate(self, client: socket.socket) -> None:
        version, username_length = _read_exactly(client, 2)
        if version != AUTH_VERSION:
            raise _HandshakeError(f"unsupported authentication version {version}")
        username = _read_exactly(client, username_length)
        (password_length,) = _read_exactly(client, 1)
        password = _read_exactly(client, password_length)
        if not self.server.proxy._credentials_match(username, password):
            client.sendall(bytes([AUTH_VERSION, 0x01]))
            raise _HandshakeError("wrong user name or password")
        client.sendall(bytes([AUTH_VERSION, 0x00]))

    def _connect(self, client: socket.socket) -> socket.socket:
        version, command, _reserved, address_type = _read_exactly(client, 4)
        if version != SOCKS_VERSION:
            raise _HandshakeError(f"unsupported SOCKS version {version}")
        host = _read_address(client, address_type)
        (port,) = struct.unpack("!H", _read_exactly(client, 2))
        if host is None:
            _reply(client, REPLY_ADDRESS_NOT_SUPPORTED)
            raise _HandshakeError(f"unsupported address type {address_type}")
        if command != COMMAND_CONNECT:
            _reply(client, REPLY_COMMAND_NOT_SUPPORTED)
            raise _HandshakeError(f"unsupported command {command}")

        address = _loopback_address(host)
        if address is None:
            _reply(client, REPLY_NOT_ALLOWED)
            raise _HandshakeError(f"destination {host!r} is not a loopback address")
        try:
            upstream = socket.create_connection(
                (address, port),
                timeout=UPSTREAM_CONNECT_TIMEOUT_SECONDS,
                source_address=(self.server.proxy._next_egress(), 0),
            )
        except OSError:
            _reply(client, REPLY_CONNECTION_REFUSED)
            raise
        upstream.settimeout(IDLE_TIMEOUT_SECONDS)
        bound_host, bound_port = upstream.getsockname()[:2]
        _reply(client, REPLY_SUCCEEDED, bound_host, bound_port)
        return upstream


def _read_exactly(connection: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            raise _HandshakeError("the client closed the connection during the handshake")
        data += chunk
    return data


def _read_address(client: socket.socket, address_type: int) -> str | None:
    if address_type == ADDRESS_IPV4:
        return socket.inet_ntop(socket.AF_INET, _read_exactly(client, 4))
    if address_type == ADDRESS_IPV6:
        return socket.inet_ntop(socket.AF_INET6, _read_exactly(client, 16))
    if address_type == ADDRESS_DOMAIN:
        (length,) = _read_exactly(client, 1)
        return _read_exactly(client, length).decode("ascii", errors="replace")
    return None


def _loopback_address(host: str) -> str | None:
    """Return ``host`` as a loopback IPv4 address, or None; only ``localhost`` is resolved."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    return str(address) if address.version == 4 and address.is_loopback else None


def _reply(client: socket.socket, code: int, host: str = "0.0.0.0", port: int = 0) -> None:
    client.sendall(bytes([SOCKS_VERSION, code, 0x00, ADDRESS_IPV4]) + socket.inet_aton(host) + struct.pack("!H", port))


def _relay(client: socket.socket, upstream: socket.socket) -> None:
    """Copy bytes both ways until either side closes or stays idle for the idle timeout."""
    peers = {client: upstream, upstream: client}
    with selectors.DefaultSelector() as selector:
        for connection in peers:
            selector.register(connection, selectors.EVENT_READ)
        while True:
            events = selector.select(timeout=IDLE_TIMEOUT_SECONDS)
            if not events:
                return
            for key, _mask in events:
                source = key.fileobj
                try:
                    chunk = source.recv(RELAY_CHUNK_BYTES)
                    if not chunk:
                        return
                    peers[source].sendall(chunk)
                except OSError:
                    return
