"""Alembic environment: models' metadata, and the URL given by voicepipe or settings."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, pool

import models
from models.session import database_url, make_engine

config = context.config
target_metadata = models.Base.metadata

# Celery's database result backend (RabbitMQ deployments, worker/config.py) creates and
# owns these tables itself; they are not part of the schema migrations manage.
CELERY_RESULT_TABLES = frozenset({"celery_taskmeta", "celery_tasksetmeta"})


def _ours(name: str | None, type_: str, parent_names: object) -> bool:
    return not (type_ == "table" and name in CELERY_RESULT_TABLES)


def _url() -> str:
    return config.attributes.get("url") or config.get_main_option("sqlalchemy.url") or database_url()


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, compare_type=True,
                      include_name=_ours)
    with context.begin_transaction():
        # Two deployments migrating at once (two compose `migrate` runs) serialize here.
        context.execute("SELECT pg_advisory_xact_lock(7262531)")
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
