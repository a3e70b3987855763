"""Write the results: ``bench/results.json``, ``docs/benchmarks.md`` and a short summary."""

from __future__ import annotations

import json
import os
import platform
import textwrap
from pathlib import Path

from bench.measure import ratio

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
RESULTS_PATH = REPOSITORY_ROOT / "bench" / "results.json"
DOCUMENT_PATH = REPOSITORY_ROOT / "docs" / "benchmarks.md"
LINE_WIDTH = 98


def describe_machine() -> dict:
    """Return the processor count, CPU model and Python version of this machine."""
    return {
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or "unknown"
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return "unknown"


def write_results(results: dict) -> None:
    RESULTS_PATH.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    DOCUMENT_PATH.parent.mkdir(parents=True, exist_ok=True)
    DOCUMENT_PATH.write_text(render_markdown(results))


def summary_lines(results: dict) -> list[str]:
    """Return one line per figure with its headline numbers."""
    lines = []
    redemptions = results["redemptions_per_1000_requests"]["per_1000_requests"]
    lines.append(
        f"Redemptions per 1000 requests: product {redemptions['product_redemptions']:g}, baseline "
        f"{redemptions['baseline_redemptions']:g} ({redemptions['baseline_failed_requests']:g} failed requests, "
        f"{redemptions['baseline_chains_lost']:g} chains lost)."
    )
    burst = results["burst"]
    lines.append(
        f"Burst of {burst['parameters']['callers']}: product {burst['product']['redemptions']} redemption(s), "
        f"{burst['product']['failed_requests']} failed; baseline {burst['baseline']['redemptions']} redemption(s), "
        f"{burst['baseline']['failed_requests']} failed; p99 wait ratio {burst['ratio']['p99_wait_seconds']}."
    )
    tunnels = results["tunnels_per_100_redemptions"]["per_100_redemptions"]
    lines.append(f"Tunnels per 100 redemptions: product {tunnels['product']:g}, baseline {tunnels['baseline']:g}.")
    cache = results["cache_hit_us"]
    lines.append(
        f"Token request p50: memory {cache['product']['memory']['p50_us']:g} us, DynamoDB "
        f"{cache['product']['store']['p50_us']:g} us, naive redemption {cache['baseline']['redemption']['p50_us']:g} us."
    )
    for name, handler in results["cold_start"]["handlers"].items():
        if "ratio" in handler:
            lines.append(
                f"Cold start of the {name} handler: {handler['ratio']['seconds']}x the time and "
                f"{handler['ratio']['peak_rss_kib']}x the peak memory of boto3 with one client."
            )
    lines.append(f"Heartbeat: {_heartbeat_status(results['heartbeat'])}.")
    return lines


def _heartbeat_status(heartbeat: dict) -> str:
    return heartbeat.get("status", "measured")


# Markdown ---------------------------------------------------------------------------------------


def render_markdown(results: dict) -> str:
    sections = [
        _header(results),
        _overview_section(results),
        _redemptions_section(results["redemptions_per_1000_requests"]),
        _burst_section(results["burst"]),
        _tunnels_section(results["tunnels_per_100_redemptions"]),
        _cache_section(results["cache_hit_us"]),
        _cold_start_section(results["cold_start"]),
        _heartbeat_section(results["heartbeat"]),
    ]
    return "\n\n".join(_reflow(section.strip("\n")) for section in sections) + "\n"


def _reflow(section: str) -> str:
    """Wrap the section's paragraphs to ``LINE_WIDTH`` and leave headings and tables as they are."""
    blocks = []
    for block in section.split("\n\n"):
        if block.startswith(("#", "|")):
            blocks.append(block)
        else:
            blocks.append(textwrap.fill(" ".join(block.split()), LINE_WIDTH, break_long_words=False, break_on_hyphens=False))
    return "\n\n".join(blocks)


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) >= 10000:
        return f"{value:,.0f}"
    if isinstance(value, float) and abs(value) >= 1000:
        return f"{value:.0f}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _header(results: dict) -> str:
    machine = results["machine"]
    return f"""
# Benchmarks

`make bench` (or `python -m bench`) writes this page and `bench/results.json` from one run. The
numbers below come from the run of {results["generated_at"]}, which took
{results["duration_seconds"]:.0f} s.

## Method

Every figure compares the product with a baseline measured in the same run, on the same local
world, and is given as a ratio (product / baseline), because absolute times on a shared machine
are noisy. The local world is the one `make demo` and the tests use: moto in server mode for
DynamoDB, Secrets Manager and KMS, proxy.py with Basic authentication standing in for
QuotaGuard Static, and the Salesforce OAuth emulator over HTTPS, all on loopback.

The baseline is the integration that QuotaGuard's Salesforce guide shows: every token request is
one `requests.post` to the token endpoint through the proxy (`proxies={{"https": proxy_url}}`,
`verify` set to the local CA), with no cache and no lock. The rotated refresh token goes into a
plain dict that all of the app's callers share, as the app's storage would hold it. The only
addition is a timeout, so that a stuck request cannot hang the run.

Where a figure sets the emulator's token endpoint latency, the value is an assumption, not a
measured Salesforce response time. Latencies over loopback are far below those of a real
deployment, so the time ratios show the relative cost of each path, not production times.

## Machine

{_table(["nproc", "CPU model", "Python", "platform"], [[machine["nproc"], machine["cpu_model"], machine["python"], machine["platform"]]])}
"""


