"""`voicepipe dashboard` in a real browser (Debian's chromium through Playwright) over a real
dashboard subprocess and a database filled by the simulator's history.

The figures on the pages are compared with the product's query functions called here
(the dashboard must not have a second formula), and the headline counts also with a
count of the simulated events and AI calls themselves.
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import pytest
from sqlalchemy import create_engine
from sqlalchemy import text as sql_text
from sqlalchemy.orm import Session

from models import Artifact
from tests.support.helpers import REPO_ROOT, Proc, service_env, spawn, wait_for
from tests.support.redis_server import free_port
from voicepipe.alerts.evaluate import evaluate, open_alerts
from voicepipe.directory import upsert_organization
from voicepipe.events.recording import record_events
from voicepipe.metrics.daily import aggregate_day
from voicepipe.metrics.hourly import aggregate_hour
from voicepipe.metrics.queries import (
    historical_snapshots,
    organization_breakdown,
    range_figures,
    stage_breakdown,
)
from voicepipe.observability.probe import collect
from voicepipe.pipeline.synthetic import synthetic_history
from voicepipe.usage.queries import usage_for_organization
from voicepipe.usage.recording import record_usage
from voicepipe.usage.rollup import aggregate_usage_day

CHROMIUM = "/usr/bin/chromium"
USER, PASSWORD = "operator", "dashboard-test-password"
CREDENTIALS = f"{USER}:{PASSWORD}"
NAMES = {"club-north": "North Club", "club-south": "South Club"}  # club-east has no name: "Unknown"
ORGS = ["club-north", "club-south", "club-east"]
HISTORY_HOURS = 100
USAGE_DAYS = 12
# The platform page's picture in the docs (docs/images/dashboard.png) is refreshed by running this
# file's browser test with VOICEPIPE_SCREENSHOT_DIR=docs/images; otherwise it goes to a temporary folder.
SCREENSHOT_DIR = "VOICEPIPE_SCREENSHOT_DIR"
ENDPOINTS = (
    "/", "/organizations/club-north", "/api/platform/series?period=hourly", "/api/platform/stages?period=daily",
    "/api/organizations", "/api/organizations/club-north", "/api/organizations/club-north/series",
    "/api/organizations/club-north/stages", "/api/organizations/club-north/usage", "/api/alerts",
    "/api/aggregation", "/nowhere",
)


@dataclass
class Filled:
    now: datetime
    events: list[dict[str, Any]]
    usage: list[dict[str, Any]]


def get(port: int, path: str, auth: str | None = None) -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def fill(engine: Any, now: datetime) -> Filled:
    """The simulator's history of HISTORY_HOURS hours, aggregated as beat would, AI calls rolled up."""
    events = synthetic_history(seed=13, organizations=ORGS, hours=HISTORY_HOURS, now=now, staff_user="staff-1")
    rng = random.Random(13)
    usage = [
        {"id": str(uuid.UUID(int=rng.getrandbits(128))), "organization_id": "club-north",
         "occurred_at": (now - timedelta(days=d, seconds=rng.uniform(0, 86_000))).isoformat(),
         "coach_id": f"coach-{rng.randrange(6)}",
         "player_id": f"player-{rng.randrange(15)}" if rng.random() < 0.7 else None,
         "operation": rng.choice(["parent_summary", "voice_note_transcription", "claims_extraction"]),
         "model": "gpt-test", "input_tokens": (inp := rng.randint(100, 3000)), "cached_tokens": rng.randint(0, inp),
         "output_tokens": rng.randint(20, 600), "cost": round(rng.uniform(0.0001, 0.03), 6)}
        for d in range(USAGE_DAYS) for _ in range(25)
    ]
    with Session(engine) as s:
        for org, name in NAMES.items():
            upsert_organization(s, id=org, name=name)
        for i in range(0, len(events), 5000):
            record_events(s, events[i:i + 5000], now=now)
        record_usage(s, usage)
        s.commit()
        hour = now.replace(minute=0, second=0, microsecond=0)
        for h in range(HISTORY_HOURS + 2, 0, -1):
            aggregate_hour(s, hour - timedelta(hours=h))
            s.commit()
        for d in range(HISTORY_HOURS // 24 + 1, 0, -1):
            aggregate_day(s, now.date() - timedelta(days=d))
            s.commit()
        for d in range(USAGE_DAYS, 0, -1):
            aggregate_usage_day(s, now.date() - timedelta(days=d))
            s.commit()
        # A real alert from a real evaluation: 11 artifacts stalled in transcription for an hour
        # (the threshold is 10).
        s.add_all(Artifact(organization_id="club-north", coach_id="coach-1", source_channel="whatsapp_audio",
                           status="transcribing", current_stage="transcription", created_at=now - timedelta(hours=1),
                           updated_at=now - timedelta(hours=1)) for _ in range(11))
        s.commit()
        evaluate(s, now, health(s, now))
        s.commit()
    return Filled(now, events, usage)


def health(s: Session, now: datetime) -> Any:
    from voicepipe.observability.probe import heartbeat_file
    from voicepipe.settings import get_settings

    settings = get_settings()
    return collect(s, now, broker_url=None, heartbeat=heartbeat_file(),
                   hourly_horizon_hours=settings.hourly_horizon_hours,
                   daily_horizon_days=settings.daily_horizon_days, stall_timeout_s=settings.stall_timeout_seconds)


@pytest.fixture
def dashboard(db_url: str, broker_url: str, service_data_dir: Path, tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[int, Filled]]:
    engine = create_engine(db_url)
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    # Beat is alive (a fresh heartbeat) for this test's evaluation and the dashboard alike.
    heartbeat = tmp_path / "beat-heartbeat.json"
    stamp = now.timestamp()
    heartbeat.write_text(json.dumps({"started_at": stamp, "ticked_at": stamp, "last_sent_at": stamp}))
    monkeypatch.setenv("VOICEPIPE_BEAT_HEARTBEAT_FILE", str(heartbeat))
    filled = fill(engine, now)
    engine.dispose()
    env = service_env(db_url, broker_url, service_data_dir, VOICEPIPE_DASHBOARD_AUTH=CREDENTIALS,
                      VOICEPIPE_FAKE_NOW=now.isoformat(), VOICEPIPE_BEAT_HEARTBEAT_FILE=str(heartbeat))
    proc, port = start_dashboard(env, tmp_path / "dashboard.log")
    try:
        yield port, filled
    finally:
        proc.stop()


def start_dashboard(env: dict[str, str], log: Path) -> tuple[Proc, int]:
    """`voicepipe dashboard` as a real subprocess, once it answers (401 without credentials)."""
    port = free_port()
    proc = spawn([sys.executable, "-m", "voicepipe.cli", "dashboard", "--port", str(port)], env, log,
                 name="dashboard")

    def up() -> bool:
        if not proc.alive():
            raise AssertionError(f"dashboard exited:\n{proc.log()[-3000:]}")
        try:
            return get(port, "/")[0] == 401
        except OSError:
            return False

    try:
        wait_for(up, timeout=30, what="the dashboard to listen")
    except BaseException:
        proc.stop()
        raise
    return proc, port


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def _value(raw: Any) -> str:
    return "" if raw is None else str(raw)


def _number(text: str) -> float:
    """A shown figure's number: '1,234', '12.5 %', '3.2 s', '$0.1234'."""
    return float(text.replace("$", "").replace(",", "").replace("%", "").replace(" s", "").strip())


def check_figures(page: Any, scope: str, expected: dict[str, Any]) -> int:
    """Every figure shown in SCOPE equals EXPECTED (exact value attribute; shown text within its rounding)."""
    shown = page.locator(f"{scope} .figure").evaluate_all(
        "els => els.map(e => [e.dataset.figure, e.dataset.value, e.textContent])")
    assert {key for key, _, _ in shown} == set(expected), scope
    for key, raw, text in shown:
        want = expected[key]
        if isinstance(want, Decimal):
            assert Decimal(raw) == want, (scope, key)
            assert abs(_number(text) - float(want)) <= 0.00005 + 1e-12, (scope, key, text)
        else:
            assert float(raw) == pytest.approx(float(want), rel=1e-12, abs=1e-12), (scope, key)
            if key.endswith("_rate"):
                assert abs(_number(text) - float(want) * 100) <= 0.05 + 1e-9, (scope, key, text)
            elif "latency" in key:
                assert abs(_number(text) - float(want) / 1000) <= 0.05 + 1e-9, (scope, key, text)
            else:
                assert _number(text) == float(want), (scope, key, text)
    return len(shown)


FIGURES = (
    "artifacts_received", "artifacts_completed", "artifacts_failed", "overall_failure_rate",
    "transcription_failure_rate", "claims_extraction_failure_rate", "entity_resolution_failure_rate",
    "draft_generation_failure_rate", "avg_end_to_end_latency", "p50_end_to_end_latency", "p90_end_to_end_latency",
    "p95_end_to_end_latency", "p99_end_to_end_latency", "total_ai_cost", "avg_cost_per_artifact",
)
CHART_SERIES = {
    "artifacts": ("artifacts_received", "artifacts_completed", "artifacts_failed"),
    "failure-rates": ("overall_failure_rate", "transcription_failure_rate", "claims_extraction_failure_rate",
                      "entity_resolution_failure_rate", "draft_generation_failure_rate"),
    "latency": ("avg_end_to_end_latency", "p50_end_to_end_latency", "p95_end_to_end_latency",
                "p99_end_to_end_latency"),
    "cost": ("total_ai_cost",),
}


def spans(now: datetime) -> dict[str, tuple[datetime, datetime]]:
    hour = now.replace(minute=0, second=0, microsecond=0)
    day = hour.replace(hour=0)
    return {"hourly": (hour - timedelta(hours=72), hour), "daily": (day - timedelta(days=30), day)}


def check_series(page: Any, s: Session, now: datetime, prefix: str, org: str | None) -> None:
    """Charts drawn with one point per snapshot of historical_snapshots, tiles equal range_figures,
    stage tables equal stage_breakdown."""
    for period, (start, end) in spans(now).items():
        rows = historical_snapshots(s, period, start, end, org)
        assert rows, (period, org)
        for chart, keys in CHART_SERIES.items():
            svg = page.locator(f"svg#{prefix}-{period}-{chart}")
            assert svg.count() == 1
            for key in keys:
                points = svg.locator(f'circle.point[data-series="{key}"]').evaluate_all(
                    "els => els.map(e => [e.dataset.x, e.dataset.value])")
                assert [(_ts(x), float(v)) for x, v in points] == [
                    (r.period_start.astimezone(UTC), float(getattr(r, key))) for r in rows], (period, chart, key)
            if len(rows) > 1:
                assert svg.locator("polyline.line").count() == len(keys)
        totals = range_figures(s, period, start, end, org)
        assert check_figures(page, f"#totals-{period}", {k: totals[k] for k in FIGURES}) == len(FIGURES)
        precision = page.locator(f"#precision-{period}")
        assert float(precision.get_attribute("data-percentile-error")) == 0.01
        assert precision.text_content() == "Percentiles within 1% of exact."
        for st in stage_breakdown(s, period, start, end, org):
            row = f'#stages-table-{period} tr[data-stage="{st["stage"]}"]'
            check_figures(page, row, {k: st[k] for k in ("completed", "failed", "failure_rate", "avg_latency",
                                                         "p50_latency", "p90_latency", "p95_latency", "p99_latency")})
            bar = page.locator(f'svg#stages-{period} rect.bar[data-label="{st["stage"]}"]')
            assert float(bar.get_attribute("data-value") or "nan") == st["failure_rate"]


def organization_rows(page: Any) -> list[tuple[str, str]]:
    return [tuple(r) for r in page.locator("#organizations tr[data-organization-id]").evaluate_all(
        "els => els.map(e => [e.dataset.organizationId, e.querySelector('td a').textContent])")]


def click_sort(page: Any, key: str) -> None:
    """Click a column's sort link and wait for the page it loads: the rows are read from that page,
    not from the one being left (read too early, the table is empty)."""
    link = page.locator(f'#organizations th a[data-sort="{key}"]')
    href = link.get_attribute("href")
    link.click()
    page.wait_for_url(lambda url: url.endswith(href))  # and for its load event


def test_dashboard_in_a_browser_shows_the_query_functions_figures(
    dashboard: tuple[int, Filled], engine: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    screenshot = Path(os.environ.get(SCREENSHOT_DIR) or tmp_path) / "dashboard.png"

    assert shutil.which(CHROMIUM) or Path(CHROMIUM).exists(), "Debian's chromium is missing (.ci/run installs it)"
    port, filled = dashboard
    now, base = filled.now, f"http://127.0.0.1:{port}"

    # Anonymous or wrongly authenticated requests get 401 and a Basic challenge, on every path.
    for path in ENDPOINTS:
        for auth in (None, f"{USER}:wrong-password", f"someone:{PASSWORD}", ":"):
            code, _, headers = get(port, path, auth)
            assert code == 401, (path, auth)
            assert headers.get("www-authenticate", headers.get("WWW-Authenticate", "")).startswith("Basic ")

    with sync_playwright() as pw, Session(engine) as s:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            # Chromium without credentials gives up on the challenge (ERR_INVALID_AUTH_CREDENTIALS):
            # the browser's own request context shows the status.
            anonymous = browser.new_context()
            assert anonymous.request.get(base + "/").status == 401
            assert anonymous.request.get(base + "/api/organizations").status == 401
            anonymous.close()

            context = browser.new_context(http_credentials={"username": USER, "password": PASSWORD},
                                          viewport={"width": 1360, "height": 1000})
            page = context.new_page()
            assert page.goto(base + "/").status == 200  # type: ignore[union-attr]

            # Independent of the product: received artifacts of the last 72 closed hours, counted in the history.
            start, end = spans(now)["hourly"]
            counted = sum(1 for e in filled.events if e["event_type"] == "artifact_received"
                          and start <= _ts(e["occurred_at"]) < end)
            shown = page.locator('#totals-hourly .figure[data-figure="artifacts_received"]').get_attribute("data-value")
            assert counted > 100 and int(shown or "-1") == counted

            check_series(page, s, now, "platform", None)

            # Open alerts as open_alerts lists them; lag and due windows as probe.collect reads them.
            assert [int(x) for x in page.locator("#alerts .alert").evaluate_all(
                "els => els.map(e => e.dataset.alertId)")] == [a.id for a in open_alerts(s)]
            assert page.locator("#alerts .alert").count() >= 1
            h = health(s, now)
            for period in ("hourly", "daily"):
                row = f'#aggregation tr[data-period="{period}"]'
                assert page.locator(f'{row} [data-figure="missing"]').get_attribute("data-value") == str(
                    h.windows_due[(period, "missing")])
                assert page.locator(f'{row} [data-figure="stale"]').get_attribute("data-value") == str(
                    h.windows_due[(period, "stale")])
                assert float(page.locator(f'{row} [data-figure="lag_seconds"]').get_attribute("data-value")
                             or "nan") == h.window_lag_s(period)

            # The organization table: organization_breakdown's rows and order, names, "Unknown".
            lo, hi = spans(now)["daily"]
            breakdown = organization_breakdown(s, "daily", lo, hi)
            assert organization_rows(page) == [(f.organization_id, f.name) for f in breakdown]
            assert dict(organization_rows(page))["club-east"] == "Unknown"
            for f in breakdown:
                check_figures(page, f'#organizations tr[data-organization-id="{f.organization_id}"]',
                              {"windows": f.windows, **{k: f.metrics[k] for k in (
                                  "artifacts_received", "artifacts_completed", "artifacts_failed",
                                  "overall_failure_rate", "avg_end_to_end_latency", "p50_end_to_end_latency",
                                  "p95_end_to_end_latency", "p99_end_to_end_latency", "total_ai_cost")}})
            # Sortable: clicking a header re-orders by that column, clicking again reverses it.
            click_sort(page, "overall_failure_rate")
            by_rate = sorted(breakdown, key=lambda f: f.metrics["overall_failure_rate"], reverse=True)
            assert [o for o, _ in organization_rows(page)] == [f.organization_id for f in by_rate]
            click_sort(page, "overall_failure_rate")
            assert [o for o, _ in organization_rows(page)] == [
                f.organization_id for f in sorted(breakdown, key=lambda f: f.metrics["overall_failure_rate"])]
            click_sort(page, "name")
            assert [n for _, n in organization_rows(page)] == sorted(f.name for f in breakdown)
            page.goto(base + "/")
            page.screenshot(path=str(screenshot), clip={"x": 0, "y": 0, "width": 1360, "height": 1000})

            # The JSON the page is drawn from, with the same auth.
            api = context.request.get(base + "/api/platform/series?period=hourly").json()
            rows = historical_snapshots(s, "hourly", start, end)
            assert [(_ts(w["period_start"]), w["artifacts_received"], Decimal(w["total_ai_cost"]))
                    for w in api["windows"]] == [(r.period_start.astimezone(UTC), r.artifacts_received,
                                                  r.total_ai_cost) for r in rows]

            # One organization's page, reached from the table.
            page.click('#organizations tr[data-organization-id="club-north"] td a')
            page.wait_for_url("**/organizations/club-north")
            assert page.locator("h1#organization").inner_text().startswith("North Club")
            check_series(page, s, now, "org", "club-north")

            # AI usage over the default range (30 days: rollups, the last two days raw) ...
            first, last = now.date() - timedelta(days=29), now.date()
            check_usage(page, s, now, first, last)
            assert int(page.locator('#usage-totals [data-figure="calls"]').get_attribute("data-value") or -1) == len(
                filled.usage)  # independent: every simulated call is in the range
            shown_cost = page.locator('#usage-totals [data-figure="cost"]').get_attribute("data-value")
            assert Decimal(shown_cost or "0") == sum((Decimal(str(u["cost"])) for u in filled.usage), Decimal(0))
            # ... and over a chosen range, through the page's form.
            chosen = (now.date() - timedelta(days=5), now.date() - timedelta(days=3))
            page.fill('input[name="start"]', chosen[0].isoformat())
            page.fill('input[name="end"]', chosen[1].isoformat())
            page.click('form.range button[type="submit"]')
            page.wait_for_url(f"**start={chosen[0].isoformat()}**")
            check_usage(page, s, now, *chosen)
            in_range = [u for u in filled.usage if chosen[0] <= _ts(u["occurred_at"]).date() <= chosen[1]]
            assert int(page.locator('#usage-totals [data-figure="calls"]').get_attribute("data-value") or -1) == len(
                in_range)

            # Bad input is a named 400 and a missing organization a named 404.
            bad = context.request.get(base + "/api/organizations/club-north/usage?start=2026-13-01")
            assert bad.status == 400 and bad.json()["error"] == "InvalidInput"
            assert context.request.get(base + "/api/organizations?sort=nonsense").json()["error"] == "InvalidInput"
            for path in ("/organizations/%00", "/api/organizations/club%0Anorth/series",
                         "/api/organizations/club-north/usage?end=0001-01-01",
                         "/api/organizations/club-north/usage?start=9999-12-31"):
                answer = context.request.get(base + path)
                assert answer.status == 400, (path, answer.status)
            missing = context.request.get(base + "/api/organizations/no-such-club/series")
            assert missing.status == 404 and missing.json()["error"] == "OrganizationNotFound"
            context.close()
        finally:
            browser.close()
    assert screenshot.stat().st_size < 300_000


def check_usage(page: Any, s: Session, now: datetime, first: date, last: date) -> None:
    summary = usage_for_organization(s, "club-north", first, last, now=now)
    t = summary.totals
    check_figures(page, "#usage-totals", {"cost": t.cost, "calls": t.calls, "input_tokens": t.input_tokens,
                                          "cached_tokens": t.cached_tokens, "output_tokens": t.output_tokens,
                                          "cache_hit_rate": summary.cache_hit_rate})
    assert [k for k in page.locator("#usage-by-operation tr[data-key]").evaluate_all(
        "els => els.map(e => e.dataset.key)")] == list(summary.by_operation)
    for op, totals in summary.by_operation.items():
        check_figures(page, f'#usage-by-operation tr[data-key="{op}"]', {
            "cost": totals.cost, "calls": totals.calls, "input_tokens": totals.input_tokens,
            "output_tokens": totals.output_tokens})
        bar = page.locator(f'svg#usage-by-operation rect.bar[data-label="{op}"]')
        assert float(bar.get_attribute("data-value") or "nan") == float(totals.cost)
    for table, top in (("coaches", summary.top_coaches), ("players", summary.top_players)):
        assert [k for k in page.locator(f"#usage-top-{table} tr[data-key]").evaluate_all(
            "els => els.map(e => e.dataset.key)")] == [k for k, _ in top]
        for key, totals in top:
            check_figures(page, f'#usage-top-{table} tr[data-key="{key}"]', {"cost": totals.cost,
                                                                             "calls": totals.calls})


def test_each_windows_percentile_precision_is_shown(dashboard: tuple[int, Filled], engine: Any) -> None:
    """A window carried over from the 64-bucket histogram says so, and so does every range holding it."""
    port, _ = dashboard
    with engine.begin() as conn:
        coarse = conn.execute(sql_text(
            "UPDATE metrics_snapshots SET coarse_percentiles = true WHERE id = (SELECT id FROM metrics_snapshots "
            "WHERE period_type = 'hourly' AND organization_id IS NULL ORDER BY period_start DESC OFFSET 3 LIMIT 1) "
            "RETURNING period_start")).scalar_one().astimezone(UTC)

    def api(path: str) -> dict[str, Any]:
        code, body, _ = get(port, path, CREDENTIALS)
        assert code == 200, body
        return cast(dict[str, Any], json.loads(body))

    hourly = api("/api/platform/series?period=hourly")
    errors = {_ts(w["period_start"]): w["percentile_error"] for w in hourly["windows"]}
    assert errors.pop(coarse) == 0.25
    assert set(errors.values()) == {0.01}
    assert hourly["totals"]["percentile_error"] == 0.25
    assert api("/api/platform/stages?period=hourly")["percentile_error"] == 0.25
    assert api("/api/platform/series?period=daily")["totals"]["percentile_error"] == 0.01
    assert {r["percentile_error"] for r in api("/api/organizations?period=hourly")["organizations"]} == {0.01}
    page = get(port, "/", CREDENTIALS)[1].decode()
    assert '<p class="muted precision" id="precision-hourly" data-percentile-error="0.25">Percentiles within 25%: ' \
        "some windows were recorded before latency sketches" in page
    assert 'id="precision-daily" data-percentile-error="0.01">Percentiles within 1% of exact.' in page


def test_dashboard_refuses_to_start_without_credentials(db_url: str, broker_url: str, service_data_dir: Path) -> None:
    """Unset, empty, malformed or placeholder credentials: exit 2 naming the variable, never its value."""
    for value in (None, "", "operator", "operator:", ":secret-value", "operator:change-me",
                  "operator:secret-value,other"):
        extra = {} if value is None else {"VOICEPIPE_DASHBOARD_AUTH": value}
        env = service_env(db_url, broker_url, service_data_dir, **extra)
        result = subprocess.run([sys.executable, "-m", "voicepipe.cli", "dashboard", "--port", str(free_port())],
                                env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 2, (value, result.stderr)
        assert "VOICEPIPE_DASHBOARD_AUTH" in result.stderr
        assert "secret-value" not in result.stderr


def test_a_recomputed_window_or_a_new_name_shows_within_seconds_and_the_old_table_says_it_is_refreshing(
    db_url: str, broker_url: str, service_data_dir: Path, tmp_path: Path, engine: Any
) -> None:
    """The dashboard reuses an organization breakdown only while nothing it reads has changed;
    after a change a request gets the previous one marked refreshing, never unmarked, until
    the new sum is in."""
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    day = now.date() - timedelta(days=2)
    at = datetime(day.year, day.month, day.day, 10, 15, tzinfo=UTC)

    def received(org: str, n: int, offset: int) -> list[dict[str, Any]]:
        return [{"event_id": str(uuid.UUID(int=offset + i)), "event_type": "artifact_received",
                 "organization_id": org, "occurred_at": (at + timedelta(seconds=i)).isoformat()}
                for i in range(n)]

    def aggregate(s: Session) -> None:
        hour = at.replace(minute=0)
        aggregate_hour(s, hour)
        aggregate_day(s, day)
        s.commit()

    with Session(engine) as s:
        upsert_organization(s, id="club-a", name="A Club")
        record_events(s, received("club-a", 3, 1) + received("club-b", 5, 100), now=now)
        aggregate(s)
    env = service_env(db_url, broker_url, service_data_dir, VOICEPIPE_DASHBOARD_AUTH=CREDENTIALS,
                      VOICEPIPE_FAKE_NOW=now.isoformat())
    proc, port = start_dashboard(env, tmp_path / "dashboard.log")

    def response() -> tuple[list[tuple[str, str, int]], bool, datetime]:
        code, body, _ = get(port, "/api/organizations?period=daily", CREDENTIALS)
        assert code == 200, body
        payload = json.loads(body)
        rows = [(r["organization_id"], r["name"], r["artifacts_received"]) for r in payload["organizations"]]
        return rows, payload["refreshing"], _ts(payload["computed_at"])

    def table() -> list[tuple[str, str, int]]:
        return response()[0]

    def expected(s: Session) -> list[tuple[str, str, int]]:
        lo, hi = spans(now)["daily"]
        return [(f.organization_id, f.name, f.metrics["artifacts_received"])
                for f in organization_breakdown(s, "daily", lo, hi)]

    try:
        with Session(engine) as s:
            old = [("club-b", "Unknown", 5), ("club-a", "A Club", 3)]
            assert table() == expected(s) == old
            first_sum = response()[2]
            # A late event re-aggregated into the day, and a name from the directory, in one
            # commit: the table in between (new name, old counts) is a state of its own.
            record_events(s, received("club-a", 4, 1000), now=now)
            upsert_organization(s, id="club-b", name="B Club")
            aggregate(s)
            new = [("club-a", "A Club", 7), ("club-b", "B Club", 5)]
            assert expected(s) == new
            # Until the new sum is in, a response is the old table marked refreshing (with the
            # time it was summed); never the old table unmarked, never a mix.
            seen: list[tuple[list[tuple[str, str, int]], bool, datetime]] = []

            def updated() -> bool:
                seen.append(response())
                return seen[-1][0] == new and not seen[-1][1]

            # Within seconds, however the waits are stretched.
            wait_for(updated, timeout=30, interval=0.05, what="the new breakdown", scale=False)
            for rows, refreshing, summed in seen[:-1]:
                assert (rows, refreshing, summed) == (old, True, first_sum)
            assert seen[-1][2] > first_sum
    finally:
        proc.stop()


def test_a_changed_range_gives_the_previous_breakdown_marked_refreshing_until_the_background_sum_is_in(
    engine: Any,
) -> None:
    """In process: breakdowns.cached_breakdown after a change returns at once, marked, and sums in the background."""
    from voicepipe.dashboard import breakdowns, data

    now = datetime.now(UTC).replace(second=0, microsecond=0)
    day = now.date() - timedelta(days=3)
    at = datetime(day.year, day.month, day.day, 9, 5, tzinfo=UTC)
    start, end = data.period_span("daily", now)
    breakdowns._breakdowns.clear()

    def add(n: int, offset: int) -> None:
        with Session(engine) as s:
            record_events(s, [{"event_id": str(uuid.UUID(int=offset + i)), "event_type": "artifact_received",
                               "organization_id": "club-r", "occurred_at": (at + timedelta(seconds=i)).isoformat()}
                              for i in range(n)], now=now)
            s.commit()
            aggregate_hour(s, at.replace(minute=0))
            aggregate_day(s, day)
            s.commit()

    def cached(wait: bool = False) -> Any:
        return data.read(lambda s, _n: breakdowns.cached_breakdown(s, "daily", start, end, wait=wait), now)

    def received(b: Any) -> list[tuple[str, int]]:
        return [(f.organization_id, f.metrics["artifacts_received"]) for f in b.rows]

    add(3, 1)
    first = cached()
    assert (received(first), first.refreshing) == ([("club-r", 3)], False)
    add(4, 100)
    marked = cached()
    assert (received(marked), marked.refreshing, marked.computed_at) == ([("club-r", 3)], True, first.computed_at)
    def summed() -> Any:
        b = cached()
        return None if b.refreshing else b

    done = wait_for(summed, timeout=30, interval=0.05, what="the background sum")
    assert received(done) == [("club-r", 7)] and done.computed_at > first.computed_at
    # The refresher's way (wait=True) sums at once instead.
    add(2, 200)
    waited = cached(wait=True)
    assert (received(waited), waited.refreshing) == ([("club-r", 9)], False)
    breakdowns._breakdowns.clear()


def test_20000_operation_names_leave_the_organization_page_its_size(
    db_url: str, broker_url: str, service_data_dir: Path, tmp_path: Path, engine: Any,
) -> None:
    from voicepipe.usage.recording import record_usage

    now = datetime.now(UTC).replace(microsecond=0)
    calls = [{"id": str(uuid.uuid4()), "organization_id": "club-flood", "operation": f"op-{n:05d}", "model": "m",
              "input_tokens": 10, "output_tokens": 5, "cost": 0.001 if n >= 3 else 1.0,
              "occurred_at": (now - timedelta(minutes=5)).isoformat()} for n in range(20_000)]
    with Session(engine) as s:
        s.execute(sql_text("INSERT INTO organizations (id, name) VALUES ('club-flood', 'Flood Club')"))
        record_usage(s, calls)
        s.commit()
    env = service_env(db_url, broker_url, service_data_dir, VOICEPIPE_DASHBOARD_AUTH=CREDENTIALS,
                      VOICEPIPE_DASHBOARD_MAX_ROWS="50")
    proc, port = start_dashboard(env, tmp_path / "dashboard.log")
    try:
        code, body, _ = get(port, "/api/organizations/club-flood/usage", CREDENTIALS)
        assert code == 200, body
        usage = json.loads(body)
        assert len(usage["by_operation"]) == 50
        assert {"op-00000", "op-00001", "op-00002"} <= set(usage["by_operation"])  # the costliest kept
        other = usage["other_operations"]
        assert other["count"] == 19_950 and other["calls"] == 19_950
        shown = sum(Decimal(t["cost"]) for t in usage["by_operation"].values())
        assert shown + Decimal(other["cost"]) == Decimal(usage["totals"]["cost"]) == Decimal("3") + Decimal(
            "0.001") * 19_997
        code, page, _ = get(port, "/organizations/club-flood", CREDENTIALS)
        assert code == 200
        assert len(page) < 300_000, len(page)  # was 33.5 MB for 20,000 operations
        assert b"19950 other operations" in page
    finally:
        proc.stop()
