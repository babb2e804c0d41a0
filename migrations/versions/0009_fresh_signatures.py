"""signed authority is fresh and single-use: nonces, refusals, the last decision per user

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('users', sa.Column('staff_decided_at', sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        'used_nonces',
        sa.Column('nonce', sa.String(length=255), nullable=False),
        sa.Column('task_name', sa.String(length=255), nullable=False),
        sa.Column('used_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.PrimaryKeyConstraint('nonce', name=op.f('pk_used_nonces')),
    )
    op.create_index(op.f('ix_used_nonces_used_at'), 'used_nonces', ['used_at'], unique=False)
    op.create_table(
        'signature_refusals',
        sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column('task_name', sa.String(length=255), nullable=False),
        sa.Column('subject', sa.String(length=255), nullable=True),
        sa.Column('refusal', sa.String(length=64), nullable=False),
        sa.Column('message', sa.Text(), nullable=False),
        sa.Column('refused_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_signature_refusals')),
    )
    op.create_index(op.f('ix_signature_refusals_refused_at'), 'signature_refusals', ['refused_at'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_signature_refusals_refused_at'), table_name='signature_refusals')
    op.drop_table('signature_refusals')
    op.drop_index(op.f('ix_used_nonces_used_at'), table_name='used_nonces')
    op.drop_table('used_nonces')
    op.drop_column('users', 'staff_decided_at')
