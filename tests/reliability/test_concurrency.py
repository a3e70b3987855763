"""Fifty callers in threads and processes on one connection, over twenty rounds of expiry.

Half the callers are threads of this process, each with its own runtime (a container); the other
half are threads in five spawned processes. All of them wait at one barrier per round and then ask
for a token at once, just after the access token expired.
"""

from __future__ import annotations

import collections
import multiprocessing
import queue
import threading
import time

import pytest

from localworld.processes import WorkerSpec, call_once, serve_rounds
from tokenkeeper.refresher import SOURCE_REDEEMED

ROUNDS = 20
PROCESSES = 5
CALLERS_PER_PROCESS = 5
LOCAL_CALLERS = 25
CALLERS = LOCAL_CALLERS + PROCESSES * CALLERS_PER_PROCESS
START_TIMEOUT_SECONDS = 90
ROUND_TIMEOUT_SECONDS = 60


@pytest.fixture
def workers(fresh_world):
    """Start the caller processes; yield (offset, barrier, command queues, results queue)."""
    context = multiprocessing.get_context("spawn")
    offset = context.Value("d", fresh_world.clock() - time.time())
    barrier = context.Barrier(CALLERS)
    results = context.Queue()
    commands = [context.Queue() for _ in range(PROCESSES)]
    spec = WorkerSpec.for_world(fresh_world)
    processes = [
        context.Process(target=serve_rounds, args=(spec, CALLERS_PER_PROCESS, offset, barrier, commands[index], results))
        for index in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    try:
        for _ in processes:
            assert results.get(timeout=START_TIMEOUT_SECONDS)[0] == "ready"
        yield offset, barrier, commands, results
    finally:
        for command_queue in commands:
            command_queue.put(None)
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join(timeout=5)


def test_fifty_callers_redeem_once_per_round(fresh_world, connection_id, workers):
    offset, barrier, commands, results = workers
    containers = [fresh_world.runtime() for _ in range(LOCAL_CALLERS)]
    for runtime in containers:
        runtime.refresher()
    fresh_world.salesforce.latency_seconds = 0.05

    for round_number in range(ROUNDS):
        # GIVEN the access token of the last round has expired for every caller
        if round_number:
            fresh_world.clock.advance(7200)
            with offset.get_lock():
                offset.value += 7200
        fresh_world.salesforce.reset_stats()

        # WHEN fifty callers in two kinds of concurrency ask at once
        for command_queue in commands:
            command_queue.put((round_number, connection_id))
        local_outcomes: list[dict] = []

        def call(runtime) -> None:
            barrier.wait(timeout=ROUND_TIMEOUT_SECONDS)
            local_outcomes.append(call_once(runtime, connection_id))

        threads = [threading.Thread(target=call, args=(runtime,)) for runtime in containers]
        for thread in threads:
            thread.start()
        remote_outcomes = []
        try:
            for _ in range(PROCESSES * CALLERS_PER_PROCESS):
                received_round, outcome = results.get(timeout=ROUND_TIMEOUT_SECONDS)
                assert received_round == round_number
                remote_outcomes.append(outcome)
        except queue.Empty:
            pytest.fail(f"round {round_number}: only {len(remote_outcomes)} process callers reported")
        for thread in threads:
            thread.join(timeout=ROUND_TIMEOUT_SECONDS)
        outcomes = local_outcomes + remote_outcomes

        # THEN exactly one redemption happened and everybody got its access token
        failures = [outcome for outcome in outcomes if not outcome["ok"]]
        assert failures == [], f"round {round_number}"
        assert len(outcomes) == CALLERS
        stats = fresh_world.salesforce.stats
        assert stats.redemptions == 1, f"round {round_number}"
        assert stats.errors == collections.Counter(), f"round {round_number}"
        assert stats.replays_detected == 0
        assert len({outcome["digest"] for outcome in outcomes}) == 1, f"round {round_number}"
        assert {outcome["version"] for outcome in outcomes} == {round_number + 2}
        assert [outcome["source"] for outcome in outcomes].count(SOURCE_REDEEMED) == 1

    item = containers[0].store.get(connection_id)
    assert item.version == ROUNDS + 1
    assert item.lease_owner is None
