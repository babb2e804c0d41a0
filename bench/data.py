"""Synthetic event streams for the benchmarks (seeded, realistic mix)."""

from __future__ import annotations

import random
import uuid
from datetime import datetime, timedelta
from typing import Any

from voicepipe.domain import EVENT_TYPES

WEIGHTS = {t: 1.0 for t in EVENT_TYPES}
WEIGHTS.update({"artifact_received": 4, "artifact_completed": 3, "transcription_completed": 4,
                "claims_extracted": 4, "entity_resolution_completed": 3, "drafts_generated": 3,
                "artifact_status_changed": 8})
DURATIONS = {"transcription_completed": 20_000, "claims_extracted": 8_000,
             "entity_resolution_completed": 4_000, "entity_needs_disambiguation": 4_000,
             "drafts_generated": 10_000, "artifact_completed": 45_000}
_TYPES = list(WEIGHTS)
_W = list(WEIGHTS.values())


def events(n: int, start: datetime, span: timedelta, orgs: int, seed: int = 1) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    seconds = span.total_seconds()
    for event_type in rng.choices(_TYPES, _W, k=n):
        e: dict[str, Any] = {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
            "event_type": event_type,
            "organization_id": f"org-{rng.randrange(orgs):04d}",
            "occurred_at": (start + timedelta(seconds=rng.uniform(0, seconds))).isoformat(),
            "metadata": {"aiCost": round(rng.uniform(0, 0.02), 6)},
        }
        if event_type in DURATIONS:
            e["duration_ms"] = rng.lognormvariate(0, 0.5) * DURATIONS[event_type]
            e["metadata"]["confidenceScore"] = rng.uniform(0.6, 1.0)
            e["metadata"]["claimCount"] = rng.randint(0, 8)
        out.append(e)
    return out
