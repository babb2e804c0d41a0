"""the artifacts list: newest first by keyset, whole, by status, by organization

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index('ix_artifacts_created_at_id', 'artifacts', ['created_at', 'id'], unique=False)
    op.create_index('ix_artifacts_status_created_at_id', 'artifacts', ['status', 'created_at', 'id'], unique=False)
    # Its first column serves what ix_artifacts_organization_id did.
    op.create_index('ix_artifacts_organization_id_created_at_id', 'artifacts',
                    ['organization_id', 'created_at', 'id'], unique=False)
    op.drop_index('ix_artifacts_organization_id', table_name='artifacts')


def downgrade() -> None:
    op.create_index('ix_artifacts_organization_id', 'artifacts', ['organization_id'], unique=False)
    op.drop_index('ix_artifacts_organization_id_created_at_id', table_name='artifacts')
    op.drop_index('ix_artifacts_status_created_at_id', table_name='artifacts')
    op.drop_index('ix_artifacts_created_at_id', table_name='artifacts')
