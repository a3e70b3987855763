"""The heartbeat's throughput on many due connections, against one connection at a time.

The heartbeat, its thread pool and the refresher's lease and compare-and-swap code run as they
do in production. The store and Salesforce are in-memory stand-ins. The local world's moto
server, proxy and TLS emulator cost tens of milliseconds of CPU per redemption on a 2-core
machine, so with 10,000 connections they, not the heartbeat, would set the pace. The result's
``local_world`` part measures a smaller run through them. The stand-ins work like this:
- the store applies the same conditions as the DynamoDB writes (lease free, version unchanged)
  under one lock, so concurrent redemptions race exactly where they would on DynamoDB;
- the token endpoint waits ``latency`` seconds per request, rotates the refresh token, and
  revokes the chain when a rotated token is presented again, counting it as ``redeemed_twice``.

While the heartbeat runs, a few caller threads force refreshes of random connections through a
second refresher, as other Lambdas would, so skipped and contested connections are part of it.
The sequential baseline redeems a sample of connections one by one through the same
``Heartbeat.keep_alive`` and is extrapolated to the full count (stated in the result).
"""

from __future__ import annotations

import contextlib
import os
import random
import resource
import sys
import threading
import time
import uuid
from dataclasses import replace

import localworld  # noqa: F401  (puts the shared code on sys.path)
from tokenkeeper import observability as obs
from tokenkeeper.config import Settings
from tokenkeeper.errors import ConnectionNotFoundError, ReauthorizationRequiredError
from tokenkeeper.heartbeat import HeartbeatConfig, Heartbeat
from tokenkeeper.refresher import TokenRefresher
from tokenkeeper.salesforce import TokenResponse
from tokenkeeper.store import STATUS_ACTIVE, STATUS_REAUTHORIZATION_REQUIRED, Connection, DueConnection, DuePage

DAY = 86400
TOKEN_HOST = "login.salesforce.com"
SESSION_SECONDS = 7200
# The heartbeat runs at its maximum concurrency here; production defaults to fewer threads.
BENCH_CONCURRENCY = 64
BENCH_JITTER_MS = 100
SEQUENTIAL_SAMPLE = 100
CALLER_THREADS = 4
CALLER_REFRESHES = 200
# The same run through the whole local world, on a count a 2-core machine finishes in about a minute.
LOCAL_WORLD_CONNECTIONS = 300
LOCAL_WORLD_CONCURRENCY = 16
LOCAL_WORLD_SEQUENTIAL_SAMPLE = 20


def run_heartbeat_benchmark(
    connections: int = 10000,
    latency: float = 0.15,
    *,
    concurrency: int = BENCH_CONCURRENCY,
    jitter_ms: int = BENCH_JITTER_MS,
    sequential_sample: int = SEQUENTIAL_SAMPLE,
    local_world_connections: int = LOCAL_WORLD_CONNECTIONS,
) -> dict:
    """Keep ``connections`` due connections alive and compare with a sequential sample.

    Returns ``connections``, ``seconds`` (the heartbeat run), ``speedup_vs_sequential``,
    ``redeemed_twice`` (refresh tokens presented after rotation, which must be 0) and
    ``peak_rss_mb`` (this process's maximum resident set size), with the details beside them.
    """
    if connections < 1:
        raise ValueError(f"connections must be at least 1, got {connections}")
    previous_level = obs.logger.log_level
    obs.logger.setLevel("ERROR")
    # Powertools prints the buffered metrics whenever one reaches 100 values, which would put
    # about one EMF line per 100 redemptions into the benchmark's output.
    try:
        with open(os.devnull, "w") as discard, contextlib.redirect_stdout(discard):
            result = _run(connections, latency, concurrency, jitter_ms, min(sequential_sample, connections))
            if local_world_connections > 0:
                result["local_world"] = run_local_world_heartbeat(local_world_connections, latency)
            return result
    finally:
        obs.logger.setLevel(previous_level)
        obs.metrics.clear_metrics()


