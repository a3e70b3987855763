"""A proxy.py plugin that makes the local proxy behave like QuotaGuard Static's load-balanced pair.

Each upstream connection leaves from 127.0.0.2 and 127.0.0.3 in turn, so the Salesforce emulator
receives one of two fixed source addresses, as Salesforce receives one of the two static IPs.
Every tunnel is appended to the file named by ``LOCALWORLD_PROXY_LOG`` so tests can count tunnels at the proxy.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import socket
import threading

import proxy.core.connection.server as proxy_server_connection
from proxy.http.exception import HttpRequestRejected
from proxy.http.proxy import HttpProxyBasePlugin

EGRESS_ADDRESSES = ("127.0.0.2", "127.0.0.3")
LOG_ENVIRONMENT_VARIABLE = "LOCALWORLD_PROXY_LOG"

_next_address = itertools.cycle(EGRESS_ADDRESSES)
_lock = threading.Lock()


def _connect_from(addr, timeout=10.0, connect_timeout=10.0, source_address=None):
    """Open an upstream connection that honours ``source_address`` for IP literals too.

    proxy.py 2.4.10 drops the source address when the upstream host is an IP literal, which is
    what the emulator's URL contains, so the plugin supplies its own connect function.
    """
    connection = socket.create_connection(addr, timeout=connect_timeout, source_address=source_address)
    connection.settimeout(timeout)
    return connection


proxy_server_connection.new_socket_connection = _connect_from


class AlternatingEgressPlugin(HttpProxyBasePlugin):
    """Bind every upstream connection to the next egress address of the pair."""

    def resolve_dns(self, host: str, port: int):
        with _lock:
            source = next(_next_address)
        path = os.environ.get(LOG_ENVIRONMENT_VARIABLE)
        if path:
            with _lock, open(path, "a", encoding="utf-8") as log:
                log.write(f"{source} {host}:{port}\n")
        # Keep the name lookup to the system resolver; only the source address changes.
        return None, (source, 0)

    def before_upstream_connection(self, request):
        # The local world must never reach beyond this machine, so only loopback hosts are tunneled.
        host = (request.host or b"").decode("ascii", errors="replace")
        if not _is_loopback(host):
            raise HttpRequestRejected(status_code=403, reason=b"Forbidden: the local proxy serves loopback hosts only")
        return request

    def handle_client_request(self, request):
        return request


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
