"""Ids derived from the Celery task id, for items a producer sent without their own.

A message redelivered after a worker died between commit and ack carries the same
task id (so do its retries and a dead-letter replay), so the derived ids are the
same and the second recording is a no-op. Two different messages never share one.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from celery import current_task

# Fixed forever: changing it would give a redelivered message new ids.
NAMESPACE = uuid.UUID("0d6f4c1e-8a53-5b5e-9b7a-6f0c2f1e9a10")


def current_task_id() -> str | None:
    request = getattr(current_task, "request", None)
    return getattr(request, "id", None)


def derived_id(task_id: str, position: int) -> str:
    """The id of the item at `position` of the message `task_id` (uuid5, deterministic)."""
    return str(uuid.uuid5(NAMESPACE, f"{task_id}/{position}"))


def with_id(item: Any, key: str, task_id: str | None, position: int) -> Any:
    """item with `key` set to the derived id when the producer omitted it (or sent null).

    Anything that is not a mapping is returned unchanged, for validation to refuse by name.
    """
    if task_id is None or not isinstance(item, Mapping) or item.get(key) is not None:
        return item
    return {**item, key: derived_id(task_id, position)}
