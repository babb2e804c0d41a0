"""Synthetic event history for demos and benchmarks (`voicepipe simulate --history-hours`).

Artifacts' whole lives are replayed on paper with the SimulatedProcessor's own
draws (durations, costs, counts, failures), so past hours look like what the live
pipeline records: every one of the 27 event types, with durations and costs. Event
ids come from the seed, so recording the same history twice adds nothing.
"""

from __future__ import annotations

import random
import uuid
from datetime import datetime, timedelta
from typing import Any

from voicepipe.domain import STAGE_BY_NAME
from voicepipe.pipeline.processor import (
    ClaimsInput,
    DraftsInput,
    EntitiesInput,
    StageFailure,
    StageInput,
)
from voicepipe.pipeline.simulated import SimulatedProcessor
from voicepipe.pipeline.stages import DONE_STATUS, FAILED_EVENT, STAGE_ORDER, STARTED_EVENT, WORKING_STATUS

CHANNELS = (("whatsapp_audio", 0.6), ("app_recording", 0.3), ("whatsapp_text", 0.1))
HISTORY_FAILURE_RATE = 0.02  # per stage run: about 1 artifact in 12 fails somewhere
# A provider incident in the first third of the history, long repaired by its end: every
# failure the dashboard shows appears, and the newest hours (what the alerts read) are calm.
INCIDENT_FAILURE_RATE = 0.25


class _Recorder:
    """Collects events of one artifact; the processor's sleeps become the stage durations."""

    def __init__(self, rng: random.Random, now: datetime) -> None:
        self.rng = rng
        self.now = now
        self.events: list[dict[str, Any]] = []
        self.slept = 0.0

    def sleep(self, seconds: float) -> None:
        self.slept += seconds

    def add(self, at: datetime, event_type: str, **fields: Any) -> None:
        if at <= self.now:  # the history stops at now
            self.events.append({"event_id": str(uuid.UUID(int=self.rng.getrandbits(128))),
                                "event_type": event_type, "occurred_at": at.isoformat(), **fields})


def synthetic_history(
    *, seed: int, organizations: list[str], hours: float, now: datetime, staff_user: str,
    artifacts_per_org_hour: float = 6.0,
) -> list[dict[str, Any]]:
    """Events of `hours` hours before `now` for these organizations (JSON for voicepipe.events.record_batch)."""
    rng = random.Random(seed * 7919 + 17)
    recorder = _Recorder(rng, now)
    processor = SimulatedProcessor(seed=seed, failure_rate=HISTORY_FAILURE_RATE, time_scale=1.0,
                                   sleep=recorder.sleep)
    incident = SimulatedProcessor(seed=seed + 1, failure_rate=INCIDENT_FAILURE_RATE, time_scale=1.0,
                                  sleep=recorder.sleep)
    start = now - timedelta(hours=hours)
    incident_end = start + timedelta(hours=hours) / 3
    whole_hours = max(1, int(hours + 0.999))
    for org in organizations:
        coaches = [f"{org}-coach-{i}" for i in range(1, 6)]
        for h in range(whole_hours):
            hour_start = start + timedelta(hours=h)
            # Busier in the evening after training: a gentle daily shape.
            busy = 0.5 + (hour_start.hour in range(16, 22)) * 1.0
            for _ in range(_poisson(rng, artifacts_per_org_hour * busy)):
                at = hour_start + timedelta(seconds=rng.uniform(0, 3600))
                _artifact_life(recorder, incident if at < incident_end else processor, rng, org,
                               rng.choice(coaches), at, staff_user)
        # The first club always overspends, so a demo shows budget_exceeded too.
        _platform_incidents(recorder, rng, org, start, hours, overspends=org == organizations[0])
    return recorder.events


