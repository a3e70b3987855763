"""A refresh worker killed with SIGKILL at a point in the flow, and what the next caller finds.

The worker is a separate Python process whose DynamoDB calls pass through a fault relay. The relay
holds one chosen request, which stops the worker at a known step; the test then kills it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from fault_helpers import GET_ITEM, ROTATION_WRITE, UPDATE_ITEM
from localworld import REPOSITORY_ROOT, SHARED_CODE
from localworld.leakcheck import assert_no_secrets
from localworld.processes import SPEC_VARIABLE, WorkerSpec
from tokenkeeper.errors import ReauthorizationRequiredError
from tokenkeeper.refresher import SOURCE_REDEEMED
from tokenkeeper.store import STATUS_REAUTHORIZATION_REQUIRED

WORKER_START_TIMEOUT_SECONDS = 60


def start_worker(world, relay, connection_id: str) -> subprocess.Popen:
    spec = WorkerSpec.for_world(world, dynamodb_endpoint_url=relay.url)
    environment = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": os.pathsep.join([str(REPOSITORY_ROOT), str(SHARED_CODE)]),
        SPEC_VARIABLE: spec.to_json(),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "localworld.processes", "--connection-id", connection_id],
        cwd=REPOSITORY_ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill_when_held(relay, worker: subprocess.Popen) -> None:
    try:
        held = relay.wait_until_holding(timeout=WORKER_START_TIMEOUT_SECONDS)
    finally:
        worker.send_signal(signal.SIGKILL)
        out, err = worker.communicate(timeout=30)
        relay.release()
    assert_no_secrets(out + err)
    assert held, f"the worker never reached the held request; its stderr ends {err[-400:]!r}"
    assert worker.returncode == -signal.SIGKILL


def test_worker_killed_after_rotation_loses_chain_loudly(fresh_world, relay, connection_id):
    # GIVEN a worker that redeemed the refresh token and is stopped in its rotation write
    runtime = fresh_world.runtime()
    first_token = runtime.store.get(connection_id).refresh_token
    relay.inject("hold", target=UPDATE_ITEM, body_contains=ROTATION_WRITE, delay_seconds=90)
    worker = start_worker(fresh_world, relay, connection_id)

    # WHEN it is killed there, the rotated token dies with it
    kill_when_held(relay, worker)
    assert fresh_world.salesforce.chain_state(first_token) == "rotated"
    left_behind = runtime.store.get(connection_id)
    assert left_behind.version == 1
    assert left_behind.lease_owner is not None
    assert runtime.store.get_rescue(connection_id, 2) is None

    # THEN the next caller waits out the lease and gets a clear error, not a silent failure
    fresh_world.clock.advance(runtime.settings.lease_seconds + 1)
    with pytest.raises(ReauthorizationRequiredError) as caught:
        runtime.refresher().get_token(connection_id)

    assert caught.value.rotation_lost_in_transit is True
    assert "lease holder that stopped" in str(caught.value)
    after = runtime.store.get(connection_id)
    assert after.status == STATUS_REAUTHORIZATION_REQUIRED
    assert after.lease_owner is None
    # Redeeming the rotated-out token is the replay that tells Salesforce to end the orphaned chain.
    assert fresh_world.salesforce.stats.redemptions == 1
    assert fresh_world.salesforce.stats.replays_detected == 1


def test_worker_killed_before_redeeming_is_replaced(fresh_world, relay, connection_id):
    # GIVEN a worker that holds the lease and is stopped while it looks for a rescue record
    runtime = fresh_world.runtime()
    first_token = runtime.store.get(connection_id).refresh_token
    relay.inject("hold", target=GET_ITEM, body_contains="rescue#", delay_seconds=90)
    worker = start_worker(fresh_world, relay, connection_id)

    kill_when_held(relay, worker)
    assert runtime.store.get(connection_id).lease_owner is not None
    assert fresh_world.salesforce.stats.token_requests == 0

    # WHEN another caller comes after the lease expired
    fresh_world.clock.advance(runtime.settings.lease_seconds + 1)
    token = runtime.refresher().get_token(connection_id)

    # THEN it takes the lease over and redeems the token that was never sent
    assert token.source == SOURCE_REDEEMED
    assert token.version == 2
    item = runtime.store.get(connection_id)
    assert item.refresh_token == fresh_world.salesforce.current_refresh_token_of(first_token)
    assert item.lease_owner is None
    assert fresh_world.salesforce.stats.replays_detected == 0
