"""Bare SQL baselines: the irreducible reads and writes of the metrics engine, with nothing else.

Each is one statement that touches the same rows as voicepipe's path and computes the same
additive parts (every scalar part, every histogram bucket), but derives no figure, takes no
lock, keeps no bookkeeping and does not care about summation order. A ratio to one of them
says how far the engine is from what PostgreSQL itself needs for the job.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.engine import Engine

from voicepipe.events.histogram import N_BUCKETS
from voicepipe.events.parts import DECIMAL_PARTS, FLOAT_PARTS, HISTOGRAM_PART, INT_PARTS, SCALAR_PARTS

_BUCKETS = range(1, N_BUCKETS + 1)
_SUMS = ", ".join(
    [f"sum({n}) AS {n}" for n in INT_PARTS + FLOAT_PARTS + DECIMAL_PARTS]
    + [f"sum({HISTOGRAM_PART}[{i}]) AS b{i}" for i in _BUCKETS]
)

# Every part of the snapshot rows of [lo, hi), summed per organization (the platform rows
# under NULL): what the daily rollup and the organization breakdown must at least read and add.
BARE_SUMS = (
    f"SELECT organization_id, count(*), {_SUMS} FROM metrics_snapshots"
    " WHERE period_type = :period_type AND period_start >= :lo AND period_start < :hi GROUP BY organization_id"
)

HOUR_TABLE = "bench_bare_snapshots"
_COLUMNS = ("organization_id", "period_type", "period_start", "period_end", *SCALAR_PARTS, HISTOGRAM_PART)
_PADDED = f"{HISTOGRAM_PART} || array_fill(0::bigint, ARRAY[{N_BUCKETS} - cardinality({HISTOGRAM_PART})])"
# The hour's counter rows copied as its organization rows, and their sums as the platform
# row, upserted into a copy of metrics_snapshots: what the hourly aggregation must at least
# read and write (figures are left at their defaults, nothing is derived).
BARE_HOUR = (
    f"INSERT INTO {HOUR_TABLE} ({', '.join(_COLUMNS)})"
    f" SELECT organization_id, 'hourly', :h, :h_end, {', '.join(SCALAR_PARTS)}, {_PADDED}"
    " FROM event_counters WHERE hour_start = :h AND organization_id IS NOT NULL"
    f" UNION ALL SELECT NULL, 'hourly', :h, :h_end, {', '.join(f'sum({n})' for n in SCALAR_PARTS)},"
    f" ARRAY[{', '.join(f'coalesce(sum({HISTOGRAM_PART}[{i}]), 0)' for i in _BUCKETS)}]::bigint[]"
    " FROM event_counters WHERE hour_start = :h"
    " ON CONFLICT (organization_id, period_type, period_start) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in (*SCALAR_PARTS, HISTOGRAM_PART))
)


def bare_sums(engine: Engine, period_type: str, lo: datetime, hi: datetime) -> int:
    """Run BARE_SUMS; returns the number of groups (organizations and the platform)."""
    with engine.connect() as conn:
        return len(conn.execute(text(BARE_SUMS), {"period_type": period_type, "lo": lo, "hi": hi}).all())


def bare_hour(engine: Engine, hour: datetime, *, first: bool = False) -> None:
    """Run BARE_HOUR for the hour; FIRST empties the copy before, so every row is an insert."""
    with engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE IF NOT EXISTS {HOUR_TABLE} (LIKE metrics_snapshots INCLUDING ALL)"))
        if first:
            conn.execute(text(f"TRUNCATE {HOUR_TABLE}"))
        conn.execute(text(BARE_HOUR), {"h": hour, "h_end": hour + timedelta(hours=1)})


_USAGE_FIELDS = (("cost", "numeric"), ("calls", "bigint"), ("input_tokens", "bigint"), ("cached_tokens", "bigint"),
                 ("output_tokens", "bigint"))
# An organization's daily usage rollups over a date range: the totals, and every key of the
# three breakdowns summed from their jsonb (no ranking, nothing left out).
BARE_USAGE = (
    "WITH r AS (SELECT * FROM ai_usage_daily_aggregates WHERE organization_id = :org AND day BETWEEN :first AND :last)"
    " SELECT 'totals', NULL, sum(total_cost), sum(total_calls), sum(total_input_tokens), sum(total_cached_tokens),"
    " sum(total_output_tokens) FROM r"
    + "".join(
        f" UNION ALL SELECT '{column}', b.key, "
        + ", ".join(f"sum((b.value->>'{name}')::{kind})" for name, kind in _USAGE_FIELDS)
        + f" FROM r CROSS JOIN LATERAL jsonb_each(r.{column}) AS b GROUP BY b.key"
        for column in ("by_operation", "by_coach", "by_player")
    )
)


def bare_usage(engine: Engine, organization_id: str, first: date, last: date) -> int:
    with engine.connect() as conn:
        return len(conn.execute(text(BARE_USAGE), {"org": organization_id, "first": first, "last": last}).all())
