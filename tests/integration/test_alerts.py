"""Alert rules: promtool accepts them, promtool unit tests pass, and every alert is complete."""

from __future__ import annotations

import re
import subprocess

import yaml

from bench.proxies import system_binary
from tests.support import ROOT

RULES = ROOT / "observability" / "alerts.yaml"
RUNBOOK = ROOT / "docs" / "runbook.md"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([system_binary("promtool"), *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120, check=False)


def test_rules_pass_promtool_check() -> None:
    """`promtool check rules` accepts the rule file."""
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_unit_tests_pass() -> None:
    """`promtool test rules` passes: every alert fires on its symptom and stays quiet below it."""
    result = promtool("test", "rules", str(RULES.with_name("alerts.test.yaml")))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_complete_and_tested() -> None:
    """CamelCase names, a `for:`, severity, summary, description, a runbook section, and a unit test."""
    rules = [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    anchors = {re.sub(r"[^a-z0-9-]", "", h.lower().replace(" ", "-"))
               for h in re.findall(r"^## (.+)$", RUNBOOK.read_text(), re.M)}
    tests = RULES.with_name("alerts.test.yaml").read_text()
    assert len(rules) >= 7
    for rule in rules:
        name = rule["alert"]
        assert re.fullmatch(r"(?:[A-Z][a-z0-9]+)+", name), name
        assert rule.get("for"), name
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        url = rule["annotations"]["runbook_url"]
        assert url.startswith("docs/runbook.md#") and url.split("#")[1] in anchors, name
        assert f"alertname: {name}" in tests, f"{name} has no promtool unit test"
