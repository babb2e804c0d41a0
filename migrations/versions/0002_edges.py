"""truth at the edges (stale windows by counter revision, usage revisions)

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'late_windows',
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('period_start', sa.DateTime(timezone=True), nullable=False),
        sa.Column('revision', sa.BigInteger(), server_default=sa.text("nextval('counter_revision_seq')"),
                  nullable=False),
        sa.Column('marked_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.CheckConstraint("kind IN ('hourly', 'usage_day')", name=op.f('ck_late_windows_kind')),
        sa.PrimaryKeyConstraint('kind', 'period_start', name=op.f('pk_late_windows')),
    )
    op.add_column('artifacts', sa.Column('requeued_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column('artifacts', 'requeued_at')
    op.drop_table('late_windows')
