"""staff audit out of the application's reach: owner-run trigger, ids fixed, deletes audited

The audit trigger of 0003 ran with the writer's rights, so the application role had
to be able to INSERT into staff_audit, and could therefore forge rows; an id swap
(UPDATE users SET id) moved staff status without a row, and DELETE removed a staff
user silently. Now the trigger function runs with its owner's rights (SECURITY
DEFINER, fixed search_path) and the application role only reads staff_audit
(voicepipe/infra/db_roles.py, applied by `voicepipe migrate --app-role`); a user's id cannot
change (refused as a permission error); deleting a staff user is audited as a change
to not staff.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

AUDIT_FUNCTION = """
CREATE OR REPLACE FUNCTION voicepipe_audit_staff_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    old_value boolean := NULL;
    new_value boolean;
    subject text;
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF NOT OLD.is_platform_staff THEN
            RETURN NULL;
        END IF;
        subject := OLD.id;
        old_value := true;
        new_value := false;  -- a deleted user is no longer staff
    ELSE
        subject := NEW.id;
        new_value := NEW.is_platform_staff;
        IF TG_OP = 'UPDATE' THEN
            old_value := OLD.is_platform_staff;
            IF NEW.is_platform_staff IS NOT DISTINCT FROM OLD.is_platform_staff THEN
                RETURN NULL;
            END IF;
        ELSIF NOT NEW.is_platform_staff THEN
            RETURN NULL;  -- a new user who is not staff changes no one's rights
        END IF;
    END IF;
    INSERT INTO staff_audit (user_id, changed_by, path, old_is_platform_staff, new_is_platform_staff, reason)
    VALUES (
        subject,
        coalesce(nullif(current_setting('voicepipe.staff_changed_by', true), ''), session_user),
        coalesce(nullif(current_setting('voicepipe.staff_change_path', true), ''), 'sql'),
        old_value,
        new_value,
        coalesce(nullif(current_setting('voicepipe.staff_change_reason', true), ''),
                 CASE WHEN TG_OP = 'DELETE' THEN 'user deleted' END)
    );
    RETURN NULL;
END
$$
"""

REFUSE_ID_CHANGE = """
CREATE FUNCTION voicepipe_refuse_user_id_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'permission denied: users.id cannot change (staff status is audited by id)'
        USING ERRCODE = 'insufficient_privilege';
END
$$
"""


def upgrade() -> None:
    op.execute(AUDIT_FUNCTION)
    op.execute(REFUSE_ID_CHANGE)
    op.execute("CREATE TRIGGER users_id_fixed BEFORE UPDATE OF id ON users FOR EACH ROW "
               "WHEN (OLD.id IS DISTINCT FROM NEW.id) EXECUTE FUNCTION voicepipe_refuse_user_id_change()")
    op.execute("CREATE TRIGGER users_staff_delete_audit AFTER DELETE ON users FOR EACH ROW "
               "EXECUTE FUNCTION voicepipe_audit_staff_change()")


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS users_staff_delete_audit ON users")
    op.execute("DROP TRIGGER IF EXISTS users_id_fixed ON users")
    op.execute("DROP FUNCTION IF EXISTS voicepipe_refuse_user_id_change()")
    op.execute(AUDIT_FUNCTION.replace("SECURITY DEFINER SET search_path = public, pg_temp", "SECURITY INVOKER"))
