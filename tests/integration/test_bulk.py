"""voicepipe.infra.bulk: binary COPY staging keeps every value exactly, bigint arrays included."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy.orm import Session

from voicepipe.infra.bulk import (
    ascii_column,
    copy_then,
    dbapi_connection,
    float8_column,
    int8_column,
    use_columns,
)
from voicepipe.metrics.snapshots import SNAPSHOT_COLUMNS


def test_binary_copy_round_trips_sketches_and_mixed_types(session: Session) -> None:
    columns = ("organization_id", "period_type", "period_start", "n_artifact_received",
               "end_to_end_latency_sum", "ai_cost_sum", "latency_sketch")
    assert set(columns) <= set(SNAPSHOT_COLUMNS)
    start = datetime(2026, 1, 2, 3, tzinfo=UTC)
    rows = [
        ("org-a", "hourly", start, 2**62, 0.1 + 0.2, Decimal("12.0000000001"), [0, 2**63 - 1, -3, 0]),
        (None, "hourly", start, 0, 0.0, Decimal(0), []),
    ]
    got = copy_then(
        session, "vp_stage_test", "metrics_snapshots", columns, rows,
        f"SELECT {', '.join(columns)} FROM vp_stage_test ORDER BY organization_id NULLS LAST",
        binary=True,
    )
    assert got == rows


def test_packed_columns_round_trip_as_query_parameters(session: Session) -> None:
    """The statement parameters an hour's chunk travels in: every value back as sent."""
    ints = [0, 1, -1, 2**63 - 1, -(2**63)]
    floats = [0.0, -0.0, 0.1 + 0.2, 1e-300, 1.7976931348623157e308, -2.5]
    texts = ["org-a", "", "x" * 300, "with,comma \"quoted\" {braces} NULL"]
    costs = [Decimal("0E-10"), Decimal("12.0000000001"), Decimal("1.2340000000E-7"),
             Decimal("99999999999999.9999999999")]
    cur = use_columns(dbapi_connection(session).cursor())
    got = cur.execute(
        "SELECT %b, %b, %b, CAST(%b AS numeric(24,10)[]), %b, %b, %b",
        (int8_column(ints), float8_column(floats), ascii_column(texts), ascii_column(costs),
         int8_column([]), float8_column([]), ascii_column([])),
    ).fetchone()
    assert got[:3] == (ints, floats, texts)
    assert [str(x) for x in got[1]] == [str(x) for x in floats]  # -0.0 kept, every bit
    assert got[3] == costs
    assert got[4:] == ([], [], [])


def test_text_columns_refuse_what_is_not_ascii() -> None:
    """Binary text is read in the connection's encoding: only ASCII is the same bytes in all."""
    with pytest.raises(UnicodeEncodeError):
        ascii_column(["org-é"])