def _artifact_life(
    rec: _Recorder, processor: SimulatedProcessor, rng: random.Random, org: str, coach: str,
    at: datetime, staff_user: str,
) -> None:
    art_id = uuid.UUID(int=rng.getrandbits(128))
    channel = rng.choices([c for c, _ in CHANNELS], [w for _, w in CHANNELS])[0]
    received = at
    common = {"artifact_id": str(art_id), "organization_id": org, "coach_id": coach}

    def meta(attempt: int, **extra: Any) -> dict[str, Any]:
        return {"sourceChannel": channel, "retryAttempt": attempt, **extra}

    rec.add(at, "artifact_received", stage="ingestion", metadata=meta(0), **common)
    status, attempt, first = "received", 0, 0
    while True:
        item = StageInput(art_id, org, coach, channel, None, attempt)
        failed, at, status = _run_stages(rec, processor, rng, item, STAGE_ORDER[first:], at, status, common, meta)
        if failed is None:
            end_to_end = (at - received).total_seconds() * 1000
            rec.add(at, "artifact_completed", duration_ms=round(end_to_end, 3), metadata=meta(attempt), **common)
            if attempt:
                rec.add(at, "retry_succeeded", stage=STAGE_ORDER[first],
                        metadata=meta(attempt, requestedBy=staff_user), **common)
            _review_drafts(rec, rng, at, common, meta(attempt))
            return
        stage, failure = failed
        rec.add(at, "artifact_failed", stage=stage, error_code=failure.code, error_message=failure.message,
                metadata=meta(attempt), **common)
        if attempt:
            rec.add(at, "retry_failed", stage=STAGE_ORDER[first], error_code=failure.code,
                    metadata=meta(attempt, requestedBy=staff_user), **common)
        # Staff retry about two failures in three, a minute or two later, at most twice.
        if attempt >= 2 or rng.random() > 0.66:
            return
        attempt += 1
        first = STAGE_ORDER.index(stage)
        at += timedelta(minutes=rng.uniform(0.5, 2))
        entry = STAGE_BY_NAME[stage].retry_status
        rec.add(at, "retry_initiated", stage=stage,
                metadata=meta(attempt, requestedBy=staff_user, reason="provider error", retryStage=stage), **common)
        rec.add(at, "artifact_status_changed", stage=stage,
                metadata=meta(attempt, fromStatus="failed", toStatus=entry), **common)
        status = entry


