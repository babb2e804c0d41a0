"""nothing lost (dead letters)

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'dead_letters',
        sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column('task_id', sa.String(length=255), nullable=False),
        sa.Column('task_name', sa.String(length=255), nullable=False),
        sa.Column('queue', sa.String(length=64), nullable=False),
        sa.Column('kwargs', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column('reason', sa.String(length=32), nullable=False),
        sa.Column('error', sa.Text(), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('deliveries', sa.Integer(), server_default='1', nullable=False),
        sa.Column('times_parked', sa.Integer(), server_default='1', nullable=False),
        sa.Column('status', sa.String(length=16), server_default='parked', nullable=False),
        sa.Column('first_failed_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.Column('last_failed_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.Column('replayed_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('replays', sa.Integer(), server_default='0', nullable=False),
        sa.Column('discarded_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_dead_letters')),
        sa.UniqueConstraint('task_id', name=op.f('uq_dead_letters_task_id')),
    )
    op.create_index('ix_dead_letters_status', 'dead_letters', ['status'], unique=False)
    op.create_table(
        'task_deliveries',
        sa.Column('task_id', sa.String(length=255), nullable=False),
        sa.Column('retries', sa.Integer(), nullable=False),
        sa.Column('deliveries', sa.Integer(), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.PrimaryKeyConstraint('task_id', 'retries', name=op.f('pk_task_deliveries')),
    )


def downgrade() -> None:
    op.drop_table('task_deliveries')
    op.drop_index('ix_dead_letters_status', table_name='dead_letters')
    op.drop_table('dead_letters')
