"""Synthetic event streams for the benchmarks (seeded, realistic mix)."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from voicepipe.domain import EVENT_TYPES
from voicepipe.events import sketch

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


# Latency sketches of seeded rows, built in SQL (voicepipe/events/sketch.py has the format).
_BITS = sketch.COUNT_BITS
_MASK = (1 << _BITS) - 1


@dataclass(frozen=True)
class Buckets:
    """N buckets of one latency per seeded row, PER events in each.

    The keys are N + SPREAD - 1 buckets STEP apart from the one of FIRST_MS; row r uses N
    consecutive ones from number r % SPREAD, so rows differ and their sums have more keys.
    PER may be an SQL expression of the seed's row (an int otherwise).
    """

    latency: str  # one of sketch.KINDS
    first_ms: float
    n: int
    per: int | str
    spread: int = 1
    step: int = 1

    @property
    def keys(self) -> list[int]:
        first = sketch.key_of(sketch.KIND_OF[self.latency], self.first_ms)
        return [first + i * self.step for i in range(self.n + self.spread - 1)]

    @property
    def count(self) -> int:
        """A row's count of that latency (PER an int)."""
        assert isinstance(self.per, int)
        return self.n * self.per


def row_sketch_sql(row: str, *latencies: Buckets, vary: str | None = None) -> str:
    """SQL of the packed sketch of row number ROW (an SQL expression) with those latencies' buckets.

    With VARY (an SQL integer expression, different for every seeded row) each row's counts
    differ as real sketches do, and their totals do not: the row's buckets pair up (first and
    second, third and fourth...) and J of a pair's 2 x PER events move from its second bucket
    to its first, J in [0, PER] from a hash of VARY, the latency and the pair; a bucket left
    empty is dropped. Rows whose sketches repeat let PostgreSQL cache each distinct sketch's unnest
    (Memoize), which real data, where nearly every sketch differs, does not allow.
    """
    picks = []
    for index, b in enumerate(latencies):
        per = f"CAST({b.per} AS bigint)"
        count = per
        if vary is not None:
            pair = f"CAST({vary} AS bigint) * 1024 + {index * 256} + (q + 1) / 2"
            moved = f"(abs(CAST(hashint8({pair}) AS bigint)) % ({per} + 1))"
            paired = f"q < {b.n}" if b.n % 2 else "true"
            count = f"{per} + CASE WHEN NOT ({paired}) THEN 0 WHEN q % 2 = 1 THEN {moved} ELSE -{moved} END"
        picks.append(
            f"SELECT (k << {_BITS}) + c AS e FROM (SELECT k, {count} AS c"
            f" FROM (SELECT k, i - {row} % {b.spread} AS q"
            f" FROM unnest(CAST(ARRAY{b.keys} AS bigint[])) WITH ORDINALITY AS u(k, i)"
            f" WHERE i > {row} % {b.spread} AND i <= {b.n} + {row} % {b.spread}) AS w) AS counted WHERE c > 0"
        )
    return f"(SELECT array_agg(e ORDER BY e) FROM ({' UNION ALL '.join(picks)}) AS picked)"


def summed_sketch_sql(source: str, by: str | None = None) -> str:
    """SQL of the key-wise sums of the latency_sketch column of SOURCE (a FROM item), packed
    as column `sketch`, per value of column BY (with that column), or over all its rows."""
    group = f"{by}, " if by else ""
    return (
        f"SELECT {group}array_agg((k << {_BITS}) + n ORDER BY k) AS sketch"
        f" FROM (SELECT {group}e >> {_BITS} AS k, sum(e & {_MASK})::bigint AS n"
        f" FROM {source} CROSS JOIN LATERAL unnest({source}.latency_sketch) AS e"
        f" GROUP BY {group}e >> {_BITS}) AS per_key"
        + (f" GROUP BY {by}" if by else "")
    )


@dataclass(frozen=True)
class DailyLatencies:
    transcription: Buckets
    end_to_end: Buckets


# 30 days (any range) of daily snapshots for ORGS organizations and their platform rows,
# as the daily rollup writes them, in one statement: each organization's latency sketch
# has a few transcription and end-to-end buckets (a DailyLatencies), their counts varying
# from row to row; its latency counts are their totals, and each platform row's sketch is
# the key-wise sum of its organizations' that day (from the same rows: they are built once).
def _seed_daily_sql(latencies: DailyLatencies) -> str:
    tr, e2e = latencies.transcription, latencies.end_to_end
    row = "CAST(o AS bigint) * 1000000 + CAST(extract(epoch FROM d) / 86400 AS bigint)"
    days = "generate_series(CAST(:lo AS timestamptz), CAST(:hi AS timestamptz) - interval '1 day', interval '1 day') d"
    columns = """INSERT INTO metrics_snapshots (organization_id, period_type, period_start, period_end,
  n_artifact_received, n_artifact_completed, n_artifact_failed, transcription_latency_sum,
  transcription_latency_count, end_to_end_latency_sum, end_to_end_latency_count, ai_cost_sum,
  latency_sketch, artifacts_received, artifacts_completed, artifacts_failed)"""
    return f"""WITH org_rows AS MATERIALIZED (SELECT o, d, {row_sketch_sql('o', tr, e2e, vary=row)} AS latency_sketch
  FROM generate_series(0, :orgs - 1) o, {days}),
written AS ({columns}
SELECT :prefix || lpad(o::text, :digits, '0'), 'daily', d, d + interval '1 day', 400, 360, 30,
  {tr.count} * 20000.0, {tr.count}, {e2e.count} * 45000.0, {e2e.count}, 6.5, latency_sketch, 400, 360, 30
FROM org_rows),
platform AS ({summed_sketch_sql('org_rows', 'd')})
{columns}
SELECT NULL, 'daily', d, d + interval '1 day', 400 * :orgs, 360 * :orgs, 30 * :orgs, {tr.count} * 20000.0 * :orgs,
  {tr.count} * :orgs, {e2e.count} * 45000.0 * :orgs, {e2e.count} * :orgs, 6.5 * :orgs,
  platform.sketch, 400 * :orgs, 360 * :orgs, 30 * :orgs
FROM platform"""


# A handful of buckets: transcriptions of 14 to 29 s and end-to-end latencies of 11 s to
# 4 min, 4 and 12 buckets per organization (5 and 14 platform-wide).
USUAL_SKETCH = DailyLatencies(
    Buckets("transcription_latency", 14_000, n=4, per=90, spread=2, step=9),
    Buckets("end_to_end_latency", 11_000, n=12, per=30, spread=3, step=12),
)
# A wide sketch, the most the sums can cost: every bucket from 8 to 17 s (40) in use for
# transcriptions and every one from 2 s to 1 min 50 s (200, 201 platform-wide) end to end.
WIDE_SKETCH = DailyLatencies(
    Buckets("transcription_latency", 8_000, n=40, per=9),
    Buckets("end_to_end_latency", 2_000, n=200, per=5, spread=2),
)


def seed_daily_snapshots(
    conn: Any, orgs: int, lo: datetime, hi: datetime, prefix: str, *,
    digits: int = 5, latencies: DailyLatencies = USUAL_SKETCH, analyze: bool = True,
) -> None:
    """Daily snapshot rows for [lo, hi): ORGS organizations (PREFIX + number) and the platform."""
    from sqlalchemy import text

    params = {"orgs": orgs, "lo": lo, "hi": hi, "prefix": prefix, "digits": digits}
    conn.execute(text(_seed_daily_sql(latencies)), params)
    if analyze:
        conn.execute(text("ANALYZE metrics_snapshots"))
