"""Upgrading from the 64-bucket histogram: every figure kept, coarse rows flagged, kept events refined.

The previous release's schema (0010) gets counters and snapshots written as that release
wrote them: one hour whose events are still kept, one hour older than the events'
retention. `voicepipe migrate` must keep every stored figure, flag both as coarse,
recount the first from its events and leave the second coarse, saying so.
"""

from __future__ import annotations

import math
import random
import subprocess
import sys
import uuid
from bisect import bisect_right
from datetime import timedelta
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from tests.support.helpers import service_env
from tests.support.metrics import PERCENTILE_ERROR, midnight, nearest_rank, recent_day
from voicepipe.metrics.hourly import aggregate_hour
from voicepipe.migrate import alembic_config, upgrade
from voicepipe.windows import hour_label

OLD_EDGES = [100.0 * 1.25**i for i in range(63)]  # the previous release's bucket edges
GAMMA = 1.01 / 0.99  # the sketch's, as voicepipe/events/sketch.py stores it
KEPT_HOUR = midnight(recent_day(2)) + timedelta(hours=5)
OLD_HOUR = midnight(recent_day(33))  # past the 30 days events are kept, within the counters' 35
OLD_P95 = 1_234.5


def old_histogram(durations: list[float]) -> list[int]:
    hist = [0] * 64
    for d in durations:
        hist[bisect_right(OLD_EDGES, d)] += 1
    return hist


def middle(duration: float) -> float:
    """The geometric middle of the old bucket holding a duration, where the migration puts it."""
    i = bisect_right(OLD_EDGES, duration)
    return 50.0 if i == 0 else math.sqrt(OLD_EDGES[i - 1] * OLD_EDGES[i])


def sketch_entries(entries: list[int], kind: int) -> list[tuple[float, int]]:
    """(bucket value, count) of one kind, decoded here from the stored format."""
    out = []
    for e in entries:
        key, count = e >> 40, e & (2**40 - 1)
        if key >> 16 == kind:
            slot = key & 0xFFFF
            out.append((0.0 if slot == 0 else 2 * GAMMA ** (slot - 1024) / (GAMMA + 1), count))
    return out


def write_previous_release_rows(engine: Engine, rng: random.Random) -> dict[str, list[float]]:
    kept = {"end_to_end": [rng.lognormvariate(10, 1) for _ in range(200)],
            "transcription": [rng.lognormvariate(8, 0.5) for _ in range(100)]}
    old = [rng.lognormvariate(9, 1.5) for _ in range(50)]
    with engine.begin() as conn:
        for kind, event_type in (("end_to_end", "artifact_completed"), ("transcription", "transcription_completed")):
            for d in kept[kind]:
                conn.execute(text(
                    "INSERT INTO pipeline_events (id, event_type, organization_id, occurred_at, time_window, "
                    "duration_ms) VALUES (:id, :t, 'org-1', :at, :w, :d)"),
                    {"id": uuid.UUID(int=rng.getrandbits(128)), "t": event_type,
                     "at": KEPT_HOUR + timedelta(seconds=rng.uniform(0, 3599)), "w": hour_label(KEPT_HOUR), "d": d})
        for hour, e2e, transcription in ((KEPT_HOUR, kept["end_to_end"], kept["transcription"]), (OLD_HOUR, old, [])):
            values = {"h": hour, "n": len(e2e), "s": sum(e2e), "tn": len(transcription), "ts": sum(transcription),
                      "hist": old_histogram(e2e)}
            conn.execute(text(
                "INSERT INTO event_counters (organization_id, hour_start, n_artifact_completed, "
                "n_transcription_completed, end_to_end_latency_count, end_to_end_latency_sum, "
                "transcription_latency_count, transcription_latency_sum, end_to_end_histogram, revision) "
                "VALUES ('org-1', :h, :n, :tn, :n, :s, :tn, :ts, :hist, nextval('counter_revision_seq'))"), values)
            conn.execute(text(
                "INSERT INTO metrics_snapshots (organization_id, period_type, period_start, period_end, "
                "n_artifact_completed, end_to_end_latency_count, end_to_end_latency_sum, end_to_end_histogram, "
                "artifacts_completed, avg_end_to_end_latency, p95_end_to_end_latency) "
                "VALUES ('org-1', 'hourly', :h, :h + interval '1 hour', :n, :n, :s, :hist, :n, :s / :n, :p95)"),
                {**values, "p95": OLD_P95})
    return {**kept, "old": old}


