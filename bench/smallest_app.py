"""`celery -A bench.smallest_app worker -Q events`: production's app with the smallest task there is.

The floor for a per-message task in bench/recording.py: `bench.noop` takes the same
single-event message as `voicepipe.events.record` (the same keyword arguments) and does
nothing with it, under production's worker configuration (late acks, prefetch 1, task
events, process recycling). A no-op, not the cheapest real task: anything real (a Redis
INCR, a one-row INSERT) would add a round trip of its own, and the goal is a multiple of
what Celery itself costs per message. Its completions are counted at the broker (the late
ack takes the message out of the queue's unacked set), so measuring it adds no work.
Benchmark-only.
"""

from __future__ import annotations

from typing import Any

from worker import app

NOOP_TASK = "bench.noop"


@app.task(name=NOOP_TASK, ignore_result=True)
def noop(**_event: Any) -> None:
    """Nothing: the message is received, decoded, run in a pool process and acknowledged, as any task's."""


__all__ = ["app", "noop"]
