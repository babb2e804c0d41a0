"""Event recording: events and counters in one transaction, exact and idempotent."""

from __future__ import annotations

import math
import random
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from models import EventCounter, PipelineEvent
from tests.support.helpers import RECENT, RECENT_DAY
from tests.support.metrics import random_event
from voicepipe.domain import EVENT_TYPES
from voicepipe.errors import InvalidInput
from voicepipe.events.recording import rebuild_counters, record_event, record_events

T0 = RECENT
ORGS = [f"org-{i}" for i in range(7)] + [None]
# An independent recount, in SQL, straight from the events table.
RECOUNT_SQL = """
SELECT organization_id, date_trunc('hour', occurred_at AT TIME ZONE 'UTC') AS hour,
       count(*) AS n,
       count(*) FILTER (WHERE event_type = 'artifact_received') AS received,
       count(*) FILTER (WHERE event_type = 'retry_failed') AS retry_failed,
       coalesce(sum(duration_ms) FILTER (WHERE event_type = 'transcription_completed'), 0) AS tl_sum,
       count(duration_ms) FILTER (WHERE event_type = 'transcription_completed') AS tl_n,
       coalesce(sum(duration_ms) FILTER (WHERE event_type IN
           ('entity_resolution_completed', 'entity_needs_disambiguation')), 0) AS el_sum,
       count(duration_ms) FILTER (WHERE event_type = 'artifact_completed') AS e2e_n,
       coalesce(sum((metadata->>'confidenceScore')::float8)
                FILTER (WHERE event_type = 'claims_extracted'), 0) AS cc_sum,
       coalesce(sum((metadata->>'claimCount')::int) FILTER (WHERE event_type = 'claims_extracted'), 0) AS claims,
       coalesce(sum((metadata->>'entityCount')::int) FILTER (WHERE event_type IN
           ('entity_resolution_completed', 'entity_needs_disambiguation')), 0) AS entities,
       coalesce(sum((metadata->>'aiCost')::numeric), 0) AS cost
FROM pipeline_events GROUP BY 1, 2
"""


# The sketch's stored format, as voicepipe/events/sketch.py documents it: each element is
# (kind << 16 | bucket slot) << 40 | count; kinds in the order of the latencies.
TRANSCRIPTION, END_TO_END = 0, 4
GAMMA = 1.01 / 0.99


def sketched(entries: list[int], kind: int) -> int:
    """How many durations of a kind a stored sketch holds."""
    return sum(e & (2**40 - 1) for e in entries if e >> 56 == kind)


def counters_by_key(session: Session) -> dict[tuple[str | None, datetime], EventCounter]:
    return {
        (c.organization_id, c.hour_start.astimezone(UTC).replace(tzinfo=None)): c
        for c in session.execute(select(EventCounter)).scalars()
    }


def assert_counters_match_events(session: Session) -> int:
    counters = counters_by_key(session)
    recount = session.execute(text(RECOUNT_SQL)).mappings().all()
    nonzero = {k: c for k, c in counters.items() if sum(getattr(c, f"n_{t}") for t in EVENT_TYPES)}
    assert len(recount) == len(nonzero)
    for row in recount:
        c = counters[(row["organization_id"], row["hour"])]
        assert sum(getattr(c, f"n_{t}") for t in EVENT_TYPES) == row["n"]
        assert c.n_artifact_received == row["received"]
        assert c.n_retry_failed == row["retry_failed"]
        assert c.transcription_latency_sum == pytest.approx(row["tl_sum"], rel=1e-9)
        assert c.transcription_latency_count == row["tl_n"]
        assert c.entity_resolution_latency_sum == pytest.approx(row["el_sum"], rel=1e-9)
        assert c.end_to_end_latency_count == row["e2e_n"] == sketched(c.latency_sketch, END_TO_END)
        assert c.transcription_latency_count == sketched(c.latency_sketch, TRANSCRIPTION)
        assert c.claim_confidence_sum == pytest.approx(row["cc_sum"], rel=1e-9, abs=1e-9)
        assert c.claims_total == row["claims"]
        assert c.entities_total == row["entities"]
        assert c.ai_cost_sum == row["cost"]
    return len(recount)


def test_ten_thousand_events_in_batches_leave_counters_equal_to_a_recount(session: Session) -> None:
    rng = random.Random(20260301)
    events = [random_event(rng, T0, 48, ORGS) for _ in range(10_000)]
    for start in range(0, len(events), 1_000):
        record_events(session, events[start : start + 1_000])
        session.commit()
    assert session.scalar(select(func.count()).select_from(PipelineEvent)) == 10_000
    groups = assert_counters_match_events(session)
    assert groups > 48 * 7  # every org and hour was touched


def test_a_repeated_event_id_is_a_no_op(session: Session) -> None:
    event = {"event_id": str(uuid.uuid4()), "event_type": "artifact_received",
             "organization_id": "org-a", "occurred_at": T0.isoformat()}
    assert record_event(session, event) is True
    assert record_event(session, dict(event)) is False
    result = record_events(session, [event, event])
    session.commit()
    assert (result.inserted, result.duplicates) == (0, 2)
    (counter,) = session.execute(select(EventCounter)).scalars()
    assert counter.n_artifact_received == 1


