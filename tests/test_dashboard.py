"""deploy/grafana/elevenlabs-agent.json: importable as is, queries only what /metrics exports, shows
every alert's expression, and the runbook's monitoring section lists its panels."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Stack
from tests.helpers import promtool

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "elevenlabs-agent.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
RUNBOOK = ROOT / "docs" / "runbook.md"
METRIC = re.compile(r"\b(elevenlabs_agent_[a-z_]+)\b")
# Prometheus' own series (the scrape target's health), not ours.
PROMETHEUS_SERIES = {"up"}
# What the dashboard must show (the list): the metric families its panels must query.
REQUIRED_FAMILIES = {
    "elevenlabs_agent_http_requests",
    "elevenlabs_agent_http_request_duration_seconds",
    "elevenlabs_agent_webhooks",
    "elevenlabs_agent_dispatches",
    "elevenlabs_agent_callbacks",
    "elevenlabs_agent_deliveries",
    "elevenlabs_agent_results_waiting",
    "elevenlabs_agent_oldest_result_waiting_age_seconds",
    "elevenlabs_agent_pending_tasks",
    "elevenlabs_agent_stuck_pending_tasks",
    "elevenlabs_agent_redis_up",
    "elevenlabs_agent_draining",
    "elevenlabs_agent_active_sessions",
    "elevenlabs_agent_sse_subscribers",
    "elevenlabs_agent_dispatch_duration_seconds",
    "elevenlabs_agent_websocket_subscribers",
    "elevenlabs_agent_callback_spool_records",
}
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
}


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def expressions() -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in panels() for t in p["targets"]]


def normalized(expr: str) -> str:
    return " ".join(expr.split())


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def test_dashboard_is_importable_as_is() -> None:
    data = dashboard()
    assert data["uid"] == "elevenlabs-agent" and data["title"] and data["schemaVersion"] >= 36
    # No hard-wired data source: the import asks for the Prometheus one ("datasource" variable).
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique (the runbook links them with viewPanel)"
    for panel in panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


def test_every_panel_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each expression (as a recording rule; Grafana's $__rate_interval as 5m)."""
    rules = [
        {"record": f"dashboard:panel_{i}", "expr": expr.replace("$__rate_interval", "5m")}
        for i, (_, expr) in enumerate(expressions())
    ]
    path = tmp_path / "panels.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


async def test_every_metric_a_panel_queries_is_in_metrics(stack: Stack) -> None:
    response = await stack.http.get("/metrics")
    assert response.status_code == 200
    family_of = {  # every series name /metrics can hold -> its family
        family.name + suffix: family.name
        for family in text_string_to_metric_families(response.text)
        for suffix in SUFFIXES[family.type]
    }
    problems = []
    queried_families = set()
    for title, expr in expressions():
        for name in METRIC.findall(expr):
            if name in family_of:
                queried_families.add(family_of[name])
            else:
                problems.append(f"{title}: {name} is not in /metrics")
        bare = set(re.findall(r"\b([a-z_]+)\{", expr)) - {n for n in METRIC.findall(expr)}
        problems += [f"{title}: {name} is not ours" for name in bare - PROMETHEUS_SERIES]
    assert not problems, "\n".join(problems)
    assert queried_families >= REQUIRED_FAMILIES, sorted(REQUIRED_FAMILIES - queried_families)


def test_every_alert_expression_is_on_a_panel() -> None:
    shown = {(title, normalized(expr)) for title, expr in expressions()}
    missing = [rule["alert"] for rule in alert_rules() if (rule["alert"], normalized(str(rule["expr"]))) not in shown]
    assert not missing, f"alerts without a panel showing their expression: {missing}"


@pytest.mark.parametrize("panel", panels(), ids=lambda p: f"{p['id']}-{p['title']}")
def test_runbook_monitoring_links_every_panel(panel: dict[str, Any]) -> None:
    text = RUNBOOK.read_text()
    section = text.split("### Dashboard", 1)[1].split("\n## ", 1)[0]
    assert f"| `?viewPanel={panel['id']}` | {panel['title']} |" in section
