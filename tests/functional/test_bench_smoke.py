"""The benchmark's figure functions, run with tiny counts to prove that the code works.

No timing is asserted: only the structure of each result and counts that hold on any machine.
"""

from __future__ import annotations

import json

import pytest

import bench.__main__ as bench_main
from bench.burst import run_burst
from bench.cache_hit import run_cache_hit
from bench.cold_start import run_cold_start
from bench.redemptions import run_redemptions
from bench.report import describe_machine, render_markdown, summary_lines
from bench.tunnels import run_tunnels

pytestmark = pytest.mark.slow


def test_redemptions_product_redeems_less(fresh_world):
    result = run_redemptions(fresh_world, requests=8, callers=2, session_seconds=7200, latency=0.0, arrival_window=0.01)

    product, baseline = result["product"], result["baseline"]
    assert result["parameters"]["requests"] == 8
    assert baseline["token_requests"] == 8
    assert product["redemptions"] >= 1
    assert product["redemptions"] <= baseline["redemptions"]
    assert product["token_requests"] <= baseline["token_requests"]
    assert product["failed_requests"] == 0
    assert sum(product["sources"].values()) == 8
    assert baseline["redemptions"] + baseline["failed_requests"] == 8


def test_burst_product_redeems_once(fresh_world):
    result = run_burst(fresh_world, callers=5, latency=0.05)

    product, baseline = result["product"], result["baseline"]
    assert product["redemptions"] == 1
    assert product["successful_callers"] == 5
    assert product["failed_requests"] == 0
    assert baseline["token_requests"] == 5
    assert baseline["successful_callers"] + baseline["failed_requests"] == 5
    assert product["redemptions"] <= baseline["token_requests"]
    assert product["p99_wait_seconds"] >= product["p50_wait_seconds"]


def test_tunnels_product_reuses_one(fresh_world):
    result = run_tunnels(fresh_world, redemptions=5)

    assert result["product"]["redemptions"] == 5
    assert result["baseline"]["redemptions"] == 5
    assert result["baseline"]["tunnels"] == 5
    assert result["product"]["tunnels_with_first"] <= 1
    assert result["product"]["tunnels"] <= result["baseline"]["tunnels"]


def test_cache_hit_reports_every_path(fresh_world):
    result = run_cache_hit(fresh_world, memory_samples=5, store_samples=5, redemption_samples=5)

    for path in ("memory", "store", "redemption"):
        assert result["product"][path]["samples"] == 5
        assert result["product"][path]["p99_us"] >= result["product"][path]["p50_us"] > 0
    assert result["baseline"]["redemption"]["samples"] == 5
    assert set(result["ratio"]) == {f"{path}_{key}" for path in ("memory", "store", "redemption") for key in ("p50", "p99")}


def test_cold_start_measures_refresh_handler():
    result = run_cold_start(runs=1)

    refresh = result["handlers"]["refresh"]
    assert result["baseline"]["peak_rss_kib"] > 0
    assert refresh["peak_rss_kib"] > 0
    assert set(refresh["ratio"]) == {"seconds", "process_seconds", "peak_rss_kib"}


def test_report_renders_every_figure(fresh_world):
    results = {
        "generated_at": "2026-01-01 00:00 UTC",
        "duration_seconds": 1.0,
        "machine": describe_machine(),
        "redemptions_per_1000_requests": run_redemptions(fresh_world, requests=4, callers=2, latency=0.0, arrival_window=0.01),
        "burst": run_burst(fresh_world, callers=2, latency=0.0),
        "tunnels_per_100_redemptions": run_tunnels(fresh_world, redemptions=2),
        "cache_hit_us": run_cache_hit(fresh_world, memory_samples=2, store_samples=2, redemption_samples=2),
        "cold_start": {"parameters": {"runs": 1}, "baseline": {"seconds": 0.1, "process_seconds": 0.2, "peak_rss_kib": 1024}, "handlers": {"heartbeat": {"status": "not available"}}},
        "heartbeat": {"status": "not available"},
    }

    markdown = render_markdown(results)

    json.dumps(results)
    for heading in ("## Overview", "## Redemptions per 1000", "## Burst", "## CONNECT tunnels", "## Time of one token request", "## Cold start", "## Heartbeat"):
        assert heading in markdown
    assert len(summary_lines(results)) == 5


def test_heartbeat_missing_module_not_available(monkeypatch):
    monkeypatch.setattr(bench_main, "HEARTBEAT_MODULE", "bench.no_such_module")

    result = bench_main.run_heartbeat(connections=1)

    assert result == {"status": "not available"}
