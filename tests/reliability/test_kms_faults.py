"""KMS faults: sealing the rotated tokens fails after the redemption, or opening them fails before it."""

from __future__ import annotations

import pytest
from botocore.config import Config

from localworld.leakcheck import assert_no_secrets
from tokenkeeper.errors import StoreError
from tokenkeeper.refresher import SOURCE_REDEEMED
from tokenkeeper.runtime import Runtime

ENCRYPT = "TrentService.Encrypt"
DECRYPT = "TrentService.Decrypt"
KMS_CLIENT_CONFIG = Config(connect_timeout=1, read_timeout=2, retries={"total_max_attempts": 2, "mode": "standard"})


def runtime_with_kms_through(world, relay) -> Runtime:
    return Runtime(
        world.settings(),
        session=world.aws.session,
        dynamodb_client=world.aws.client("dynamodb"),
        secrets_client=world.aws.client("secretsmanager"),
        kms_client=world.aws.client("kms", endpoint_url=relay.url, config=KMS_CLIENT_CONFIG),
        clock=world.clock,
    )


def test_transient_encrypt_failures_are_retried(fresh_world, relay, connection_id):
    runtime = runtime_with_kms_through(fresh_world, relay)
    first_token = runtime.store.get(connection_id).refresh_token
    fault = relay.inject("error_500", count=3, target=ENCRYPT)

    token = runtime.refresher().get_token(connection_id)

    assert fault.applied == 3
    assert token.source == SOURCE_REDEEMED
    item = runtime.store.get(connection_id)
    assert item.version == 2
    assert item.refresh_token == fresh_world.salesforce.current_refresh_token_of(first_token)
    assert fresh_world.salesforce.stats.replays_detected == 0


def test_encrypt_down_after_redemption_raises_clear_error(fresh_world, relay, connection_id):
    # GIVEN KMS cannot seal anything: the rotated token can go neither to the item nor to a rescue
    # record, because neither may hold it in plaintext
    runtime = runtime_with_kms_through(fresh_world, relay)
    relay.inject("error_500", count=100, target=ENCRYPT)

    with pytest.raises(StoreError) as caught:
        runtime.refresher().get_token(connection_id)

    assert "nor to its rescue record" in str(caught.value)
    assert_no_secrets(str(caught.value))
    item = runtime.store.get(connection_id)
    assert item.version == 1
    assert runtime.store.get_rescue(connection_id, 2) is None


def test_decrypt_down_redeems_nothing(fresh_world, relay, connection_id):
    runtime = runtime_with_kms_through(fresh_world, relay)
    relay.inject("error_500", count=100, target=DECRYPT)

    with pytest.raises(StoreError) as caught:
        runtime.refresher().get_token(connection_id)

    assert "could not decrypt" in str(caught.value)
    assert fresh_world.salesforce.stats.token_requests == 0
