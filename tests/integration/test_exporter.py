"""`voicepipe exporter` as Prometheus scrapes it: a real subprocess, real PostgreSQL and broker."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from psycopg.errors import ReadOnlySqlTransaction
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from models import Organization
from tests.support.helpers import REPO_ROOT, Proc, producer, service_env, spawn, wait_for
from tests.support.pipeline import add_artifact
from tests.support.redis_server import free_port
from voicepipe.events.recording import record_events
from voicepipe.metrics.hourly import aggregate_hour
from voicepipe.observability.probe import read_only_session
from voicepipe.settings import get_settings

CREDENTIALS = "prometheus:scrape-test-password"


def scrape(port: int, auth: str | None = CREDENTIALS, header: str | None = None) -> tuple[int, str, dict[str, str]]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    if header is not None:
        request.add_header("Authorization", header)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace"), dict(exc.headers)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, parsed by prometheus_client's own parser."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
def exporter_env(db_url: str, broker_url: str, service_data_dir: Path) -> dict[str, str]:
    return service_env(db_url, broker_url, service_data_dir, VOICEPIPE_EXPORTER_AUTH=CREDENTIALS)


@pytest.fixture
def start_exporter(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], int]]:
    procs: list[Proc] = []

    def start(env: dict[str, str]) -> int:
        port = free_port()
        proc = spawn([sys.executable, "-m", "voicepipe.cli", "exporter", "--port", str(port)], env,
                     tmp_path / f"exporter-{len(procs)}.log", name="exporter")
        procs.append(proc)

        def up() -> bool:
            if not proc.alive():
                raise AssertionError(f"exporter exited:\n{proc.log()[-3000:]}")
            try:
                return scrape(port, auth=None)[0] == 401
            except OSError:
                return False

        wait_for(up, timeout=30, what="the exporter to listen")
        return port

    yield start
    for proc in procs:
        proc.stop()


def voicepipe(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "voicepipe.cli", *args], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120, check=False)


def artifact_events(org: str, hour: datetime, n: int, fail: bool) -> list[dict[str, Any]]:
    """N artifacts of ORG in HOUR: each received, then transcribed and completed, or failed in transcription."""
    events: list[dict[str, Any]] = []
    for i in range(n):
        art, at = str(uuid.uuid4()), hour + timedelta(minutes=5 + i)
        base = {"artifact_id": art, "organization_id": org}
        events.append({**base, "event_type": "artifact_received", "occurred_at": at.isoformat()})
        if fail:
            events.append({**base, "event_type": "transcription_failed", "stage": "transcription",
                           "error_code": "PROVIDER_ERROR", "occurred_at": (at + timedelta(seconds=20)).isoformat()})
            events.append({**base, "event_type": "artifact_failed", "stage": "transcription",
                           "error_code": "PROVIDER_ERROR", "occurred_at": (at + timedelta(seconds=21)).isoformat()})
        else:
            events.append({**base, "event_type": "transcription_completed", "stage": "transcription",
                           "duration_ms": 20_000, "occurred_at": (at + timedelta(seconds=20)).isoformat()})
            events.append({**base, "event_type": "artifact_completed", "duration_ms": 60_000,
                           "metadata": {"aiCost": 0.01},
                           "occurred_at": (at + timedelta(seconds=60)).isoformat()})
    return events


def test_scrape_after_an_hour_where_one_organization_fails_every_transcription(
    session: Session, exporter_env: dict[str, str], start_exporter: Callable[[dict[str, str]], int],
    broker_url: str,
) -> None:
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    # org-bad: 6 artifacts, every transcription fails; org-good: 5, all complete;
    # org-mixed: 3 complete and 1 fails. Expected rates: 6/6, 0/5, 1/4.
    record_events(session, artifact_events("org-bad", hour, 6, fail=True)
                  + artifact_events("org-good", hour, 5, fail=False)
                  + artifact_events("org-mixed", hour, 3, fail=False)
                  + artifact_events("org-mixed", hour + timedelta(minutes=30), 1, fail=True))
    session.commit()
    aggregate_hour(session, hour)
    session.commit()
    add_artifact(session, status="transcribing", current_stage="transcription",
                 updated_at=datetime.now(UTC) - timedelta(hours=2))  # stalled (timeout 900 s)
    add_artifact(session, status="processing", current_stage="claims_extraction")
    add_artifact(session, status="failed")
    app = producer(broker_url)
    for _ in range(2):
        app.send_task("voicepipe.metrics.aggregate_hourly_due", queue="metrics")
    app.close()

    port = start_exporter(exporter_env)
    for _ in range(2):  # again if an hour boundary fell between the scrape and `voicepipe status`
        before = time.time()
        status_code, body, _ = scrape(port)
        after = time.time()
        assert status_code == 200, body
        got = samples(body)
        status = json.loads(voicepipe(["status", "--json"], exporter_env).stdout)
        if int(before) // 3600 == int(time.time()) // 3600:
            break

    def org(name: str, organization: str) -> float:
        return got[(name, (("organization", organization),))]

    assert org("voicepipe_organization_failure_rate", "org-bad") == 1.0
    assert org("voicepipe_organization_failure_rate", "org-good") == 0.0
    assert org("voicepipe_organization_failure_rate", "org-mixed") == pytest.approx(0.25)
    assert {o: org("voicepipe_organization_artifacts_received", o) for o in ("org-bad", "org-good", "org-mixed")} \
        == {"org-bad": 6, "org-good": 5, "org-mixed": 4}
    assert org("voicepipe_organization_ai_cost_usd", "org-good") == pytest.approx(0.05)
    # Every artifact_completed took 60 s and every transcription 20 s: each percentile within 1 % of it.
    assert org("voicepipe_organization_p95_latency_seconds", "org-good") == pytest.approx(60, rel=0.01)
    for q in ("0.5", "0.9", "0.95", "0.99"):
        for o in ("org-good", "org-mixed"):
            assert got[("voicepipe_organization_latency_seconds", (("organization", o), ("quantile", q)))] \
                == pytest.approx(60, rel=0.01)
        for latency, seconds in (("end_to_end", 60), ("transcription", 20), ("claims_extraction", 0)):
            assert got[("voicepipe_latency_seconds", (("latency", latency), ("quantile", q)))] \
                == pytest.approx(seconds, rel=0.01)
    assert ("voicepipe_organization_latency_seconds", (("organization", "org-bad"), ("quantile", "0.5"))) in got
    assert got[("voicepipe_latency_percentile_error", ())] == 0.01
    assert got[("voicepipe_newest_hour_start_timestamp_seconds", ())] == hour.timestamp()

    # Lag and due windows are what `voicepipe status` says.
    newest_end = datetime.fromisoformat(status["newest_hourly"]) + timedelta(hours=1)
    lag = got[("voicepipe_window_lag_seconds", (("period", "hourly"),))]
    assert before - newest_end.timestamp() - 1 <= lag <= after - newest_end.timestamp() + 1
    assert newest_end == hour + timedelta(hours=1)
    # No day computed: the daily lag counts from the end of the day the data began in (the
    # hour above), 0 while that day is open.
    first_day_end = (hour.replace(hour=0) + timedelta(days=1)).timestamp()
    daily_lag = got[("voicepipe_window_lag_seconds", (("period", "daily"),))]
    assert max(0.0, before - first_day_end) - 1 <= daily_lag <= max(0.0, after - first_day_end) + 1
    assert status["newest_daily"] is None
    for period, unit in (("hourly", "hours"), ("daily", "days")):
        for kind in ("missing", "stale"):
            assert got[("voicepipe_windows_due", (("kind", kind), ("period", period)))] \
                == len(status[f"{kind}_{unit}"]), (period, kind)
    assert got[("voicepipe_windows_due", (("kind", "missing"), ("period", "hourly")))] > 0

    assert got[("voicepipe_queue_depth", (("queue", "metrics"),))] == status["queues"]["metrics"] == 2
    assert got[("voicepipe_broker_up", ())] == 1
    assert got[("voicepipe_artifacts", (("status", "transcribing"),))] == 1
    assert got[("voicepipe_artifacts", (("status", "processing"),))] == 1
    assert got[("voicepipe_artifacts", (("status", "failed"),))] == 1
    assert got[("voicepipe_artifacts_stalled", ())] == 1
    assert got[("voicepipe_retries_total", (("outcome", "initiated"),))] == 0
    assert got[("voicepipe_dead_letters", ())] == 0
    assert got[("voicepipe_beat_last_tick_age_seconds", ())] == float("inf")  # no beat here
    assert got[("voicepipe_up", ())] == 1


def test_anonymous_and_wrong_credentials_get_401(
    exporter_env: dict[str, str], start_exporter: Callable[[dict[str, str]], int]
) -> None:
    port = start_exporter(exporter_env)
    code, _, headers = scrape(port, auth=None)
    assert code == 401 and headers.get("WWW-Authenticate", "").startswith("Basic")
    assert scrape(port, auth="prometheus:wrong")[0] == 401
    assert scrape(port, auth=":")[0] == 401  # an empty credential
    assert scrape(port, auth=None, header="Basic !")[0] == 401
    code, body, _ = scrape(port)
    assert code == 200 and "voicepipe_up 1.0" in body


@pytest.mark.parametrize("value", [None, "", "prometheus:", ":password", "prometheus"])
def test_exporter_refuses_to_start_without_usable_credentials(
    exporter_env: dict[str, str], value: str | None
) -> None:
    env = dict(exporter_env)
    env.pop("VOICEPIPE_EXPORTER_AUTH")
    if value is not None:
        env["VOICEPIPE_EXPORTER_AUTH"] = value
    run = voicepipe(["exporter", "--port", str(free_port())], env)
    assert run.returncode == 2, run.stderr
    assert "VOICEPIPE_EXPORTER_AUTH" in run.stderr
    if value:
        assert value not in run.stderr.replace("VOICEPIPE_EXPORTER_AUTH", "")  # never echoed


def test_the_compose_exporter_command_serves_and_its_health_check_scrapes_it(
    db_url: str, broker_url: str, service_data_dir: Path, tmp_path: Path,
) -> None:
    """docker-compose.yml's exporter service, its command and health check run as local processes."""
    from tests.support.compose import env_example, healthcheck_command, local_command, services

    service = services(dict(env_example(), VOICEPIPE_EXPORTER_AUTH=CREDENTIALS))["exporter"]
    port = str(free_port())
    env = service_env(db_url, broker_url, service_data_dir)
    env.update({k: str(v) for k, v in service["environment"].items()})
    heartbeat = tmp_path / "beat-volume" / "beat-heartbeat.json"  # beat's volume, as compose mounts it
    env.update(DATABASE_URL=db_url, BROKER_URL=broker_url, VOICEPIPE_BEAT_HEARTBEAT_FILE=str(heartbeat))
    command = [a.replace("9808", port) for a in local_command(service["command"], service_data_dir)]
    check = [a.replace("9808", port) for a in healthcheck_command(service, service_data_dir)]

    def healthy() -> bool:
        done = subprocess.run(check, check=False, env=env, cwd=REPO_ROOT, capture_output=True, timeout=60)
        return done.returncode == 0

    assert not healthy()
    proc = spawn(command, env, tmp_path / "compose-exporter.log")
    try:
        wait_for(lambda: proc.alive() and healthy(), timeout=60, interval=0.5, what="exporter healthy")
        assert scrape(int(port), auth=None)[0] == 401
        heartbeat.parent.mkdir()
        now = time.time()
        heartbeat.write_text(json.dumps({"pid": 1, "host": "beat", "started_at": now - 100,
                                         "ticked_at": now - 30, "last_sent_at": now - 90}))
        got = samples(scrape(int(port))[1])
        assert 30 <= got[("voicepipe_beat_last_tick_age_seconds", ())] < 60
        assert 90 <= got[("voicepipe_beat_last_send_age_seconds", ())] < 120
    finally:
        proc.stop()
    assert not healthy()


