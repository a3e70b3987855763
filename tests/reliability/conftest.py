"""Fixtures for the fault tests: a fault relay in front of moto, fresh connections, metric counts."""

from __future__ import annotations

import collections

import pytest

from fault_helpers import new_id
from localworld.faults import FaultRelay
from tokenkeeper import observability


@pytest.fixture
def relay(fresh_world):
    with FaultRelay(fresh_world.aws.endpoint_url) as fault_relay:
        yield fault_relay


@pytest.fixture
def connection_id(fresh_world):
    identifier = new_id()
    fresh_world.seed_connection(identifier)
    return identifier


@pytest.fixture
def metric_counts(monkeypatch):
    """Count every metric the product emits with ``observability.count`` during the test."""
    counts: collections.Counter = collections.Counter()
    emit = observability.count

    def counting(name: str, value: int = 1) -> None:
        counts[name] += value
        emit(name, value)

    monkeypatch.setattr(observability, "count", counting)
    return counts
