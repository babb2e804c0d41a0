"""Retention cleanup: everything past its cutoff goes, however old; nothing newer does."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session

from models import (
    AggregationWindow,
    AiUsageDailyAggregate,
    AiUsageLog,
    EventCounter,
    MetricsSnapshot,
    PipelineEvent,
)
from voicepipe.maintenance.cleanup import run_cleanup

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
MIDNIGHT = datetime(2026, 6, 15, tzinfo=UTC)


USAGE = {"cost": "0", "calls": 1, "input_tokens": 0, "cached_tokens": 0, "output_tokens": 0}
COACHES = {f"coach-{k}": USAGE for k in range(3)}  # with by_operation: 4 breakdown rows a rollup


def seed(session: Session, days_ago: list[float]) -> None:
    for i, age in enumerate(days_ago):
        ts = MIDNIGHT - timedelta(days=age)
        hour = ts.replace(minute=0, second=0, microsecond=0)
        session.add(PipelineEvent(id=uuid.uuid4(), event_type="artifact_received", occurred_at=ts, time_window="x"))
        session.add(EventCounter(organization_id=f"o{i}", hour_start=hour))
        for pt in ("hourly", "daily"):
            session.add(MetricsSnapshot(organization_id=f"o{i}", period_type=pt, period_start=hour,
                                        period_end=hour + timedelta(hours=1)))
            session.add(AggregationWindow(period_type=pt, period_start=hour - timedelta(seconds=i), source_revision=1))
        session.add(AiUsageLog(occurred_at=ts, organization_id="o", operation="op", model="m",
                               input_tokens=1, cached_tokens=0, output_tokens=1, cost=0))
        session.add(AiUsageDailyAggregate(day=ts.date(), organization_id=f"o{i}", total_cost=0, total_calls=1,
                                          total_input_tokens=0, total_cached_tokens=0, total_output_tokens=0,
                                          cache_hit_rate=0, by_operation={"op": USAGE}, by_coach=COACHES))
    session.commit()


def test_cleanup_reaches_rows_of_any_age_in_small_batches_and_keeps_newer_ones(
    session: Session, engine: Engine
) -> None:
    # Ages in days before today's midnight: far older than the cutoffs, just past them, just inside.
    ages = [3000, 800, 730.5, 729.5, 400, 100, 91, 89.9, 40, 35.01, 34.9, 31, 29.9, 1]
    seed(session, ages)
    result = run_cleanup(engine, NOW, batch_size=2)
    assert result.complete
    session.expire_all()

    def remaining(model: type, column: object) -> int:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)

    # Retention defaults: events 30 d, counters 35 d, hourly 90 d, daily 730 d, usage log 90 d, rollups 730 d.
    assert remaining(PipelineEvent, None) == sum(1 for a in ages if a <= 30)
    assert remaining(EventCounter, None) == sum(1 for a in ages if a <= 35)
    hourly = session.scalar(select(func.count()).where(MetricsSnapshot.period_type == "hourly"))
    daily = session.scalar(select(func.count()).where(MetricsSnapshot.period_type == "daily"))
    assert hourly == sum(1 for a in ages if a <= 90)
    assert daily == sum(1 for a in ages if a <= 730)
    assert remaining(AiUsageLog, None) == sum(1 for a in ages if a <= 90)
    assert result.deleted["ai_usage_daily_aggregates"] == sum(1 for a in ages if a > 730)
    # Their breakdown rows went first, in batches of rows; the kept rollups keep theirs.
    assert result.deleted["ai_usage_daily_breakdowns"] == 4 * sum(1 for a in ages if a > 730)
    assert session.scalar(text("SELECT count(*) FROM ai_usage_daily_breakdowns")) == 4 * sum(
        1 for a in ages if a <= 730)
    windows = session.execute(text("SELECT period_type, count(*) FROM aggregation_windows GROUP BY 1")).all()
    assert dict(windows) == {"hourly": sum(1 for a in ages if a <= 90), "daily": sum(1 for a in ages if a <= 730)}
    assert result.deleted["pipeline_events"] == sum(1 for a in ages if a > 30)

    again = run_cleanup(engine, NOW, batch_size=2)
    assert again.total == 0


def test_a_deadline_stops_between_batches_and_the_next_run_finishes(session: Session, engine: Engine) -> None:
    seed(session, [400, 300, 200])
    first = run_cleanup(engine, NOW, batch_size=1, deadline=0.0)
    assert not first.complete and first.total == 0
    second = run_cleanup(engine, NOW, batch_size=1)
    assert second.complete and second.deleted["pipeline_events"] == 3


def test_nonces_are_kept_as_long_as_a_message_of_their_age_is_accepted(engine: Engine) -> None:
    now = datetime.now(UTC)
    with engine.begin() as conn:  # type: ignore[attr-defined]
        for name, minutes in (("fresh-nonce-000001", 5), ("edge-nonce-0000001", 29), ("old-nonce-00000001", 31),
                              ("older-nonce-000001", 60 * 48)):
            conn.execute(text("INSERT INTO used_nonces (nonce, task_name, used_at) VALUES (:n, 't', :at)"),
                         {"n": name, "at": now - timedelta(minutes=minutes)})
    result = run_cleanup(engine, now)  # type: ignore[arg-type]
    with engine.connect() as conn:  # type: ignore[attr-defined]
        kept = sorted(conn.execute(text("SELECT nonce FROM used_nonces")).scalars())
    # Twice VOICEPIPE_SIGNATURE_MAX_AGE_SECONDS (900 s): a message older than that is refused as stale.
    assert kept == ["edge-nonce-0000001", "fresh-nonce-000001"]
    assert result.deleted["used_nonces"] == 2


def test_records_of_handled_incidents_go_after_their_retention_and_parked_letters_stay(engine: Engine) -> None:
    now = datetime.now(UTC)
    old, recent = now - timedelta(days=400), now - timedelta(days=10)  # retention of records: 365 days
    with engine.begin() as conn:  # type: ignore[attr-defined]
        for status, at in (("parked", old), ("replayed", old), ("discarded", old), ("replayed", recent)):
            conn.execute(text(
                "INSERT INTO dead_letters (task_id, task_name, queue, kwargs, reason, error, attempts, status, "
                "first_failed_at, last_failed_at, replayed_at, discarded_at) VALUES (:id, 't', 'q', '{}', 'failed', "
                "'e', 1, :s, :at, :at, :replayed, :discarded)"),
                {"id": f"{status}-{at.date()}", "s": status, "at": at,
                 "replayed": at if status == "replayed" else None, "discarded": at if status == "discarded" else None})
        for at in (old, recent):
            conn.execute(text("INSERT INTO retry_refusals (artifact_id, stage, refusal, message, refused_at) "
                              "VALUES ('a', 'transcription', 'PermissionDenied', 'm', :at)"), {"at": at})
            conn.execute(text("INSERT INTO signature_refusals (task_name, refusal, message, refused_at) "
                              "VALUES ('t', 'PermissionDenied', 'm', :at)"), {"at": at})
            conn.execute(text("INSERT INTO task_deliveries (task_id, retries, deliveries, updated_at) "
                              "VALUES (:id, 0, 2, :at)"), {"id": f"task-{at.date()}", "at": at})
    result = run_cleanup(engine, now)  # type: ignore[arg-type]
    assert {k: result.deleted[k] for k in ("dead_letters", "retry_refusals", "signature_refusals",
                                           "task_deliveries")} == {
        "dead_letters": 2, "retry_refusals": 1, "signature_refusals": 1, "task_deliveries": 1}
    with engine.connect() as conn:  # type: ignore[attr-defined]
        letters = sorted(conn.execute(text("SELECT status FROM dead_letters")).scalars())
    assert letters == ["parked", "replayed"]  # the old parked one is work still to do
