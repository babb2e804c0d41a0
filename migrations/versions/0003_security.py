"""safe by default (staff audit, refused retries)

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Every change of users.is_platform_staff is audited by the database itself, whatever
# wrote it. The writer names itself in transaction-local settings
# (voicepipe/directory/staff.py: set_config('voicepipe.staff_change_path', ...)); a write that
# does not (a manual UPDATE) is recorded with path 'sql' and the database role.
AUDIT_FUNCTION = """
CREATE FUNCTION voicepipe_audit_staff_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    old_value boolean := NULL;
BEGIN
    IF TG_OP = 'UPDATE' THEN
        old_value := OLD.is_platform_staff;
        IF NEW.is_platform_staff IS NOT DISTINCT FROM OLD.is_platform_staff THEN
            RETURN NULL;
        END IF;
    ELSIF NOT NEW.is_platform_staff THEN
        RETURN NULL;  -- a new user who is not staff changes no one's rights
    END IF;
    INSERT INTO staff_audit (user_id, changed_by, path, old_is_platform_staff, new_is_platform_staff, reason)
    VALUES (
        NEW.id,
        coalesce(nullif(current_setting('voicepipe.staff_changed_by', true), ''), session_user),
        coalesce(nullif(current_setting('voicepipe.staff_change_path', true), ''), 'sql'),
        old_value,
        NEW.is_platform_staff,
        nullif(current_setting('voicepipe.staff_change_reason', true), '')
    );
    RETURN NULL;
END
$$
"""

AUDIT_TRIGGER = """
CREATE TRIGGER users_staff_audit
AFTER INSERT OR UPDATE OF is_platform_staff ON users
FOR EACH ROW EXECUTE FUNCTION voicepipe_audit_staff_change()
"""


def upgrade() -> None:
    op.create_table(
        'staff_audit',
        sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column('user_id', sa.String(length=255), nullable=False),
        sa.Column('changed_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.Column('changed_by', sa.String(length=255), nullable=False),
        sa.Column('path', sa.String(length=32), nullable=False),
        sa.Column('old_is_platform_staff', sa.Boolean(), nullable=True),
        sa.Column('new_is_platform_staff', sa.Boolean(), nullable=False),
        sa.Column('reason', sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_staff_audit')),
    )
    op.create_index('ix_staff_audit_user_id_changed_at', 'staff_audit', ['user_id', 'changed_at'], unique=False)
    op.create_table(
        'retry_refusals',
        sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column('artifact_id', sa.String(length=255), nullable=False),
        sa.Column('stage', sa.String(length=32), nullable=False),
        sa.Column('requested_by', sa.String(length=255), nullable=True),
        sa.Column('reason', sa.Text(), nullable=True),
        sa.Column('request_id', sa.String(length=255), nullable=True),
        sa.Column('refusal', sa.String(length=64), nullable=False),
        sa.Column('message', sa.Text(), nullable=False),
        sa.Column('refused_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_retry_refusals')),
    )
    op.create_index(
        'ix_retry_refusals_artifact_id_refused_at', 'retry_refusals', ['artifact_id', 'refused_at'], unique=False
    )
    op.execute(AUDIT_FUNCTION)
    op.execute(AUDIT_TRIGGER)


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS users_staff_audit ON users")
    op.execute("DROP FUNCTION IF EXISTS voicepipe_audit_staff_change()")
    op.drop_index('ix_retry_refusals_artifact_id_refused_at', table_name='retry_refusals')
    op.drop_table('retry_refusals')
    op.drop_index('ix_staff_audit_user_id_changed_at', table_name='staff_audit')
    op.drop_table('staff_audit')
