"""Redemptions per 1000 token requests spread over one access token's lifetime.

The requests run in rounds. In each round a few callers send one request each, at random moments
within an arrival window. Between rounds the clock moves forward by one step, so the rounds cover
one session from start to end. The clock never moves while a request is in flight, because a jump of many seconds during a
redemption would expire the product's lease early. The product's callers are separate
containers. The baseline's callers are threads of one naive app that share its storage, so a
caller can send a refresh token that another caller has just rotated.
"""

from __future__ import annotations

import collections
import random
import time

import localworld  # noqa: F401  (puts the shared code on sys.path)
from bench.measure import clear_product_metrics, new_connection_id, ratio, run_together, token_endpoint_latency
from bench.naive import NaiveIntegration
from tokenkeeper.refresher import SOURCE_MEMORY, SOURCE_REDEEMED, SOURCE_STORE

# A fixed seed gives the product and the baseline the same arrival moments.
ARRIVAL_SEED = 20260511
REDEEMED = "redeemed"


def run_redemptions(world, *, requests: int = 1000, callers: int = 4, session_seconds: float = 7200.0,
                    latency: float = 0.05, arrival_window: float = 0.25) -> dict:
    """Measure the product and the baseline.

    ``latency`` is the token endpoint's delay and ``arrival_window`` the span, in seconds, over
    which one round's callers arrive.
    """
    rounds = max(1, requests // callers)
    step_seconds = session_seconds / rounds
    with token_endpoint_latency(world, latency):
        product = _run_product(world, _Rounds(world, rounds, callers, step_seconds, arrival_window))
        baseline = _run_baseline(world, _Rounds(world, rounds, callers, step_seconds, arrival_window))
    scale = 1000 / (rounds * callers)
    return {
        "parameters": {
            "requests": rounds * callers,
            "rounds": rounds,
            "callers": callers,
            "session_seconds": session_seconds,
            "token_endpoint_latency_seconds": latency,
            "arrival_window_seconds": arrival_window,
        },
        "product": product,
        "baseline": baseline,
        "per_1000_requests": {
            "product_redemptions": product["redemptions"] * scale,
            "baseline_redemptions": baseline["redemptions"] * scale,
            "product_token_requests": product["token_requests"] * scale,
            "baseline_token_requests": baseline["token_requests"] * scale,
            "product_failed_requests": product["failed_requests"] * scale,
            "baseline_failed_requests": baseline["failed_requests"] * scale,
            "baseline_chains_lost": baseline["chains_lost"] * scale,
        },
        "ratio": {
            "token_requests": ratio(product["token_requests"], baseline["token_requests"]),
            "redemptions": ratio(product["redemptions"], baseline["redemptions"]),
            "failed_requests": ratio(product["failed_requests"], baseline["failed_requests"]),
        },
    }


class _Rounds:
    """The request schedule: rounds of callers arriving at seeded random moments, then a clock step."""

    def __init__(self, world, rounds: int, callers: int, step_seconds: float, arrival_window: float):
        self.world = world
        self.callers = callers
        generator = random.Random(ARRIVAL_SEED)
        self._delays = [[generator.uniform(0, arrival_window) for _ in range(callers)] for _ in range(rounds)]
        self._step_seconds = step_seconds

    def run(self, call) -> collections.Counter:
        """Run ``call(caller)`` once per caller in every round and count the outcomes it returns."""
        outcomes: collections.Counter = collections.Counter()
        for delays in self._delays:

            def arrive(caller: int, delays=delays) -> str:
                time.sleep(delays[caller])
                return call(caller)

            results, errors = run_together(self.callers, arrive)
            outcomes.update(results)
            outcomes.update(type(exc).__name__ for exc in errors)
            clear_product_metrics()
            self.world.clock.advance(self._step_seconds)
        return outcomes


def _run_product(world, rounds: _Rounds) -> dict:
    connection_id = new_connection_id("redemptions")
    world.seed_connection(connection_id)
    containers = [world.runtime() for _ in range(rounds.callers)]
    for container in containers:
        container.refresher()
    world.salesforce.reset_stats()

    def call(caller: int) -> str:
        return containers[caller].refresher().get_token(connection_id).source

    outcomes = rounds.run(call)
    sources = {source: outcomes.pop(source) for source in (SOURCE_MEMORY, SOURCE_STORE, SOURCE_REDEEMED) if source in outcomes}
    failures = outcomes
    stats = world.salesforce.stats
    return {
        "token_requests": stats.token_requests,
        "redemptions": stats.redemptions,
        "failed_requests": sum(failures.values()),
        "failures": dict(failures),
        "sources": sources,
        "chains_lost": stats.chains_revoked,
    }


def _run_baseline(world, rounds: _Rounds) -> dict:
    app = NaiveIntegration(world)
    world.salesforce.reset_stats()

    def call(caller: int) -> str:
        outcome = app.request_token()
        if outcome.ok:
            return REDEEMED
        app.reauthorize_if_revoked()
        return f"{outcome.error}: {outcome.error_description}"

    failures = rounds.run(call)
    failures.pop(REDEEMED, None)
    stats = world.salesforce.stats
    return {
        "token_requests": stats.token_requests,
        "redemptions": stats.redemptions,
        "failed_requests": sum(failures.values()),
        "failures": dict(failures),
        "replays_detected": stats.replays_detected,
        "chains_lost": app.reauthorizations,
    }
