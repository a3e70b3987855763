"""Tokens at rest: sealed with KMS under their connection id, never stored in plaintext."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from fault_helpers import ROTATION_WRITE, UPDATE_ITEM, new_id, runtime_through
from tokenkeeper.crypto import KmsTokenCipher
from tokenkeeper.errors import StoreError


def raw_item(world, runtime, key: str) -> dict:
    return world.aws.client("dynamodb").get_item(
        TableName=runtime.settings.table_name, Key={"connection_id": {"S": key}}, ConsistentRead=True
    )["Item"]


def test_sealed_tokens_need_their_connection_id(fresh_world, connection_id):
    runtime = fresh_world.runtime()
    runtime.refresher().get_token(connection_id)
    blob = raw_item(fresh_world, runtime, connection_id)["tokens"]["B"]
    kms = fresh_world.aws.client("kms")

    with pytest.raises(ClientError) as caught:
        kms.decrypt(
            CiphertextBlob=blob,
            KeyId=fresh_world.key_id,
            EncryptionContext={"connection_id": "org-someone-else"},
        )

    assert caught.value.response["Error"]["Code"] == "InvalidCiphertextException"
    opened = kms.decrypt(CiphertextBlob=blob, KeyId=fresh_world.key_id, EncryptionContext={"connection_id": connection_id})
    assert opened["Plaintext"]


def test_sealed_tokens_copied_to_other_item_fail(fresh_world, connection_id):
    # GIVEN a sealed value copied from one connection's item onto another's
    runtime = fresh_world.runtime()
    other = new_id()
    fresh_world.seed_connection(other)
    blob = raw_item(fresh_world, runtime, connection_id)["tokens"]["B"]
    fresh_world.aws.client("dynamodb").update_item(
        TableName=runtime.settings.table_name,
        Key={"connection_id": {"S": other}},
        UpdateExpression="SET tokens = :tokens",
        ExpressionAttributeValues={":tokens": {"B": blob}},
    )

    # WHEN the other connection is read THEN decryption fails with a store error
    with pytest.raises(StoreError) as caught:
        runtime.store.get(other)

    assert "could not decrypt" in str(caught.value)
    with pytest.raises(StoreError):
        KmsTokenCipher(fresh_world.aws.client("kms"), fresh_world.key_id).open(other, blob)


def test_table_never_contains_plaintext_tokens(fresh_world, relay, connection_id):
    # GIVEN a rotation stored on the item, and one that went to a rescue record
    fresh_world.runtime().refresher().get_token(connection_id)
    rescued_id = new_id()
    fresh_world.seed_connection(rescued_id)
    relay.inject("error_500", count=100, target=UPDATE_ITEM, body_contains=ROTATION_WRITE)
    runtime_through(fresh_world, relay).refresher().get_token(rescued_id)

    # WHEN the whole table is read raw
    pages = fresh_world.aws.client("dynamodb").get_paginator("scan").paginate(TableName=fresh_world.runtime().settings.table_name)
    items = [item for page in pages for item in page["Items"]]

    # THEN no token the emulator ever issued occurs in any attribute
    assert any(item["connection_id"]["S"].startswith(f"rescue#{rescued_id}#") for item in items)
    flattened = repr(items)
    issued = fresh_world.salesforce.issued_tokens()
    assert len(issued) >= 4
    # A count, so that a failure report does not print the tokens it found.
    assert sum(token in flattened for token in issued) == 0
    for item in items:
        assert set(item["tokens"]) == {"B"}
