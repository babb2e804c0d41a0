"""Hourly and daily snapshots, computed by the plain functions against real PostgreSQL."""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session

from models import AggregationWindow, MetricsSnapshot, Organization
from tests.support.helpers import data_began
from tests.support.metrics import (
    assert_row_matches,
    expected,
    group_events,
    midnight,
    random_event,
    recent_day,
)
from voicepipe.errors import InvalidInput
from voicepipe.events.recording import record_events
from voicepipe.metrics.daily import aggregate_day
from voicepipe.metrics.due import due_days, due_hours
from voicepipe.metrics.hourly import aggregate_hour
from voicepipe.metrics.queries import historical_snapshots, organization_breakdown, stage_breakdown

ORGS: list[str | None] = ["org-a", "org-b", "org-c", "org-d", "org-e", None]


def snapshots(session: Session, period_type: str) -> dict[tuple[str | None, datetime], MetricsSnapshot]:
    rows = session.execute(select(MetricsSnapshot).where(MetricsSnapshot.period_type == period_type)).scalars()
    return {(r.organization_id, r.period_start.astimezone(UTC)): r for r in rows}


def row_values(session: Session) -> list[tuple[Any, ...]]:
    """Every snapshot row without ids and timestamps of computation, sorted."""
    cols = [c for c in MetricsSnapshot.__table__.c if c.name not in ("id", "computed_at")]
    return sorted(
        (tuple(r) for r in session.execute(select(*cols)).all()),
        key=lambda t: (t[1] or "", str(t[2]), str(t[3])),
    )


def test_seeded_stream_over_three_days_matches_an_independent_recount(session: Session) -> None:
    rng = random.Random(303)
    first = recent_day(4)
    start = midnight(first)
    events = [random_event(rng, start, 72, ORGS) for _ in range(4_000)]
    for i in range(0, len(events), 1_000):
        record_events(session, events[i : i + 1_000])
    session.commit()

    for offset in range(3):
        aggregate_day(session, first + timedelta(days=offset))
    session.commit()

    want_hourly, want_daily = group_events(events)
    hourly, daily = snapshots(session, "hourly"), snapshots(session, "daily")
    # Exactly one row per active (organization, window), plus a platform row for every window.
    hours = [start + timedelta(hours=i) for i in range(72)]
    assert set(hourly) == set(want_hourly) | {(None, h) for h in hours}
    assert {(org, d.date()) for org, d in daily} == set(want_daily)
    for key, row in hourly.items():
        assert_row_matches(row, expected(want_hourly.get(key, [])), f"hourly {key}")
        assert row.period_end - row.period_start == timedelta(hours=1)
    for (org, day), row in daily.items():
        assert_row_matches(row, expected(want_daily[(org, day.date())]), f"daily {org} {day}")
        assert row.period_end - row.period_start == timedelta(days=1)
    assert due_hours(session, start + timedelta(days=3), 72) == []
    assert due_days(session, start + timedelta(days=3), 3) == []


def test_platform_row_exists_for_an_hour_without_events_and_counts_events_without_organization(
    session: Session,
) -> None:
    hour = midnight(recent_day(2)) + timedelta(hours=5)
    assert aggregate_hour(session, hour) == 1
    session.commit()
    (row,) = session.execute(select(MetricsSnapshot)).scalars()
    assert row.organization_id is None and row.artifacts_received == 0 and row.overall_failure_rate == 0.0

    record_events(session, [
        {"event_type": "artifact_received", "occurred_at": (hour + timedelta(minutes=1)).isoformat()},
        {"event_type": "artifact_received", "organization_id": "o1",
         "occurred_at": (hour + timedelta(minutes=2)).isoformat()},
    ])
    aggregate_hour(session, hour)
    session.commit()
    rows = snapshots(session, "hourly")
    assert rows[(None, hour)].artifacts_received == 2
    assert rows[("o1", hour)].artifacts_received == 1
    assert len(rows) == 2


def test_running_a_window_twice_gives_the_same_single_rows(session: Session) -> None:
    rng = random.Random(5)
    day = recent_day(3)
    record_events(session, [random_event(rng, midnight(day), 24, ORGS) for _ in range(500)])
    session.commit()
    aggregate_day(session, day)
    session.commit()
    before = row_values(session)
    aggregate_day(session, day)
    for hour in range(24):
        aggregate_hour(session, midnight(day) + timedelta(hours=hour))
    session.commit()
    assert row_values(session) == before
    assert session.scalar(select(func.count()).select_from(AggregationWindow)) == 25


