"""The monitoring pieces of the deployment: compose's exporter and Prometheus, the rules, the monitoring page.

Checked without Docker; the exporter's compose command and health check run for real
in tests/integration/test_exporter.py, the rules under promtool in .ci/run.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.compose import env_example, raw, services
from tests.support.helpers import REPO_ROOT
from voicepipe.alerts.thresholds import Thresholds, variable
from voicepipe.observability.exporter import METRICS

PROMETHEUS = REPO_ROOT / "deploy" / "prometheus"
VALUES = dict(env_example(), VOICEPIPE_EXPORTER_AUTH="prometheus:s3cret-scrape-pw,other:other-password")


@pytest.fixture(scope="module")
def svc() -> dict[str, dict[str, Any]]:
    return services(VALUES)


def rules() -> list[dict[str, Any]]:
    data = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def test_the_exporter_service_serves_on_loopback_with_credentials_from_the_environment(
    svc: dict[str, dict[str, Any]],
) -> None:
    exporter = svc["exporter"]
    assert exporter["command"] == ["voicepipe", "exporter", "--port", "9808", "--address", "0.0.0.0"]
    assert exporter["ports"] == ["127.0.0.1:9808:9808"]
    assert raw()["services"]["exporter"]["environment"]["VOICEPIPE_EXPORTER_AUTH"].startswith(
        "${VOICEPIPE_EXPORTER_AUTH:?")
    assert exporter["environment"]["VOICEPIPE_EXPORTER_AUTH"] == VALUES["VOICEPIPE_EXPORTER_AUTH"]
    assert "VOICEPIPE_EXPORTER_AUTH" in " ".join(exporter["healthcheck"]["test"])


@pytest.mark.parametrize("name", ["exporter", "worker-metrics"])
def test_the_exporter_and_the_alerts_worker_read_beats_heartbeat_from_beats_volume(
    svc: dict[str, dict[str, Any]], name: str,
) -> None:
    beat = svc["beat"]
    beat_volume, beat_dir = next(v.split(":")[:2] for v in beat["volumes"])
    # Beat writes its heartbeat into VOICEPIPE_DATA_DIR (the image's /var/lib/voicepipe).
    assert beat_dir == beat["environment"].get("VOICEPIPE_DATA_DIR", "/var/lib/voicepipe")
    heartbeat = Path(svc[name]["environment"]["VOICEPIPE_BEAT_HEARTBEAT_FILE"])
    mounts = {v.split(":")[1]: v for v in svc[name]["volumes"]}
    mount = mounts[str(heartbeat.parent)]
    assert mount == f"{beat_volume}:{heartbeat.parent}:ro"
    assert heartbeat.name == "beat-heartbeat.json"


def test_prometheus_runs_only_in_its_profile_with_the_rules_and_scrapes_the_exporter(
    svc: dict[str, dict[str, Any]],
) -> None:
    prom = svc["prometheus"]
    assert prom["profiles"] == ["monitoring"]
    assert all(p.startswith("127.0.0.1:") for p in prom["ports"])
    configs = {c["target"]: raw()["configs"][c["source"]]["file"] for c in prom["configs"]}
    assert configs == {"/etc/prometheus/voicepipe.yml": "./deploy/prometheus/prometheus.yml",
                       "/etc/prometheus/alerts.yml": "./deploy/prometheus/alerts.yml"}
    for file in configs.values():
        assert (REPO_ROOT / file).is_file()
    template = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert template["rule_files"] == ["/etc/prometheus/alerts.yml"]
    (job,) = template["scrape_configs"]
    assert job["job_name"] == "voicepipe"  # VoicepipeExporterDown matches up{job="voicepipe"}
    assert job["static_configs"][0]["targets"] == ["exporter:9808"]


def test_compose_stops_without_exporter_credentials() -> None:
    example = env_example()
    with pytest.raises(KeyError, match="VOICEPIPE_EXPORTER_AUTH"):
        services({k: v for k, v in example.items() if k != "VOICEPIPE_EXPORTER_AUTH"})


def test_prometheus_entrypoint_writes_the_first_credential_and_a_valid_config(
    svc: dict[str, dict[str, Any]], tmp_path: Path,
) -> None:
    """Run the service's shell entrypoint with its paths moved into a temporary folder."""
    prom = svc["prometheus"]
    assert prom["entrypoint"] == ["/bin/sh", "-c"]
    (script,) = prom["command"]
    etc, data = tmp_path / "etc", tmp_path / "data"
    etc.mkdir()
    data.mkdir()
    shutil.copy(PROMETHEUS / "prometheus.yml", etc / "voicepipe.yml")
    local = (script.replace("/etc/prometheus", str(etc)).replace("/prometheus/", f"{data}/")
             .replace("exec /bin/prometheus", "exit 0; exec /bin/prometheus"))
    subprocess.run(["sh", "-c", local], env={"VOICEPIPE_EXPORTER_AUTH": VALUES["VOICEPIPE_EXPORTER_AUTH"]},
                   check=True, timeout=30)
    assert (data / "exporter-password").read_text() == "s3cret-scrape-pw"
    config = yaml.safe_load((data / "prometheus.yml").read_text())
    assert config["scrape_configs"][0]["basic_auth"] == {
        "username": "prometheus", "password_file": "/prometheus/exporter-password"}
    assert "s3cret-scrape-pw" not in (data / "prometheus.yml").read_text()


def test_every_rule_has_a_runbook_and_uses_only_exported_metrics() -> None:
    exported = set(METRICS) | {"voicepipe_retries_total", "up"}
    names = [rule["alert"] for rule in rules()]
    assert len(names) == len(set(names)) >= 8
    for rule in rules():
        assert rule["annotations"]["runbook"].strip(), rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        used = set(re.findall(r"\b(voicepipe_[a-z_]+|up)\b", rule["expr"]))
        assert used and used <= exported, (rule["alert"], used - exported)


def test_every_rule_has_a_firing_and_a_silent_promtool_case() -> None:
    tests = yaml.safe_load((PROMETHEUS / "tests.yml").read_text())
    firing: set[str] = set()
    silent: set[str] = set()
    for case in tests["tests"]:
        for check in case["alert_rule_test"]:
            (firing if check["exp_alerts"] else silent).add(check["alertname"])
    everything = {rule["alert"] for rule in rules()}
    assert firing == everything and silent == everything


def test_the_monitoring_page_documents_every_metric_with_its_type_and_every_alert_threshold() -> None:
    page = (REPO_ROOT / "docs" / "howto" / "monitoring.md").read_text()
    for name, (kind, _) in METRICS.items():
        shown = f"{name}_total" if kind == "counter" else name
        assert re.search(rf"\| `{shown}(\{{[^`]*\}})?` \| {kind} \|", page), f"{shown} ({kind}) not documented"
    for field in Thresholds.__dataclass_fields__:
        assert variable(field) in page, variable(field)