def _run(connections: int, latency: float, concurrency: int, jitter_ms: int, sample: int) -> dict:
    settings = Settings(table_name="bench", client_secret_id="bench", proxy_secret_id="bench", token_key_id="bench")
    config = HeartbeatConfig(concurrency=concurrency, jitter_ms=jitter_ms, event_bus_name="bench")

    # The sequential baseline: one connection after another through the same keep_alive.
    baseline_store, baseline_salesforce = MemoryStore(), MemoryTokenEndpoint(latency)
    baseline_store.seed(sample, idle_days=25, salesforce=baseline_salesforce)
    baseline = _heartbeat(baseline_store, baseline_salesforce, settings, config)
    due_before = time.time() - config.threshold_seconds
    started = time.perf_counter()
    for connection_id in baseline_store.ids():
        baseline.keep_alive(connection_id, due_before)
    sequential_per_connection = (time.perf_counter() - started) / sample

    # The heartbeat run, with callers forcing refreshes of random connections meanwhile.
    store, salesforce = MemoryStore(), MemoryTokenEndpoint(latency)
    store.seed(connections, idle_days=25, salesforce=salesforce)
    heartbeat = _heartbeat(store, salesforce, settings, config)
    callers = _Callers(TokenRefresher(store, salesforce, settings), store.ids())
    callers.start()
    started = time.perf_counter()
    summary = heartbeat.run(lambda: 900_000)
    seconds = time.perf_counter() - started
    callers.join()

    sequential_seconds = sequential_per_connection * connections
    return {
        "connections": connections,
        "seconds": round(seconds, 2),
        "speedup_vs_sequential": round(sequential_seconds / seconds, 1),
        "redeemed_twice": salesforce.replays + baseline_salesforce.replays,
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "latency_seconds": latency,
        "concurrency": concurrency,
        "jitter_ms": jitter_ms,
        "connections_per_second": round(connections / seconds, 1),
        "sequential_sample": sample,
        "sequential_seconds_per_connection": round(sequential_per_connection, 4),
        "sequential_seconds_extrapolated": round(sequential_seconds, 1),
        # Connections a caller redeemed before the run's query reached them were no longer due.
        "due": summary.due,
        "refreshed": summary.refreshed,
        "skipped": summary.skipped,
        "failed": summary.failed,
        "caller_refreshes": callers.completed,
        "caller_errors": callers.errors,
        "token_requests": salesforce.requests,
        "stale_after_run": store.count_due(time.time() - config.threshold_seconds),
        "method": (
            "Heartbeat.run and TokenRefresher with in-memory store and token endpoint stand-ins; "
            f"sequential time measured on {sample} connections and extrapolated"
        ),
    }


def run_local_world_heartbeat(connections: int, latency: float) -> dict:
    """Run the heartbeat through moto, the proxy and the emulator, and a sequential sample likewise.

    Every redemption here also costs the local stand-ins' CPU (DynamoDB and KMS in moto, the
    proxy tunnel, TLS), which the deployed heartbeat does not share, so the speedup is lower.
    """
    from localworld.aws import create_token_table
    from localworld.world import LocalWorld
    from tokenkeeper.runtime import Runtime

    sample = min(LOCAL_WORLD_SEQUENTIAL_SAMPLE, connections)
    with LocalWorld() as world:
        world.salesforce.latency_seconds = latency

        def heartbeat_on_new_table(concurrency: int, count: int) -> tuple[Heartbeat, list[str]]:
            table = f"bench-heartbeat-{uuid.uuid4().hex[:8]}"
            create_token_table(world.aws.client("dynamodb"), table)
            runtime = Runtime(
                world.settings(table_name=table),
                session=world.aws.session,
                dynamodb_client=world.aws.client("dynamodb"),
                secrets_client=world.aws.client("secretsmanager"),
                kms_client=world.aws.client("kms"),
                clock=world.clock,
                pool_maxsize=concurrency,
            )
            ids = [f"bench-{position:05d}" for position in range(count)]
            for position, connection_id in enumerate(ids):
                world.seed_connection(connection_id, idle_seconds=25 * DAY + position, runtime=runtime)
            config = HeartbeatConfig(concurrency=concurrency, jitter_ms=BENCH_JITTER_MS, event_bus_name="bench")
            return Heartbeat(runtime.refresher(), runtime.store, runtime.settings, config, clock=world.clock), ids

        baseline, sample_ids = heartbeat_on_new_table(1, sample)
        due_before = world.clock() - baseline._config.threshold_seconds
        started = time.perf_counter()
        for connection_id in sample_ids:
            baseline.keep_alive(connection_id, due_before)
        per_connection = (time.perf_counter() - started) / sample

        heartbeat, _ = heartbeat_on_new_table(LOCAL_WORLD_CONCURRENCY, connections)
        replays_before = world.salesforce.stats.replays_detected
        started = time.perf_counter()
        summary = heartbeat.run(lambda: 900_000)
        seconds = time.perf_counter() - started
        replays = world.salesforce.stats.replays_detected - replays_before

    return {
        "connections": connections,
        "seconds": round(seconds, 2),
        "speedup_vs_sequential": round(per_connection * connections / seconds, 1),
        "redeemed_twice": replays,
        "concurrency": LOCAL_WORLD_CONCURRENCY,
        "refreshed": summary.refreshed,
        "failed": summary.failed,
        "sequential_sample": sample,
        "sequential_seconds_per_connection": round(per_connection, 4),
        "method": "Heartbeat.run through moto server, proxy.py and the Salesforce emulator; sequential time extrapolated",
    }