def test_concurrent_runs_of_one_window_serialize_and_leave_one_row_each(engine: Engine) -> None:
    rng = random.Random(9)
    day = recent_day(2)
    hour = midnight(day) + timedelta(hours=3)
    with Session(engine) as s:
        record_events(s, [random_event(rng, hour, 1, ORGS) for _ in range(300)])
        s.commit()
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def run(kind: str) -> None:
        try:
            with Session(engine) as s:
                barrier.wait()
                if kind == "hour":
                    aggregate_hour(s, hour)
                else:
                    aggregate_day(s, day)
                s.commit()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in ("hour", "hour", "day", "day")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    with Session(engine) as s:
        counts = s.execute(text(
            "SELECT organization_id, period_type, period_start, count(*) FROM metrics_snapshots "
            "GROUP BY 1, 2, 3 HAVING count(*) > 1"
        )).all()
        assert counts == []
        rows = snapshots(s, "hourly")
        assert sum(r.artifacts_received for (org, h), r in rows.items() if org and h == hour) == \
            rows[(None, hour)].artifacts_received - _no_org_received(s, hour)


def _no_org_received(session: Session, hour: datetime) -> int:
    return session.scalar(text(
        "SELECT count(*) FROM pipeline_events WHERE organization_id IS NULL "
        "AND event_type = 'artifact_received' AND occurred_at >= :h AND occurred_at < :h + interval '1 hour'"
    ), {"h": hour}) or 0


def test_a_late_event_makes_its_hour_and_day_stale_and_shows_up_after_rerun(session: Session) -> None:
    day = recent_day(2)
    now = midnight(day) + timedelta(days=1, hours=2)
    aggregate_day(session, day)
    session.commit()
    next_day = midnight(day) + timedelta(days=1)
    assert due_hours(session, now, 26) == []  # no event recorded yet: no window is missing
    late_hour = midnight(day) + timedelta(hours=7)
    record_events(session, [{"event_type": "artifact_received", "organization_id": "late-org",
                             "occurred_at": (late_hour + timedelta(minutes=59)).isoformat()}])
    session.commit()
    # The late hour is stale; the next day's hours, after the data began, are missing.
    assert due_hours(session, now, 26) == [late_hour, next_day, next_day + timedelta(hours=1)]
    assert due_days(session, now, 1) == [day]
    for hour in due_hours(session, now, 26):
        aggregate_hour(session, hour)
    aggregate_day(session, day)
    session.commit()
    rows = snapshots(session, "hourly")
    assert rows[("late-org", late_hour)].artifacts_received == 1
    assert rows[(None, late_hour)].artifacts_received == 1
    daily = snapshots(session, "daily")
    assert daily[("late-org", midnight(day))].artifacts_received == 1
    assert daily[(None, midnight(day))].artifacts_received == 1
    assert due_hours(session, now, 26) == [] and due_days(session, now, 1) == []


def test_due_windows_after_thirty_hours_without_runs_are_exactly_the_thirty_missing(session: Session) -> None:
    t = midnight(recent_day(3)) + timedelta(hours=10, minutes=30)
    assert due_hours(session, t, 72) == []  # nothing recorded: nothing is missing
    data_began(session, t - timedelta(hours=100))
    for hour in due_hours(session, t, 72):
        aggregate_hour(session, hour)
    session.commit()
    assert due_hours(session, t, 72) == []
    later = t + timedelta(hours=30)
    due = due_hours(session, later, 72)
    assert due == [t.replace(minute=0) + timedelta(hours=i) for i in range(30)]
    assert due[-1] == later.replace(minute=0) - timedelta(hours=1)


def test_events_without_counters_produce_nothing_because_aggregation_reads_only_counters(
    session: Session,
) -> None:
    hour = midnight(recent_day(2)) + timedelta(hours=1)
    session.execute(text(
        "INSERT INTO pipeline_events (id, event_type, occurred_at, time_window, organization_id) "
        "SELECT gen_random_uuid(), 'artifact_received', :h + interval '5 minutes', 'x', 'ghost' "
        "FROM generate_series(1, 50)"
    ), {"h": hour})
    aggregate_hour(session, hour)
    session.commit()
    (row,) = session.execute(select(MetricsSnapshot)).scalars()
    assert row.organization_id is None and row.artifacts_received == 0


