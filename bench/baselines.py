"""Bare SQL baselines: the irreducible reads and writes of the metrics engine, with nothing else.

Each is one statement that touches the same rows as voicepipe's path and computes the same
additive parts (every scalar part, the latency sketches summed key by key), but derives no
figure, takes no lock, keeps no bookkeeping and does not care about summation order. A
ratio to one of them says how far the engine is from what PostgreSQL itself needs for the job.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.engine import Engine

from voicepipe.events.parts import (
    ALL_PARTS,
    COARSE_PART,
    DECIMAL_PARTS,
    FLOAT_PARTS,
    INT_PARTS,
    SCALAR_PARTS,
    SKETCH_PART,
)
from voicepipe.events.sketch import END_TO_END, kind_sql
from voicepipe.infra.bulk import HASHED_GROUP
from voicepipe.metrics.snapshots import SUM_WORK_MEM, counted_keys_sql

_SUMS = ", ".join(
    [f"sum({n}) AS {n}" for n in INT_PARTS + FLOAT_PARTS + DECIMAL_PARTS]
    + [f"bool_or({COARSE_PART}) AS {COARSE_PART}"]
)


def _summed_sketch(table: str, where: str, by: str | None = None, entries: str = "true") -> str:
    """The sketches of TABLE's rows WHERE summed key by key, as the summing statement does
    (every non-empty bucket unnested in the select list, those of ENTRIES (a condition on
    entry `b`) counted): one array; per value of the expression BY if given (columns `k`
    and `sketch`), each value's rows read in order and their sketches concatenated first."""
    if by is None:
        return counted_keys_sql(f"SELECT unnest({SKETCH_PART}) AS b FROM {table} WHERE {where}", entries)
    return (
        f"SELECT k, ({counted_keys_sql('SELECT unnest(g.entries) AS b', entries)}) AS sketch"
        f" FROM (SELECT k, vp_sketch_concat({SKETCH_PART}) AS entries"
        f" FROM (SELECT {by} COLLATE \"C\" AS k, {SKETCH_PART} FROM {table} WHERE {where} ORDER BY 1) AS r"
        " GROUP BY k) AS g"
    )


# Every part of the snapshot rows of [lo, hi), summed per organization (the platform rows
# under NULL): what the daily rollup must at least read and add. The organization breakdown
# reads only end-to-end latency from the sketches (BARE_BREAKDOWN_SUMS).
# The sketches are summed beside the scalars and joined to them per organization ('' for the
# platform, as no organization id is blank), with the summing statement's planner settings
# (voicepipe.metrics.snapshots.sum_plan_settings: no nested loop, its work_mem).
_ORG_KEY = "coalesce(organization_id, '')"
_IN_RANGE = "period_type = :period_type AND period_start >= :lo AND period_start < :hi"


def _bare_sums(entries: str) -> str:
    return (
        f"SELECT e.organization_id, e.windows, {', '.join(f'e.{n}' for n in (*SCALAR_PARTS, COARSE_PART))},"
        " coalesce(h.sketch, '{}')"
        f" FROM (SELECT organization_id, {_ORG_KEY} AS k, count(*) AS windows, {_SUMS}"
        f" FROM metrics_snapshots WHERE {_IN_RANGE} GROUP BY organization_id, {HASHED_GROUP}) e"
        f" LEFT JOIN ({_summed_sketch('metrics_snapshots', _IN_RANGE, _ORG_KEY, entries)}) h"
        " ON h.k = e.k"
    )


BARE_SUMS = _bare_sums("true")
BARE_BREAKDOWN_SUMS = _bare_sums(kind_sql("b", END_TO_END))

# The hour's counter rows copied as its organization rows (sketches as they are), and their
# sums as the platform row, upserted into metrics_snapshots itself under a window moved
# BARE_HOUR_SHIFT back, which nothing else reads: the same rows into the same table, its
# size and indexes included, as the hourly aggregation writes (figures are left at their
# defaults, nothing is derived). An empty copy of the table, as this was before, made the
# baseline's index inserts cheaper than ours (docs/benchmarks.md).
BARE_HOUR_SHIFT = timedelta(days=3650)
_COLUMNS = ("organization_id", "period_type", "period_start", "period_end", *ALL_PARTS)
_SHIFTED = "CAST(:h AS timestamptz) - :shift"
BARE_HOUR = (
    f"INSERT INTO metrics_snapshots ({', '.join(_COLUMNS)})"
    f" SELECT organization_id, 'hourly', {_SHIFTED}, {_SHIFTED} + interval '1 hour', {', '.join(ALL_PARTS)}"
    " FROM event_counters WHERE hour_start = :h AND organization_id IS NOT NULL"
    f" UNION ALL SELECT NULL, 'hourly', {_SHIFTED}, {_SHIFTED} + interval '1 hour',"
    f" {', '.join(f'sum({n})' for n in SCALAR_PARTS)},"
    f" coalesce(({_summed_sketch('event_counters', 'hour_start = :h')}), '{{}}'),"
    f" coalesce(bool_or({COARSE_PART}), false)"
    " FROM event_counters WHERE hour_start = :h"
    " ON CONFLICT (organization_id, period_type, period_start) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in ALL_PARTS)
)


def bare_sums(engine: Engine, period_type: str, lo: datetime, hi: datetime, *, breakdown: bool = False) -> int:
    """Run BARE_SUMS (BARE_BREAKDOWN_SUMS); returns the number of groups (organizations and the platform)."""
    with engine.connect() as conn:
        conn.execute(text("SELECT set_config('work_mem', :work_mem, true), set_config('enable_nestloop', 'off', true)"),
                     {"work_mem": SUM_WORK_MEM})
        sql = BARE_BREAKDOWN_SUMS if breakdown else BARE_SUMS
        return len(conn.execute(text(sql), {"period_type": period_type, "lo": lo, "hi": hi}).all())


def bare_hour(engine: Engine, hour: datetime) -> None:
    """Run BARE_HOUR for the hour: inserts on the first run, updates of every row after."""
    with engine.begin() as conn:
        conn.execute(text(BARE_HOUR), {"h": hour, "shift": BARE_HOUR_SHIFT})


def forget_bare_hour(engine: Engine, hour: datetime) -> None:
    """Delete BARE_HOUR's rows for the hour, so that its next run is a first one."""
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM metrics_snapshots WHERE period_type = 'hourly' AND period_start = :at"),
                     {"at": hour - BARE_HOUR_SHIFT})


# An organization's daily usage rollups over a date range: the totals, and every key of the
# three breakdowns summed from their rows (no ranking, nothing left out).
BARE_USAGE = (
    "WITH r AS (SELECT * FROM ai_usage_daily_aggregates WHERE organization_id = :org AND day BETWEEN :first AND :last)"
    " SELECT 'totals', NULL, sum(total_cost), sum(total_calls), sum(total_input_tokens), sum(total_cached_tokens),"
    " sum(total_output_tokens) FROM r"
    " UNION ALL SELECT b.kind, b.key, sum(b.cost), sum(b.calls), sum(b.input_tokens), sum(b.cached_tokens),"
    " sum(b.output_tokens) FROM r JOIN ai_usage_daily_breakdowns AS b ON b.rollup_id = r.id GROUP BY b.kind, b.key"
)


def bare_usage(engine: Engine, organization_id: str, first: date, last: date) -> int:
    with engine.connect() as conn:
        return len(conn.execute(text(BARE_USAGE), {"org": organization_id, "first": first, "last": last}).all())
