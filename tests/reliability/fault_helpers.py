"""Helpers the fault tests share: request filters for the relay, and a container built on it.

A module of its own, because ``from conftest import ...`` would resolve to whichever test
directory's conftest module pytest imported first.
"""

from __future__ import annotations

import uuid

from botocore.config import Config

from localworld.faults import FaultRelay
from tokenkeeper.runtime import Runtime

# One SDK retry and short timeouts: a fault shows up at the product's own retry loop quickly.
RELAY_CLIENT_CONFIG = Config(
    connect_timeout=1,
    read_timeout=2,
    retries={"total_max_attempts": 2, "mode": "standard"},
    max_pool_connections=64,
)
UPDATE_ITEM = "DynamoDB_20120810.UpdateItem"
PUT_ITEM = "DynamoDB_20120810.PutItem"
GET_ITEM = "DynamoDB_20120810.GetItem"
# Text that occurs only in the body of the write that stores a rotation.
ROTATION_WRITE = "tokens = :tokens"
LEASE_WRITE = "SET #owner = :owner, #lease_until = :until"


def new_id() -> str:
    return f"org-{uuid.uuid4().hex[:12]}"


def runtime_through(world, relay: FaultRelay, *, sleep=None, **settings) -> Runtime:
    """Build a container whose DynamoDB calls pass through ``relay``; KMS and secrets go direct."""
    options = {"sleep": sleep} if sleep is not None else {}
    return Runtime(
        world.settings(**settings),
        session=world.aws.session,
        dynamodb_client=world.aws.client("dynamodb", endpoint_url=relay.url, config=RELAY_CLIENT_CONFIG),
        secrets_client=world.aws.client("secretsmanager"),
        kms_client=world.aws.client("kms"),
        clock=world.clock,
        **options,
    )
