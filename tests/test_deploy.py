"""deploy/: the Prometheus alert rules (checked and unit-tested with promtool) and the stop timeouts and
probes of the systemd, docker compose and Kubernetes artifacts, against what the service really does."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import Counter, Gauge, Histogram

from elevenlabs_agent import metrics
from elevenlabs_agent.settings import Settings
from tests.helpers import promtool

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts.test.yml"
UNIT = DEPLOY / "systemd" / "elevenlabs-agent.service"
ENV_EXAMPLE = DEPLOY / "systemd" / "env.example"
COMPOSE = DEPLOY / "compose" / "docker-compose.yml"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
K8S = DEPLOY / "kubernetes"

# The alerts and the runbook sections they link to (the anchors are owned by docs/runbook.md).
EXPECTED_ALERTS = {
    "ElevenLabsAgentDown": ("critical", "instance-not-ready"),
    "ElevenLabsAgentRedisDown": ("critical", "redis-unavailable"),
    "ElevenLabsAgentNotReady": ("warning", "instance-not-ready"),
    "ElevenLabsAgentWebhookErrors": ("critical", "webhook-failures"),
    "ElevenLabsAgentWebhookUnauthorized": ("warning", "webhook-failures"),
    "ElevenLabsAgentDispatchFailures": ("critical", "cursor-runner-unreachable-or-slow"),
    "ElevenLabsAgentCallbackErrors": ("critical", "callback-failures"),
    "ElevenLabsAgentCallbackUnauthorized": ("warning", "callback-failures"),
    "ElevenLabsAgentResultsWaitingTooLong": ("warning", "delivery-failures"),
    "ElevenLabsAgentPushFailures": ("warning", "delivery-failures"),
    "ElevenLabsAgentStuckTasks": ("warning", "stuck-pending-tasks"),
    "ElevenLabsAgentHousekeepingStalled": ("warning", "housekeeping-stalled"),
    "ElevenLabsAgentSignedUrlErrors": ("warning", "elevenlabs-unreachable"),
    "ElevenLabsAgentCallbacksSpooledWhileRedisUp": ("warning", "callback-failures"),
}
METRIC_NAME = re.compile(r"elevenlabs_agent_[a-z_]+")


# --- helpers ----------------------------------------------------------------------------------------


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], cwd=REPO, capture_output=True, text=True, timeout=120, check=False)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alert_rules() -> list[dict[str, Any]]:
    groups = load_yaml(ALERTS)["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def exported_metric_names() -> set[str]:
    """Every sample name the service exposes on /metrics, from the metric objects themselves."""
    names: set[str] = set()
    for obj in vars(metrics).values():
        if not isinstance(obj, Counter | Gauge | Histogram):
            continue
        (family,) = obj.describe()
        if isinstance(obj, Counter):
            names.add(family.name + "_total")
        elif isinstance(obj, Histogram):
            names.update(family.name + suffix for suffix in ("_bucket", "_count", "_sum"))
        else:
            names.add(family.name)
    return names


def default_shutdown_budget() -> float:
    """How long a stop may legitimately take with the default settings."""
    fields = Settings.model_fields
    return float(fields["drain_seconds"].default) + float(fields["shutdown_timeout_seconds"].default)


_SPAN = re.compile(r"(\d+(?:\.\d+)?)\s*(minutes?|min|ms|m|us|seconds?|sec|s|hours?|hr|h)?")
_UNIT_SECONDS = {"us": 1e-6, "ms": 1e-3, "m": 60.0, "min": 60.0, "minute": 60.0, "minutes": 60.0}
_UNIT_SECONDS |= {"h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0}


def duration_seconds(text: str | int | float) -> float:
    """A systemd time span ("45s", "1min 30s", "45") or a compose duration ("45s", "1m30s") in seconds."""
    if isinstance(text, int | float):
        return float(text)
    spec = text.strip()
    parts = _SPAN.findall(spec)
    assert parts and _SPAN.sub("", spec).strip() == "", f"not a duration: {text!r}"
    return sum(float(number) * _UNIT_SECONDS.get(unit, 1.0) for number, unit in parts)


def unit_directives(path: Path) -> dict[str, dict[str, list[str]]]:
    """A systemd unit as {section: {key: [values in order]}} (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"directive outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a directive: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def settings_env_names() -> set[str]:
    """The environment variable names Settings reads (env_prefix is empty, names are case-insensitive)."""
    names = {name.upper() for name in Settings.model_fields}
    names.add("PUBLIC_URL")  # alias of ELEVENLABS_AGENT_URL
    return names


def k8s_docs() -> dict[str, dict[str, Any]]:
    docs: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs[doc["kind"]] = doc
    return docs


def k8s_container() -> dict[str, Any]:
    (container,) = k8s_docs()["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


# --- Prometheus rules -------------------------------------------------------------------------------


def test_alert_rules_pass_promtool_check() -> None:
    result = run_promtool("check", "rules", str(ALERTS.relative_to(REPO)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in result.stdout, result.stdout


def test_alert_rule_unit_tests_pass() -> None:
    result = run_promtool("test", "rules", str(ALERT_TESTS.relative_to(REPO)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout, result.stdout


def test_alert_unit_tests_cover_every_alert_firing_and_quiet() -> None:
    fired: set[str] = set()
    quiet: set[str] = set()
    for group in load_yaml(ALERT_TESTS)["tests"]:
        for case in group.get("alert_rule_test", []):
            (fired if case.get("exp_alerts") else quiet).add(case["alertname"])
            for alert in case.get("exp_alerts") or []:
                assert alert.get("exp_labels", {}).get("severity"), case
                assert alert.get("exp_annotations", {}).get("runbook_url"), case
    assert fired == set(EXPECTED_ALERTS), f"alerts never shown to fire: {set(EXPECTED_ALERTS) - fired}"
    assert quiet == set(EXPECTED_ALERTS), f"alerts never shown to stay quiet: {set(EXPECTED_ALERTS) - quiet}"


def test_alert_group_names_and_runbook_links() -> None:
    groups = load_yaml(ALERTS)["groups"]
    assert [g["name"] for g in groups] == ["elevenlabs-agent"]
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "duplicate alert names"
    assert set(names) == set(EXPECTED_ALERTS)
    for rule in rules:
        severity, anchor = EXPECTED_ALERTS[rule["alert"]]
        assert rule["labels"]["severity"] == severity, rule["alert"]
        assert rule["annotations"]["runbook_url"] == f"docs/runbook.md#{anchor}", rule["alert"]


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_alert_has_severity_and_annotations(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] in {"critical", "warning"}
    annotations = rule["annotations"]
    for key in ("summary", "description", "runbook_url"):
        assert str(annotations.get(key, "")).strip(), f"{rule['alert']} has no {key}"
    assert annotations["runbook_url"].startswith("docs/runbook.md#")
    # No id may become an alert label (one alert per conversation or task would be a flood).
    assert not {"conversation_id", "conversationId", "task_id", "taskId", "request_id"} & set(rule["labels"])


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_alert_uses_only_exported_metrics(rule: dict[str, Any]) -> None:
    exported = exported_metric_names()
    used = set(METRIC_NAME.findall(rule["expr"]))
    assert used <= exported, f"{rule['alert']} uses metrics the service does not export: {used - exported}"


def test_exported_metric_names_are_collected() -> None:
    names = exported_metric_names()
    assert {"elevenlabs_agent_http_requests_total", "elevenlabs_agent_redis_up"} <= names
    assert "elevenlabs_agent_dispatch_duration_seconds_bucket" in names
    assert "elevenlabs_agent_http_requests" not in names


# --- stop timeouts: each supervisor waits longer than the service's own bounded shutdown ---------------


def test_defaults_read_from_settings() -> None:
    assert default_shutdown_budget() == 35.0  # README: DRAIN_SECONDS 5 + SHUTDOWN_TIMEOUT_SECONDS 30


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("45s", 45), ("45", 45), (45, 45), ("1min 30s", 90), ("1m30s", 90), ("2min", 120), ("500ms", 0.5), ("1h", 3600)],
)
def test_duration_parser(text: str | int, seconds: float) -> None:
    assert duration_seconds(text) == pytest.approx(seconds)


def test_systemd_stop_timeout_exceeds_shutdown() -> None:
    service = unit_directives(UNIT)["Service"]
    (timeout,) = service["TimeoutStopSec"]
    assert duration_seconds(timeout) > default_shutdown_budget()
    assert service["KillSignal"] == ["SIGTERM"]


def test_compose_stop_grace_period_exceeds_shutdown() -> None:
    agent = load_yaml(COMPOSE)["services"]["elevenlabs-agent"]
    assert duration_seconds(agent["stop_grace_period"]) > default_shutdown_budget()
    assert agent["stop_signal"] == "SIGTERM"


def test_kubernetes_grace_period_exceeds_shutdown() -> None:
    docs = k8s_docs()
    grace = docs["Deployment"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > default_shutdown_budget()
    # The ConfigMap may set the two variables: the grace period must cover those values too.
    config = docs["ConfigMap"]["data"]
    fields = Settings.model_fields
    drain = float(config.get("DRAIN_SECONDS", fields["drain_seconds"].default))
    shutdown = float(config.get("SHUTDOWN_TIMEOUT_SECONDS", fields["shutdown_timeout_seconds"].default))
    assert grace > drain + shutdown


# --- probes and health checks ------------------------------------------------------------------------


def test_kubernetes_probes() -> None:
    container = k8s_container()
    readiness, liveness = container["readinessProbe"], container["livenessProbe"]
    assert readiness["httpGet"]["path"] == "/ready"
    assert liveness["httpGet"]["path"] == "/health"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in (readiness, liveness):
        port = probe["httpGet"]["port"]
        assert ports.get(port, port) == Settings.model_fields["port"].default
    # After SIGTERM the pod must be seen unready well within the drain period, while it still serves.
    drain = float(Settings.model_fields["drain_seconds"].default)
    assert readiness["periodSeconds"] * readiness.get("failureThreshold", 3) < drain
    assert "preStop" not in container.get("lifecycle", {})


def test_kubernetes_rollout_and_hardening() -> None:
    docs = k8s_docs()
    spec = docs["Deployment"]["spec"]
    assert spec["replicas"] >= 2
    assert spec["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    security = k8s_container()["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    selector = spec["selector"]["matchLabels"]
    assert docs["Service"]["spec"]["selector"] == selector
    assert docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == selector
    assert docs["Secret"]["metadata"]["name"] in {
        ref.get("secretRef", {}).get("name") for ref in k8s_container()["envFrom"]
    }


def test_compose_healthcheck_and_redis() -> None:
    services = load_yaml(COMPOSE)["services"]
    agent, redis = services["elevenlabs-agent"], services["redis"]
    assert agent["healthcheck"]["test"] == ["CMD", "elevenlabs-agent", "health", "--url", "http://127.0.0.1:3004"]
    assert agent["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    assert agent["depends_on"]["redis"]["condition"] == "service_healthy"
    assert agent["build"]["dockerfile"] == "deploy/docker/Dockerfile"
    assert (COMPOSE.parent / agent["build"]["context"] / agent["build"]["dockerfile"]).resolve() == DOCKERFILE
    assert redis["image"].startswith("redis:7")
    assert "--appendonly" in redis["command"]
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def test_dockerfile_runs_serve_as_non_root() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim", text, re.MULTILINE)
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert re.search(r"^EXPOSE 3004$", text, re.MULTILINE)
    assert re.search(r'^CMD \["elevenlabs-agent", ?"serve"\]$', text, re.MULTILINE)


def test_systemd_unit() -> None:
    unit = unit_directives(UNIT)
    service = unit["Service"]
    assert service["ExecStart"] == ["/opt/elevenlabs-agent/.venv/bin/elevenlabs-agent serve"]
    assert service["EnvironmentFile"] == ["/etc/elevenlabs-agent/env"]
    assert service["Restart"] == ["on-failure"]
    assert service["User"] and service["User"] != ["root"]
    for key in ("NoNewPrivileges", "PrivateTmp", "ProtectHome"):
        assert service[key] == ["yes"], key
    assert service["ProtectSystem"] == ["strict"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


# --- configuration: every variable named in deploy/ is one the service reads --------------------------


def _env_keys(text: str, *, commented: bool) -> set[str]:
    pattern = r"^#?([A-Z][A-Z0-9_]*)=" if commented else r"^([A-Z][A-Z0-9_]*)="
    return set(re.findall(pattern, text, re.MULTILINE))


def test_env_example_lists_every_setting() -> None:
    text = ENV_EXAMPLE.read_text()
    listed = _env_keys(text, commented=True)
    known = settings_env_names()
    assert listed <= known, f"env.example names unknown variables: {listed - known}"
    missing = {name.upper() for name in Settings.model_fields} - listed
    assert not missing, f"env.example does not list: {missing}"


def test_kubernetes_and_compose_variables_are_known() -> None:
    docs = k8s_docs()
    known = settings_env_names()
    for kind, key in (("ConfigMap", "data"), ("Secret", "stringData")):
        names = set(docs[kind].get(key, {}))
        assert names <= known, f"{kind} sets variables the service ignores: {names - known}"
    compose_env = set(load_yaml(COMPOSE)["services"]["elevenlabs-agent"]["environment"])
    assert compose_env <= known
