"""no future windows: remove snapshots of windows that had not closed

Aggregation refuses a window until it has closed (an hour at its end, a day at
midnight UTC). Rows an earlier release wrote for open or future windows (one task
message could date them 2099) would stay the newest window for the exporter, the
alerts and the dashboard, and retention never removes them. They carry nothing that
the closed window's own run will not write again.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OPEN = ("(period_type = 'hourly' AND period_start + interval '1 hour' > now()) "
         "OR (period_type = 'daily' AND period_start + interval '1 day' > now())")


def upgrade() -> None:
    op.execute(f"DELETE FROM metrics_snapshots WHERE {_OPEN}")
    op.execute(f"DELETE FROM aggregation_windows WHERE {_OPEN}")
    op.execute("DELETE FROM ai_usage_daily_aggregates WHERE day >= (now() AT TIME ZONE 'UTC')::date")


def downgrade() -> None:
    pass  # the rows removed described no closed window: there is nothing to put back
