"""usage breakdowns as rows: one per (rollup, kind, key), sums in columns

A 30-day range's top coaches and players were ranked by expanding every day's jsonb
(`jsonb_each` and a field lookup per entry): most of the range query's time. The rows
hold the same sums, keyed by the rollup they belong to and deleted with it.

The jsonb columns stay what they were, and the rows are derived from them by statement
triggers, whoever writes the rollup: this release's rollup, a previous release's worker
still running while the new ones start, or an operator's SQL. Existing rollups are
expanded here, so an upgraded database reads the same figures from rows.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0013'
down_revision: str | None = '0012'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = "rollup_id, kind, key, cost, calls, input_tokens, cached_tokens, output_tokens"
# Every key of the three breakdowns of the rollups in SOURCE (a missing field is 0, as
# UsageTotals.from_json reads it).
EXPAND = (
    f"INSERT INTO ai_usage_daily_breakdowns ({COLUMNS}) "
    "SELECT a.id, k.kind, e.key, coalesce((e.value->>'cost')::numeric, 0), "
    + ", ".join(f"coalesce((e.value->>'{name}')::bigint, 0)"
                for name in ("calls", "input_tokens", "cached_tokens", "output_tokens"))
    + " FROM {source} AS a CROSS JOIN LATERAL (VALUES ('operation', a.by_operation), ('coach', a.by_coach), "
    "('player', a.by_player)) AS k (kind, doc) CROSS JOIN LATERAL jsonb_each(k.doc) AS e"
)

FUNCTION = f"""
CREATE FUNCTION vp_usage_breakdown_rows() RETURNS trigger LANGUAGE plpgsql
-- The delete finds an updated rollup's rows through the primary key, whatever the statistics
-- say: planned on a table never analyzed, it scanned every breakdown row (704 ms to re-run a
-- day of 2,000 organizations with three days stored, and more with every day kept).
SET enable_seqscan = off AS $$
BEGIN
    -- The rollups a statement wrote (its transition table): their rows again, from their jsonb.
    IF TG_OP = 'UPDATE' THEN
        DELETE FROM ai_usage_daily_breakdowns WHERE rollup_id = ANY (ARRAY(SELECT id FROM changed));
    END IF;
    {EXPAND.format(source="changed")};
    RETURN NULL;
END $$
"""
# A trigger with transition tables takes one event: one for inserts, one for updates
# (an upsert's updated rows are in the second's table).
TRIGGERS = tuple(
    f"CREATE TRIGGER vp_usage_breakdown_rows_{event.lower()} AFTER {event} ON ai_usage_daily_aggregates "
    "REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION vp_usage_breakdown_rows()"
    for event in ("INSERT", "UPDATE")
)


def upgrade() -> None:
    op.create_table(
        'ai_usage_daily_breakdowns',
        sa.Column('rollup_id', sa.BigInteger(), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('key', sa.String(length=255), nullable=False),
        sa.Column('cost', sa.Numeric(precision=24, scale=10), nullable=False),
        sa.Column('calls', sa.BigInteger(), nullable=False),
        sa.Column('input_tokens', sa.BigInteger(), nullable=False),
        sa.Column('cached_tokens', sa.BigInteger(), nullable=False),
        sa.Column('output_tokens', sa.BigInteger(), nullable=False),
        sa.CheckConstraint("kind IN ('operation', 'coach', 'player')",
                           name=op.f('ck_ai_usage_daily_breakdowns_kind')),
        sa.ForeignKeyConstraint(['rollup_id'], ['ai_usage_daily_aggregates.id'],
                                name=op.f('fk_ai_usage_daily_breakdowns_rollup_id_ai_usage_daily_aggregates'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('rollup_id', 'kind', 'key', name=op.f('pk_ai_usage_daily_breakdowns')),
    )
    # No rollup is written or deleted between the expansion and the triggers (readers go on).
    op.execute("LOCK TABLE ai_usage_daily_aggregates IN SHARE ROW EXCLUSIVE MODE")
    op.execute(EXPAND.format(source="ai_usage_daily_aggregates"))
    op.execute(FUNCTION)
    for trigger in TRIGGERS:
        op.execute(trigger)
    op.execute("ANALYZE ai_usage_daily_breakdowns")


def downgrade() -> None:
    for event in ("insert", "update"):
        op.execute(f"DROP TRIGGER vp_usage_breakdown_rows_{event} ON ai_usage_daily_aggregates")
    op.execute("DROP FUNCTION vp_usage_breakdown_rows()")
    op.drop_table('ai_usage_daily_breakdowns')