def aggregate_hour_after_a_late_event(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, hour: datetime, late: list[dict[str, Any]]
) -> list[bool]:
    """Aggregate HOUR with LATE recorded (and committed, by another transaction) just after
    its counters are read; returns whether each write found every counter unchanged."""
    import voicepipe.metrics.hourly as hourly

    original = hourly.write_hour_from_counters
    outcomes: list[bool] = []

    def late_event_first(*args: Any, **kwargs: Any) -> tuple[bool, Any]:
        with Session(engine) as other:
            record_events(other, late)
            other.commit()
        result = original(*args, **kwargs)
        outcomes.append(result[0])
        return result

    monkeypatch.setattr(hourly, "write_hour_from_counters", late_event_first)
    with Session(engine) as s:
        aggregate_hour(s, hour)
        s.commit()
    monkeypatch.setattr(hourly, "write_hour_from_counters", original)
    return outcomes


VANISHING = ["org-a", "org-b", "org-c", "org-d", "org-e"]


def stored_organizations(session: Session, period_type: str, start: datetime) -> list[str | None]:
    return sorted(session.execute(select(MetricsSnapshot.organization_id).where(
        MetricsSnapshot.period_type == period_type, MetricsSnapshot.period_start == start)).scalars(),
        key=lambda org: org or "")


def received(orgs: list[str], at: datetime) -> list[dict[str, Any]]:
    return [{"event_type": "artifact_received", "organization_id": org, "occurred_at": at.isoformat()}
            for org in orgs]


