"""AWS on loopback: moto in server mode, serving DynamoDB, Secrets Manager, KMS and others over HTTP."""

from __future__ import annotations

import logging
import threading
from threading import Event, Thread

import boto3
from botocore.config import Config
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

REGION = "us-east-1"
# moto accepts any credentials; these fixed ones keep boto3 from looking for real ones.
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "aws_session_token": "testing"}
CLIENT_CONFIG = Config(retries={"max_attempts": 2, "mode": "standard"}, max_pool_connections=64)


class _SerializedDynamoDb:
    """WSGI middleware that runs moto's DynamoDB requests one at a time.

    DynamoDB applies each conditional write atomically. moto (5.2.5) evaluates the condition and
    then updates the item without a lock, so two threaded requests can both pass one condition.
    Serializing DynamoDB requests restores the atomicity that the lease and the compare-and-swap
    rely on; other services keep running concurrently.
    """

    def __init__(self, app) -> None:
        self._app = app
        self._lock = threading.Lock()

    def __call__(self, environ, start_response):
        if environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB_"):
            with self._lock:
                # The body is produced inside the lock, so the whole request runs under it.
                return list(self._app(environ, start_response))
        return self._app(environ, start_response)


class LocalAws:
    """A threaded moto server on 127.0.0.1 with a free port, and boto3 clients aimed at it."""

    def __init__(self) -> None:
        self._server = None
        self._thread: Thread | None = None
        self.endpoint_url = ""
        self.session = boto3.session.Session(region_name=REGION, **CREDENTIALS)

    def start(self) -> "LocalAws":
        # werkzeug logs every request at INFO; keep the test and demo output readable.
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        app = _SerializedDynamoDb(DomainDispatcherApplication(create_backend_app))
        self._server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
        ready = Event()

        def serve() -> None:
            ready.set()
            self._server.serve_forever()

        self._thread = Thread(target=serve, name="moto-server", daemon=True)
        self._thread.start()
        ready.wait(timeout=10)
        host, port = self._server.server_address[:2]
        self.endpoint_url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def client(self, service: str, **options):
        """Return a boto3 client for ``service`` aimed at the moto server."""
        options.setdefault("config", CLIENT_CONFIG)
        options.setdefault("endpoint_url", self.endpoint_url)
        return self.session.client(service, **options)


def create_token_table(dynamodb, table_name: str) -> None:
    """Create the connection table with the same keys and index as the deployed stack."""
    dynamodb.create_table(
        TableName=table_name,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[
            {"AttributeName": "connection_id", "AttributeType": "S"},
            {"AttributeName": "heartbeat_partition", "AttributeType": "S"},
            {"AttributeName": "last_redeemed_at", "AttributeType": "N"},
        ],
        KeySchema=[{"AttributeName": "connection_id", "KeyType": "HASH"}],
        GlobalSecondaryIndexes=[
            {
                "IndexName": "heartbeat-due",
                "KeySchema": [
                    {"AttributeName": "heartbeat_partition", "KeyType": "HASH"},
                    {"AttributeName": "last_redeemed_at", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "KEYS_ONLY"},
            }
        ],
    )
