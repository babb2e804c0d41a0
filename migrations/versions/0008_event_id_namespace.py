"""a per-deployment namespace for the pipeline's event ids

The pipeline derived its event ids (retry_initiated, stage started/completed, ...)
with uuid5 of a namespace written in the source, so anyone who knew an artifact id
could compute them and send events with those ids first, suppressing the real ones.
The namespace is now drawn at random here, once per deployment, and kept in
deployment_secrets (read-only for the application role). Ids derived before the
upgrade stay as they were; only a stage message processed before the upgrade and
delivered again after it could record one of its events a second time.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'deployment_secrets',
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('value', sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint('name', name=op.f('pk_deployment_secrets')),
    )
    op.execute("INSERT INTO deployment_secrets (name, value) VALUES ('event_id_namespace', gen_random_uuid()::text)")


def downgrade() -> None:
    op.drop_table('deployment_secrets')