def test_an_unreachable_database_or_broker_is_reported_not_a_failed_scrape(
    exporter_env: dict[str, str], start_exporter: Callable[[dict[str, str]], int],
) -> None:
    closed = free_port()  # nothing listens there
    no_db = start_exporter(dict(exporter_env, DATABASE_URL=f"postgresql+psycopg://postgres@127.0.0.1:{closed}/x"))
    code, body, _ = scrape(no_db)
    assert code == 200, body
    got = samples(body)
    assert got[("voicepipe_up", ())] == 0
    assert not any(name.startswith("voicepipe_window") for name, _ in got)

    no_broker = start_exporter(dict(exporter_env, BROKER_URL=f"redis://127.0.0.1:{closed}/0"))
    got = samples(scrape(no_broker)[1])
    assert got[("voicepipe_up", ())] == 1 and got[("voicepipe_broker_up", ())] == 0
    assert not any(name == "voicepipe_queue_depth" for name, _ in got)
    assert ("voicepipe_window_lag_seconds", (("period", "hourly"),)) in got


def test_3000_new_organizations_do_not_grow_the_page_past_its_limit(
    session: Session, exporter_env: dict[str, str], start_exporter: Callable[[dict[str, str]], int],
) -> None:
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    flood = [{"event_id": str(uuid.uuid4()), "event_type": "artifact_received", "organization_id": f"new-{n:04d}",
              "occurred_at": (hour + timedelta(seconds=n)).isoformat()} for n in range(3000)]
    busy = [{"event_id": str(uuid.uuid4()), "event_type": "artifact_received", "organization_id": "org-busy",
             "occurred_at": (hour + timedelta(seconds=n)).isoformat()} for n in range(7)]
    record_events(session, flood + busy)
    session.commit()
    aggregate_hour(session, hour)
    session.commit()
    port = start_exporter({**exporter_env, "VOICEPIPE_EXPORTER_MAX_ORGANIZATIONS": "100"})
    status_code, body, _ = scrape(port)
    assert status_code == 200, body
    received = {labels: value for (name, labels), value in samples(body).items()
                if name == "voicepipe_organization_artifacts_received"}
    assert len(received) == 101  # 100 organizations and the rest
    assert received[(("organization", "org-busy"),)] == 7
    assert sum(received.values()) == 3007
    assert received[(("organization", ""),)] == 3000 - 99  # 99 of the 1-artifact organizations shown
    assert samples(body)[("voicepipe_organizations_not_shown", ())] == 2901
    assert len(body.encode()) < 100_000  # about 30 KB, whatever the number of organizations