def _run_stages(
    rec: _Recorder, processor: SimulatedProcessor, rng: random.Random, item: StageInput,
    stages: tuple[str, ...], at: datetime, status: str, common: dict[str, Any], meta: Any,
) -> tuple[tuple[str, StageFailure] | None, datetime, str]:
    transcript, claims, entities = "", [], []  # type: ignore[var-annotated]
    for stage in stages:
        at += timedelta(seconds=rng.uniform(0.05, 2.0))  # queue wait
        if status != WORKING_STATUS[stage]:
            rec.add(at, "artifact_status_changed", stage=stage,
                    metadata=meta(item.attempt, fromStatus=status, toStatus=WORKING_STATUS[stage]), **common)
            status = WORKING_STATUS[stage]
        rec.add(at, STARTED_EVENT[stage], stage=stage, metadata=meta(item.attempt), **common)
        rec.slept = 0.0
        try:
            if stage == "transcription":
                t = processor.transcribe(item)
                transcript = t.text
                event, extra = "transcription_completed", {
                    "transcriptDuration": t.audio_seconds, "transcriptWordCount": t.word_count}
                result: Any = t
            elif stage == "claims_extraction":
                result = processor.extract_claims(item, ClaimsInput(transcript or "Sam played well."))
                claims = [c.text for c in result.claims]
                event, extra = "claims_extracted", {"claimCount": len(result.claims)}
            elif stage == "entity_resolution":
                result = processor.resolve_entities(item, EntitiesInput(claims))
                entities = [(e.mention, e.resolved_entity_id) for e in result.entities]
                event = "entity_needs_disambiguation" if result.disambiguation_count else "entity_resolution_completed"
                extra = {"entityCount": len(result.entities), "disambiguationCount": result.disambiguation_count,
                         "autoResolvedCount": result.auto_resolved_count}
            else:
                result = processor.generate_drafts(item, DraftsInput(claims, entities))
                event, extra = "drafts_generated", {"draftCount": len(result.drafts)}
        except StageFailure as failure:
            at += timedelta(seconds=rec.slept)
            rec.add(at, FAILED_EVENT[stage], stage=stage, duration_ms=round(rec.slept * 1000, 3),
                    error_code=failure.code, error_message=failure.message,
                    metadata=meta(item.attempt, aiModel=failure.ai_model, aiCost=failure.ai_cost), **common)
            if failure.code == "RATE_LIMITED":
                rec.add(at, "rate_limit_hit", stage=stage, metadata=meta(item.attempt, aiModel=failure.ai_model),
                        **common)
            rec.add(at, "artifact_status_changed", stage=stage,
                    metadata=meta(item.attempt, fromStatus=status, toStatus="failed"), **common)
            return (stage, failure), at, "failed"
        at += timedelta(seconds=rec.slept)
        rec.add(at, event, stage=stage, duration_ms=round(rec.slept * 1000, 3), metadata=meta(
            item.attempt, aiModel=result.cost.ai_model, aiCost=result.cost.ai_cost,
            confidenceScore=result.confidence, **extra), **common)
        if DONE_STATUS[stage] != status:
            rec.add(at, "artifact_status_changed", stage=stage,
                    metadata=meta(item.attempt, fromStatus=status, toStatus=DONE_STATUS[stage]), **common)
            status = DONE_STATUS[stage]
    return None, at, status


def _review_drafts(rec: _Recorder, rng: random.Random, at: datetime, common: dict[str, Any],
                   meta: dict[str, Any]) -> None:
    # Coaches confirm most drafts within the hour, reject some, ignore the rest.
    for _ in range(rng.randint(1, 3)):
        roll = rng.random()
        when = at + timedelta(minutes=rng.uniform(1, 90))
        if roll < 0.7:
            rec.add(when, "draft_confirmed", stage="confirmation", metadata=meta, **common)
        elif roll < 0.9:
            rec.add(when, "draft_rejected", stage="confirmation", metadata=meta, **common)


def _platform_incidents(
    rec: _Recorder, rng: random.Random, org: str, start: datetime, hours: float, *, overspends: bool
) -> None:
    span = hours * 3600
    # A provider wobble now and then: the breaker opens for a few minutes (platform-wide).
    for _ in range(max(1, int(hours / 4))):
        opened = start + timedelta(seconds=rng.uniform(0, span))
        provider = rng.choice(("whisper-1", "gpt-4o-mini", "claude-3-5-sonnet"))
        rec.add(opened, "circuit_breaker_opened", metadata={"aiModel": provider})
        rec.add(opened + timedelta(minutes=rng.uniform(1, 10)), "circuit_breaker_closed",
                metadata={"aiModel": provider})
    # Each club crosses its budget warning once in a while; some exceed it.
    crossed = start + timedelta(seconds=rng.uniform(0, span))
    rec.add(crossed, "budget_threshold_reached", organization_id=org)
    if rng.random() < 0.3 or overspends:
        exceeded = min(crossed + timedelta(minutes=rng.uniform(10, 120)), start + timedelta(seconds=span))
        rec.add(exceeded, "budget_exceeded", organization_id=org)
    for _ in range(_poisson(rng, hours / 3)):
        rec.add(start + timedelta(seconds=rng.uniform(0, span)), "rate_limit_hit", organization_id=org,
                metadata={"aiModel": "gpt-4o-mini"})


def _poisson(rng: random.Random, mean: float) -> int:
    # Knuth's method: fine for the small means used here.
    limit, k, p = pow(2.718281828459045, -mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1