def _heartbeat(store, salesforce, settings: Settings, config: HeartbeatConfig) -> Heartbeat:
    refresher = TokenRefresher(store, salesforce, settings)
    return Heartbeat(refresher, store, settings, config)


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes.
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


class _Callers:
    """Threads that force refreshes of random connections through another container's refresher."""

    def __init__(self, refresher: TokenRefresher, connection_ids: list[str]):
        self._refresher = refresher
        self._ids = connection_ids
        self._threads = [threading.Thread(target=self._call, args=(seed,), daemon=True) for seed in range(CALLER_THREADS)]
        self._lock = threading.Lock()
        self.completed = 0
        self.errors = 0

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def join(self) -> None:
        for thread in self._threads:
            thread.join(timeout=600)

    def _call(self, seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(CALLER_REFRESHES // CALLER_THREADS):
            try:
                self._refresher.get_token(rng.choice(self._ids), force=True)
            except Exception:  # counted; the benchmark reports how many callers failed
                with self._lock:
                    self.errors += 1
                continue
            with self._lock:
                self.completed += 1


class MemoryTokenEndpoint:
    """A token endpoint that rotates on every redemption and revokes a chain on replay."""

    def __init__(self, latency: float):
        self._latency = latency
        self._lock = threading.Lock()
        self._current: dict[str, str] = {}  # chain id -> current refresh token
        self._chain_of: dict[str, str] = {}  # refresh token -> chain id
        self._revoked: set[str] = set()
        self.requests = 0
        self.replays = 0

    def start_chain(self) -> str:
        chain = uuid.uuid4().hex
        token = "rt-" + uuid.uuid4().hex
        with self._lock:
            self._current[chain] = token
            self._chain_of[token] = chain
        return token

    def redeem_refresh_token(self, host: str, refresh_token: str) -> TokenResponse:
        with self._lock:
            self.requests += 1
            chain = self._chain_of.get(refresh_token)
            if chain is None or chain in self._revoked:
                raise ReauthorizationRequiredError("invalid_grant", error="invalid_grant")
            if self._current[chain] != refresh_token:
                self.replays += 1
                self._revoked.add(chain)
                raise ReauthorizationRequiredError("invalid_grant", error="invalid_grant")
            rotated = "rt-" + uuid.uuid4().hex
            self._current[chain] = rotated
            self._chain_of[rotated] = chain
        time.sleep(self._latency)
        return TokenResponse(
            access_token="at-" + uuid.uuid4().hex,
            refresh_token=rotated,
            instance_url="https://bench.my.salesforce.com",
            issued_at=str(int(time.time() * 1000)),
            identity_url=None,
            scope=None,
        )

    def introspect(self, host: str, token: str, **_options) -> dict:
        now = int(time.time())
        return {"active": True, "iat": now, "exp": now + SESSION_SECONDS}


class MemoryStore:
    """The refresher's and the heartbeat's store operations on a dict, with DynamoDB's conditions."""

    def __init__(self):
        self._lock = threading.Lock()
        self._items: dict[str, Connection] = {}
        self._rescues: dict[tuple[str, int], object] = {}

    def seed(self, count: int, *, idle_days: float, salesforce: MemoryTokenEndpoint) -> None:
        now = time.time()
        for position in range(count):
            connection_id = f"bench-{position:06d}"
            self._items[connection_id] = Connection(
                connection_id=connection_id,
                status=STATUS_ACTIVE,
                version=1,
                token_host=TOKEN_HOST,
                refresh_token=salesforce.start_chain(),
                session_seconds=SESSION_SECONDS,
                last_redeemed_at=now - idle_days * DAY - position,
                created_at=now,
            )

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._items)

    def count_due(self, idle_before: float) -> int:
        with self._lock:
            return sum(1 for item in self._items.values() if _is_due(item, idle_before))

    # Reads

    def get(self, connection_id: str) -> Connection | None:
        with self._lock:
            return self._items.get(connection_id)

    def query_due(self, idle_before: float, *, limit: int = 100, exclusive_start_key: dict | None = None) -> DuePage:
        after = (exclusive_start_key["last_redeemed_at"], exclusive_start_key["connection_id"]) if exclusive_start_key else None
        with self._lock:
            keys = sorted(
                (item.last_redeemed_at, item.connection_id) for item in self._items.values() if _is_due(item, idle_before)
            )
        if after is not None:
            keys = [key for key in keys if key > after]
        page = keys[:limit]
        next_key = {"last_redeemed_at": page[-1][0], "connection_id": page[-1][1]} if len(keys) > limit else None
        return DuePage([DueConnection(connection_id, redeemed) for redeemed, connection_id in page], next_key)

    # Conditional writes

    def acquire_lease(self, connection_id: str, *, version: int, owner: str, until: float, now: float) -> bool:
        with self._lock:
            item = self._items.get(connection_id)
            lease_free = item is not None and (not item.lease_owner or (item.lease_expires_at or 0) < now or item.lease_owner == owner)
            if not lease_free or item.version != version or item.status != STATUS_ACTIVE:
                return False
            self._items[connection_id] = replace(item, lease_owner=owner, lease_expires_at=until)
            return True

    def extend_lease(self, connection_id: str, *, owner: str, until: float) -> bool:
        return self._update_if_owner(connection_id, owner, lease_expires_at=until)

    def release_lease(self, connection_id: str, *, owner: str) -> bool:
        return self._update_if_owner(connection_id, owner, lease_owner=None, lease_expires_at=None)

    def save_rotation(self, current: Connection, *, refresh_token, access_token, access_token_expires_at, instance_url, org_id, user_id, session_seconds, now) -> Connection | None:
        with self._lock:
            item = self._items.get(current.connection_id)
            if item is None or item.version != current.version:
                return None
            updated = replace(
                item,
                version=item.version + 1,
                refresh_token=refresh_token,
                access_token=access_token,
                access_token_expires_at=access_token_expires_at,
                instance_url=instance_url or item.instance_url,
                session_seconds=session_seconds or item.session_seconds,
                last_redeemed_at=now,
                lease_owner=None,
                lease_expires_at=None,
                consecutive_failures=0,
                last_error_kind=None,
            )
            self._items[current.connection_id] = updated
            return updated

    def update_expiry(self, connection_id: str, *, version: int, expires_at: float, session_seconds: int) -> bool:
        return self._update_if_version(connection_id, version, access_token_expires_at=expires_at, session_seconds=session_seconds)

    def mark_reauthorization_required(self, connection_id: str, *, version: int, error_kind: str, now: float) -> bool:
        return self._update_if_version(
            connection_id, version, status=STATUS_REAUTHORIZATION_REQUIRED, last_error_kind=error_kind, lease_owner=None, lease_expires_at=None
        )

    def record_failure(self, connection_id: str, *, version: int, error_kind: str, now: float, count: bool) -> bool:
        with self._lock:
            item = self._items.get(connection_id)
            if item is None or item.version != version:
                return False
            failures = item.consecutive_failures + (1 if count else 0)
            self._items[connection_id] = replace(item, last_error_kind=error_kind, consecutive_failures=failures)
            return True

    def save_rescue(self, connection_id: str, *, version: int, refresh_token: str, access_token: str | None, now: float) -> None:
        with self._lock:
            self._rescues[(connection_id, version)] = (refresh_token, access_token)

    def get_rescue(self, connection_id: str, version: int):
        with self._lock:
            return self._rescues.get((connection_id, version))

    def _update_if_owner(self, connection_id: str, owner: str, **changes) -> bool:
        with self._lock:
            item = self._items.get(connection_id)
            if item is None or item.lease_owner != owner:
                return False
            self._items[connection_id] = replace(item, **changes)
            return True

    def _update_if_version(self, connection_id: str, version: int, **changes) -> bool:
        with self._lock:
            item = self._items.get(connection_id)
            if item is None:
                raise ConnectionNotFoundError(f"No connection {connection_id!r}.", connection_id=connection_id)
            if item.version != version:
                return False
            self._items[connection_id] = replace(item, **changes)
            return True


def _is_due(item: Connection, idle_before: float) -> bool:
    return item.status == STATUS_ACTIVE and item.last_redeemed_at is not None and item.last_redeemed_at < idle_before


if __name__ == "__main__":
    import json

    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
    print(json.dumps(run_heartbeat_benchmark(connections=count), indent=2))
