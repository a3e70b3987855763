"""One entry point that starts every local stand-in, wires the product to them, and stops them.

    with LocalWorld() as world:
        world.seed_connection("org-1")
        runtime = world.runtime()
        token = runtime.refresher().get_token("org-1")

Everything listens on 127.0.0.1 with free ports: moto for AWS, proxy.py for QuotaGuard Static
(egress from 127.0.0.2 and 127.0.0.3), and the Salesforce emulator over HTTPS with a local CA.
:meth:`LocalWorld.start_tls_proxy` and :meth:`LocalWorld.start_socks_proxy` add, on first use, a
TLS proxy like QuotaGuard Shield and a SOCKS5 proxy, with the same credentials and egress pair.
"""

from __future__ import annotations

import json
import secrets
import shutil
import ssl
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import trustme

import localworld  # noqa: F401  (puts the shared code on sys.path)
from localworld.aws import LocalAws, create_token_table
from localworld.clock import OffsetClock
from localworld.forward_proxy import LocalProxy
from localworld.leakcheck import register_world
from localworld.salesforce import SalesforceEmulator
from localworld.socks import LocalSocksProxy
from tokenkeeper.config import Settings
from tokenkeeper.runtime import Runtime
from tokenkeeper.store import STATUS_ACTIVE, Connection

# moto keeps its data per process, so each world suffixes its resource names to stay apart from
# another world started earlier in the same process.
TABLE_NAME_PREFIX = "tokenkeeper-connections"
CLIENT_SECRET_NAME_PREFIX = "tokenkeeper/client-credentials"
PROXY_SECRET_NAME_PREFIX = "tokenkeeper/proxy-url"
PROXY_USERNAME = "qg-user"


@dataclass(frozen=True)
class Secrets:
    """The secret values one world uses; tests scan every captured log for them."""

    client_id: str
    client_secret: str
    proxy_password: str

    def values(self) -> list[str]:
        return [self.client_secret, self.proxy_password]


