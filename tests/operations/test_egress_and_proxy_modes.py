"""check-egress against the emulator's IP echo, and redemption through each proxy mode."""

from __future__ import annotations

import socket
import sys
import threading

import pytest

from tokenkeeper.errors import ProxyAuthenticationError, ProxyConnectionError, ProxyUrlError
from tokenkeeper.transport import ProxyUrl, build_pool
from tokenkeeper.salesforce import SalesforceClient


@pytest.fixture
def echo_url(fresh_world):
    return f"{fresh_world.salesforce.base_url}/ip"


# check-egress ---------------------------------------------------------------------------------


def test_check_egress_sees_both_addresses(fresh_world, operations, echo_url, progress):
    result = operations.check_egress(expected=["127.0.0.2", "127.0.0.3"], url=echo_url, attempts=6)

    assert result["status"] == "ok"
    assert result["addresses"] == {"127.0.0.2": 3, "127.0.0.3": 3}
    assert result["missing"] == []
    assert result["unexpected"] == []
    assert len(progress.lines) == 6
    assert progress.lines[-1][:2] == (6, 6)


def test_check_egress_warns_when_one_address_seen(operations, echo_url):
    result = operations.check_egress(expected=["127.0.0.2", "127.0.0.3"], url=echo_url, attempts=1)

    assert result["status"] == "warning"
    assert len(result["addresses"]) == 1
    assert len(result["missing"]) == 1
    assert "did not" in result["message"]


def test_check_egress_fails_on_unexpected_address(operations, echo_url):
    result = operations.check_egress(expected=["127.0.0.2", "127.0.0.9"], url=echo_url, attempts=4)

    assert result["status"] == "failed"
    assert result["unexpected"] == ["127.0.0.3"]
    assert "127.0.0.3" in result["message"]


def test_check_egress_wrong_proxy_password_raises(fresh_world, operations, echo_url):
    fresh_world.set_proxy_url(fresh_world.proxy.url(password="wrong-password"))
    fresh_world.wait_for(lambda: fresh_world.runtime().secrets.proxy_url().password == "wrong-password")

    with pytest.raises(ProxyAuthenticationError):
        _operations_for(fresh_world).check_egress(expected=["127.0.0.2", "127.0.0.3"], url=echo_url, attempts=3)


def _operations_for(world):
    from tokenkeeper.operations import Operations

    return Operations(world.runtime(), clock=world.clock, progress=lambda *_: None)


# Proxy modes ----------------------------------------------------------------------------------


def _redeem_through(world, proxy_url: str, connection_id: str):
    world.set_proxy_url(proxy_url)
    world.seed_connection(connection_id)
    world.salesforce.reset_stats()
    token = world.runtime().refresher().get_token(connection_id, force=True)
    return token, world.salesforce.stats


@pytest.mark.parametrize("mode", ["http", "https", "socks5h", "socks5"])
def test_redemption_through_each_proxy_mode(fresh_world, new_id, mode):
    # GIVEN the proxy URL secret for QuotaGuard Static, Shield (TLS to the proxy) or SOCKS5
    if mode == "http":
        proxy = fresh_world.proxy
        url = proxy.url()
    elif mode == "https":
        proxy = fresh_world.start_tls_proxy()
        url = proxy.url()
        assert url.startswith("https://")
    else:
        proxy = fresh_world.start_socks_proxy()
        url = proxy.url(scheme=mode)
    tunnels_before = sum(proxy.tunnels().values())

    # WHEN a refresh token is redeemed
    token, stats = _redeem_through(fresh_world, url, new_id())

    # THEN the emulator saw it from one of the egress addresses, through that proxy
    assert token.source == "redeemed"
    assert stats.redemptions == 1
    assert set(stats.by_source) <= set(fresh_world.proxy.egress_addresses)
    assert sum(stats.by_source.values()) == 1
    assert sum(proxy.tunnels().values()) > tunnels_before


@pytest.mark.parametrize("mode", ["https", "socks5h"])
def test_check_egress_through_each_proxy_mode(fresh_world, echo_url, mode):
    proxy = fresh_world.start_tls_proxy() if mode == "https" else fresh_world.start_socks_proxy()
    fresh_world.set_proxy_url(proxy.url() if mode == "https" else proxy.url(scheme=mode))

    result = _operations_for(fresh_world).check_egress(expected=["127.0.0.2", "127.0.0.3"], url=echo_url, attempts=4)

    assert result["status"] == "ok"
    assert result["addresses"] == {"127.0.0.2": 2, "127.0.0.3": 2}


def test_socks_wrong_password_is_proxy_authentication_error(fresh_world, echo_url):
    socks_proxy = fresh_world.start_socks_proxy()
    fresh_world.set_proxy_url(socks_proxy.url(password="wrong-password"))

    with pytest.raises(ProxyAuthenticationError) as caught:
        fresh_world.runtime().salesforce().fetch_egress_address(echo_url)

    assert "socks5h://qg-user:****@" in caught.value.message


# https:// pointed at a plain HTTP proxy --------------------------------------------------------


def _client_for(world, proxy_url: str) -> SalesforceClient:
    proxy = ProxyUrl.parse(proxy_url)
    pool = build_pool(proxy, connect_timeout=1, read_timeout=2, ca_certs=str(world.ca_path))
    return SalesforceClient(pool, lambda: None, proxy=proxy, allow_loopback_hosts=True)


def test_https_scheme_on_silent_plain_proxy_names_scheme(fresh_world, echo_url):
    # proxy.py waits for a complete HTTP request line, so the TLS handshake times out.
    client = _client_for(fresh_world, fresh_world.proxy.url(scheme="https"))

    with pytest.raises(ProxyConnectionError) as caught:
        client.fetch_egress_address(echo_url)

    message = caught.value.message
    assert "https://" in message
    assert "use http://" in message
    assert "nothing reached Salesforce" in message


class _PlainHttpResponder:
    """A loopback server that responds to anything with an HTTP 400, as many plain proxies do."""

    def __init__(self) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self._socket.settimeout(10)
        try:
            connection, _ = self._socket.accept()
        except OSError:
            return
        with connection:
            connection.settimeout(5)
            try:
                connection.recv(4096)
                connection.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            except OSError:
                pass

    def close(self) -> None:
        self._socket.close()
        self._thread.join(timeout=10)


def test_https_scheme_on_responding_plain_proxy(fresh_world, echo_url):
    responder = _PlainHttpResponder()
    try:
        client = _client_for(fresh_world, f"https://qg-user:secret-value@127.0.0.1:{responder.port}")

        with pytest.raises(ProxyUrlError) as caught:
            client.fetch_egress_address(echo_url)
    finally:
        responder.close()

    message = caught.value.message
    assert "https:// scheme" in message
    assert "does not speak TLS" in message
    assert "secret-value" not in message


def test_socks_without_pysocks_names_package(monkeypatch):
    # A None entry in sys.modules makes the import fail, as in a layer without PySocks.
    monkeypatch.setitem(sys.modules, "urllib3.contrib.socks", None)
    proxy = ProxyUrl.parse("socks5h://qg-user:secret-value@127.0.0.1:1080")

    with pytest.raises(ProxyUrlError) as caught:
        build_pool(proxy, connect_timeout=1, read_timeout=1)

    assert "PySocks" in caught.value.message
    assert "socks5h://" in caught.value.message
