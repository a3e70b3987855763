"""A burst: many callers ask for a token at the same moment, just after the access token expired.

The product's callers are separate containers, as Lambda runs concurrent invocations. The
baseline's callers are threads of one naive app that share its storage.
"""

from __future__ import annotations

import collections
import time

from bench.measure import clear_product_metrics, new_connection_id, percentile, ratio, run_together, token_endpoint_latency
from bench.naive import NaiveIntegration



def run_burst(world, *, callers: int = 50, latency: float = 0.05) -> dict:
    """Measure the product and the baseline with the token endpoint delayed by ``latency`` seconds."""
    with token_endpoint_latency(world, latency):
        product = _run_product(world, callers)
        baseline = _run_baseline(world, callers)
    return {
        "parameters": {"callers": callers, "token_endpoint_latency_seconds": latency},
        "product": product,
        "baseline": baseline,
        "ratio": {
            "redemptions": ratio(product["redemptions"], baseline["redemptions"]),
            "failed_requests": ratio(product["failed_requests"], baseline["failed_requests"]),
            "successful_callers": ratio(product["successful_callers"], baseline["successful_callers"]),
            "p99_wait_seconds": ratio(product["p99_wait_seconds"], baseline["p99_wait_seconds"]),
        },
    }


def _run_product(world, callers: int) -> dict:
    connection_id = new_connection_id("burst")
    world.seed_connection(connection_id)
    session_seconds = world.runtime().refresher().get_token(connection_id).expires_at - world.clock()
    containers = [world.runtime() for _ in range(callers)]
    for container in containers:
        container.refresher()
    world.clock.advance(session_seconds + 1)
    clear_product_metrics()
    world.salesforce.reset_stats()

    def call(index: int):
        started = time.perf_counter()
        try:
            token = containers[index].refresher().get_token(connection_id)
        except Exception as exc:  # a failed token request is one of the measured outcomes
            return time.perf_counter() - started, type(exc).__name__
        return time.perf_counter() - started, token.source

    results, errors = run_together(callers, call)
    clear_product_metrics()
    return _summary(world, callers, results, errors, succeeded=lambda outcome: outcome in ("memory", "store", "redeemed"))


def _run_baseline(world, callers: int) -> dict:
    app = NaiveIntegration(world)
    first_token = app.storage["refresh_token"]
    world.salesforce.reset_stats()

    def call(index: int):
        outcome = app.request_token()
        if outcome.ok:
            return outcome.seconds, "redeemed"
        return outcome.seconds, f"{outcome.error}: {outcome.error_description}"

    results, errors = run_together(callers, call)
    summary = _summary(world, callers, results, errors, succeeded=lambda outcome: outcome == "redeemed")
    summary["chain_lost"] = world.salesforce.current_refresh_token_of(first_token) is None
    return summary


def _summary(world, callers: int, results: list, errors: list, *, succeeded) -> dict:
    waits = [seconds for seconds, _ in results]
    outcomes = collections.Counter(outcome for _, outcome in results)
    for exc in errors:
        outcomes[type(exc).__name__] += 1
    successful = sum(count for outcome, count in outcomes.items() if succeeded(outcome))
    stats = world.salesforce.stats
    return {
        "redemptions": stats.redemptions,
        "token_requests": stats.token_requests,
        "successful_callers": successful,
        "failed_requests": callers - successful,
        "outcomes": dict(outcomes),
        "replays_detected": stats.replays_detected,
        "p50_wait_seconds": round(percentile(waits, 50), 4),
        "p99_wait_seconds": round(percentile(waits, 99), 4),
    }
