"""Synthetic event streams for the benchmarks (seeded, realistic mix)."""

from __future__ import annotations

import random
import uuid
from datetime import datetime, timedelta
from typing import Any

from voicepipe.domain import EVENT_TYPES

WEIGHTS = {t: 1.0 for t in EVENT_TYPES}
WEIGHTS.update({"artifact_received": 4, "artifact_completed": 3, "transcription_completed": 4,
                "claims_extracted": 4, "entity_resolution_completed": 3, "drafts_generated": 3,
                "artifact_status_changed": 8})
DURATIONS = {"transcription_completed": 20_000, "claims_extracted": 8_000,
             "entity_resolution_completed": 4_000, "entity_needs_disambiguation": 4_000,
             "drafts_generated": 10_000, "artifact_completed": 45_000}
_TYPES = list(WEIGHTS)
_W = list(WEIGHTS.values())


def events(n: int, start: datetime, span: timedelta, orgs: int, seed: int = 1) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    seconds = span.total_seconds()
    for event_type in rng.choices(_TYPES, _W, k=n):
        e: dict[str, Any] = {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
            "event_type": event_type,
            "organization_id": f"org-{rng.randrange(orgs):04d}",
            "occurred_at": (start + timedelta(seconds=rng.uniform(0, seconds))).isoformat(),
            "metadata": {"aiCost": round(rng.uniform(0, 0.02), 6)},
        }
        if event_type in DURATIONS:
            e["duration_ms"] = rng.lognormvariate(0, 0.5) * DURATIONS[event_type]
            e["metadata"]["confidenceScore"] = rng.uniform(0.6, 1.0)
            e["metadata"]["claimCount"] = rng.randint(0, 8)
        out.append(e)
    return out


# 30 days (any range) of daily snapshots for ORGS organizations and their platform rows,
# as the daily rollup writes them. The end-to-end histogram has PER events in each bucket
# from B_LO to B_HI, shifted by the organization's number modulo SPREAD; the end-to-end
# count is their total, and each platform row's histogram the sum of its organizations'.
_SEED_DAILY_ORGS = """
INSERT INTO metrics_snapshots (organization_id, period_type, period_start, period_end,
  n_artifact_received, n_artifact_completed, n_artifact_failed, transcription_latency_sum,
  transcription_latency_count, end_to_end_latency_sum, end_to_end_latency_count, ai_cost_sum,
  end_to_end_histogram, artifacts_received, artifacts_completed, artifacts_failed)
SELECT :prefix || lpad(o::text, :digits, '0'), 'daily', d, d + interval '1 day', 400, 360, 30, 7200000, 360,
  (:b_hi - :b_lo + 1) * :per * 45000.0, (:b_hi - :b_lo + 1) * :per, 6.5,
  (SELECT array_agg(CASE WHEN b BETWEEN :b_lo + o % :spread AND :b_hi + o % :spread THEN :per ELSE 0 END ORDER BY b)
  FROM generate_series(0, 63) b), 400, 360, 30
FROM generate_series(0, :orgs - 1) o,
     generate_series(CAST(:lo AS timestamptz), CAST(:hi AS timestamptz) - interval '1 day', interval '1 day') d
"""
_SEED_DAILY_PLATFORM = """
WITH h AS (
  SELECT array_agg(n ORDER BY b) AS hist FROM (
    SELECT b, :per * count(*) FILTER (WHERE b BETWEEN :b_lo + o % :spread AND :b_hi + o % :spread) AS n
    FROM generate_series(0, 63) b, generate_series(0, :orgs - 1) o GROUP BY b) buckets)
INSERT INTO metrics_snapshots (organization_id, period_type, period_start, period_end,
  n_artifact_received, n_artifact_completed, n_artifact_failed, transcription_latency_sum,
  transcription_latency_count, end_to_end_latency_sum, end_to_end_latency_count, ai_cost_sum,
  end_to_end_histogram, artifacts_received, artifacts_completed, artifacts_failed)
SELECT NULL, 'daily', d, d + interval '1 day', 400 * :orgs, 360 * :orgs, 30 * :orgs, 7200000.0 * :orgs,
  360 * :orgs, (:b_hi - :b_lo + 1) * :per * 45000.0 * :orgs, (:b_hi - :b_lo + 1) * :per * :orgs, 6.5 * :orgs,
  h.hist, 400 * :orgs, 360 * :orgs, 30 * :orgs
FROM h, generate_series(CAST(:lo AS timestamptz), CAST(:hi AS timestamptz) - interval '1 day', interval '1 day') d
"""
# Latencies of 11 s to 4 min: 14 buckets in use platform-wide (12 per organization).
USUAL_HISTOGRAM = {"b_lo": 22, "b_hi": 33, "spread": 3, "per": 30}
# Every one of the 64 buckets in use, in every organization: the most the sums can cost.
FULL_HISTOGRAM = {"b_lo": 0, "b_hi": 63, "spread": 1, "per": 5}


def seed_daily_snapshots(
    conn: Any, orgs: int, lo: datetime, hi: datetime, prefix: str, *,
    digits: int = 5, histogram: dict[str, int] | None = None, analyze: bool = True,
) -> None:
    """Daily snapshot rows for [lo, hi): ORGS organizations (PREFIX + number) and the platform."""
    from sqlalchemy import text

    params = {"orgs": orgs, "lo": lo, "hi": hi, "prefix": prefix, "digits": digits,
              **(histogram or USUAL_HISTOGRAM)}
    conn.execute(text(_SEED_DAILY_ORGS), params)
    conn.execute(text(_SEED_DAILY_PLATFORM), params)
    if analyze:
        conn.execute(text("ANALYZE metrics_snapshots"))
