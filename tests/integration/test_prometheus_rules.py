"""A real Prometheus (Debian's, as .ci/run installs it) scrapes a real exporter with the
shipped config template and evaluates the shipped rules against what it scraped."""

from __future__ import annotations

import json
import shutil
import sys
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.orm import Session

from tests.integration.test_exporter import CREDENTIALS, artifact_events, scrape
from tests.support.helpers import Proc, data_began, service_env, spawn, wait_for
from tests.support.redis_server import free_port
from voicepipe.events.recording import record_events
from voicepipe.metrics.hourly import aggregate_hour

PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


def api(port: int, path: str, **params: str) -> Any:
    url = f"http://127.0.0.1:{port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())["data"]


def test_prometheus_scrapes_the_exporter_with_the_shipped_config_and_the_rules_match(
    session: Session, db_url: str, broker_url: str, service_data_dir: Path, tmp_path: Path,
) -> None:
    binary = shutil.which("prometheus")
    if binary is None:  # .ci/run installs it (Debian package prometheus) before pytest
        pytest.skip("prometheus is not installed")
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    record_events(session, artifact_events("org-bad", hour, 6, fail=True)
                  + artifact_events("org-good", hour, 6, fail=False))
    session.commit()
    aggregate_hour(session, hour)
    session.commit()
    # The data began four days ago and no day was ever aggregated: the daily lag counts from
    # the end of that first day, past the rule's 54 hours.
    data_began(session, hour - timedelta(days=4))

    exporter_port, prom_port = free_port(), free_port()
    env = service_env(db_url, broker_url, service_data_dir, VOICEPIPE_EXPORTER_AUTH=CREDENTIALS)
    procs: list[Proc] = [spawn([sys.executable, "-m", "voicepipe.cli", "exporter", "--port", str(exporter_port)],
                               env, tmp_path / "exporter.log")]
    try:
        wait_for(lambda: _listening(exporter_port), timeout=30, what="exporter")
        # The shipped template, filled in the way the compose entrypoint fills it.
        user, _, password = CREDENTIALS.partition(":")
        (tmp_path / "exporter-password").write_text(password)
        config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text()
                                .replace("EXPORTER_USER", user)
                                .replace("/prometheus/exporter-password", str(tmp_path / "exporter-password"))
                                .replace("/etc/prometheus/alerts.yml", str(PROMETHEUS_DIR / "alerts.yml")))
        job = config["scrape_configs"][0]
        job["static_configs"] = [{"targets": [f"127.0.0.1:{exporter_port}"]}]
        job["scrape_interval"] = job["scrape_timeout"] = "1s"
        config["global"]["evaluation_interval"] = "1s"
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        procs.append(spawn([binary, f"--config.file={tmp_path / 'prometheus.yml'}",
                            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                            f"--web.listen-address=127.0.0.1:{prom_port}"], dict(env), tmp_path / "prom.log"))

        def scraped() -> bool:
            try:
                return bool(api(prom_port, "query", query='up{job="voicepipe"} == 1')["result"])
            except OSError:
                return False

        wait_for(scraped, timeout=60, interval=0.5, what="prometheus to scrape the exporter")
        rates = api(prom_port, "query", query="voicepipe_organization_failure_rate")["result"]
        assert {r["metric"]["organization"]: float(r["value"][1]) for r in rates} == {"org-bad": 1.0, "org-good": 0.0}

        def alerts() -> dict[str, list[dict[str, Any]]]:
            found: dict[str, list[dict[str, Any]]] = {}
            for alert in api(prom_port, "alerts")["alerts"]:
                found.setdefault(alert["labels"]["alertname"], []).append(alert)
            return found

        # The failure-rate rule matched org-bad only (pending: it needs 5 minutes to fire);
        # beat silent (no heartbeat here: +Inf) and the daily lag (no day aggregated since the data began).
        wait_for(lambda: {"VoicepipeOrganizationFailureRateHigh", "VoicepipeBeatSilent",
                          "VoicepipeAggregationLagging"} <= set(alerts()), timeout=30, interval=0.5,
                 what="rules to match")
        current = alerts()
        assert [a["labels"]["organization"] for a in current["VoicepipeOrganizationFailureRateHigh"]] == ["org-bad"]
        assert [a["labels"]["period"] for a in current["VoicepipeAggregationLagging"]] == ["daily"]
        assert "VoicepipeExporterDown" not in current and "VoicepipeQueueBackingUp" not in current
        assert "VoicepipeDeadLettersPresent" not in current
    finally:
        for proc in reversed(procs):
            proc.stop()


def _listening(port: int) -> bool:
    try:
        return scrape(port, auth=None)[0] == 401
    except OSError:
        return False
