"""observability (alerts)

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('alerts',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('kind', sa.String(length=64), nullable=False),
    sa.Column('organization_id', sa.String(length=255), nullable=True),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('value', sa.Float(), nullable=True),
    sa.Column('threshold', sa.Float(), nullable=True),
    sa.Column('opened_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('last_seen_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('evaluations', sa.Integer(), server_default='1', nullable=False),
    sa.Column('acknowledged_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('acknowledged_by', sa.String(length=255), nullable=True),
    sa.Column('resolved_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_alerts'))
    )
    op.create_index('ix_alerts_opened_at', 'alerts', ['opened_at'], unique=False)
    op.create_index('uq_alerts_open_kind_organization_id', 'alerts', ['kind', 'organization_id'],
                    unique=True, postgresql_where=sa.text('resolved_at IS NULL'),
                    postgresql_nulls_not_distinct=True)


def downgrade() -> None:
    op.drop_index('uq_alerts_open_kind_organization_id', table_name='alerts',
                  postgresql_where=sa.text('resolved_at IS NULL'))
    op.drop_index('ix_alerts_opened_at', table_name='alerts')
    op.drop_table('alerts')