def _overview_section(results: dict) -> str:
    redemptions = results["redemptions_per_1000_requests"]
    burst = results["burst"]
    tunnels = results["tunnels_per_100_redemptions"]
    cache = results["cache_hit_us"]
    rows = [
        [
            "token requests sent to Salesforce per 1000 token requests",
            redemptions["per_1000_requests"]["product_token_requests"],
            redemptions["per_1000_requests"]["baseline_token_requests"],
            redemptions["ratio"]["token_requests"],
        ],
        [
            "failed token requests per 1000",
            redemptions["per_1000_requests"]["product_failed_requests"],
            redemptions["per_1000_requests"]["baseline_failed_requests"],
            redemptions["ratio"]["failed_requests"],
        ],
        [
            f"callers without a token in a burst of {burst['parameters']['callers']}",
            burst["product"]["failed_requests"],
            burst["baseline"]["failed_requests"],
            burst["ratio"]["failed_requests"],
        ],
        [
            "proxy tunnels per 100 redemptions",
            tunnels["per_100_redemptions"]["product"],
            tunnels["per_100_redemptions"]["baseline"],
            tunnels["ratio"]["tunnels"],
        ],
        [
            "p50 time of a cached token request against a redemption (us)",
            cache["product"]["memory"]["p50_us"],
            cache["baseline"]["redemption"]["p50_us"],
            cache["ratio"]["memory_p50"],
        ],
    ]
    handlers = results["cold_start"]["handlers"]
    for name in sorted(handlers, key=lambda name: name != "refresh"):
        handler = handlers[name]
        if "ratio" in handler:
            rows.append(
                [
                    f"cold start of the {name} handler against boto3 with one client (ms)",
                    _ms(handler["seconds"]),
                    _ms(results["cold_start"]["baseline"]["seconds"]),
                    handler["ratio"]["seconds"],
                ]
            )
    heartbeat = results["heartbeat"]
    if "seconds" in heartbeat and "sequential_seconds_extrapolated" in heartbeat:
        rows.append(
            [
                f"heartbeat over {heartbeat.get('connections')} connections against one at a time (s)",
                heartbeat["seconds"],
                heartbeat["sequential_seconds_extrapolated"],
                ratio(heartbeat["seconds"], heartbeat["sequential_seconds_extrapolated"]),
            ]
        )
    return f"""
## Overview

{_table(["figure", "product", "baseline", "product / baseline"], rows)}
"""


