"""Run every benchmark and write bench/results.json and docs/benchmarks.md.

Run with ``make bench`` or ``python -m bench``. The whole run takes a few minutes.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Powertools reads these when its logger and metrics are created, so they are set before any
# product module is imported.
QUIET_ENVIRONMENT = {"POWERTOOLS_LOG_LEVEL": "ERROR", "POWERTOOLS_METRICS_DISABLED": "true"}
HEARTBEAT_MODULE = "bench.heartbeat"
DEFAULT_HEARTBEAT_CONNECTIONS = 10000
HEARTBEAT_LATENCY_SECONDS = 0.15
HEARTBEAT_TIMEOUT_SECONDS = 360
# The child exits with this status when bench.heartbeat cannot be imported.
HEARTBEAT_IMPORT_FAILED = 3
REPOSITORY_ROOT = Path(__file__).resolve().parent.parent

# moto keeps its backends in module-level state, so a second local world in this process would
# find the first world's table. The heartbeat benchmark therefore runs in a fresh interpreter.
HEARTBEAT_CHILD = """
import json, sys
try:
    from bench.heartbeat import run_heartbeat_benchmark
except ImportError as exc:
    print(f"bench.heartbeat could not be imported: {{type(exc).__name__}}: {{exc}}", file=sys.stderr)
    sys.exit({import_failed})
result = run_heartbeat_benchmark(connections={connections}, latency={latency})
with open({output!r}, "w") as output:
    json.dump(result, output)
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--heartbeat-connections",
        type=int,
        default=DEFAULT_HEARTBEAT_CONNECTIONS,
        metavar="N",
        help=f"number of connections the heartbeat benchmark keeps alive (default {DEFAULT_HEARTBEAT_CONNECTIONS})",
    )
    options = parser.parse_args(argv)
    if options.heartbeat_connections < 1:
        parser.error(f"--heartbeat-connections must be at least 1, got {options.heartbeat_connections}")
    os.environ.update(QUIET_ENVIRONMENT)

    import localworld  # noqa: F401  (puts the shared code on sys.path)
    from bench.report import describe_machine, summary_lines, write_results

    started = time.monotonic()
    results = {
        "generated_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": describe_machine(),
    }
    results.update(run_figures())
    results["heartbeat"] = run_heartbeat(options.heartbeat_connections)
    results["duration_seconds"] = round(time.monotonic() - started, 1)

    write_results(results)
    for line in summary_lines(results):
        print(line)
    print("Wrote bench/results.json and docs/benchmarks.md.")
    return 1 if results["heartbeat"].get("status") == "failed" else 0


def run_figures() -> dict:
    """Run the figures that share one local world, each against its baseline."""
    from bench.burst import run_burst
    from bench.cache_hit import run_cache_hit
    from bench.cold_start import run_cold_start
    from bench.redemptions import run_redemptions
    from bench.tunnels import run_tunnels
    from localworld.world import LocalWorld

    figures = {}
    print("Starting the local world.", flush=True)
    with LocalWorld() as world:
        print("Measuring redemptions per 1000 token requests.", flush=True)
        figures["redemptions_per_1000_requests"] = run_redemptions(world)
        print("Measuring a burst of concurrent callers on an expired token.", flush=True)
        figures["burst"] = run_burst(world)
        print("Counting the proxy's tunnels per 100 redemptions.", flush=True)
        figures["tunnels_per_100_redemptions"] = run_tunnels(world)
        print("Timing token requests served from memory and from DynamoDB.", flush=True)
        figures["cache_hit_us"] = run_cache_hit(world)
    print("Measuring cold starts in fresh interpreters.", flush=True)
    figures["cold_start"] = run_cold_start()
    return figures


def run_heartbeat(connections: int) -> dict:
    """Run ``bench.heartbeat.run_heartbeat_benchmark`` in a fresh interpreter if the module exists."""
    if importlib.util.find_spec(HEARTBEAT_MODULE) is None:
        return {"status": "not available"}

    print(f"Running the heartbeat benchmark with {connections} connections.", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-heartbeat-") as directory:
        output = Path(directory) / "heartbeat.json"
        script = HEARTBEAT_CHILD.format(
            import_failed=HEARTBEAT_IMPORT_FAILED,
            connections=connections,
            latency=HEARTBEAT_LATENCY_SECONDS,
            output=str(output),
        )
        try:
            completed = subprocess.run(
                [sys.executable, "-c", script],
                cwd=REPOSITORY_ROOT,
                stderr=subprocess.PIPE,
                text=True,
                timeout=HEARTBEAT_TIMEOUT_SECONDS,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return _heartbeat_failed(f"it did not finish within {HEARTBEAT_TIMEOUT_SECONDS} s")
        reason = completed.stderr.strip().splitlines()[-1] if completed.stderr.strip() else ""
        if completed.returncode == HEARTBEAT_IMPORT_FAILED:
            return {"status": "not available", "reason": reason}
        if completed.returncode != 0:
            return _heartbeat_failed(f"it exited with status {completed.returncode}: {reason}")
        return json.loads(output.read_text())


def _heartbeat_failed(reason: str) -> dict:
    print(f"The heartbeat benchmark failed: {reason}", file=sys.stderr)
    return {"status": "failed", "reason": reason}


if __name__ == "__main__":
    sys.exit(main())