def test_idle_unauthenticated_connections_are_closed_by_the_exporter(
    exporter_env: dict[str, str], start_exporter: Callable[[dict[str, str]], int],
) -> None:
    import socket

    port = start_exporter(exporter_env)
    idle = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(50)]
    for s in idle:
        s.sendall(b"GET /metrics HTTP/1.1\r\n")  # and never the rest of the request
    try:
        for s in idle:  # each is closed by the server (an empty read), well before our own 30 s
            assert s.recv(1024) == b""
    finally:
        for s in idle:
            s.close()
    assert scrape(port)[0] == 200  # and it still serves


def test_the_exporters_and_dashboards_reads_refuse_writes_and_keep_timeouts(db_url: str, session: Session) -> None:
    """read_only_session, which every scrape and page reads through: READ ONLY, with the timeouts set."""
    with read_only_session() as reader:
        settings = dict(reader.execute(text(
            "SELECT name, setting FROM pg_settings WHERE name IN "
            "('statement_timeout', 'lock_timeout', 'transaction_read_only')")).all())
    # PostgreSQL's own view, in ms: the engine's 300 s bound and VOICEPIPE_LOCK_TIMEOUT_MS (10 s unless set).
    lock_ms = str(get_settings().lock_timeout_ms)
    assert settings == {"statement_timeout": "300000", "lock_timeout": lock_ms, "transaction_read_only": "on"}
    with pytest.raises(DBAPIError) as refused, read_only_session() as reader:
        reader.add(Organization(id="written-by-a-reader", name="x"))
        reader.flush()
    assert isinstance(refused.value.orig, ReadOnlySqlTransaction)
    assert session.get(Organization, "written-by-a-reader") is None