def _redemptions_section(figure: dict) -> str:
    parameters = figure["parameters"]
    product, baseline, ratios = figure["product"], figure["baseline"], figure["ratio"]
    per_1000 = figure["per_1000_requests"]
    rows = [
        ["token requests sent to Salesforce", product["token_requests"], baseline["token_requests"], ratios["token_requests"]],
        ["successful redemptions", product["redemptions"], baseline["redemptions"], ratios["redemptions"]],
        ["failed token requests", product["failed_requests"], baseline["failed_requests"], ratios["failed_requests"]],
        ["chains lost (revoked after a replay)", product["chains_lost"], baseline["chains_lost"], None],
    ]
    return f"""
## Redemptions per 1000 token requests

{parameters["requests"]} token requests for one connection in {parameters["rounds"]} rounds of
{parameters["callers"]} callers. The callers of a round arrive at random moments within
{parameters["arrival_window_seconds"]:g} s (the same seeded moments for both sides), and the
clock moves forward between rounds so that the rounds cover one
{parameters["session_seconds"]:g} s access token lifetime. The token endpoint's latency is set to
{parameters["token_endpoint_latency_seconds"]:g} s. The product's callers are separate
containers, and the baseline's callers share one app's storage. When a replay has revoked the
baseline's chain, the run connects the org again at once and counts a lost chain, which in
production means the subscriber must authorize the app again. The product redeems when the stored
access token has less than the request's `min_ttl_seconds` (300 by default) left, so one session
of requests sees its first redemption and one renewal near the end.

{_table(["measure", "product", "baseline", "product / baseline"], rows)}

Per 1000 requests: product {per_1000["product_redemptions"]:g} redemptions, baseline
{per_1000["baseline_redemptions"]:g}. The baseline's failures: {_counter_text(baseline["failures"])}.
The product's tokens came from: {_counter_text(product["sources"])}.
"""


def _burst_section(figure: dict) -> str:
    parameters = figure["parameters"]
    product, baseline, ratios = figure["product"], figure["baseline"], figure["ratio"]
    rows = [
        ["redemptions", product["redemptions"], baseline["redemptions"], ratios["redemptions"]],
        ["token requests sent to Salesforce", product["token_requests"], baseline["token_requests"], None],
        ["callers that got a token", product["successful_callers"], baseline["successful_callers"], ratios["successful_callers"]],
        ["failed callers", product["failed_requests"], baseline["failed_requests"], ratios["failed_requests"]],
        ["p50 wait (s)", product["p50_wait_seconds"], baseline["p50_wait_seconds"], None],
        ["p99 wait (s)", product["p99_wait_seconds"], baseline["p99_wait_seconds"], ratios["p99_wait_seconds"]],
    ]
    chain = "lost its chain" if baseline["chain_lost"] else "kept its chain"
    return f"""
## Burst on an expired token

{parameters["callers"]} callers released by one barrier just after the access token expired, with
the token endpoint's latency set to {parameters["token_endpoint_latency_seconds"]:g} s. The
product's callers are {parameters["callers"]} separate containers, and the baseline's callers
share one app's storage. The wait runs from the barrier to the caller's result, a token or an error.

{_table(["measure", "product", "baseline", "product / baseline"], rows)}

The product's results: {_counter_text(product["outcomes"])}. The baseline's results:
{_counter_text(baseline["outcomes"])}. The baseline {chain}. The product's callers wait longer
because all but one of them wait for the lease holder's result instead of failing.
"""


def _tunnels_section(figure: dict) -> str:
    product, baseline = figure["product"], figure["baseline"]
    per_100 = figure["per_100_redemptions"]
    rows = [
        ["tunnels, with the container's first", product["tunnels_with_first"], baseline["tunnels_with_first"], figure["ratio"]["tunnels"]],
        ["tunnels during the measured redemptions", product["tunnels"], baseline["tunnels"], None],
        ["per 100 redemptions", per_100["product"], per_100["baseline"], None],
    ]
    return f"""
## CONNECT tunnels per 100 redemptions

{figure["parameters"]["redemptions"]} sequential forced redemptions (`get_token(connection_id,
force=True)`) in one warm container, against as many `requests.post` calls. The proxy logs every
upstream connection it opens. The product's first row includes the tunnel that the container's
first token request opened before the measured redemptions.

{_table(["measure", "product", "baseline", "product / baseline"], rows)}
"""


