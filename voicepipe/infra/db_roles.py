"""The application's database role: reads and writes rows, never changes the schema.

`voicepipe migrate --app-role NAME` runs as the schema owner (docker-compose's
`migrate` service); after the migrations it creates or updates the role NAME with the
password in VOICEPIPE_APP_DB_PASSWORD and grants it rows only. Default privileges make
tables and sequences that later migrations create (as the same owner) granted too.
The staff audit is read-only for the application: its rows are written by the audit
trigger, which runs with the owner's rights (migration 0007).
"""

from __future__ import annotations

import re

import psycopg
from psycopg import sql
from sqlalchemy import create_engine

from voicepipe.errors import SettingsError

ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
PASSWORD_VARIABLE = "VOICEPIPE_APP_DB_PASSWORD"
# Rows only: no TRUNCATE, REFERENCES or TRIGGER, and no CREATE on the schema.
TABLE_PRIVILEGES = "SELECT, INSERT, UPDATE, DELETE"
SEQUENCE_PRIVILEGES = "USAGE, SELECT"
# Tables the application may only read.
READ_ONLY = ("alembic_version", "staff_audit", "deployment_secrets")


def grant_app_role(owner_url: str, role: str, password: str) -> None:
    """Create (or update the password of) `role` and grant it row access to the current schema."""
    if not ROLE_NAME.match(role):
        raise SettingsError(f"--app-role must be a lowercase PostgreSQL role name, got {role!r}")
    if password.strip() == "":
        raise SettingsError(f"{PASSWORD_VARIABLE} must be set to the application role's password")
    from voicepipe.settings import secret_problem

    weak = secret_problem(password)
    if weak is not None:
        raise SettingsError(f"{PASSWORD_VARIABLE} {weak} (its value is not shown)")
    engine = create_engine(owner_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            raw = conn.connection.driver_connection
            assert isinstance(raw, psycopg.Connection)
            _apply(raw, role, password)
    finally:
        engine.dispose()


def _apply(conn: psycopg.Connection[tuple[object, ...]], role: str, password: str) -> None:
    ident = sql.Identifier(role)
    with conn.transaction():
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
        verb = sql.SQL("ALTER") if exists else sql.SQL("CREATE")
        conn.execute(sql.SQL("{} ROLE {} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}").format(
            verb, ident, sql.Literal(password)))
        database = conn.execute("SELECT current_database()").fetchone()
        assert database is not None
        conn.execute(sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(
            sql.Identifier(str(database[0])), ident))
        # Only the owner creates objects (PostgreSQL 15+ already revokes this from PUBLIC).
        conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(ident))
        conn.execute(sql.SQL("GRANT " + TABLE_PRIVILEGES + " ON ALL TABLES IN SCHEMA public TO {}").format(ident))
        conn.execute(sql.SQL("GRANT " + SEQUENCE_PRIVILEGES + " ON ALL SEQUENCES IN SCHEMA public TO {}").format(
            ident))
        # Tables and sequences the owner creates later (the next migrations) are granted too.
        conn.execute(sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT " + TABLE_PRIVILEGES
                             + " ON TABLES TO {}").format(ident))
        conn.execute(sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT " + SEQUENCE_PRIVILEGES
                             + " ON SEQUENCES TO {}").format(ident))
        for table in READ_ONLY:
            if _table_exists(conn, table):
                conn.execute(sql.SQL("REVOKE INSERT, UPDATE, DELETE ON {} FROM {}").format(
                    sql.Identifier(table), ident))


def _table_exists(conn: psycopg.Connection[tuple[object, ...]], table: str) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"public.{table}",)).fetchone() == (True,)
