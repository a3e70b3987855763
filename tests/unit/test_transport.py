"""Proxy URL validation and the masking that keeps the password out of messages."""

from __future__ import annotations

import pytest

from tokenkeeper.errors import ProxyUrlError
from tokenkeeper.transport import ProxyUrl, build_pool

PASSWORD = "S3cret-Value"


def test_proxy_url_parses_quotaguard_static_url():
    proxy = ProxyUrl.parse(f"http://qg-user:{PASSWORD}@127.0.0.1:9293")

    assert (proxy.scheme, proxy.host, proxy.port) == ("http", "127.0.0.1", 9293)
    assert (proxy.username, proxy.password) == ("qg-user", PASSWORD)


def test_proxy_url_percent_decodes_credentials():
    proxy = ProxyUrl.parse("http://qg%40user:p%23w%40rd%3A%2Fx@127.0.0.1:9293")

    assert proxy.username == "qg@user"
    assert proxy.password == "p#w@rd:/x"


def test_proxy_url_masks_password_everywhere():
    proxy = ProxyUrl.parse(f"http://qg-user:{PASSWORD}@127.0.0.1:9293")

    assert proxy.masked == "http://qg-user:****@127.0.0.1:9293"
    for text in (proxy.masked, str(proxy), repr(proxy), proxy.endpoint):
        assert PASSWORD not in text


def test_proxy_url_default_port_per_scheme():
    assert ProxyUrl.parse("http://u:p@127.0.0.1").port == 9293
    assert ProxyUrl.parse("socks5h://u:p@127.0.0.1").port == 1080


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", "empty"),
        ('{"url": "http://u:p@127.0.0.1:9293"}', "stored as JSON"),
        ("qg-user:pw@127.0.0.1:9293", "no scheme"),
        ("ftp://u:p@127.0.0.1:21", "unsupported scheme 'ftp'"),
        ("http://127.0.0.1:9293", "no credentials"),
        ("http://user@127.0.0.1:9293", "no credentials"),
        ("http://:pw@127.0.0.1:9293", "empty user name or password"),
        ("http://u:pw@127.0.0.1:99999", "invalid port"),
        ("http://u:pw@127.0.0.1:abc", "invalid port"),
        ("http://u:pw@:9293", "no host"),
    ],
)
def test_proxy_url_rejects_invalid_value(raw, expected):
    with pytest.raises(ProxyUrlError) as caught:
        ProxyUrl.parse(raw)

    assert expected in str(caught.value)
    assert "QUOTAGUARDSTATIC_URL" in str(caught.value)


@pytest.mark.parametrize("password", ["pa#ss", "pa@ss", "pa:ss", "pa/ss"])
def test_proxy_url_unencoded_reserved_character_names_encoding(password):
    with pytest.raises(ProxyUrlError) as caught:
        ProxyUrl.parse(f"http://qg-user:{password}@127.0.0.1:9293")

    message = str(caught.value)
    assert "percent-encode" in message.lower()
    assert password not in message


def test_build_pool_sends_basic_proxy_authorization():
    proxy = ProxyUrl.parse("http://qg-user:p%40ss@127.0.0.1:9293")

    pool = build_pool(proxy, connect_timeout=1, read_timeout=2)

    assert pool.proxy_headers["proxy-authorization"] == "Basic cWctdXNlcjpwQHNz"
    assert pool.connection_pool_kw["timeout"].connect_timeout == 1
    assert pool.connection_pool_kw["timeout"].read_timeout == 2
    assert pool.connection_pool_kw["cert_reqs"] == "CERT_REQUIRED"
