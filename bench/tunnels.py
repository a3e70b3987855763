"""CONNECT tunnels the proxy opens for sequential forced redemptions from one warm container.

The product keeps one urllib3 pool per container, so its tunnel stays open between redemptions.
``requests.post`` without a session builds a new connection pool, and so a new tunnel, per call.
"""

from __future__ import annotations

from bench.measure import clear_product_metrics, new_connection_id, ratio
from bench.naive import NaiveIntegration



def run_tunnels(world, *, redemptions: int = 100) -> dict:
    """Count the proxy's tunnels for ``redemptions`` redemptions by the product and the baseline."""
    product = _run_product(world, redemptions)
    baseline = _run_baseline(world, redemptions)
    return {
        "parameters": {"redemptions": redemptions},
        "product": product,
        "baseline": baseline,
        "per_100_redemptions": {
            "product": product["tunnels_with_first"] * 100 / redemptions,
            "baseline": baseline["tunnels_with_first"] * 100 / redemptions,
        },
        "ratio": {"tunnels": ratio(product["tunnels_with_first"], baseline["tunnels_with_first"])},
    }


def _run_product(world, redemptions: int) -> dict:
    connection_id = new_connection_id("tunnels")
    world.seed_connection(connection_id)
    refresher = world.runtime().refresher()
    first = sum(world.proxy.tunnels().values())
    # The first call opens the container's tunnel and learns the session length. Its tunnel
    # counts in ``tunnels_with_first``, but its redemption is not one of the measured ones.
    refresher.get_token(connection_id)
    world.salesforce.reset_stats()
    before = sum(world.proxy.tunnels().values())
    for _ in range(redemptions):
        refresher.get_token(connection_id, force=True)
        clear_product_metrics()
    return _counts(world, before, first)


def _run_baseline(world, redemptions: int) -> dict:
    app = NaiveIntegration(world)
    world.salesforce.reset_stats()
    before = sum(world.proxy.tunnels().values())
    for _ in range(redemptions):
        outcome = app.request_token()
        if not outcome.ok:
            raise RuntimeError(f"A sequential naive redemption failed: {outcome.error}: {outcome.error_description}")
    return _counts(world, before, before)


def _counts(world, tunnels_before: int, tunnels_before_first: int) -> dict:
    """Count the redemptions and the tunnels opened since each starting count."""
    tunnels = sum(world.proxy.tunnels().values())
    return {
        "redemptions": world.salesforce.stats.redemptions,
        "tunnels": tunnels - tunnels_before,
        "tunnels_with_first": tunnels - tunnels_before_first,
    }
