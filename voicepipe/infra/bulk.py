"""Bulk writes through COPY: stage rows in a temporary table, then one set-based statement.

COPY moves rows about an order of magnitude faster than parameterised INSERTs, and
compiling a 1,000-row VALUES clause per call cost more than the database work.
The staging table lives per connection, is emptied before each use and at commit.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from typing import Any, TypeVar

from psycopg import postgres
from psycopg.adapt import Dumper
from psycopg.pq import Format
from sqlalchemy.orm import Session

T = TypeVar("T")
_INT8 = postgres.types["int8"]
# Binary array layout: ndim, has-nulls flag, element type; then (length, lower bound)
# per dimension; then (byte length, value) per element.
_ARRAY_HEAD = struct.Struct("!iiI")


@lru_cache(maxsize=256)
def _int8_array(n: int) -> struct.Struct:
    return struct.Struct("!iiIii" + "iq" * n)


class Int8ArrayBinaryDumper(Dumper):
    """bigint[] for binary COPY in one struct call.

    psycopg's generic list dumper packs element by element in Python: 1,001 arrays of
    64 elements cost more than the other 90,000 values of a snapshot COPY together.
    One-dimensional, no NULLs (what latency sketches are).
    """

    format = Format.BINARY
    oid = _INT8.array_oid

    def dump(self, obj: Sequence[int]) -> bytes:
        n = len(obj)
        if not n:
            return _ARRAY_HEAD.pack(0, 0, _INT8.oid)
        # (8, value) pairs: every bigint is 8 bytes long.
        elements: list[int] = [8, 0] * n
        elements[1::2] = obj
        return _int8_array(n).pack(1, 0, _INT8.oid, n, 1, *elements)


def dbapi_connection(session: Session) -> Any:
    """The psycopg connection under the session's current transaction."""
    return session.connection().connection.driver_connection


# Built-in types have the same OIDs in every database (user-defined ones start here):
# a staging table of built-in types only has its types read once per process.
_FIRST_USER_OID = 16384
_builtin_types: dict[tuple[str, str, str], list[int]] = {}


def _copy_types(cur: Any, stage_table: str, like: str, cols: str) -> list[int]:
    """The staging columns' type OIDs: binary COPY has no type names in its stream."""
    key = (stage_table, like, cols)
    if key in _builtin_types:
        return _builtin_types[key]
    cur.execute(f"SELECT {cols} FROM {stage_table} LIMIT 0")
    types = [column.type_code for column in cur.description]
    if max(types) < _FIRST_USER_OID:
        _builtin_types[key] = types
    return types


def stage(
    session: Session,
    stage_table: str,
    like: str,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    binary: bool = False,
) -> Any:
    """COPY rows into `stage_table` (same column types as `like`); returns the open cursor.

    ``binary`` sends PostgreSQL's binary format: no text formatting of each value
    (arrays above all, which psycopg formats in Python), so about half the cost for
    wide numeric rows; every value must then be of its column's exact type.
    """
    cur = dbapi_connection(session).cursor()
    cols = ", ".join(columns)
    # One round trip for both (no parameters: one simple query). Empty from an earlier use
    # in this transaction, if any (commit empties it anyway). DELETE, not TRUNCATE:
    # TRUNCATE swaps the table's files even when it is empty, 4 ms a call, as much as
    # the COPY of a 1,000-event batch.
    cur.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS {stage_table} ON COMMIT DELETE ROWS AS "
        f"SELECT {cols} FROM {like} WITH NO DATA; DELETE FROM {stage_table}"
    )
    types: list[int] = []
    if binary:
        types = _copy_types(cur, stage_table, like, cols)
        cur.adapters.register_dumper(None, Int8ArrayBinaryDumper)  # this cursor only
    with cur.copy(f"COPY {stage_table} ({cols}) FROM STDIN" + (" (FORMAT BINARY)" if binary else "")) as copy:
        if binary:
            copy.set_types(types)
        for row in rows:
            copy.write_row(row)
    return cur


def execute_while(cur: Any, statement: str, params: Sequence[Any] | None, work: Callable[[], T]) -> tuple[list[Any], T]:
    """Run a statement that returns rows, and `work` in Python while PostgreSQL executes it.

    Pipeline mode sends the statement without waiting for its result: the two run on
    separate cores, and the rows are read when `work` is done.
    """
    with cur.connection.pipeline():
        cur.execute(statement, params)
        done = work()
        rows = cur.fetchall()
    return rows, done


def copy_then(
    session: Session,
    stage_table: str,
    like: str,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    statement: str,
    *,
    binary: bool = False,
) -> list[tuple[Any, ...]]:
    """Stage rows, run `statement` (which reads the stage table), return its rows if any."""
    with stage(session, stage_table, like, columns, rows, binary=binary) as cur:
        cur.execute(statement)
        return list(cur.fetchall()) if cur.description else []
