"""Daily rollup from 24 hourly snapshots for 1,000 organizations, and catch-up of 72 missed hours."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from bench.baselines import bare_sums
from bench.data import Buckets, row_sketch_sql
from bench.harness import Env, Result, ratio_spread, timed
from voicepipe.metrics.daily import aggregate_day
from voicepipe.metrics.due import due_hours
from voicepipe.metrics.hourly import aggregate_hour

ORGS = 1000

# Synthetic counters straight into event_counters: realistic magnitudes, every part non-zero.
# An hour's 19 transcriptions (10 to 30 s) and 17 end-to-end latencies (25 to 70 s) each
# fall in their own sketch bucket, as at 2 % buckets they mostly do; their counts move
# between buckets from one row to the next (row_sketch_sql's VARY), as real ones do.
COUNTER_LATENCIES = (
    Buckets("transcription_latency", 10_000, n=19, per=1, step=3),
    Buckets("end_to_end_latency", 25_000, n=17, per=1, spread=2, step=3),
)
_ROW_OF_HOUR = "CAST(o AS bigint) * 1000000 + CAST(extract(epoch FROM h) / 3600 AS bigint)"
SEED_COUNTERS = f"""
INSERT INTO event_counters (organization_id, hour_start, n_artifact_received, n_artifact_completed,
  n_artifact_failed, n_transcription_completed, n_transcription_failed, n_claims_extracted,
  n_entity_resolution_completed, n_entity_needs_disambiguation, n_drafts_generated,
  transcription_latency_sum, transcription_latency_count, end_to_end_latency_sum,
  end_to_end_latency_count, claims_total, ai_cost_sum, latency_sketch)
SELECT 'org-' || lpad(o::text, 4, '0'), h, 20, 17, 2, 19, 1, 18, 15, 3, 17,
  19 * 20000.0, {COUNTER_LATENCIES[0].count}, 17 * 45000.0, {COUNTER_LATENCIES[1].count}, 60, 0.25,
  {row_sketch_sql("o", *COUNTER_LATENCIES, vary=_ROW_OF_HOUR)}
FROM generate_series(0, :orgs - 1) o,
     generate_series(CAST(:lo AS timestamptz), CAST(:hi AS timestamptz) - interval '1 hour', interval '1 hour') h
"""



def run(env: Env) -> list[Result]:
    now = datetime.now(UTC)
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    # Catch-up: the 72 closed hours before now, no snapshot yet (a 3-day outage).
    lo, hi = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=72), now.replace(
        minute=0, second=0, microsecond=0)
    with env.engine.begin() as conn:
        conn.execute(text(SEED_COUNTERS), {"orgs": ORGS, "lo": lo, "hi": hi})
        conn.execute(text("ANALYZE event_counters"))
    t0 = time.perf_counter()
    with env.session() as s:
        hours = due_hours(s, now, 72)
    for hour in hours:  # what the fanned-out aggregate_hour tasks do, one after another
        with env.session() as s:
            aggregate_hour(s, hour)
            s.commit()
    catch_up = time.perf_counter() - t0
    per_hour = catch_up / max(1, len(hours))
    results = [Result(
        "catch-up", f"{len(hours)} missed hours x {ORGS:,} orgs, one process", catch_up, "s",
        extra={"per_hour_s": round(per_hour, 3), "hours": len(hours)},
    )]
    # The daily rollup of a day whose 24 hours are aggregated (yesterday, complete in the seed).
    day = (today - timedelta(days=1)).date()
    day_lo = today - timedelta(days=1)

    def ours() -> None:
        with env.session() as s:
            aggregate_day(s, day)
            s.commit()

    # Its statistics are whatever ran before (in a full run, the recording and aggregation
    # benches' bursts): the case the plan must survive. scale.py measures it analyzed too.
    t_ours, t_sql, spread = ratio_spread(ours, lambda: bare_sums(env.engine, "hourly", day_lo, today), repeat=5)
    narrow = timed(lambda: _narrow_sum(env, day_lo, today))
    results.append(Result(
        "daily rollup", f"24 hourly snapshots x {ORGS:,} orgs, after the other benches' loads", t_ours, "s",
        baseline=t_sql, baseline_name="bare SQL sums of every part of the same rows",
        goal="within 2x of bare SQL", met=spread[1] >= 0.5, spread=spread,
        extra={"earlier baseline, 9 columns summed (ms)": round(narrow * 1000, 1)},
    ))
    return results


def _narrow_sum(env: Env, lo: datetime, hi: datetime) -> None:
    """The earlier baseline: 9 of the parts summed (kept to compare with earlier runs)."""
    with env.engine.connect() as conn:
        conn.execute(text(
            "SELECT organization_id, sum(n_artifact_received), sum(n_artifact_completed), sum(n_artifact_failed),"
            " sum(transcription_latency_sum), sum(transcription_latency_count), sum(end_to_end_latency_sum),"
            " sum(end_to_end_latency_count), sum(claims_total), sum(ai_cost_sum) FROM metrics_snapshots"
            " WHERE period_type = 'hourly' AND period_start >= :lo AND period_start < :hi"
            " GROUP BY GROUPING SETS ((organization_id), ())"), {"lo": lo, "hi": hi}).all()
