"""The built-in checks' pure parts: thresholds from the environment, findings of one health reading,
and the exporter's credential check."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest

from voicepipe.alerts.evaluate import health_findings
from voicepipe.alerts.thresholds import Thresholds, load_thresholds
from voicepipe.errors import SettingsError
from voicepipe.observability.exporter import authorized, parse_credentials
from voicepipe.observability.probe import BeatState, OrganizationHour, PipelineHealth

NOW = datetime(2026, 3, 1, 10, 10, tzinfo=UTC)


def healthy(**changes: object) -> PipelineHealth:
    """A reading where nothing is wrong: hour 08:00 done at 09:30 (lag 70 min), one hour due."""
    values: dict[str, object] = {
        "now": NOW,
        "newest_window": {"hourly": NOW.replace(hour=8, minute=0), "daily": datetime(2026, 2, 28, tzinfo=UTC)},
        "windows_due": {("hourly", "missing"): 1, ("hourly", "stale"): 0, ("daily", "missing"): 0,
                     ("daily", "stale"): 0},
        "windows_failing": {"hourly": 0, "daily": 0},
        "artifacts": {}, "artifacts_stalled": 0, "queues": {"metrics": 0, "pipeline": 5, "retry": 0},
        "retries": {}, "dead_letters": 0, "beat": BeatState(3.0, 40.0, "heartbeat read"),
        "newest_hour": NOW.replace(hour=8, minute=0), "organizations": [],
    }
    values.update(changes)
    return PipelineHealth(**values)  # type: ignore[arg-type]


def kinds(health: PipelineHealth, th: Thresholds | None = None) -> list[tuple[str, str | None]]:
    return [(f.kind, f.organization_id) for f in health_findings(health, th or Thresholds())[0]]


def test_a_healthy_reading_finds_nothing() -> None:
    assert kinds(healthy()) == []


def test_each_condition_is_found_past_its_threshold_only() -> None:
    assert kinds(healthy(newest_window={"hourly": NOW - timedelta(hours=4, minutes=1), "daily": None},
                         first_data=datetime(2026, 2, 26, 23, tzinfo=UTC))) == [
        ("aggregation_lag_hourly", None), ("aggregation_lag_daily", None)]
    assert kinds(healthy(windows_due={("hourly", "missing"): 2, ("hourly", "stale"): 1,
                                      ("daily", "missing"): 1, ("daily", "stale"): 0})) == [
        ("windows_due_hourly", None)]
    assert kinds(healthy(windows_failing={"hourly": 0, "daily": 1})) == [("windows_failing", None)]
    assert kinds(healthy(queues={"metrics": 0, "pipeline": 1001, "retry": 0})) == [("queue_depth", None)]
    assert kinds(healthy(queues={"metrics": 0, "pipeline": 1000, "retry": 0})) == []
    assert kinds(healthy(artifacts_stalled=11)) == [("stalled_artifacts", None)]
    assert kinds(healthy(beat=BeatState(700.0, 700.0, "x"))) == [("beat_silent", None)]
    assert kinds(healthy(beat=BeatState(None, None, "no beat heartbeat"))) == [("beat_silent", None)]
    assert kinds(healthy(dead_letters=1)) == [("dead_letters", None)]


def test_organization_rates_need_enough_finished_artifacts() -> None:
    orgs = [
        OrganizationHour("org-bad", 6, 0, 6, 1.0, 10_000, 0.0),
        OrganizationHour("org-tiny", 2, 0, 2, 1.0, 10_000, 0.0),  # 2 finished < 5
        OrganizationHour("org-slow", 9, 9, 0, 0.0, 301_000, 0.0),
        OrganizationHour("org-fine", 9, 8, 1, 0.125, 60_000, 0.0),
    ]
    assert kinds(healthy(organizations=orgs)) == [("failure_rate", "org-bad"), ("latency_p95", "org-slow")]


def test_an_unreadable_broker_leaves_queue_alerts_as_they_are() -> None:
    found, evaluated = health_findings(healthy(queues={"metrics": None, "pipeline": None, "retry": None}),
                                       Thresholds())
    assert found == [] and "queue_depth" not in evaluated


def test_thresholds_come_from_the_environment_and_bad_ones_name_themselves() -> None:
    th = load_thresholds({"VOICEPIPE_ALERT_QUEUE_DEPTH": "5", "VOICEPIPE_ALERT_FAILURE_RATE": " 0.5 "})
    assert th.queue_depth == 5 and th.failure_rate == 0.5 and th.stalled_artifacts == Thresholds().stalled_artifacts
    for bad in ("abc", "-1", "nan"):
        with pytest.raises(SettingsError, match="VOICEPIPE_ALERT_QUEUE_DEPTH"):
            load_thresholds({"VOICEPIPE_ALERT_QUEUE_DEPTH": bad})


def test_lag_counts_from_the_first_window_with_data() -> None:
    never = {"hourly": None, "daily": None}
    # Nothing recorded yet: nothing to be behind on, and no alert.
    assert healthy(newest_window=never).window_lag_s("hourly") == 0.0
    assert kinds(healthy(newest_window=never)) == []
    # Data since 06:20, nothing aggregated: the hour 06:00 closed at 07:00, 3 h 10 min ago;
    # the day it began in has not closed.
    fresh = healthy(newest_window=never, first_data=datetime(2026, 3, 1, 6, tzinfo=UTC))
    assert fresh.window_lag_s("hourly") == 3 * 3600 + 600 and fresh.window_lag_s("daily") == 0.0
    found = health_findings(fresh, Thresholds())[0]
    assert [f.kind for f in found] == ["aggregation_lag_hourly"]
    assert found[0].message == ("No hourly window has been aggregated since the data began at 2026-03-01 06:00 UTC:"
                                " the first one closed 3.2 h ago (alert past 3.0 h).")
    late = healthy(newest_window={"hourly": datetime(2026, 3, 1, 5, tzinfo=UTC), "daily": None},
                   first_data=datetime(2026, 2, 20, tzinfo=UTC))
    assert health_findings(late, Thresholds())[0][0].message == (
        "The hourly aggregation is 4.2 h behind: the newest hour aggregated began at 2026-03-01 05:00 UTC"
        " (alert past 3.0 h).")


def header(value: str) -> str:
    return "Basic " + base64.b64encode(value.encode()).decode()


def test_credentials_are_checked_exactly() -> None:
    creds = parse_credentials({"VOICEPIPE_EXPORTER_AUTH": "prom:prom-password-1,ops:ops-password-2"})
    assert creds == [("prom", "prom-password-1"), ("ops", "ops-password-2")]
    assert authorized(header("prom:prom-password-1"), creds) and authorized(header("ops:ops-password-2"), creds)
    for bad in (None, "", "Bearer x", "Basic !!!", header("prom:ops-password-2"), header("prom:"), header(":"),
                header("prom"), header("prom:prom-password-1x")):
        assert not authorized(bad, creds), bad
    for value in ("", "prom", "prom:", ":pw", "prom:change-me", "prom:short", "prom:password123",
                  "prom:aaaaaaaaaaaaaaaa", "prom:zero\u200bwidth-space-1"):
        with pytest.raises(SettingsError, match="VOICEPIPE_EXPORTER_AUTH"):
            parse_credentials({"VOICEPIPE_EXPORTER_AUTH": value})
