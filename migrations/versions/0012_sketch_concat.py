"""vp_sketch_concat: an aggregate that concatenates sketches, to sum them per organization

The summing statement (voicepipe/metrics/snapshots.py) reads an organization's rows in a
sorted stream, concatenates their sketches and counts the keys of that one array: memory
is one organization's entries, where one hash of every (organization, key) spilled to
disk at 10,000 organizations' wide sketches.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = '0012'
down_revision: str | None = '0011'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("CREATE AGGREGATE vp_sketch_concat(bigint[]) "
               "(SFUNC = array_cat, STYPE = bigint[], INITCOND = '{}', PARALLEL = SAFE)")


def downgrade() -> None:
    op.execute("DROP AGGREGATE vp_sketch_concat(bigint[])")
