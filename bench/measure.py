"""Small helpers the figure modules share: percentiles, ratios, threads started together."""

from __future__ import annotations

import math
import threading
import uuid
from collections.abc import Callable, Sequence
from contextlib import contextmanager

THREAD_JOIN_TIMEOUT_SECONDS = 300.0
BARRIER_TIMEOUT_SECONDS = 60.0


def percentile(values: Sequence[float], percent: float) -> float:
    """Return the nearest-rank percentile of ``values``, or NaN when there are none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return ordered[rank - 1]


def ratio(product: float, baseline: float) -> float | None:
    """Return product / baseline rounded to four significant digits, or None when it is undefined."""
    if baseline == 0 or math.isnan(product) or math.isnan(baseline):
        return None
    return float(f"{product / baseline:.4g}")


def run_together(count: int, target: Callable[[int], object]) -> tuple[list, list]:
    """Run ``target(index)`` on ``count`` threads released by one barrier and return results and errors."""
    barrier = threading.Barrier(count)
    results: list = []
    errors: list = []

    def call(index: int) -> None:
        barrier.wait(timeout=BARRIER_TIMEOUT_SECONDS)
        try:
            results.append(target(index))
        except Exception as exc:  # counted by the caller as a failed request
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(index,), daemon=True) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=THREAD_JOIN_TIMEOUT_SECONDS)
    return results, errors


@contextmanager
def token_endpoint_latency(world, seconds: float):
    """Set the emulator's token endpoint latency for the block, then restore the previous value."""
    previous = world.salesforce.latency_seconds
    world.salesforce.latency_seconds = seconds
    try:
        yield
    finally:
        world.salesforce.latency_seconds = previous


def clear_product_metrics() -> None:
    """Drop the product's buffered metrics.

    The handler flushes them once per invocation. The benchmarks call the refresher directly, and
    Powertools (3.37) prints the buffer to stdout whenever a metric reaches 100 values, even with
    metrics disabled, so they are dropped outside the timed code instead.
    """
    from tokenkeeper.observability import metrics

    metrics.clear_metrics()


def new_connection_id(figure: str) -> str:
    """Return a connection id not used before, so a figure can run more than once on one world."""
    return f"org-bench-{figure}-{uuid.uuid4().hex[:12]}"
