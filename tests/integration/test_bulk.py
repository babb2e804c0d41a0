"""voicepipe.infra.bulk: binary COPY staging keeps every value exactly, bigint arrays included."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy.orm import Session

from voicepipe.infra.bulk import copy_then
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
