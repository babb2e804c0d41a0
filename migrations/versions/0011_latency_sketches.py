"""latency sketches within 1 % beside the 64-bucket end-to-end histogram; p50, p90, p99

Rows with latencies get a sketch made from their histogram (each bucket's count at its
geometric middle) and coarse_percentiles = true: their percentiles stay within the old
25 %, and stage latencies have none. `voicepipe migrate` then recounts the hours whose
events are still kept (voicepipe.events.recording.refine_coarse_counters).

The histogram column stays for one release, for the previous release's workers still
running while the new ones start: triggers fold what they write into the sketch (coarse).
This release never reads or writes it; the next one drops it, its triggers and vp_hist_add.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0011'
down_revision: str | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ('event_counters', 'metrics_snapshots')
LATENCY_COUNTS = ('transcription_latency_count', 'claims_extraction_latency_count',
                  'entity_resolution_latency_count', 'draft_generation_latency_count', 'end_to_end_latency_count')
PERCENTILES = ('p50_end_to_end_latency', 'p90_end_to_end_latency', 'p99_end_to_end_latency')

# The sketch format (voicepipe/events/sketch.py), written out: it is stored data.
ALPHA = 0.01
GAMMA = (1 + ALPHA) / (1 - ALPHA)
END_TO_END_KIND = 4
SLOT_BITS, OFFSET, COUNT_BITS = 16, 1024, 40
COUNT_MASK = (1 << COUNT_BITS) - 1
# The histogram's layout: bucket 0 [0, 100 ms), bucket i [100 * 1.25**(i-1), 100 * 1.25**i), bucket 63 open.
OLD_EDGES = [100.0 * 1.25**i for i in range(63)]


def _key(duration_ms: float) -> int:
    bucket = math.ceil(math.log(duration_ms) / math.log(GAMMA))
    return (END_TO_END_KIND << SLOT_BITS) | (bucket + OFFSET)


def _legacy_keys() -> list[int]:
    """The sketch key of each old bucket's geometric middle (bucket 0: 50 ms; the open one: its edge)."""
    middles = [50.0] + [math.sqrt(lo * hi) for lo, hi in zip(OLD_EDGES, OLD_EDGES[1:], strict=False)] + [OLD_EDGES[-1]]
    return [_key(m) for m in middles]


FUNCTIONS = (
    f"""
CREATE FUNCTION vp_sketch_add(a bigint[], b bigint[]) RETURNS bigint[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    -- Two latency sketches added: counts of the same key summed, sorted by key.
    SELECT coalesce(array_agg((k << {COUNT_BITS}) + n ORDER BY k), '{{}}'::bigint[])
    FROM (SELECT e >> {COUNT_BITS} AS k, sum(e & {COUNT_MASK})::bigint AS n
          FROM unnest(a || b) AS e GROUP BY 1) AS t
$$""",
    f"""
CREATE FUNCTION vp_legacy_sketch(hist bigint[]) RETURNS bigint[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    -- A 64-bucket end-to-end histogram as a sketch: each bucket's count at its middle's key.
    SELECT coalesce(array_agg((k.key << {COUNT_BITS}) + h.n ORDER BY k.key), '{{}}'::bigint[])
    FROM unnest(hist) WITH ORDINALITY AS h(n, i)
    JOIN unnest(ARRAY[{', '.join(str(k) for k in _legacy_keys())}]::bigint[]) WITH ORDINALITY AS k(key, i) USING (i)
    WHERE h.n > 0
$$""",
    # The previous release's recorders add a batch's histogram to a counter row: the
    # difference is folded into the sketch (a negative one, a recount, replaces it).
    """
CREATE FUNCTION vp_counters_from_histogram() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    delta bigint[];
BEGIN
    IF TG_OP = 'UPDATE' THEN
        SELECT array_agg(coalesce(n.v, 0) - coalesce(o.v, 0) ORDER BY coalesce(n.i, o.i)) INTO delta
        FROM unnest(NEW.end_to_end_histogram) WITH ORDINALITY AS n(v, i)
        FULL JOIN unnest(OLD.end_to_end_histogram) WITH ORDINALITY AS o(v, i) USING (i);
    ELSE
        delta := NEW.end_to_end_histogram;
    END IF;
    IF EXISTS (SELECT FROM unnest(delta) AS d WHERE d < 0) THEN
        NEW.latency_sketch := vp_legacy_sketch(NEW.end_to_end_histogram);
        NEW.coarse_percentiles := true;
    ELSIF EXISTS (SELECT FROM unnest(delta) AS d WHERE d > 0) THEN
        NEW.latency_sketch := vp_sketch_add(NEW.latency_sketch, vp_legacy_sketch(delta));
        NEW.coarse_percentiles := true;
    END IF;
    RETURN NEW;
END $$""",
    # The previous release's aggregation writes a window's whole histogram.
    """
CREATE FUNCTION vp_snapshots_from_histogram() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF cardinality(NEW.end_to_end_histogram) > 0 THEN
        NEW.latency_sketch := vp_legacy_sketch(NEW.end_to_end_histogram);
        NEW.coarse_percentiles := true;
    END IF;
    RETURN NEW;
END $$""",
)
# WHEN keeps them off this release's writes, which leave the histogram empty: a trigger
# function called on every inserted row doubled the cost of writing counter rows (19 us
# a row against 10 us).
TRIGGERS = tuple(
    f"CREATE TRIGGER {name} BEFORE INSERT OR UPDATE OF end_to_end_histogram ON {table} FOR EACH ROW "
    f"WHEN (cardinality(NEW.end_to_end_histogram) > 0) EXECUTE FUNCTION {name}()"
    for name, table in (("vp_counters_from_histogram", "event_counters"),
                        ("vp_snapshots_from_histogram", "metrics_snapshots"))
)


