"""The lease and the compare-and-swap under real concurrency: threads against moto server."""

from __future__ import annotations

import threading
import uuid

import pytest

from tokenkeeper.refresher import SOURCE_REDEEMED


def new_id() -> str:
    return f"org-{uuid.uuid4().hex[:12]}"


def run_together(count: int, target) -> tuple[list, list]:
    """Start ``count`` threads at one barrier; return their results and errors."""
    barrier = threading.Barrier(count)
    results: list = []
    errors: list = []

    def call(index: int) -> None:
        barrier.wait(timeout=30)
        try:
            results.append(target(index))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results, errors


def test_concurrent_containers_cause_one_redemption(fresh_world):
    connection_id = new_id()
    fresh_world.seed_connection(connection_id)
    containers = [fresh_world.runtime() for _ in range(20)]
    fresh_world.salesforce.latency_seconds = 0.3

    results, errors = run_together(20, lambda index: containers[index].refresher().get_token(connection_id))

    assert errors == []
    assert len(results) == 20
    assert fresh_world.salesforce.stats.redemptions == 1
    assert [answer.source for answer in results].count(SOURCE_REDEEMED) == 1
    assert len({answer.access_token for answer in results}) == 1
    assert fresh_world.salesforce.stats.errors == {}


def test_concurrent_rounds_after_expiry_redeem_once_each(fresh_world):
    connection_id = new_id()
    fresh_world.seed_connection(connection_id)
    containers = [fresh_world.runtime() for _ in range(8)]

    for round_number in range(3):
        fresh_world.salesforce.reset_stats()
        results, errors = run_together(8, lambda index: containers[index].refresher().get_token(connection_id))

        assert errors == []
        assert fresh_world.salesforce.stats.redemptions == 1, f"round {round_number}"
        assert len({answer.access_token for answer in results}) == 1
        fresh_world.clock.advance(7200)

    assert containers[0].store.get(connection_id).version == 4


def test_dead_lease_holder_is_replaced_after_expiry(fresh_world):
    connection_id = new_id()
    fresh_world.seed_connection(connection_id)
    runtime = fresh_world.runtime()
    now = fresh_world.clock()
    assert runtime.store.acquire_lease(connection_id, version=1, owner="crashed-container", until=now + 1.5, now=now)

    token = runtime.refresher().get_token(connection_id)

    assert token.source == SOURCE_REDEEMED
    assert fresh_world.clock() >= now + 1.5
    stored = runtime.store.get(connection_id)
    assert stored.version == 2
    assert stored.lease_owner is None


def test_live_lease_blocks_second_holder(fresh_world):
    connection_id = new_id()
    fresh_world.seed_connection(connection_id)
    store = fresh_world.runtime().store
    now = fresh_world.clock()

    first = store.acquire_lease(connection_id, version=1, owner="a", until=now + 60, now=now)
    second = store.acquire_lease(connection_id, version=1, owner="b", until=now + 60, now=now)

    assert first is True
    assert second is False
    assert store.get(connection_id).lease_owner == "a"


def test_lease_on_stale_version_is_refused(fresh_world):
    connection_id = new_id()
    fresh_world.seed_connection(connection_id)
    runtime = fresh_world.runtime()
    runtime.refresher().get_token(connection_id)
    now = fresh_world.clock()

    taken = runtime.store.acquire_lease(connection_id, version=1, owner="late", until=now + 60, now=now)

    assert taken is False
    assert runtime.store.get(connection_id).lease_owner is None


def test_stalled_holder_cannot_overwrite_newer_version(fresh_world):
    connection_id = new_id()
    fresh_world.seed_connection(connection_id)
    runtime = fresh_world.runtime()
    stale = runtime.store.get(connection_id)
    runtime.refresher().get_token(connection_id)
    newer = runtime.store.get(connection_id)

    written = runtime.store.save_rotation(
        stale,
        refresh_token="stale-holder-refresh-token",
        access_token="stale-holder-access-token",
        access_token_expires_at=fresh_world.clock() + 7200,
        instance_url=None,
        org_id=None,
        user_id=None,
        session_seconds=None,
        now=fresh_world.clock(),
    )

    assert written is None
    after = runtime.store.get(connection_id)
    assert after.version == newer.version
    assert after.refresh_token == newer.refresh_token


def test_concurrent_compare_and_swap_has_one_winner(fresh_world):
    connection_id = new_id()
    fresh_world.seed_connection(connection_id)
    store = fresh_world.runtime().store
    base = store.get(connection_id)

    def write(index: int):
        return store.save_rotation(
            base,
            refresh_token=f"candidate-refresh-{index:04d}",
            access_token=f"candidate-access-{index:04d}",
            access_token_expires_at=fresh_world.clock() + 7200,
            instance_url=None,
            org_id=None,
            user_id=None,
            session_seconds=None,
            now=fresh_world.clock(),
        )

    results, errors = run_together(10, write)

    assert errors == []
    winners = [result for result in results if result is not None]
    assert len(winners) == 1
    stored = store.get(connection_id)
    assert stored.version == base.version + 1
    assert stored.refresh_token == winners[0].refresh_token


@pytest.mark.parametrize("callers", [5])
def test_forced_calls_at_once_share_one_redemption(fresh_world, callers):
    connection_id = new_id()
    fresh_world.seed_connection(connection_id)
    containers = [fresh_world.runtime() for _ in range(callers)]
    for container in containers:
        container.refresher().get_token(connection_id)
    fresh_world.salesforce.reset_stats()
    fresh_world.salesforce.latency_seconds = 0.5

    results, errors = run_together(callers, lambda index: containers[index].refresher().get_token(connection_id, force=True))

    assert errors == []
    assert fresh_world.salesforce.stats.redemptions == 1
    assert len({answer.access_token for answer in results}) == 1
