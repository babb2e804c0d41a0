"""Old, late, odd and repeated input: every figure and every retry stays exact (issue: truth at the edges).

Each test names the defect it pins; each fails on the code before the fix.
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session

from models import (
    AiUsageDailyAggregate,
    AiUsageLog,
    EventCounter,
    LateWindow,
    MetricsSnapshot,
    PipelineEvent,
    RetryRequest,
)
from tests.integration.test_metrics_cli import voicepipe
from tests.support.helpers import Proc, service_env, wait_for
from tests.support.pipeline import (
    FAST,
    add_artifact,
    add_user,
    artifact,
    event_types,
    events,
)
from voicepipe.errors import InvalidInput
from voicepipe.events.recording import rebuild_counters, record_events
from voicepipe.maintenance.cleanup import cutoffs
from voicepipe.metrics.daily import aggregate_day
from voicepipe.metrics.due import hour_states
from voicepipe.metrics.hourly import aggregate_hour
from voicepipe.pipeline.recovery import requeue_stalled
from voicepipe.retry.service import request_retry
from voicepipe.usage.queries import usage_for_organization
from voicepipe.usage.recording import record_usage
from voicepipe.usage.rollup import aggregate_usage_day

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def now_utc() -> datetime:
    return datetime.now(UTC)


def midnight(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


def snapshot_row(session: Session, org: str | None, period: str, start: datetime) -> MetricsSnapshot | None:
    session.rollback()  # see the worker's commits
    return session.execute(select(MetricsSnapshot).where(
        MetricsSnapshot.organization_id.is_(None) if org is None else MetricsSnapshot.organization_id == org,
        MetricsSnapshot.period_type == period, MetricsSnapshot.period_start == start,
    )).scalar_one_or_none()


def received(session: Session, org: str | None, period: str, start: datetime) -> int | None:
    row = snapshot_row(session, org, period, start)
    return None if row is None else row.artifacts_received


def marks(session: Session) -> list[tuple[str, datetime]]:
    session.rollback()
    return [(k, s.astimezone(UTC)) for k, s in session.execute(
        select(LateWindow.kind, LateWindow.period_start).order_by(LateWindow.kind, LateWindow.period_start))]


def count(session: Session, model: type) -> int:
    session.rollback()
    return int(session.scalar(select(func.count()).select_from(model)) or 0)


# -- 1. late input older than the catch-up horizons -----------------------------------------


def test_a_late_event_ten_days_back_re_aggregates_its_hour_and_day_past_the_horizons(
    start_worker: Callable[..., Proc], client: Celery, session: Session
) -> None:
    day = (now_utc() - 10 * DAY).date()
    hour = midnight(day) + 9 * HOUR
    record_events(session, [{"event_type": "artifact_received", "organization_id": "org-late",
                             "occurred_at": (hour + timedelta(minutes=5)).isoformat()}])
    aggregate_day(session, day)  # the day and its hours, computed
    session.commit()
    assert received(session, "org-late", "daily", midnight(day)) == 1
    session.execute(text("DELETE FROM late_windows"))  # as if a wrapper had cleared it already
    session.commit()

    # A late event for that hour, far outside both horizons (2 hours, 1 day).
    record_events(session, [{"event_type": "artifact_received", "organization_id": "org-late",
                             "occurred_at": (hour + timedelta(minutes=50)).isoformat()}])
    session.commit()
    assert marks(session) == [("hourly", hour)]
    start_worker(queues="metrics", VOICEPIPE_HOURLY_HORIZON_HOURS="2", VOICEPIPE_DAILY_HORIZON_DAYS="1")
    client.send_task("voicepipe.metrics.aggregate_hourly_due", queue="metrics")
    wait_for(lambda: received(session, "org-late", "hourly", hour) == 2
             and received(session, None, "hourly", hour) == 2
             and received(session, "org-late", "daily", midnight(day)) == 2
             and received(session, None, "daily", midnight(day)) == 2,
             timeout=60, what="the late event in its hour and its day")
    # Up to date now: the next run clears the mark (and sends nothing for it).
    client.send_task("voicepipe.metrics.aggregate_hourly_due", queue="metrics")
    wait_for(lambda: marks(session) == [], timeout=30, what="the mark to be cleared")
    assert received(session, "org-late", "daily", midnight(day)) == 2


def test_a_late_event_for_a_window_never_computed_outside_the_horizon_is_not_caught_up(
    start_worker: Callable[..., Proc], client: Celery, session: Session
) -> None:
    # The horizon bounds catch-up of missing windows: only stale (computed) ones are refreshed.
    day = (now_utc() - 20 * DAY).date()
    record_events(session, [{"event_type": "artifact_received", "organization_id": "org-old",
                             "occurred_at": (midnight(day) + 15 * HOUR).isoformat()}])
    session.commit()
    assert marks(session) == [("hourly", midnight(day) + 15 * HOUR)]
    start_worker(queues="metrics", VOICEPIPE_DAILY_HORIZON_DAYS="1", VOICEPIPE_HOURLY_HORIZON_HOURS="1")
    client.send_task("voicepipe.metrics.aggregate_hourly_due", queue="metrics")
    client.send_task("voicepipe.metrics.aggregate_daily_due", queue="metrics")
    wait_for(lambda: marks(session) == [], timeout=60, what="the mark of a missing window to be dropped")
    wait_for(lambda: count(session, MetricsSnapshot) > 0, timeout=60, what="the horizon's windows")
    assert received(session, "org-old", "daily", midnight(day)) is None  # not the old ones
    assert received(session, "org-old", "hourly", midnight(day) + 15 * HOUR) is None


def test_only_marked_hours_join_the_horizon_so_the_cost_does_not_grow_with_their_age(
    session: Session,
) -> None:
    now = now_utc()
    old = [now.replace(minute=0, second=0, microsecond=0) - d * DAY for d in (5, 12, 30)]
    record_events(session, [{"event_type": "artifact_received", "organization_id": "o",
                             "occurred_at": h.isoformat()} for h in old])
    session.commit()
    states = hour_states(session, now, 3)
    assert [s.start for s in states if s.mark_revision is not None] == sorted(old)
    assert len(states) == 3 + len(old)  # the horizon's 3 hours and the 3 marked ones, nothing between


def test_a_late_ai_call_twenty_days_back_updates_its_rollup_past_the_horizon(
    start_worker: Callable[..., Proc], client: Celery, session: Session
) -> None:
    day = (now_utc() - 20 * DAY).date()
    call = {"organization_id": "org-1", "operation": "parent_summary", "model": "m", "input_tokens": 100,
            "cached_tokens": 25, "output_tokens": 10, "cost": 0.25}
    record_usage(session, [{**call, "occurred_at": (midnight(day) + 8 * HOUR).isoformat()}])
    aggregate_usage_day(session, day)
    session.execute(text("DELETE FROM late_windows"))
    session.commit()
    record_usage(session, [{**call, "occurred_at": (midnight(day) + 20 * HOUR).isoformat(), "cost": 0.5}])
    session.commit()
    assert marks(session) == [("usage_day", midnight(day))]

    def rollup() -> tuple[int, Decimal] | None:
        session.rollback()
        row = session.execute(select(AiUsageDailyAggregate).where(AiUsageDailyAggregate.day == day)).scalar_one()
        return row.total_calls, row.total_cost

    start_worker(queues="metrics", VOICEPIPE_DAILY_HORIZON_DAYS="1")
    client.send_task("voicepipe.usage.aggregate_daily_due", queue="metrics")
    wait_for(lambda: rollup() == (2, Decimal("0.75")), timeout=60, what="the late call in its rollup")
    client.send_task("voicepipe.usage.aggregate_daily_due", queue="metrics")
    wait_for(lambda: marks(session) == [], timeout=30, what="the usage mark to be cleared")


# -- 2. a retry of an artifact received more than 30 days ago ----------------------------------


def test_a_retry_of_an_artifact_received_forty_days_ago_completes_with_its_true_latency(
    start_worker: Callable[..., Proc], client: Celery, session: Session
) -> None:
    add_user(session, "staff-1")
    art_id = add_artifact(session, status="failed", failed_stage="transcription")
    received_at = now_utc() - 40 * DAY
    session.execute(text("UPDATE artifacts SET created_at = :t WHERE id = :id"), {"t": received_at, "id": art_id})
    session.commit()
    start_worker(queues="pipeline,retry", **FAST)
    client.send_task("voicepipe.retry.full_pipeline", queue="retry", kwargs={
        "artifact_id": str(art_id), "requested_by": "staff-1"}).get(timeout=30)
    wait_for(lambda: artifact(session, art_id).status == "completed", timeout=60, what="completion")
    (done,) = [e for e in events(session, art_id) if e.event_type == "artifact_completed"]
    assert done.duration_ms is not None
    assert done.duration_ms >= 40 * 86_400_000
    assert done.duration_ms == pytest.approx((done.occurred_at - received_at).total_seconds() * 1000, abs=1000)
    assert event_types(session, art_id).count("retry_succeeded") == 1


# -- 3. impossible timestamps -----------------------------------------------------------------


def _event(ts: datetime | str) -> dict[str, Any]:
    return {"event_type": "artifact_received", "organization_id": "o",
            "occurred_at": ts if isinstance(ts, str) else ts.isoformat()}


@pytest.mark.parametrize(
    ("when", "problem"),
    [
        (lambda now: "2099-01-01T00:00:00Z", "in the future"),
        (lambda now: now + timedelta(seconds=360), "in the future"),  # skew allowed: 300 s
        (lambda now: cutoffs(now).counters - timedelta(seconds=1), "older than"),
        (lambda now: now - timedelta(days=400), "older than"),
    ],
    ids=["year-2099", "six-minutes-ahead", "just-past-counter-retention", "a-year-old"],
)
def test_an_event_from_the_future_or_past_counter_retention_is_refused_and_changes_nothing(
    session: Session, when: Callable[[datetime], Any], problem: str
) -> None:
    good = _event(now_utc() - HOUR)
    with pytest.raises(InvalidInput, match=rf"events\[1\]\.occurred_at: .*{problem}"):
        record_events(session, [good, _event(when(now_utc()))])
    session.rollback()
    assert count(session, PipelineEvent) == 0 and count(session, EventCounter) == 0


def test_events_within_the_clock_skew_and_at_the_retention_edge_are_accepted(session: Session) -> None:
    now = now_utc()
    edge = cutoffs(now).counters + timedelta(minutes=1)
    result = record_events(session, [_event(now + timedelta(seconds=60)), _event(edge)])
    session.commit()
    assert result.inserted == 2 and count(session, EventCounter) == 2


@pytest.mark.parametrize(
    ("when", "problem"),
    [
        (lambda now: "2099-06-01T00:00:00z", "in the future"),
        (lambda now: cutoffs(now).ai_usage - timedelta(seconds=1), "older than"),
    ],
    ids=["year-2099", "past-usage-log-retention"],
)
def test_an_ai_call_from_the_future_or_past_the_log_retention_is_refused_and_changes_nothing(
    session: Session, when: Callable[[datetime], Any], problem: str
) -> None:
    ts = when(now_utc())
    call = {"organization_id": "o", "operation": "op", "model": "m", "cost": 0.1,
            "occurred_at": ts if isinstance(ts, str) else ts.isoformat()}
    with pytest.raises(InvalidInput, match=rf"occurred_at: .*{problem}"):
        record_usage(session, [call])
    session.rollback()
    assert count(session, AiUsageLog) == 0


# -- 4. rebuild-counters past event retention ------------------------------------------------


def test_rebuild_counters_refuses_hours_whose_events_may_be_deleted_and_keeps_their_counters(
    session: Session, db_url: str, broker_url: str, service_data_dir: Path
) -> None:
    now = now_utc()
    old_day = (cutoffs(now).events - 2 * DAY).date()  # counters kept (35 days), events gone (30)
    hour = midnight(old_day) + 10 * HOUR
    session.add(EventCounter(organization_id="o", hour_start=hour, n_artifact_received=7))
    session.commit()
    before = session.execute(select(EventCounter.revision, EventCounter.n_artifact_received)).one()

    with pytest.raises(InvalidInput, match="from: .*event retention"):
        rebuild_counters(session, midnight(old_day), midnight(old_day) + DAY)
    session.rollback()
    done = voicepipe(["rebuild-counters", "--from", old_day.isoformat(), "--to", old_day.isoformat()],
                     service_env(db_url, broker_url, service_data_dir))
    assert done.returncode == 1 and "InvalidInput" in done.stderr and "event retention" in done.stderr
    session.rollback()
    assert session.execute(select(EventCounter.revision, EventCounter.n_artifact_received)).one() == before


# -- 5. short AI-usage ranges older than the raw log --------------------------------------


def _rollup(day: date, calls: int, cost: str, operation: str, coach: str) -> AiUsageDailyAggregate:
    totals = {"cost": cost, "calls": calls, "input_tokens": 100 * calls, "cached_tokens": 10 * calls,
              "output_tokens": 5 * calls}
    return AiUsageDailyAggregate(
        day=day, organization_id="org-1", total_cost=Decimal(cost), total_calls=calls,
        total_input_tokens=100 * calls, total_cached_tokens=10 * calls, total_output_tokens=5 * calls,
        cache_hit_rate=0.1, by_operation={operation: totals}, by_coach={coach: totals}, by_player={},
    )


def test_a_short_usage_range_older_than_the_raw_log_reads_its_rollups(session: Session) -> None:
    now = now_utc()
    kept_from = cutoffs(now).ai_usage.date()
    first = kept_from - timedelta(days=10)
    session.add_all([_rollup(first, 3, "0.30", "parent_summary", "c1"),
                     _rollup(first + timedelta(days=1), 2, "0.20", "voice_note_transcription", "c2")])
    session.commit()
    summary = usage_for_organization(session, "org-1", first, first + timedelta(days=2), now=now)
    assert summary.source == "rollups"
    assert (summary.totals.calls, summary.totals.cost) == (5, Decimal("0.50"))
    assert {k: v.calls for k, v in summary.by_operation.items()} == {"parent_summary": 3,
                                                                      "voice_note_transcription": 2}
    assert [(k, v.calls) for k, v in summary.top_coaches] == [("c1", 3), ("c2", 2)]


def test_a_short_usage_range_across_the_raw_log_cutoff_is_whole(session: Session) -> None:
    now = now_utc()
    kept_from = cutoffs(now).ai_usage.date()
    # Two days past the cutoff, known only from their rollups; two kept days, in the raw log
    # (and rolled up too, as the daily run would have done: never counted twice).
    session.add_all([_rollup(kept_from - timedelta(days=2), 4, "0.40", "parent_summary", "c1"),
                     _rollup(kept_from - timedelta(days=1), 1, "0.10", "parent_summary", "c1")])
    session.commit()
    calls = [{"organization_id": "org-1", "operation": "parent_summary", "model": "m", "coach_id": "c1",
              "input_tokens": 100, "cached_tokens": 10, "output_tokens": 5, "cost": 0.05,
              "occurred_at": (midnight(kept_from) + timedelta(days=d, hours=6)).isoformat()}
             for d in (0, 0, 1)]
    record_usage(session, calls)
    aggregate_usage_day(session, kept_from)
    session.commit()
    summary = usage_for_organization(session, "org-1", kept_from - timedelta(days=2),
                                     kept_from + timedelta(days=1), now=now)
    assert (summary.totals.calls, summary.totals.cost) == (4 + 1 + 3, Decimal("0.40") + Decimal("0.10")
                                                           + Decimal("0.15"))
    assert summary.by_operation["parent_summary"].calls == 8


# -- 6. re-running a day gives the same rows, to the last digit --------------------------


FLOAT_COLUMNS = ("avg_transcription_latency", "avg_claims_extraction_latency", "avg_entity_resolution_latency",
                 "avg_draft_generation_latency", "avg_end_to_end_latency", "avg_transcript_confidence",
                 "avg_claim_confidence", "transcription_latency_sum", "end_to_end_latency_sum",
                 "transcript_confidence_sum")


def _daily_floats(session: Session, day: date) -> dict[str | None, tuple[float, ...]]:
    rows = session.execute(select(MetricsSnapshot).where(
        MetricsSnapshot.period_type == "daily", MetricsSnapshot.period_start == midnight(day))).scalars()
    return {r.organization_id: tuple(getattr(r, c) for c in FLOAT_COLUMNS) for r in rows}


def test_re_running_a_day_gives_the_same_averages_to_the_last_digit_whatever_the_scan_order(
    session: Session,
) -> None:
    rng = random.Random(7)
    day = (now_utc() - 3 * DAY).date()
    orgs = [f"org-{i}" for i in range(20)]
    evts = []
    for hour in range(24):
        for org in orgs:
            at = (midnight(day) + hour * HOUR + timedelta(minutes=rng.randrange(60))).isoformat()
            evts.append({"event_type": "transcription_completed", "organization_id": org, "occurred_at": at,
                         "duration_ms": rng.uniform(1, 1e6) / 3,
                         "metadata": {"confidenceScore": rng.random() / 3}})
            evts.append({"event_type": "artifact_completed", "organization_id": org, "occurred_at": at,
                         "duration_ms": rng.uniform(1, 1e7) / 7})
    record_events(session, evts)
    aggregate_day(session, day)
    session.commit()
    first = _daily_floats(session, day)
    assert len(first) == len(orgs) + 1
    # Rewrite every hourly row in reverse order (new row versions, a new physical order),
    # then re-run the day reading the hours by a sequential scan, not the index.
    for hour in reversed(range(24)):
        aggregate_hour(session, midnight(day) + hour * HOUR)
    session.commit()
    session.execute(text("SET enable_indexscan = off"))
    session.execute(text("SET enable_bitmapscan = off"))
    aggregate_day(session, day)
    session.commit()
    again = _daily_floats(session, day)
    for org, values in first.items():
        for column, a, b in zip(FLOAT_COLUMNS, values, again[org], strict=True):
            assert a == b and math.isfinite(a), f"{org} {column}: {a!r} then {b!r}"


# -- 7. the sweeper's re-queue is not progress --------------------------------------------


def test_a_requeue_keeps_the_stall_clock_so_the_artifact_stays_retryable_and_is_not_requeued_at_once(
    session: Session,
) -> None:
    add_user(session, "staff-1")
    stuck_since = now_utc() - timedelta(minutes=20)  # stall timeout: 900 s
    art_id = add_artifact(session, status="transcribing", current_stage="transcription",
                          updated_at=stuck_since)
    now = now_utc()
    report = requeue_stalled(session, now)
    session.commit()
    assert [r["artifact_id"] for r in report.requeued] == [str(art_id)]
    art = artifact(session, art_id)
    assert art.updated_at == stuck_since and art.requeued_at == now
    # The next sweep, five minutes later, leaves the fresh re-queue its time ...
    assert requeue_stalled(session, now + timedelta(minutes=5)).requeued == []
    session.rollback()
    # ... and staff can retry it meanwhile: it has made no progress for 20 minutes.
    outcome = request_retry(session, stage="full_pipeline", artifact_id=art_id, requested_by="staff-1")
    session.commit()
    assert outcome.attempt == 1 and artifact(session, art_id).status == "received"
    # A stall timeout after the re-queue, with still no progress, it is re-queued again.
    session.execute(text("UPDATE artifacts SET active_retry_attempt = NULL, status = 'transcribing', "
                         "updated_at = :t, requeued_at = :r WHERE id = :id"),
                    {"t": stuck_since, "r": now, "id": art_id})
    session.commit()
    later = now + timedelta(seconds=901)
    assert [r["artifact_id"] for r in requeue_stalled(session, later).requeued] == [str(art_id)]
    session.commit()


# -- 8. one request_id on two artifacts at once; RFC 3339 and day strictness ------------------


def test_one_request_id_on_two_artifacts_at_once_is_a_named_refusal(session: Session, engine: Engine) -> None:
    add_user(session, "staff-1")
    first = add_artifact(session, status="failed", failed_stage="transcription")
    second = add_artifact(session, status="failed", failed_stage="transcription")
    request_retry(session, stage="transcription", artifact_id=first, requested_by="staff-1", request_id="req-1")
    # The first transaction is still open when the second request arrives.
    first_pid = session.scalar(text("SELECT pg_backend_pid()"))
    outcome: dict[str, BaseException | None] = {}
    second_pid: list[int] = []
    connected = threading.Event()

    def other() -> None:
        with Session(engine) as s2:
            try:
                second_pid.append(s2.scalar(text("SELECT pg_backend_pid()")))
                connected.set()
                request_retry(s2, stage="transcription", artifact_id=second, requested_by="staff-1",
                              request_id="req-1")
                s2.commit()
                outcome["error"] = None
            except BaseException as exc:
                outcome["error"] = exc
            finally:
                connected.set()

    def waits_for_the_first() -> bool:
        if not thread.is_alive():
            raise AssertionError(f"the second request ended without waiting for the first: {outcome!r}")
        with engine.connect() as probe:
            blockers = probe.scalar(text("SELECT pg_blocking_pids(:pid)"), {"pid": second_pid[0]})
        return blockers == [first_pid]

    thread = threading.Thread(target=other)
    thread.start()
    assert connected.wait(timeout=30) and second_pid, outcome
    # The second request is blocked by the first transaction (its request id's lock) ...
    wait_for(waits_for_the_first, timeout=30, interval=0.02, what="the second request to wait for the first")
    # ... which commits only now.
    session.commit()
    thread.join(timeout=30)
    assert not thread.is_alive()
    error = outcome["error"]
    assert isinstance(error, InvalidInput), repr(error)
    assert "request_id" in str(error) and str(first) in str(error)
    session.rollback()
    assert artifact(session, second).status == "failed"
    assert artifact(session, second).metadata_["retryAttempt"] == 0
    assert session.scalar(select(func.count()).select_from(RetryRequest)) == 1


def test_an_event_stamped_with_a_lowercase_z_is_recorded_in_its_utc_hour(session: Session) -> None:
    hour = (now_utc() - 5 * HOUR).replace(minute=0, second=0, microsecond=0)
    stamp = hour.strftime("%Y-%m-%dt%H:%M:%S.250z")
    assert record_events(session, [_event(stamp)]).inserted == 1
    session.commit()
    stored = session.execute(select(PipelineEvent.occurred_at)).scalar_one()
    assert stored == hour + timedelta(milliseconds=250)


def test_a_week_date_is_refused_as_a_day_by_the_day_tasks(session: Session) -> None:
    week = (now_utc() - 3 * DAY).strftime("%G-W%V-%u")  # e.g. 2026-W48-5, ten characters
    assert len(week) == 10
    with pytest.raises(InvalidInput, match="day: expected YYYY-MM-DD"):
        aggregate_day(session, week)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="day: expected YYYY-MM-DD"):
        aggregate_usage_day(session, week)  # type: ignore[arg-type]

