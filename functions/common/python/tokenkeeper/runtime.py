"""Build the product's objects once per container from :class:`~tokenkeeper.config.Settings`.

Clients are built lazily on first use and reused by every later invocation of a warm container.
Every builder takes injected boto3 clients, so the local world and tests pass clients aimed at
their own endpoints.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Generic, TypeVar

import boto3
from botocore.config import Config

from tokenkeeper.config import Settings
from tokenkeeper.crypto import KmsTokenCipher
from tokenkeeper.refresher import TokenRefresher
from tokenkeeper.salesforce import ClientCredentials, SalesforceClient
from tokenkeeper.secrets import SecretSource
from tokenkeeper.store import ConnectionStore
from tokenkeeper.transport import ProxyUrl, build_pool

__all__ = ["Runtime", "ContainerSlot"]

# Short AWS timeouts with the SDK's own retries, so a slow DynamoDB response cannot use up the lease.
AWS_CLIENT_CONFIG = Config(
    connect_timeout=2,
    read_timeout=5,
    retries={"max_attempts": 3, "mode": "standard"},
    max_pool_connections=64,
)
# Connections kept open per Salesforce host; a caller running N redemptions at once passes N.
DEFAULT_POOL_MAXSIZE = 4


class Runtime:
    """The container's shared clients: AWS clients, secrets, the proxy pool and the refresher."""

    def __init__(
        self,
        settings: Settings,
        *,
        session: boto3.session.Session | None = None,
        dynamodb_client=None,
        secrets_client=None,
        kms_client=None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        pool_maxsize: int = DEFAULT_POOL_MAXSIZE,
    ):
        self.settings = settings
        self._pool_maxsize = pool_maxsize
        session = session or boto3.session.Session()
        self._dynamodb = dynamodb_client or session.client("dynamodb", config=AWS_CLIENT_CONFIG)
        self._kms = kms_client or session.client("kms", config=AWS_CLIENT_CONFIG)
        secrets_client = secrets_client or session.client("secretsmanager", config=AWS_CLIENT_CONFIG)
        self.secrets = SecretSource(
            secrets_client,
            client_secret_id=settings.client_secret_id,
            proxy_secret_id=settings.proxy_secret_id,
            max_age_seconds=settings.secrets_max_age_seconds,
        )
        self.store = ConnectionStore(self._dynamodb, settings.table_name, KmsTokenCipher(self._kms, settings.token_key_id))
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._salesforce: SalesforceClient | None = None
        self._proxy: ProxyUrl | None = None
        self._refresher: TokenRefresher | None = None

    @property
    def dynamodb(self):
        return self._dynamodb

    def salesforce(self) -> SalesforceClient:
        """Return the Salesforce client, rebuilding its pool when the proxy URL secret changed."""
        proxy = self.secrets.proxy_url()
        with self._lock:
            if self._salesforce is None or proxy != self._proxy:
                pool = build_pool(
                    proxy,
                    connect_timeout=self.settings.connect_timeout_seconds,
                    read_timeout=self.settings.read_timeout_seconds,
                    ca_certs=self.settings.ca_bundle,
                    maxsize=self._pool_maxsize,
                )
                self._salesforce = SalesforceClient(
                    pool,
                    self.client_credentials,
                    proxy=proxy,
                    allow_loopback_hosts=self.settings.allow_loopback_hosts,
                )
                self._proxy = proxy
            return self._salesforce

    def client_credentials(self) -> ClientCredentials:
        return self.secrets.client_credentials()

    def refresher(self) -> TokenRefresher:
        """Return the container's refresher, bound to the current Salesforce client."""
        # Building the Salesforce client first validates the proxy URL at the container's first use.
        self.salesforce()
        with self._lock:
            if self._refresher is None:
                self._refresher = TokenRefresher(
                    self.store, _LiveSalesforce(self), self.settings, clock=self._clock, sleep=self._sleep
                )
            return self._refresher


class _LiveSalesforce:
    """Forward each call to the runtime's current Salesforce client, so a new proxy URL takes effect."""

    def __init__(self, runtime: Runtime):
        self._runtime = runtime

    def __getattr__(self, name: str):
        return getattr(self._runtime.salesforce(), name)


T = TypeVar("T")


class ContainerSlot(Generic[T]):
    """The one runtime object of a container, built by ``factory`` on first use.

    Handlers build it lazily, so a configuration error is returned per invocation instead of
    failing the container's start. :meth:`set` replaces it, as the local world does to aim a
    handler at local endpoints.
    """

    def __init__(self, factory: Callable[[], T]):
        self._factory = factory
        self._value: T | None = None

    def get(self) -> T:
        if self._value is None:
            self._value = self._factory()
        return self._value

    def set(self, value: T | None) -> None:
        self._value = value
