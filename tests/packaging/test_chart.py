"""The Helm chart rendered by real Helm (helm-python-sdk), linted, and validated against Kubernetes schemas."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from observability import dashboard
from tests.support import ROOT

CHART = ROOT / "charts" / "ws-gateway"
EXAMPLE = ROOT / "charts" / "examples" / "app-with-gateway"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
KUBE_VERSIONS = [f"1.{minor}.0" for minor in range(29, int(kubernetes_validate.latest_version().split(".")[1]) + 1)]
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}


def render(values: dict[str, Any] | None, chart: Path = CHART) -> list[dict[str, Any]]:
    manifests = helm.Chart.load(str(chart)).render(values, name="demo", namespace="web")
    documents = []
    for path, text in manifests.items():
        if path.endswith("NOTES.txt"):
            continue
        documents += [d for d in yaml.safe_load_all(text) if d]
    return documents


def by_kind(documents: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in documents if d["kind"] == kind]


def load_values(path: Path) -> dict[str, Any]:
    return dict(yaml.safe_load(path.read_text()) or {})


def test_chart_lints_clean() -> None:
    """`helm lint --strict` finds no warnings or errors in the chart or the worked example."""
    for values in [None, *(load_values(p) for p in CI_VALUES)]:
        report = helm.lint(str(CHART), values, strict=True)
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        assert not problems and not report["errors"], report


@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.stem)
def test_every_mode_renders_valid_manifests(values_file: Path) -> None:
    """Every ci/ values file renders, and every manifest passes strict schema validation on k8s 1.29 to the newest."""
    documents = render(load_values(values_file))
    for document in documents:
        if document["kind"] in CRD_KINDS:
            assert document["apiVersion"] == "monitoring.coreos.com/v1"
            continue
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(document, version, strict=True)


def test_standalone_deployment_essentials(tmp_path: Path) -> None:
    """Probes on the admin port, grace period above the drain, hardened pods, config that the gateway accepts."""
    documents = render(load_values(CHART / "ci" / "standalone-values.yaml"))
    deployment = by_kind(documents, "Deployment")[0]
    pod = deployment["spec"]["template"]["spec"]
    gateway = next(c for c in pod["containers"] if c["name"] == "ws-gateway")
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert next(p for p in gateway["ports"] if p["name"] == "admin")["containerPort"] == 9102
    config_map = by_kind(documents, "ConfigMap")[0]
    config = yaml.safe_load(config_map["data"]["gateway.yaml"])
    mount = next(m for m in gateway["volumeMounts"] if m["name"] == "ws-gateway-config")
    volume = next(v for v in pod["volumes"] if v["name"] == "ws-gateway-config")
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    assert gateway["args"] == ["--config", f"{mount['mountPath']}/gateway.yaml"], "the mounted file is the one read"
    assert (config["listen"], config["admin_listen"]) == ("0.0.0.0:8080", "0.0.0.0:9102")
    assert pod["terminationGracePeriodSeconds"] > 25
    assert config["drain"]["timeout"] == "25s"
    security = gateway["securityContext"]
    assert security["runAsNonRoot"] and security["readOnlyRootFilesystem"]
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["securityContext"]["runAsNonRoot"]
    assert "checksum/ws-gateway-config" in deployment["spec"]["template"]["metadata"]["annotations"]
    config_file = tmp_path / "gateway.yaml"
    config_file.write_text(config_map["data"]["gateway.yaml"])
    result = subprocess.run([sys.executable, "-m", "gateway", "check-config", str(config_file)],
                            capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    service = by_kind(documents, "Service")[0]
    assert [p["name"] for p in service["spec"]["ports"]] == ["ws"], "admin port stays off the Service by default"
    assert by_kind(documents, "PodDisruptionBudget")
    for kind in ("Ingress", "ServiceMonitor", "PrometheusRule"):
        assert not by_kind(documents, kind), f"{kind} is off by default"


def test_config_change_rolls_pods() -> None:
    """A different gateway config gives a different checksum annotation (pods roll)."""
    def checksum(values: dict[str, Any]) -> str:
        deployment = by_kind(render(values), "Deployment")[0]
        return str(deployment["spec"]["template"]["metadata"]["annotations"]["checksum/ws-gateway-config"])

    assert checksum({}) != checksum({"config": {"client": {"ping_interval": "15s"}}})


def test_native_sidecar_mode() -> None:
    """nativeSidecar puts the gateway in initContainers with restartPolicy Always."""
    pod = by_kind(render({"nativeSidecar": True}), "Deployment")[0]["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["app"]
    assert pod["initContainers"][0]["name"] == "ws-gateway"
    assert pod["initContainers"][0]["restartPolicy"] == "Always"


def test_optional_resources_when_enabled() -> None:
    """ServiceMonitor scrapes the admin port; PrometheusRule and dashboard ship the repo's single sources."""
    documents = render(load_values(CHART / "ci" / "full-values.yaml"))
    monitor = by_kind(documents, "ServiceMonitor")[0]
    assert monitor["spec"]["endpoints"][0]["port"] == "admin"
    rule = by_kind(documents, "PrometheusRule")[0]
    source = yaml.safe_load((ROOT / "observability" / "alerts.yaml").read_text())
    assert rule["spec"] == source
    dashboard_map = next(d for d in by_kind(documents, "ConfigMap") if "dashboard" in d["metadata"]["name"])
    assert dashboard_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads(dashboard_map["data"]["ws-gateway-dashboard.json"])
    assert shipped["uid"] == dashboard.UID and shipped["panels"] == dashboard.build()["panels"]
    ingress = by_kind(documents, "Ingress")[0]
    annotations = ingress["metadata"]["annotations"]
    read_timeout = int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"])
    config_map = next(d for d in by_kind(documents, "ConfigMap") if d["data"].get("gateway.yaml"))
    ping_interval = yaml.safe_load(config_map["data"]["gateway.yaml"])["client"]["ping_interval"]
    assert read_timeout == 60 and int(ping_interval.rstrip("s")) < read_timeout
    # Client resume needs the resuming connection on the same pod (docs/resume.md): cookie affinity.
    assert annotations["nginx.ingress.kubernetes.io/affinity"] == "cookie"
    assert annotations["nginx.ingress.kubernetes.io/session-cookie-name"] == "ws-gateway-pod"
    without = render({**load_values(CHART / "ci" / "full-values.yaml"),
                      "ingress": {"enabled": True, "host": "ws.example.com", "sessionAffinity": False}})
    assert "nginx.ingress.kubernetes.io/affinity" not in by_kind(without, "Ingress")[0]["metadata"]["annotations"]
    pod = by_kind(documents, "Deployment")[0]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 45, "drain.timeout 40s + 5s"