@pytest.mark.parametrize("chunk", [2, 250], ids=["chunks-of-2", "one-chunk"])
def test_organizations_whose_counters_vanish_lose_their_rows_and_only_they(
    session: Session, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    import voicepipe.metrics.snapshots as writer

    monkeypatch.setattr(writer, "HOUR_CHUNK", chunk)  # survivors in later chunks than the first
    hour = midnight(recent_day(2)) + timedelta(hours=4)
    record_events(session, received(VANISHING, hour + timedelta(minutes=5)))
    aggregate_hour(session, hour)
    aggregate_hour(session, hour)  # a re-run with nothing vanished keeps every row
    assert stored_organizations(session, "hourly", hour) == [None, *VANISHING]
    session.execute(text("DELETE FROM event_counters WHERE organization_id IN ('org-b', 'org-d')"))
    aggregate_hour(session, hour)
    assert stored_organizations(session, "hourly", hour) == [None, "org-a", "org-c", "org-e"]
    session.execute(text("DELETE FROM event_counters"))
    aggregate_hour(session, hour)
    session.commit()
    assert stored_organizations(session, "hourly", hour) == [None]


def test_a_day_loses_the_row_of_an_organization_whose_counters_vanish(session: Session) -> None:
    day = recent_day(3)
    record_events(session, received(VANISHING, midnight(day) + timedelta(hours=3)))
    aggregate_day(session, day)
    session.execute(text("DELETE FROM event_counters WHERE organization_id = 'org-c'"))
    aggregate_day(session, day)
    session.commit()
    assert stored_organizations(session, "daily", midnight(day)) == [None, "org-a", "org-b", "org-d", "org-e"]


def test_an_hour_written_again_after_a_late_event_still_loses_the_vanished(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When a counter changes during the run, the window is written again from the parts
    read (write_window): that path deletes the vanished organizations' rows too."""
    hour = midnight(recent_day(2)) + timedelta(hours=7)
    with Session(engine) as s:
        record_events(s, received(VANISHING, hour + timedelta(minutes=5)))
        aggregate_hour(s, hour)
        s.execute(text("DELETE FROM event_counters WHERE organization_id = 'org-b'"))
        s.commit()
    outcomes = aggregate_hour_after_a_late_event(
        engine, monkeypatch, hour, received(["org-a"], hour + timedelta(minutes=30)))
    assert outcomes == [False], "the changed counter was noticed"
    with Session(engine) as s:
        assert stored_organizations(s, "hourly", hour) == [None, "org-a", "org-c", "org-d", "org-e"]


def test_windows_older_than_counter_retention_are_refused(session: Session) -> None:
    old = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=400)
    with pytest.raises(InvalidInput, match="window_start"):
        aggregate_hour(session, old)
    with pytest.raises(InvalidInput, match="day"):
        aggregate_day(session, old.date())


def test_queries_read_platform_rows_or_one_organization_and_name_unknown_organizations(
    session: Session,
) -> None:
    day = recent_day(2)
    start = midnight(day)
    record_events(session, [
        {"event_type": "artifact_received", "organization_id": "named",
         "occurred_at": (start + timedelta(hours=1)).isoformat()},
        {"event_type": "artifact_received", "organization_id": "named",
         "occurred_at": (start + timedelta(hours=2)).isoformat()},
        {"event_type": "artifact_received", "organization_id": "anon",
         "occurred_at": (start + timedelta(hours=2)).isoformat()},
        {"event_type": "transcription_completed", "organization_id": "anon", "duration_ms": 1000,
         "occurred_at": (start + timedelta(hours=2)).isoformat()},
        {"event_type": "transcription_failed", "organization_id": "named",
         "occurred_at": (start + timedelta(hours=3)).isoformat()},
        {"event_type": "transcription_completed", "duration_ms": 3000,
         "occurred_at": (start + timedelta(hours=3)).isoformat()},
    ])
    session.add(Organization(id="named", name="Named FC"))
    session.commit()
    aggregate_day(session, day)
    session.commit()
    end = start + timedelta(days=1)
    platform = historical_snapshots(session, "hourly", start, end)
    assert len(platform) == 24 and all(r.organization_id is None for r in platform)
    assert [r.period_start for r in platform] == sorted(r.period_start for r in platform)
    named = historical_snapshots(session, "hourly", start, end, organization_id="named")
    assert [r.period_start.astimezone(UTC).hour for r in named] == [1, 2, 3]
    assert [r.artifacts_received for r in historical_snapshots(session, "daily", start, end)] == [3]

    breakdown = organization_breakdown(session, "hourly", start, end)
    assert [(b.organization_id, b.name, b.metrics["artifacts_received"]) for b in breakdown] == [
        ("named", "Named FC", 2), ("anon", "Unknown", 1),
    ]
    assert [(b.organization_id, b.windows) for b in organization_breakdown(session, "daily", start, end)] == [
        ("named", 1), ("anon", 1),
    ]
    stages = {s["stage"]: s for s in stage_breakdown(session, "hourly", start, end)}
    # Platform rows only: 2 completed + 1 failed transcriptions, not doubled by org rows.
    assert (stages["transcription"]["completed"], stages["transcription"]["failed"]) == (2, 1)
    assert stages["transcription"]["failure_rate"] == pytest.approx(1 / 3)
    assert stages["transcription"]["avg_latency"] == pytest.approx(2000.0)
    assert stages == {s["stage"]: s for s in stage_breakdown(session, "daily", start, end)}


def test_a_rerun_after_a_late_event_rewrites_only_the_rows_that_change_and_all_equal_a_recount(
    engine: Engine,
) -> None:
    """Rows whose figures are unchanged keep their row version (xmin) and computed_at; the changed
    organization's row and the platform row are rewritten; every row equals an independent recount."""
    rng = random.Random(77)
    hour = midnight(recent_day(2)) + timedelta(hours=6)
    events = [random_event(rng, hour, 1, ORGS) for _ in range(600)]
    with Session(engine) as s:
        record_events(s, events)
        s.commit()
        aggregate_hour(s, hour)
        s.commit()

    def versions() -> dict[str | None, tuple[str, datetime]]:
        with Session(engine) as s:
            return {org: (xmin, at) for org, xmin, at in s.execute(text(
                "SELECT organization_id, xmin::text, computed_at FROM metrics_snapshots "
                "WHERE period_type = 'hourly'")).all()}

    before = versions()
    late = {"event_type": "artifact_received", "organization_id": "org-c",
            "occurred_at": (hour + timedelta(minutes=59)).isoformat(), "metadata": {}}
    with Session(engine) as s:
        record_events(s, [late])
        s.commit()
        aggregate_hour(s, hour)
        s.commit()
    after = versions()
    assert set(after) == set(before) == set(ORGS)
    changed = {org for org in after if after[org] != before[org]}
    assert changed == {"org-c", None}
    want_hourly, _ = group_events([*events, late])
    with Session(engine) as s:
        for key, row in snapshots(s, "hourly").items():
            assert_row_matches(row, expected(want_hourly[key]), f"hourly {key}")


def test_a_counter_changed_while_its_hour_is_written_leaves_rows_of_the_parts_read_and_the_hour_due(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The organizations' parts are copied from their counter rows in PostgreSQL, checked
    against the revision they were read at. A late event committed in between (here,
    just before the write) must not give a row the new parts with figures derived from
    the old: the window is written from the parts read, and stays due."""
    rng = random.Random(31)
    day = recent_day(2)
    hour = midnight(day) + timedelta(hours=9)
    now = midnight(day) + timedelta(days=1, hours=2)
    events = [random_event(rng, hour, 1, ORGS) for _ in range(300)]
    late = {"event_type": "artifact_received", "organization_id": "org-b",
            "occurred_at": (hour + timedelta(minutes=30)).isoformat(), "metadata": {}}
    with Session(engine) as s:
        record_events(s, events)
        s.commit()

    outcomes = aggregate_hour_after_a_late_event(engine, monkeypatch, hour, [late])
    assert outcomes == [False], "the changed counter was noticed"

    want_before, _ = group_events(events)
    with Session(engine) as s:
        rows = {k: r for k, r in snapshots(s, "hourly").items() if k[1] == hour}
        assert set(rows) == {(org, hour) for org in ORGS}
        for key, row in rows.items():  # parts and figures both as read: the late event in neither
            assert_row_matches(row, expected(want_before[key]), f"hourly {key}")
            assert row.n_artifact_received == row.artifacts_received, key
        assert hour in due_hours(s, now, 26)
        aggregate_hour(s, hour)
        s.commit()
    want_after, _ = group_events([*events, late])
    with Session(engine) as s:
        rows = {k: r for k, r in snapshots(s, "hourly").items() if k[1] == hour}
        for key, row in rows.items():
            assert_row_matches(row, expected(want_after[key]), f"hourly {key} after the re-run")
        assert hour not in due_hours(s, now, 26)


def assert_hour_rows(s: Session, hour: datetime, events: list[dict[str, Any]], orgs: list[str | None]) -> None:
    """The hour's rows: one for each of ORGS (None: the platform), each as EVENTS recount."""
    want, _ = group_events(events)
    rows = {k: r for k, r in snapshots(s, "hourly").items() if k[1] == hour}
    assert set(rows) == {(org, hour) for org in orgs}
    for key, row in rows.items():
        assert_row_matches(row, expected(want[key]), f"hourly {key}")


def test_a_counter_changed_between_chunks_of_its_hour_leaves_rows_of_the_parts_read(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hour's organization rows go in chunks, queued one after another: every chunk's
    rows count (unchanged counters: every row written at once), and a late event committed
    after the first chunks went in, for an organization of the last chunk, is noticed;
    the window is then written from the parts read and stays due."""
    import voicepipe.metrics.hourly as hourly
    import voicepipe.metrics.snapshots as writer

    rng = random.Random(37)
    day = recent_day(2)
    hour = midnight(day) + timedelta(hours=11)
    now = midnight(day) + timedelta(days=1, hours=2)
    events = [random_event(rng, hour, 1, ORGS) for _ in range(300)]
    with Session(engine) as s:
        record_events(s, events)
        s.commit()

    monkeypatch.setattr(writer, "HOUR_CHUNK", 2)  # 5 organizations: 3 chunks
    original_params, original_write = writer._hour_chunk_params, hourly.write_hour_from_counters
    last: list[str] = []
    late: list[dict[str, Any]] = []
    outcomes: list[bool] = []

    def params(chunk: Any) -> dict[str, Any]:
        if outcomes and chunk[-1][0] == last[-1]:  # the last chunk, before it is sent
            late.append({"event_type": "artifact_received", "organization_id": chunk[0][0],
                         "occurred_at": (hour + timedelta(minutes=30)).isoformat(), "metadata": {}})
            with Session(engine) as other:
                record_events(other, late)
                other.commit()
        return original_params(chunk)

    def write(*args: Any, **kwargs: Any) -> tuple[bool, Any]:
        last.append(args[4][-1][0])
        result = original_write(*args, **kwargs)
        outcomes.append(result[0])
        return result

    monkeypatch.setattr(writer, "_hour_chunk_params", params)
    monkeypatch.setattr(hourly, "write_hour_from_counters", write)
    for _ in range(2):  # the second time with the late event
        with Session(engine) as s:
            aggregate_hour(s, hour)
            s.commit()
    assert outcomes == [True, False] and len(late) == 1, "the changed counter was noticed, and only it"

    with Session(engine) as s:
        assert_hour_rows(s, hour, events, ORGS)  # the late event in none
        assert hour in due_hours(s, now, 26)


def test_organization_ids_beyond_ascii_keep_their_rows_in_any_client_encoding(engine: Engine) -> None:
    """An hour's rows keep organization ids that are not ASCII whatever the connection's
    encoding: a re-encoded id would be a stranger's row, and the true one deleted as vanished."""
    rng = random.Random(41)
    day = recent_day(2)
    hour = midnight(day) + timedelta(hours=13)
    orgs: list[str | None] = ["org-é", "org-ß", "org-b", None]
    events = [random_event(rng, hour, 1, orgs) for _ in range(120)]
    with Session(engine) as s:
        record_events(s, events)
        s.commit()
    with Session(engine) as s:
        s.execute(text("SET LOCAL client_encoding = 'LATIN1'"))
        aggregate_hour(s, hour)
        s.commit()
    with Session(engine) as s:
        assert_hour_rows(s, hour, events, orgs)