def test_the_previous_release_upgrades_with_every_figure_kept_and_kept_events_refined(
    db_url: str, engine: Engine, session: Session, broker_url: str, tmp_path: Path
) -> None:
    command.downgrade(alembic_config(db_url), "0010")
    durations = write_previous_release_rows(engine, random.Random(11))
    with engine.connect() as conn:
        histograms = dict(conn.execute(text("SELECT hour_start, end_to_end_histogram FROM event_counters")).all())

    # The schema alone, then back: each old bucket's count comes back to that bucket.
    upgrade(db_url)
    command.downgrade(alembic_config(db_url), "0010")
    with engine.connect() as conn:
        assert dict(conn.execute(text("SELECT hour_start, end_to_end_histogram FROM event_counters")).all()) \
            == histograms

    done = subprocess.run([sys.executable, "-m", "voicepipe.cli", "migrate"], capture_output=True, text=True,
                          env=service_env(db_url, broker_url, tmp_path), timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert "recounted 1 counter rows over 1 days" in done.stdout, done.stdout
    assert "1 older counter rows keep coarse percentiles" in done.stdout, done.stdout

    with engine.connect() as conn:
        counters = {r.hour_start: r for r in conn.execute(text("SELECT * FROM event_counters"))}
        snapshots = {r.period_start: r for r in conn.execute(text("SELECT * FROM metrics_snapshots"))}
    # Older than the events: coarse, each old bucket's count at a value inside that bucket.
    old = counters[OLD_HOUR]
    assert old.coarse_percentiles
    assert sum(n for _, n in sketch_entries(old.latency_sketch, 4)) == len(durations["old"])
    for value, count in sketch_entries(old.latency_sketch, 4):
        i = bisect_right(OLD_EDGES, value)
        assert count == histograms[OLD_HOUR][i]
    # Every stored figure is kept; the percentiles that release never computed are NULL.
    for hour in (OLD_HOUR, KEPT_HOUR):
        row = snapshots[hour]
        assert row.p95_end_to_end_latency == OLD_P95 and row.coarse_percentiles
        assert (row.p50_end_to_end_latency, row.p90_end_to_end_latency, row.p99_end_to_end_latency) == (None,) * 3
        assert row.artifacts_completed == row.end_to_end_latency_count == counters[hour].end_to_end_latency_count
        assert math.isclose(row.avg_end_to_end_latency, row.end_to_end_latency_sum / row.end_to_end_latency_count)
    # Recounted from its events: fine sketches of both latencies.
    kept = counters[KEPT_HOUR]
    assert not kept.coarse_percentiles
    assert sum(n for _, n in sketch_entries(kept.latency_sketch, 4)) == 200
    assert sum(n for _, n in sketch_entries(kept.latency_sketch, 0)) == 100

    # The previous release's workers, still running while the new ones start, write what they
    # wrote: a recorded batch (into a row and a new one) and a window's snapshot. The sketch
    # takes their end-to-end durations, flagged coarse.
    batch = [400.0, 5_000.0, 70_000.0]
    with engine.begin() as conn:
        for org in ("org-1", "org-2"):
            conn.execute(text(
                "INSERT INTO event_counters (organization_id, hour_start, n_artifact_completed, "
                "end_to_end_latency_count, end_to_end_latency_sum, end_to_end_histogram, revision) "
                "VALUES (:org, :h, 3, 3, :s, :hist, nextval('counter_revision_seq')) "
                "ON CONFLICT (organization_id, hour_start) DO UPDATE SET "
                "n_artifact_completed = event_counters.n_artifact_completed + excluded.n_artifact_completed, "
                "end_to_end_latency_count = event_counters.end_to_end_latency_count "
                "+ excluded.end_to_end_latency_count, "
                "end_to_end_latency_sum = event_counters.end_to_end_latency_sum + excluded.end_to_end_latency_sum, "
                "end_to_end_histogram = CASE WHEN cardinality(excluded.end_to_end_histogram) = 0 "
                "THEN event_counters.end_to_end_histogram "
                "ELSE vp_hist_add(event_counters.end_to_end_histogram, excluded.end_to_end_histogram) END, "
                "revision = nextval('counter_revision_seq')"),
                {"org": org, "h": OLD_HOUR, "s": sum(batch), "hist": old_histogram(batch)})
        conn.execute(text(
            "INSERT INTO metrics_snapshots (organization_id, period_type, period_start, period_end, "
            "n_artifact_completed, end_to_end_latency_count, end_to_end_histogram, p95_end_to_end_latency) "
            "VALUES ('org-2', 'hourly', :h, :h + interval '1 hour', 3, 3, :hist, 70000)"),
            {"h": OLD_HOUR, "hist": old_histogram(batch)})
        written = {r.organization_id: r for r in conn.execute(text(
            "SELECT * FROM event_counters WHERE hour_start = :h"), {"h": OLD_HOUR})}
        snapshot = conn.execute(text("SELECT * FROM metrics_snapshots WHERE organization_id = 'org-2'")).one()
    assert sorted(written) == ["org-1", "org-2"]
    for row in (*written.values(), snapshot):
        assert row.coarse_percentiles
        assert sum(n for _, n in sketch_entries(row.latency_sketch, 4)) == row.end_to_end_latency_count
    assert sorted(v for v, n in sketch_entries(written["org-2"].latency_sketch, 4) for _ in range(n)) == [
        pytest.approx(middle(d), rel=0.01) for d in batch]
    # `voicepipe migrate` once more, after the workers are replaced: past the events' retention, they stay coarse.
    done = subprocess.run([sys.executable, "-m", "voicepipe.cli", "migrate"], capture_output=True, text=True,
                          env=service_env(db_url, broker_url, tmp_path), timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert "2 older counter rows keep coarse percentiles" in done.stdout, done.stdout

    # The next runs re-aggregate both hours: the kept one within 2 %, the old one still flagged.
    for hour in (KEPT_HOUR, OLD_HOUR):
        aggregate_hour(session, hour)
    session.commit()
    with engine.connect() as conn:
        snapshots = {r.period_start: r for r in conn.execute(text(
            "SELECT * FROM metrics_snapshots WHERE organization_id = 'org-1'"))}
    assert not snapshots[KEPT_HOUR].coarse_percentiles
    for p in (50, 90, 95, 99):
        exact = nearest_rank(durations["end_to_end"], p)
        assert abs(getattr(snapshots[KEPT_HOUR], f"p{p}_end_to_end_latency") - exact) <= PERCENTILE_ERROR * exact
    assert snapshots[OLD_HOUR].coarse_percentiles
    old_p95 = nearest_rank(durations["old"], 95)
    assert abs(snapshots[OLD_HOUR].p95_end_to_end_latency - old_p95) <= 0.25 * old_p95