def test_chart_copies_are_generated() -> None:
    """The chart's dashboard and alert files are exactly what `make dashboard` generates, marked as such."""
    for path, text in dashboard.chart_copies().items():
        assert path.read_text(encoding="utf-8") == text, f"{path} is stale: run make dashboard"
        assert dashboard.GENERATED in text


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCont": 2}, "replicaCont"),
        ({"service": {"port": "eighty"}}, "port"),
        ({"mode": "sidecar"}, "mode"),
        ({"ingress": {"enabled": True, "hots": "x"}}, "hots"),
    ],
)
def test_schema_rejects_typos_and_wrong_types(values: dict[str, Any], message: str) -> None:
    """values.schema.json refuses unknown keys and wrong types, naming the key."""
    with pytest.raises(helm.HelmError) as info:
        helm.Chart.load(str(CHART)).render(values, name="demo", namespace="web")
    assert message in str(info.value)


def test_grace_period_must_exceed_drain() -> None:
    """A grace period that does not leave room for the drain is refused at render time."""
    with pytest.raises(helm.HelmError, match=r"must exceed the gateway's drain\.timeout"):
        render({"terminationGracePeriodSeconds": 20})


def test_worked_example_injects_the_sidecar(tmp_path: Path) -> None:
    """An app chart depending on ws-gateway renders the gateway container, its config and a valid Deployment."""
    app = tmp_path / "app"
    shutil.copytree(EXAMPLE, app)
    shutil.copytree(CHART, app / "charts" / "ws-gateway")  # what `helm dependency build` does
    for native in (False, True):
        documents = render({"ws-gateway": {"nativeSidecar": native}}, app)
        deployment = by_kind(documents, "Deployment")[0]
        pod = deployment["spec"]["template"]["spec"]
        names = [c["name"] for c in pod.get("initContainers" if native else "containers", [])]
        assert "ws-gateway" in names
        assert any(v["name"] == "ws-gateway-config" for v in pod["volumes"])
        assert by_kind(documents, "ConfigMap")
        for document in documents:
            kubernetes_validate.validate(document, KUBE_VERSIONS[0], strict=True)
            kubernetes_validate.validate(document, KUBE_VERSIONS[-1], strict=True)
