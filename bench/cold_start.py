"""Cold start: the time and peak memory to import a handler module and build its clients.

Each measurement runs in a fresh interpreter. The child times its own work with
``time.perf_counter`` and reports its peak resident set: ``VmHWM`` from ``/proc/self/status``
where Linux provides it, else ``ru_maxrss``. Linux carries the parent's peak over into the
child's ``ru_maxrss`` across fork and exec, so in a child of this large benchmark process
``ru_maxrss`` reports the parent's peak instead of the child's. The baseline is the
least a Lambda function that talks to DynamoDB does at cold start: import boto3 and build one
client. The handler's settings point at a closed loopback port, and nothing is sent, because
building boto3 clients makes no network call.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.measure import ratio

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
SHARED_CODE = REPOSITORY_ROOT / "functions" / "common" / "python"
HANDLERS = ("refresh", "heartbeat")
CHILD_TIMEOUT_SECONDS = 120
# Port 9 (discard) on loopback, where normally nothing listens. No request is made anyway.
UNREACHABLE_ENDPOINT = "http://127.0.0.1:9"

_MEASURE = """
import json, resource, sys, time
started = time.perf_counter()
{body}
seconds = time.perf_counter() - started
peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    with open("/proc/self/status") as status:
        peak_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
except (OSError, StopIteration):
    pass
print(json.dumps({{"seconds": seconds, "peak_rss_kib": peak_kib}}))
"""

BASELINE_BODY = "import boto3\nboto3.client('dynamodb', region_name='us-east-1')"

# Import the handler as Lambda does, with the shared layer on the path, then build its clients
# through the module's own ``get_runtime`` when it has one.
HANDLER_BODY = """
import importlib.util
sys.path.insert(0, {shared!r})
spec = importlib.util.spec_from_file_location("handler_module", {path!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
if hasattr(module, "get_runtime"):
    module.get_runtime()
"""


def run_cold_start(*, runs: int = 5) -> dict:
    """Measure the baseline and every existing handler module ``runs`` times and report medians."""
    baseline = _measure(BASELINE_BODY, runs)
    handlers = {}
    for name in HANDLERS:
        path = REPOSITORY_ROOT / "functions" / name / "app.py"
        if not path.exists():
            handlers[name] = {"status": "not available"}
            continue
        try:
            measured = _measure(HANDLER_BODY.format(shared=str(SHARED_CODE), path=str(path)), runs)
        except ColdStartError as exc:
            handlers[name] = {"status": "failed", "error": str(exc)}
            continue
        measured["ratio"] = {
            key: ratio(measured[key], baseline[key]) for key in ("seconds", "process_seconds", "peak_rss_kib")
        }
        handlers[name] = measured
    return {"parameters": {"runs": runs}, "baseline": baseline, "handlers": handlers}


class ColdStartError(RuntimeError):
    """A cold start child exited with an error."""


def _measure(body: str, runs: int) -> dict:
    """Run ``body`` in ``runs`` fresh interpreters and return the median of each measured value."""
    samples = [_run_child(body) for _ in range(runs)]
    return {
        "seconds": statistics.median(sample["seconds"] for sample in samples),
        "process_seconds": statistics.median(sample["process_seconds"] for sample in samples),
        "peak_rss_kib": statistics.median(sample["peak_rss_kib"] for sample in samples),
    }


def _run_child(body: str) -> dict:
    started = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "-c", _MEASURE.format(body=body)],
        env=_child_environment(),
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_SECONDS,
        check=False,
    )
    process_seconds = time.perf_counter() - started
    if completed.returncode != 0:
        raise ColdStartError(f"The cold start child exited with status {completed.returncode}: {completed.stderr[-2000:]}")
    sample = json.loads(completed.stdout.strip().splitlines()[-1])
    sample["process_seconds"] = process_seconds
    return sample


def _child_environment() -> dict[str, str]:
    """Return an environment like the deployed stack's, aimed at an unreachable loopback port."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "TOKENKEEPER_"))}
    environment.pop("PYTHONPATH", None)
    environment.update(
        {
            "TOKENKEEPER_TABLE_NAME": "tokenkeeper-connections",
            "TOKENKEEPER_CLIENT_SECRET_ID": "tokenkeeper/client-credentials",
            "TOKENKEEPER_PROXY_SECRET_ID": "tokenkeeper/proxy-url",
            "TOKENKEEPER_TOKEN_KEY_ID": "alias/tokenkeeper-tokens",
            "AWS_ENDPOINT_URL": UNREACHABLE_ENDPOINT,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_EC2_METADATA_DISABLED": "true",
            "POWERTOOLS_LOG_LEVEL": "ERROR",
            "POWERTOOLS_METRICS_DISABLED": "true",
        }
    )
    return environment