def _cache_section(figure: dict) -> str:
    product, baseline, ratios = figure["product"], figure["baseline"], figure["ratio"]
    naive = baseline["redemption"]
    rows = [
        ["product, from memory", product["memory"]["samples"], product["memory"]["p50_us"], product["memory"]["p99_us"], ratios["memory_p50"], ratios["memory_p99"]],
        ["product, from DynamoDB", product["store"]["samples"], product["store"]["p50_us"], product["store"]["p99_us"], ratios["store_p50"], ratios["store_p99"]],
        ["product, forced redemption", product["redemption"]["samples"], product["redemption"]["p50_us"], product["redemption"]["p99_us"], ratios["redemption_p50"], ratios["redemption_p99"]],
        ["baseline, `requests.post`", naive["samples"], naive["p50_us"], naive["p99_us"], 1.0, 1.0],
    ]
    return f"""
## Time of one token request (microseconds)

A token request served from the container's memory, and one served from DynamoDB (the container's
cached token dropped with `forget` before each), next to one redemption's round trip through the
local world. The token endpoint responds without added latency here. The baseline pays a
redemption for every token request. The product's forced redemption also takes the lease and
writes the rotated token with a compare-and-swap before it returns.

{_table(["path", "samples", "p50 (us)", "p99 (us)", "p50 / baseline p50", "p99 / baseline p99"], rows)}
"""


def _cold_start_section(figure: dict) -> str:
    baseline = figure["baseline"]
    rows = [["baseline: `import boto3` and one client", _ms(baseline["seconds"]), _ms(baseline["process_seconds"]), _mib(baseline["peak_rss_kib"]), None, None, None]]
    for name, handler in figure["handlers"].items():
        if "ratio" not in handler:
            rows.append([f"`functions/{name}/app.py`: {handler.get('status')}", None, None, None, None, None, None])
            continue
        ratios = handler["ratio"]
        rows.append(
            [
                f"`functions/{name}/app.py` and its clients",
                _ms(handler["seconds"]),
                _ms(handler["process_seconds"]),
                _mib(handler["peak_rss_kib"]),
                ratios["seconds"],
                ratios["process_seconds"],
                ratios["peak_rss_kib"],
            ]
        )
    return f"""
## Cold start

Each row is the median of {figure["parameters"]["runs"]} fresh interpreters. "Import and build" is
timed inside the child: importing the handler module with the shared code on the path, as the
Lambda layer provides it, then calling its `get_runtime()`, which builds the boto3 clients. The
settings point at a closed loopback port and nothing is sent. "Process" is the child's whole
run, interpreter start included. Peak memory is the child's peak resident set (`VmHWM`).

{_table(["what", "import and build (ms)", "process (ms)", "peak RSS (MiB)", "time ratio", "process ratio", "memory ratio"], rows)}
"""


def _heartbeat_section(heartbeat: dict) -> str:
    if set(heartbeat) <= {"status", "reason"}:
        return f"""
## Heartbeat

Status: {heartbeat["status"]}. {heartbeat.get("reason", "")}
"""
    rows = [[key, value] for key, value in _flatten(heartbeat)]
    return f"""
## Heartbeat

Measured by `bench/heartbeat.py`. The values are shown as it reports them.

{_table(["key", "value"], rows)}
"""


def _flatten(values: dict, prefix: str = ""):
    for key, value in sorted(values.items()):
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flatten(value, name + ".")
        else:
            yield name, value


def _counter_text(counter: dict) -> str:
    if not counter:
        return "none"
    return ", ".join(f"`{name}` ({count})" for name, count in sorted(counter.items(), key=lambda item: -item[1]))


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def _mib(kib: float) -> float:
    return round(kib / 1024, 1)