def test_events_of_one_hour_share_a_counter_row_and_the_window_label_is_utc(session: Session) -> None:
    record_events(session, [
        {"event_type": "artifact_received", "organization_id": "o", "occurred_at": f"{RECENT_DAY}T10:59:59+02:00"},
        {"event_type": "artifact_received", "organization_id": "o", "occurred_at": f"{RECENT_DAY}T08:00:00Z"},
    ])
    session.commit()
    windows = sorted(session.execute(select(PipelineEvent.time_window)).scalars())
    assert windows == [f"{RECENT_DAY}-08", f"{RECENT_DAY}-08"]
    (counter,) = session.execute(select(EventCounter)).scalars()
    assert counter.hour_start == RECENT + timedelta(hours=8)
    assert counter.n_artifact_received == 2


def test_end_to_end_duration_fills_the_sketch_bucket_it_belongs_to(session: Session) -> None:
    # 1,000 ms lies in (GAMMA**345, GAMMA**346]: bucket 346, slot 346 + 1024, of the end-to-end kind.
    assert GAMMA**345 < 1000.0 <= GAMMA**346
    record_events(session, [{"event_type": "artifact_completed", "duration_ms": 1000.0,
                             "occurred_at": T0.isoformat()}])
    session.commit()
    (counter,) = session.execute(select(EventCounter)).scalars()
    assert counter.organization_id is None
    assert counter.latency_sketch == [((END_TO_END << 16 | (346 + 1024)) << 40) | 1]
    assert counter.end_to_end_latency_sum == 1000.0
    assert not counter.coarse_percentiles


def test_a_busy_counter_rows_sketch_is_appended_to_then_compacted(session: Session) -> None:
    # 3,000 end-to-end durations, spread over hundreds of buckets, into one counter row
    # in batches of 300: appended while short, compacted once past 1,024 entries.
    rng = random.Random(5)
    durations = [rng.lognormvariate(9, 3) for _ in range(3_000)]
    sizes = []
    for i in range(0, len(durations), 300):
        record_events(session, [{"event_type": "artifact_completed", "duration_ms": d, "organization_id": "o",
                                 "occurred_at": T0.isoformat()} for d in durations[i : i + 300]])
        session.commit()
        (counter,) = session.execute(select(EventCounter)).scalars()
        sizes.append(len(counter.latency_sketch))
        assert sketched(counter.latency_sketch, END_TO_END) == counter.end_to_end_latency_count == i + 300
    # Each batch adds one entry per bucket it fills; past 1,024 the row holds each bucket once.
    bucket = [math.ceil(math.log(d) / math.log(GAMMA)) for d in durations]
    want, size = [], 0
    for i in range(0, len(durations), 300):
        added = len(set(bucket[i : i + 300]))
        size = size + added if size + added <= 1_024 else len(set(bucket[: i + 300]))
        want.append(size)
    assert sizes == want
    assert want[:2] == [sum(len(set(bucket[i : i + 300])) for i in range(0, j, 300)) for j in (300, 600)]
    keys = [e >> 40 for e in counter.latency_sketch]
    # Every bucket is where its durations are: the end-to-end count of each key is the number
    # of durations within 1 % of its value.
    values = {k: 2 * GAMMA ** ((k & 0xFFFF) - 1024) / (GAMMA + 1) for k in keys}
    for key, value in values.items():
        stored = sum(e & (2**40 - 1) for e in counter.latency_sketch if e >> 40 == key)
        assert stored == sum(1 for d in durations if abs(d - value) <= 0.01 * d), key


def test_a_batch_with_one_bad_event_writes_nothing(session: Session) -> None:
    good = {"event_type": "artifact_received", "organization_id": "o"}
    with pytest.raises(InvalidInput, match=r"events\[1\]\.duration_ms"):
        record_events(session, [good, {"event_type": "transcription_completed", "duration_ms": -1}])
    session.commit()
    assert session.scalar(select(func.count()).select_from(PipelineEvent)) == 0
    assert session.scalar(select(func.count()).select_from(EventCounter)) == 0


def test_rebuild_repairs_counters_from_events_and_bumps_revisions(session: Session) -> None:
    rng = random.Random(7)
    record_events(session, [random_event(rng, T0, 6, ORGS) for _ in range(2_000)])
    session.commit()
    before = {k: c.revision for k, c in counters_by_key(session).items()}
    # Corrupt the counters as a counting bug would.
    session.execute(text("UPDATE event_counters SET n_artifact_received = n_artifact_received + 5, "
                         "ai_cost_sum = 0, latency_sketch = '{}', coarse_percentiles = true"))
    session.commit()
    result = rebuild_counters(session, T0, T0 + timedelta(hours=6))
    session.commit()
    assert result.events == 2_000
    assert_counters_match_events(session)
    assert not any(c.coarse_percentiles for c in counters_by_key(session).values())
    after = {k: c.revision for k, c in counters_by_key(session).items()}
    assert all(after[k] > before[k] for k in before)


def test_cost_is_summed_exactly_as_decimal(session: Session) -> None:
    record_events(session, [{"event_type": "claims_extracted", "metadata": {"aiCost": 0.1},
                             "occurred_at": T0.isoformat()} for _ in range(3)])
    session.commit()
    (counter,) = session.execute(select(EventCounter)).scalars()
    assert counter.ai_cost_sum == Decimal("0.3")
