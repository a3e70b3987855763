"""Show the product keeping a Salesforce token chain alive, against the local stand-ins.

Run with ``make demo`` (or ``python -m localworld.demo``; ``--verbose`` also prints the product's
JSON logs and metrics). The last line of output is a JSON summary for scripts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading

QUIET_ENVIRONMENT = {"POWERTOOLS_LOG_LEVEL": "ERROR", "POWERTOOLS_METRICS_DISABLED": "true"}
BURST_CALLERS = 20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verbose", action="store_true", help="also print the product's JSON logs and metrics")
    options = parser.parse_args(argv)
    if not options.verbose:
        # Powertools reads these when its logger and metrics are created, so set them first.
        os.environ.update(QUIET_ENVIRONMENT)

    from localworld.world import LocalWorld

    print("Starting the local world: moto (DynamoDB, Secrets Manager, KMS), a QuotaGuard-like proxy")
    print("with Basic auth and two egress addresses, and a Salesforce OAuth emulator over HTTPS.")
    with LocalWorld() as world:
        summary = run(world)
    print("Local world stopped.")
    print(json.dumps(summary, sort_keys=True))
    return 0


def run(world) -> dict:
    from localworld.lambdas import LocalContext, load_function

    connection_id = "org-demo-00D000000000001"
    world.seed_connection(connection_id)
    print(f"\nStored connection {connection_id!r} at version 1, with proxy egress "
          f"{' and '.join(world.proxy.egress_addresses)} on the emulator's allowlist.")

    direct_blocked = step_direct(world, connection_id)

    refresh = load_function("refresh")
    refresh.set_runtime(world.runtime())
    store = world.runtime().store
    version_before = store.get(connection_id).version
    world.salesforce.reset_stats()

    print("\n2. The refresh function redeems the refresh token through the proxy.")
    first = refresh.handler({"connection_id": connection_id}, LocalContext())
    _require(first, "first call")
    sources = world.salesforce.stats.by_source
    egress_address = next(iter(sources)) if sources else None
    version_after = store.get(connection_id).version
    print(f"   Salesforce saw the request from {egress_address}, one of the proxy's two static addresses.")
    print(f"   The rotated refresh token is stored: version {version_before} -> {version_after}.")

    print("\n3. A second call within the access token's lifetime.")
    second = refresh.handler({"connection_id": connection_id}, LocalContext())
    _require(second, "second call")
    print(f"   Served from {second['source']} with no redemption "
          f"(redemptions so far: {world.salesforce.stats.redemptions}).")

    burst_redemptions = step_burst(world, connection_id)
    refresh.set_runtime(None)
    return {
        "direct_blocked": direct_blocked,
        "egress_address": egress_address,
        "version_before": version_before,
        "version_after": version_after,
        "second_call_source": second["source"],
        "burst_callers": BURST_CALLERS,
        "burst_redemptions": burst_redemptions,
    }


def step_direct(world, connection_id: str) -> bool:
    """Redeem without the proxy; the emulator's allowlist blocks the request."""
    import urllib3

    from tokenkeeper.errors import EgressBlockedError
    from tokenkeeper.salesforce import SalesforceClient

    print("\n1. A redemption sent directly, not through the proxy.")
    runtime = world.runtime()
    record = runtime.store.get(connection_id)
    direct_pool = urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=str(world.ca_path), retries=False)
    client = SalesforceClient(direct_pool, runtime.client_credentials, allow_loopback_hosts=True)
    try:
        client.redeem_refresh_token(record.token_host, record.refresh_token)
    except EgressBlockedError as exc:
        print(f"   Blocked, as expected. The product reports: {exc}")
        return True
    print("   Not blocked: the emulator's allowlist did not apply.")
    return False


def step_burst(world, connection_id: str) -> int:
    """Expire the access token, then call from many containers at once."""
    print(f"\n4. The access token expires; {BURST_CALLERS} containers ask for a token at the same moment.")
    world.clock.advance(world.runtime().store.get(connection_id).session_seconds or 7200)
    containers = [world.runtime() for _ in range(BURST_CALLERS)]
    for container in containers:
        container.refresher()
    world.salesforce.reset_stats()
    start = threading.Barrier(BURST_CALLERS)
    sources: list[str] = []
    errors: list[str] = []

    def call(container) -> None:
        start.wait(timeout=30)
        try:
            sources.append(container.refresher().get_token(connection_id).source)
        except Exception as exc:  # shown to the person running the demo
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=call, args=(container,)) for container in containers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    redemptions = world.salesforce.stats.redemptions
    print(f"   {len(sources)} callers got a token: {sources.count('redeemed')} redeemed it, "
          f"{sources.count('store')} read what that one stored.")
    print(f"   Salesforce saw {redemptions} redemption(s).")
    for error in errors:
        print(f"   Error: {error}")
    return redemptions


def _require(answer: dict, label: str) -> None:
    if not answer.get("ok"):
        error = answer.get("error", {})
        raise SystemExit(f"The {label} failed: {error.get('kind')}: {error.get('message')}")


if __name__ == "__main__":
    sys.exit(main())