class LocalWorld:
    """Start and stop the local stand-ins together; see the module docstring."""

    def __init__(self, *, session_seconds: int = 7200, fast_settings: bool = True):
        self.clock = OffsetClock()
        self._suffix = secrets.token_hex(4)
        self.table_name = f"{TABLE_NAME_PREFIX}-{self._suffix}"
        self._session_seconds = session_seconds
        self._fast_settings = fast_settings
        self._workdir = Path(tempfile.mkdtemp(prefix="localworld-"))
        # Reserved URL characters in the password prove percent-decoding works end to end.
        self.secrets = Secrets(
            client_id="3MVG9localworld" + secrets.token_hex(8),
            client_secret="cs-" + secrets.token_hex(16),
            proxy_password=f"pw#{secrets.token_hex(6)}@:/{secrets.token_hex(6)}",
        )
        self.aws = LocalAws()
        self.proxy = LocalProxy(PROXY_USERNAME, self.secrets.proxy_password, workdir=self._workdir)
        self.salesforce: SalesforceEmulator | None = None
        self.tls_proxy: LocalProxy | None = None
        self.socks_proxy: LocalSocksProxy | None = None
        self._authority: trustme.CA | None = None
        self.ca_path = self._workdir / "ca.pem"
        self.key_id = ""
        self.client_secret_arn = ""
        self.proxy_secret_arn = ""
        self._started: list = []

    # Starting and stopping --------------------------------------------------------------------

    def __enter__(self) -> "LocalWorld":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> "LocalWorld":
        register_world(self)
        authority = trustme.CA()
        self._authority = authority
        authority.cert_pem.write_to_path(str(self.ca_path))
        server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        authority.issue_cert("127.0.0.1", "localhost").configure_cert(server_context)

        self.aws.start()
        self._started.append(self.aws)
        self.proxy.start()
        self._started.append(self.proxy)
        self.salesforce = SalesforceEmulator(
            ssl_context=server_context,
            clock=self.clock,
            session_seconds=self._session_seconds,
            allowed_source_addresses=self.proxy.egress_addresses,
        ).start()
        self._started.append(self.salesforce)
        self.salesforce.register_client(self.secrets.client_id, self.secrets.client_secret)
        self._provision_aws()
        return self

    def stop(self) -> None:
        while self._started:
            component = self._started.pop()
            component.stop()
        shutil.rmtree(self._workdir, ignore_errors=True)

    def start_tls_proxy(self) -> LocalProxy:
        """Start, once, proxy.py speaking TLS to its clients with a certificate from the local CA."""
        if self.tls_proxy is None:
            assert self._authority is not None
            workdir = self._workdir / "tls-proxy"
            workdir.mkdir()
            cert_file, key_file = workdir / "proxy-cert.pem", workdir / "proxy-key.pem"
            certificate = self._authority.issue_cert("127.0.0.1", "localhost")
            certificate.cert_chain_pems[0].write_to_path(str(cert_file))
            certificate.private_key_pem.write_to_path(str(key_file))
            proxy = LocalProxy(
                PROXY_USERNAME, self.secrets.proxy_password, workdir=workdir, cert_file=cert_file, key_file=key_file
            )
            proxy.start()
            self._started.append(proxy)
            self.tls_proxy = proxy
        return self.tls_proxy

    def start_socks_proxy(self) -> LocalSocksProxy:
        """Start, once, the SOCKS5 proxy with the world's proxy user name and password."""
        if self.socks_proxy is None:
            proxy = LocalSocksProxy(PROXY_USERNAME, self.secrets.proxy_password).start()
            self._started.append(proxy)
            self.socks_proxy = proxy
        return self.socks_proxy

    def _provision_aws(self) -> None:
        self.key_id = self.aws.client("kms").create_key(Description="tokenkeeper token encryption")["KeyMetadata"]["Arn"]
        create_token_table(self.aws.client("dynamodb"), self.table_name)
        secrets_client = self.aws.client("secretsmanager")
        self.client_secret_arn = secrets_client.create_secret(
            Name=f"{CLIENT_SECRET_NAME_PREFIX}-{self._suffix}",
            SecretString=json.dumps({"client_id": self.secrets.client_id, "client_secret": self.secrets.client_secret}),
        )["ARN"]
        self.proxy_secret_arn = secrets_client.create_secret(Name=f"{PROXY_SECRET_NAME_PREFIX}-{self._suffix}", SecretString=self.proxy.url())["ARN"]

    # Wiring the product -----------------------------------------------------------------------

    @property
    def token_host(self) -> str:
        """The emulator's host and port, stored on connections as their token host."""
        assert self.salesforce is not None
        return f"{self.salesforce.host}:{self.salesforce.port}"

    def environment(self) -> dict[str, str]:
        """Return the environment variables the deployed stack would set, aimed at this world."""
        environment = {
            "TOKENKEEPER_TABLE_NAME": self.table_name,
            "TOKENKEEPER_CLIENT_SECRET_ID": self.client_secret_arn,
            "TOKENKEEPER_PROXY_SECRET_ID": self.proxy_secret_arn,
            "TOKENKEEPER_TOKEN_KEY_ID": self.key_id,
            "TOKENKEEPER_CA_BUNDLE": str(self.ca_path),
            "TOKENKEEPER_ALLOW_LOOPBACK_HOSTS": "true",
            "TOKENKEEPER_EGRESS_ECHO_URL": f"{self.salesforce.base_url}/ip",
            "AWS_ENDPOINT_URL": self.aws.endpoint_url,
            "AWS_DEFAULT_REGION": self.aws.session.region_name,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
        }
        if self._fast_settings:
            # Short timeouts keep fault tests quick; the lease floor follows from them.
            environment.update(
                {
                    "TOKENKEEPER_CONNECT_TIMEOUT_SECONDS": "2",
                    "TOKENKEEPER_READ_TIMEOUT_SECONDS": "5",
                    "TOKENKEEPER_MAX_WAIT_SECONDS": "40",
                    "TOKENKEEPER_SECRETS_MAX_AGE_SECONDS": "1",
                }
            )
        return environment

    def settings(self, **overrides) -> Settings:
        return Settings.from_environment(self.environment(), **overrides)

    def runtime(self, **overrides) -> Runtime:
        """Build a container's runtime aimed at this world; each call is a new container."""
        return Runtime(
            self.settings(**overrides),
            session=self.aws.session,
            dynamodb_client=self.aws.client("dynamodb"),
            secrets_client=self.aws.client("secretsmanager"),
            kms_client=self.aws.client("kms"),
            clock=self.clock,
        )

    def set_proxy_url(self, url: str) -> None:
        """Store ``url`` as the proxy URL secret."""
        self.aws.client("secretsmanager").put_secret_value(SecretId=self.proxy_secret_arn, SecretString=url)

    def seed_connection(self, connection_id: str, *, idle_seconds: float = 0.0, runtime: Runtime | None = None) -> Connection:
        """Start a token chain at the emulator and store it as a new active connection.

        ``idle_seconds`` backdates the last redemption, as if the connection had been quiet.
        """
        assert self.salesforce is not None
        refresh_token = self.salesforce.create_refresh_token(self.secrets.client_id)
        runtime = runtime or self.runtime()
        now = self.clock()
        connection = Connection(
            connection_id=connection_id,
            status=STATUS_ACTIVE,
            version=1,
            token_host=self.token_host,
            refresh_token=refresh_token,
            instance_url=self.salesforce.base_url,
            last_redeemed_at=now - idle_seconds,
            created_at=now,
        )
        return runtime.store.create(connection)

    def wait_for(self, predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:
        """Poll ``predicate`` until it is true or ``timeout`` seconds pass; return its last value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(interval)
        return bool(predicate())