def _has_latencies(table: str) -> str:
    return " OR ".join(f"{table}.{c} > 0" for c in LATENCY_COUNTS)


def upgrade() -> None:
    for function in FUNCTIONS:
        op.execute(function)
    for table in TABLES:
        op.add_column(table, sa.Column('latency_sketch', postgresql.ARRAY(sa.BigInteger()),
                                       server_default=sa.text("'{}'::bigint[]"), nullable=False))
        op.add_column(table, sa.Column('coarse_percentiles', sa.Boolean(), server_default=sa.text('false'),
                                       nullable=False))
        op.execute(f"UPDATE {table} SET coarse_percentiles = true, "
                   f"latency_sketch = vp_legacy_sketch(end_to_end_histogram) WHERE {_has_latencies(table)}")
    for name in PERCENTILES:
        op.add_column('metrics_snapshots', sa.Column(name, sa.Float(), nullable=True))
    for trigger in TRIGGERS:
        op.execute(trigger)


def downgrade() -> None:
    # Each end-to-end bucket's value back into the old bucket holding it; stage latencies are dropped.
    op.execute("DROP TRIGGER vp_counters_from_histogram ON event_counters")
    op.execute("DROP TRIGGER vp_snapshots_from_histogram ON metrics_snapshots")
    mask = (1 << SLOT_BITS) - 1
    value = (f"CASE WHEN ((e >> {COUNT_BITS}) & {mask}) = 0 THEN 0 ELSE "
             f"2 * power({GAMMA!r}::float8, ((e >> {COUNT_BITS}) & {mask}) - {OFFSET}) / ({GAMMA!r} + 1) END")
    old_bucket = "CASE WHEN v < 100 THEN 0 ELSE least(63, floor(ln(v / 100) / ln(1.25))::int + 1) END"
    for table in TABLES:
        op.execute(
            f"UPDATE {table} SET end_to_end_histogram = (SELECT array_agg(coalesce(x.n, 0) ORDER BY b)"
            " FROM generate_series(0, 63) AS b LEFT JOIN"
            f" (SELECT {old_bucket} AS b, sum(n)::bigint AS n FROM"
            f" (SELECT {value} AS v, e & {COUNT_MASK} AS n FROM unnest({table}.latency_sketch) AS e"
            f" WHERE (e >> {COUNT_BITS + SLOT_BITS}) = {END_TO_END_KIND}) AS s GROUP BY 1) AS x USING (b))"
            f" WHERE EXISTS (SELECT FROM unnest({table}.latency_sketch) AS e"
            f" WHERE (e >> {COUNT_BITS + SLOT_BITS}) = {END_TO_END_KIND})"
        )
        op.drop_column(table, 'coarse_percentiles')
        op.drop_column(table, 'latency_sketch')
    for name in PERCENTILES:
        op.drop_column('metrics_snapshots', name)
    for function in ('vp_snapshots_from_histogram()', 'vp_counters_from_histogram()',
                     'vp_legacy_sketch(bigint[])', 'vp_sketch_add(bigint[], bigint[])'):
        op.execute(f"DROP FUNCTION {function}")
