"""AWS on loopback: moto in server mode, answering DynamoDB, Secrets Manager, KMS and others over HTTP."""

from __future__ import annotations

import logging

import boto3
from botocore.config import Config
from moto.server import ThreadedMotoServer

REGION = "us-east-1"
# moto accepts any credentials; these fixed ones keep boto3 from looking for real ones.
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "aws_session_token": "testing"}
CLIENT_CONFIG = Config(retries={"max_attempts": 2, "mode": "standard"}, max_pool_connections=64)


class LocalAws:
    """A moto server on 127.0.0.1 with a free port, and boto3 clients aimed at it."""

    def __init__(self) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.endpoint_url = ""
        self.session = boto3.session.Session(region_name=REGION, **CREDENTIALS)

    def start(self) -> "LocalAws":
        # werkzeug logs every request at INFO; keep the test and demo output readable.
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        self._server.stop()

    def client(self, service: str, **options):
        """Return a boto3 client for ``service`` aimed at the moto server."""
        options.setdefault("config", CLIENT_CONFIG)
        return self.session.client(service, endpoint_url=self.endpoint_url, **options)


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
