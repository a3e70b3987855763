"""Time of a token request served from the container's memory and from DynamoDB.

Both are set beside one redemption's round trip through the local world. The baseline's round trip
is the guide's ``requests.post`` through a new tunnel each time. The product's is a forced
redemption through the container's open tunnel, with the lease and the compare-and-swap write.
The token endpoint answers without added latency here, so the round trips are loopback times.
"""

from __future__ import annotations

import time

from bench.measure import clear_product_metrics, new_connection_id, percentile, ratio, token_endpoint_latency
from bench.naive import NaiveIntegration

MICROSECONDS_PER_SECOND = 1_000_000


def run_cache_hit(world, *, memory_samples: int = 2000, store_samples: int = 200, redemption_samples: int = 30) -> dict:
    """Time each path's token requests and return their p50, p99 (microseconds) and ratios."""
    with token_endpoint_latency(world, 0.0):
        connection_id = new_connection_id("cache")
        world.seed_connection(connection_id)
        refresher = world.runtime().refresher()
        refresher.get_token(connection_id)
        memory = _timed(memory_samples, lambda: refresher.get_token(connection_id), expected_source="memory")
        store = _timed(
            store_samples,
            lambda: refresher.get_token(connection_id),
            before=lambda: refresher.forget(connection_id),
            expected_source="store",
        )
        product_redemption = _timed(
            redemption_samples, lambda: refresher.get_token(connection_id, force=True), expected_source="redeemed"
        )
        app = NaiveIntegration(world)
        baseline = _timed(redemption_samples, app.request_token)

    return {
        "parameters": {
            "memory_samples": memory_samples,
            "store_samples": store_samples,
            "redemption_samples": redemption_samples,
            "token_endpoint_latency_seconds": 0.0,
        },
        "product": {"memory": memory, "store": store, "redemption": product_redemption},
        "baseline": {"redemption": baseline},
        "ratio": {
            f"{path}_{key}": ratio(timings[f"{key}_us"], baseline[f"{key}_us"])
            for path, timings in (("memory", memory), ("store", store), ("redemption", product_redemption))
            for key in ("p50", "p99")
        },
    }


def _timed(samples: int, request, *, before=None, expected_source: str | None = None) -> dict:
    """Run ``request`` ``samples`` times and return the p50 and p99 of its duration in microseconds."""
    durations = []
    for _ in range(samples):
        if before is not None:
            before()
        started = time.perf_counter()
        answer = request()
        elapsed = time.perf_counter() - started
        clear_product_metrics()
        _check(answer, expected_source)
        durations.append(elapsed * MICROSECONDS_PER_SECOND)
    return {
        "samples": samples,
        "p50_us": round(percentile(durations, 50), 1),
        "p99_us": round(percentile(durations, 99), 1),
    }


def _check(answer, expected_source: str | None) -> None:
    """Raise when a timed request took another path than the one being measured."""
    if expected_source is not None and answer.source != expected_source:
        raise RuntimeError(f"A timed token request was served from {answer.source!r}, expected {expected_source!r}.")
    if expected_source is None and not answer.ok:
        raise RuntimeError(f"A timed naive redemption failed: {answer.error}: {answer.error_description}")
