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
# A constant GROUP BY key that changes no group: xid has no ordering, so hashing is the
# only way the statement can group, whatever the statistics expect (sorting millions of
# rows, or rows that carry whole breakdowns, on estimates of a handful; docs/profiling.md).
HASHED_GROUP = "CAST('0' AS xid)"
_INT8 = postgres.types["int8"]
_FLOAT8 = postgres.types["float8"]
_TEXT = postgres.types["text"]
# Binary array layout: ndim, has-nulls flag, element type; then (length, lower bound)
# per dimension; then (byte length, value) per element.
_ARRAY_HEAD = struct.Struct("!iiIii")
_EMPTY_ARRAY = struct.Struct("!iiI")
_LENGTH = struct.Struct("!i").pack


@lru_cache(maxsize=256)
def _fixed_array(code: str, n: int) -> struct.Struct:
    return struct.Struct("!iiIii" + ("i" + code) * n)


def _pack_fixed(code: str, oid: int, values: Sequence[Any]) -> bytes:
    """A one-dimensional array of 8-byte values without NULLs, in one struct call."""
    n = len(values)
    if not n:
        return _EMPTY_ARRAY.pack(0, 0, oid)
    # (8, value) pairs: every element is 8 bytes long.
    elements: list[Any] = [8, 0] * n
    elements[1::2] = values
    return _fixed_array(code, n).pack(1, 0, oid, n, 1, *elements)


class Int8ArrayBinaryDumper(Dumper):
    """bigint[] for binary COPY in one struct call.

    psycopg's generic list dumper packs element by element in Python: 1,001 arrays of
    64 elements cost more than the other 90,000 values of a snapshot COPY together.
    One-dimensional, no NULLs (what latency sketches are).
    """

    format = Format.BINARY
    oid = _INT8.array_oid

    def dump(self, obj: Sequence[int]) -> bytes:
        return _pack_fixed("q", _INT8.oid, obj)


# Columns as query parameters, packed in PostgreSQL's binary array format (one struct call
# for numbers): a statement takes hundreds of rows as a handful of arrays it unnests, and
# unlike COPY it can be queued in pipeline mode behind the statement before it.
class Int8Column(bytes):
    """bigint[], packed."""


class Float8Column(bytes):
    """double precision[], packed."""


class TextColumn(bytes):
    """text[] of ASCII values, packed."""


def int8_column(values: Sequence[int]) -> Int8Column:
    return Int8Column(_pack_fixed("q", _INT8.oid, values))


def float8_column(values: Sequence[float]) -> Float8Column:
    return Float8Column(_pack_fixed("d", _FLOAT8.oid, values))


def ascii_column(values: Sequence[Any]) -> TextColumn:
    """Each value's str(), which must be ASCII (numbers, cast in SQL): binary text is read in
    the connection's encoding, and ASCII is the same bytes in all of them."""
    encoded = [str(v).encode("ascii") for v in values]
    if not encoded:
        return TextColumn(_EMPTY_ARRAY.pack(0, 0, _TEXT.oid))
    pieces: list[bytes] = [b""] * (2 * len(encoded))
    pieces[0::2] = [_LENGTH(len(e)) for e in encoded]
    pieces[1::2] = encoded
    return TextColumn(_ARRAY_HEAD.pack(1, 0, _TEXT.oid, len(encoded), 1) + b"".join(pieces))


def _column_dumper(name: str, array_oid: int) -> type[Dumper]:
    def dump(self: Dumper, obj: bytes) -> bytes:
        return obj

    return type(name, (Dumper,), {"format": Format.BINARY, "oid": array_oid, "dump": dump})


_COLUMN_DUMPERS = (
    (Int8Column, _column_dumper("Int8ColumnDumper", _INT8.array_oid)),
    (Float8Column, _column_dumper("Float8ColumnDumper", _FLOAT8.array_oid)),
    (TextColumn, _column_dumper("TextColumnDumper", _TEXT.array_oid)),
)


def use_columns(cur: Any) -> Any:
    """Let CUR take Int8Column, Float8Column and TextColumn parameters (as %b); returns CUR."""
    for cls, dumper in _COLUMN_DUMPERS:
        cur.adapters.register_dumper(cls, dumper)
    return cur


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
