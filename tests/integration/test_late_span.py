"""One message of late events cannot make the workers re-aggregate weeks of windows."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from celery import Celery
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from models import PipelineEvent
from tests.support.helpers import Proc


def late(hours_back: list[int]) -> list[dict[str, str]]:
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    return [{"event_id": str(uuid.uuid4()), "event_type": "artifact_received", "organization_id": "org-1",
             "occurred_at": (now - timedelta(hours=h, minutes=-10)).isoformat()} for h in hours_back]


def test_a_batch_of_late_events_over_too_many_closed_hours_is_refused_and_marks_nothing(
    start_worker: Callable[..., Proc], client: Celery, session: Session
) -> None:
    start_worker(queues="pipeline")
    # 814 events over 30 days (720 closed hours), as in the attack: refused, nothing written.
    spread = late([1 + (i * 719) // 813 for i in range(814)])
    result = client.send_task("voicepipe.events.record_batch", queue="pipeline", kwargs={"events": spread},
                              ignore_result=False)
    with pytest.raises(Exception) as refused:
        result.get(timeout=60)
    assert type(refused.value).__name__ == "InvalidInput"
    assert "late events in 720 closed hours" in str(refused.value)
    assert "at most 72 per message" in str(refused.value)
    session.rollback()
    assert session.scalar(select(func.count()).select_from(PipelineEvent)) == 0
    assert session.execute(text("SELECT count(*) FROM late_windows")).scalar() == 0
    # Three days of catching up in one message are fine (72 closed hours).
    ok = late(list(range(1, 73)))
    answer = client.send_task("voicepipe.events.record_batch", queue="pipeline", kwargs={"events": ok},
                              ignore_result=False).get(timeout=60)
    assert answer == {"inserted": 72, "duplicates": 0}
    session.rollback()
    assert session.execute(text("SELECT count(*) FROM late_windows")).scalar() == 72
