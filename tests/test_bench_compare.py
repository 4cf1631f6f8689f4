"""The arithmetic of `bench/load.py --compare` (bench/compare.py): medians over rounds, current /
baseline ratios of the medians and round by round, and the table. No service runs here."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import compare
import rate
from load import units


def closed(rps: int, p99: float, cpu: int) -> dict[str, Any]:
    return {"kind": "closed", "rps": rps, "p50_ms": 5.0, "p99_ms": p99, "errors": 0, "cpu_percent": cpu, "rss_mb": 80.0}


def test_medians_and_ratios_per_round() -> None:
    runs = {
        "POST /callback": {
            "baseline": [closed(1000, 20.0, 100), closed(1200, 30.0, 100), closed(1100, 10.0, 100)],
            "current": [closed(2000, 10.0, 100), closed(2400, 12.0, 100), closed(3300, 5.0, 100)],
        }
    }
    summary = compare.summarise(runs)["POST /callback"]
    assert summary["rps"] == {"baseline": 1100, "current": 2400, "ratio": 2.182, "round_ratios": [2.0, 2.0, 3.0]}
    assert summary["p99_ms"]["ratio"] == 0.5  # median 10 over median 20
    # CPU per request, derived: 100 % of a core at 1,100 req/s is 0.909 ms a request.
    assert summary["cpu_ms_per_req"]["baseline"] == 0.909
    # A zero baseline has no ratio (errors), rather than a division by zero.
    assert summary["errors"] == {"baseline": 0, "current": 0, "ratio": None, "round_ratios": [None, None, None]}
    assert list(summary) == compare.METRICS["closed"]


def test_each_kind_shows_its_metrics_and_missing_values_are_dashes() -> None:
    one = {"kind": "one", "mean_ms": 1.2, "p50_ms": 1.1, "p99_ms": 2.5, "rps": 800, "errors": 0, "rss_mb": 70.0}
    runs = {"one caller": {"baseline": [one], "current": [one | {"mean_ms": 0.6, "cpu_percent": None}]}}
    summary = compare.summarise(runs)
    assert list(summary["one caller"]) == compare.METRICS["one"]
    assert summary["one caller"]["mean_ms"]["ratio"] == 0.5
    lines = compare.table(summary)
    assert lines[0].split()[:5] == ["scenario", "metric", "baseline", "current", "ratio"]
    assert lines[1].split() == ["one", "caller", "mean_ms", "1.2", "0.6", "0.50", "0.50"]
    cpu = next(line for line in lines if "cpu_percent" in line)
    assert cpu.split() == ["cpu_percent", "-", "-", "-", "-"]


def test_open_loop_runs_once_per_route_and_rate_mixes_as_documented() -> None:
    assert units(["callback", "open-loop", "one-caller"]) == [
        "callback",
        "open-loop:agent-tools",
        "open-loop:callback",
        "open-loop:mixed",
        "one-caller",
    ]
    mixed = [rate.request_of("mixed", i) for i in range(40)]
    assert [kind for kind, _ in mixed].count("health") == 4
    assert sorted(n for kind, n in mixed if kind == "callback") == list(range(18))  # each seeded task once
    assert rate.request_of("callback", 7) == ("callback", 7)
    assert rate.callback_count(100, 10, "callback") == 1010
    assert rate.callback_count(100, 10, "agent-tools") == 10
