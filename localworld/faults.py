"""Fault injection on loopback: a relay between boto3 and moto, and two broken forward proxies.

:class:`FaultRelay` listens on 127.0.0.1 with a free port and forwards HTTP/1.1 requests to an
upstream (the moto server). Tests queue :class:`Fault` rules. Each request takes the first rule
that matches it and still has a count left. A test can so break, for example, only the next two
``DynamoDB_20120810.UpdateItem`` calls whose body contains ``tokens = :tokens``.

The modes, and whether the request reaches moto:

- ``drop``: close the connection without an answer; the request is not forwarded.
- ``drop_after_forward``: forward, let moto apply it, then close without an answer. For a write
  this is the ambiguous case: the client cannot tell that it was applied.
- ``error_500``: answer HTTP 500 with a DynamoDB ``InternalServerError`` body; not forwarded.
- ``throttle``: answer HTTP 400 ``ProvisionedThroughputExceededException``; not forwarded.
- ``delay``: hold the request for ``delay_seconds``, then forward it (late, if the client has
  given up meanwhile, as a slow network delivers it).
- ``hold``: hold the request until :meth:`FaultRelay.release` or ``delay_seconds``, then close
  without forwarding. Used to stop a worker between two steps.

:class:`RejectingProxy` answers every CONNECT with 502 Bad Gateway, and :class:`SilentProxy`
accepts connections and never answers, as a hung proxy would.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
from dataclasses import dataclass, field
from urllib.parse import urlsplit

__all__ = ["Fault", "FaultRelay", "RejectingProxy", "SilentProxy", "MODES"]

MODES = ("drop", "drop_after_forward", "error_500", "throttle", "delay", "hold")
# Bounds every socket wait, so a stuck client or upstream cannot hold a relay thread for long.
SOCKET_TIMEOUT_SECONDS = 30.0
MAX_HEADER_BYTES = 64 * 1024
MAX_HOLD_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 5.0

_THROTTLE_BODY = {
    "__type": "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
    "message": "The level of configured provisioned throughput for the table was exceeded.",
}
_SERVER_ERROR_BODY = {
    "__type": "com.amazonaws.dynamodb.v20120810#InternalServerError",
    "message": "Internal server error",
}


@dataclass
class Fault:
    """One rule: apply ``mode`` to the next ``count`` matching requests.

    ``target`` matches the ``X-Amz-Target`` header exactly (None matches every request), and
    ``body_contains`` must occur in the request body when given.
    """

    mode: str
    count: int = 1
    target: str | None = None
    body_contains: bytes | None = None
    delay_seconds: float = 0.0
    applied: int = field(default=0, init=False)
    # Requests this rule took that reached the upstream (``delay`` and ``drop_after_forward``).
    forwarded: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown fault mode {self.mode!r}; use one of {', '.join(MODES)}")
        if self.count < 0:
            raise ValueError(f"count must be >= 0, got {self.count}")
        if not 0 <= self.delay_seconds <= MAX_HOLD_SECONDS:
            raise ValueError(f"delay_seconds must be between 0 and {MAX_HOLD_SECONDS:g}, got {self.delay_seconds}")

    def matches(self, target: str, body: bytes) -> bool:
        if self.applied >= self.count:
            return False
        if self.target is not None and self.target != target:
            return False
        return self.body_contains is None or self.body_contains in body


@dataclass
class _Request:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def target(self) -> str:
        for name, value in self.headers:
            if name.lower() == "x-amz-target":
                return value
        return ""


class FaultRelay:
    """A TCP relay on 127.0.0.1 that forwards HTTP requests upstream unless a fault rule applies."""

    def __init__(self, upstream_url: str):
        parts = urlsplit(upstream_url)
        if parts.hostname is None or not parts.hostname.startswith("127."):
            raise ValueError(f"the upstream must be a loopback URL, got {upstream_url!r}")
        self._upstream = (parts.hostname, parts.port or 80)
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._stopping = threading.Event()
        self._released = threading.Event()
        self._held = threading.Condition(self._lock)
        self._holding = 0
        self._connections: set[socket.socket] = set()
        self.forwarded: list[str] = []
        self.url = ""

    # Lifecycle --------------------------------------------------------------------------------

    def start(self) -> "FaultRelay":
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._accept_thread = threading.Thread(target=self._accept_loop, name="fault-relay", daemon=True)
        self._accept_thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._released.set()
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            _close_quietly(connection)
        if self._accept_thread is not None:
            self._accept_thread.join(STOP_TIMEOUT_SECONDS)

    def __enter__(self) -> "FaultRelay":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # Rules ------------------------------------------------------------------------------------

    def inject(self, mode: str, *, count: int = 1, target: str | None = None, body_contains: str | bytes | None = None, delay_seconds: float = 0.0) -> Fault:
        """Queue a fault rule behind the earlier ones and return it; ``applied`` counts its uses."""
        if isinstance(body_contains, str):
            body_contains = body_contains.encode("utf-8")
        fault = Fault(mode, count, target, body_contains, delay_seconds)
        if mode == "hold":
            self._released.clear()
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        """Forget every rule; requests held by ``hold`` are let go."""
        with self._lock:
            self._faults.clear()
        self.release()

    def release(self) -> None:
        """Let every request held by a ``hold`` rule end (closed, not forwarded)."""
        self._released.set()

    def wait_until_holding(self, timeout: float = 10.0) -> bool:
        """Wait until a ``hold`` rule holds a request; return False on timeout."""
        with self._held:
            return self._held.wait_for(lambda: self._holding > 0, timeout=timeout)

    # Serving ----------------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                client, _address = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            client.settimeout(SOCKET_TIMEOUT_SECONDS)
            with self._lock:
                self._connections.add(client)
            threading.Thread(target=self._serve, args=(client,), name="fault-relay-connection", daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream: http.client.HTTPConnection | None = None
        reader = client.makefile("rb")
        try:
            while not self._stopping.is_set():
                request = _read_request(reader)
                if request is None:
                    return
                fault = self._take_fault(request)
                mode = fault.mode if fault else "pass"

                if mode == "drop":
                    return
                if mode in ("error_500", "throttle"):
                    status, body = (500, _SERVER_ERROR_BODY) if mode == "error_500" else (400, _THROTTLE_BODY)
                    client.sendall(_response_bytes(status, [("Content-Type", "application/x-amz-json-1.0")], json.dumps(body).encode()))
                    continue
                if mode == "hold":
                    self._hold(fault.delay_seconds or MAX_HOLD_SECONDS)
                    return
                if mode == "delay" and self._stopping.wait(fault.delay_seconds):
                    return

                if upstream is None:
                    upstream = http.client.HTTPConnection(*self._upstream, timeout=SOCKET_TIMEOUT_SECONDS)
                status, headers, body = _forward(upstream, request)
                with self._lock:
                    self.forwarded.append(request.target)
                    if fault is not None:
                        fault.forwarded += 1
                if mode == "drop_after_forward":
                    return
                client.sendall(_response_bytes(status, headers, body))
        except (OSError, ValueError, http.client.HTTPException):
            # A client or upstream that hung up or sent garbage ends only its own connection.
            return
        finally:
            with self._lock:
                self._connections.discard(client)
            if upstream is not None:
                upstream.close()
            reader.close()
            _close_quietly(client)

    def _take_fault(self, request: _Request) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(request.target, request.body):
                    fault.applied += 1
                    return fault
        return None

    def _hold(self, seconds: float) -> None:
        with self._held:
            self._holding += 1
            self._held.notify_all()
        try:
            self._released.wait(seconds)
        finally:
            with self._held:
                self._holding -= 1


def _read_request(reader) -> _Request | None:
    """Read one HTTP/1.1 request with a Content-Length body; None when the client hung up."""
    request_line = reader.readline(MAX_HEADER_BYTES)
    if not request_line:
        return None
    method, path, _version = request_line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    headers: list[tuple[str, str]] = []
    while True:
        line = reader.readline(MAX_HEADER_BYTES)
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))
    length = int(next((value for name, value in headers if name.lower() == "content-length"), "0"))
    body = reader.read(length) if length else b""
    return _Request(method, path, headers, body)


def _forward(upstream: http.client.HTTPConnection, request: _Request) -> tuple[int, list[tuple[str, str]], bytes]:
    skipped = {"connection", "content-length", "transfer-encoding", "host"}
    upstream.putrequest(request.method, request.path, skip_host=True, skip_accept_encoding=True)
    upstream.putheader("Host", f"{upstream.host}:{upstream.port}")
    for name, value in request.headers:
        if name.lower() not in skipped:
            upstream.putheader(name, value)
    upstream.putheader("Content-Length", str(len(request.body)))
    upstream.endheaders(request.body)
    response = upstream.getresponse()
    body = response.read()
    headers = [(name, value) for name, value in response.getheaders() if name.lower() not in skipped]
    return response.status, headers, body


def _response_bytes(status: int, headers: list[tuple[str, str]], body: bytes) -> bytes:
    reason = http.client.responses.get(status, "Unknown")
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{name}: {value}" for name, value in headers]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _close_quietly(connection: socket.socket) -> None:
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        # The peer may have closed first.
        pass
    connection.close()


class _TinyProxy:
    """A forward proxy on 127.0.0.1 that reads each request head and hands the socket to ``_answer``."""

    def __init__(self) -> None:
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self.connects = 0
        self.port = 0

    def url(self, username: str = "user", password: str = "password") -> str:
        return f"http://{username}:{password}@127.0.0.1:{self.port}"

    def start(self):
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, name=type(self).__name__, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            _close_quietly(connection)
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT_SECONDS)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                client, _address = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            client.settimeout(SOCKET_TIMEOUT_SECONDS)
            with self._lock:
                self._connections.add(client)
                self.connects += 1
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        try:
            self._answer(client)
        except OSError:
            pass
        finally:
            with self._lock:
                self._connections.discard(client)
            _close_quietly(client)

    def _answer(self, client: socket.socket) -> None:
        raise NotImplementedError


class RejectingProxy(_TinyProxy):
    """Answer every CONNECT with 502 Bad Gateway, as a proxy whose upstream is down does."""

    def _answer(self, client: socket.socket) -> None:
        reader = client.makefile("rb")
        try:
            while reader.readline(MAX_HEADER_BYTES) not in (b"\r\n", b"\n", b""):
                pass
        finally:
            reader.close()
        client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


class SilentProxy(_TinyProxy):
    """Accept connections and never answer, until the client gives up or the proxy stops."""

    def _answer(self, client: socket.socket) -> None:
        self._stopping.wait(SOCKET_TIMEOUT_SECONDS)
