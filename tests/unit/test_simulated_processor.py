"""The simulated processor: reproducible per (seed, artifact, stage, attempt), realistic, failing on demand."""

from __future__ import annotations

import time
import uuid

import pytest

from voicepipe.pipeline.processor import (
    ClaimsInput,
    DraftsInput,
    EntitiesInput,
    StageFailure,
    StageInput,
    get_processor,
)
from voicepipe.pipeline.simulated import MEAN_SECONDS, SimulatedProcessor
from voicepipe.settings import load_settings


def item(n: int = 0, attempt: int = 0, channel: str = "whatsapp_audio") -> StageInput:
    return StageInput(uuid.UUID(int=n + 1), "org-1", "coach-1", channel, None, attempt)


def run_all(p: SimulatedProcessor, it: StageInput) -> tuple[object, ...]:
    t = p.transcribe(it)
    c = p.extract_claims(it, ClaimsInput(t.text))
    e = p.resolve_entities(it, EntitiesInput([x.text for x in c.claims]))
    d = p.generate_drafts(it, DraftsInput([x.text for x in c.claims],
                                          [(x.mention, x.resolved_entity_id) for x in e.entities]))
    return t, c, e, d


def test_same_seed_artifact_and_attempt_give_the_same_results() -> None:
    p = SimulatedProcessor(seed=7, time_scale=0)
    assert run_all(p, item(3)) == run_all(SimulatedProcessor(seed=7, time_scale=0), item(3))
    assert run_all(p, item(3)) != run_all(SimulatedProcessor(seed=8, time_scale=0), item(3))
    assert run_all(p, item(3)) != run_all(p, item(4))
    assert run_all(p, item(3)) != run_all(p, item(3, attempt=1))


def test_results_are_realistic() -> None:
    p = SimulatedProcessor(time_scale=0)
    for n in range(50):
        t, c, e, d = run_all(p, item(n))
        assert 12 <= t.audio_seconds <= 150 and t.word_count == len(t.text.split()) > 0  # type: ignore[attr-defined]
        assert 0.55 <= t.confidence <= 0.99 and t.cost.ai_model == "whisper-1"  # type: ignore[attr-defined]
        assert t.cost.ai_cost == pytest.approx(t.audio_seconds / 60 * 0.006, abs=1e-6)  # type: ignore[attr-defined]
        assert 1 <= len(c.claims) <= 8 and 0 < c.cost.ai_cost < 0.01  # type: ignore[attr-defined]
        assert all(x.resolved_entity_id or x.confidence < 0.6 for x in e.entities)  # type: ignore[attr-defined]
        assert 1 <= len(d.drafts) <= 3 and d.cost.ai_model == "claude-3-5-sonnet"  # type: ignore[attr-defined]
    text = p.transcribe(item(1, channel="whatsapp_text"))
    assert (text.cost.ai_cost, text.confidence, text.audio_seconds) == (0.0, 1.0, 0.0)


def test_the_failure_rate_is_the_share_of_failed_stage_runs() -> None:
    p = SimulatedProcessor(seed=1, failure_rate=0.3, time_scale=0)
    failures = 0
    codes = set()
    for n in range(2000):
        try:
            p.transcribe(item(n))
        except StageFailure as failure:
            failures += 1
            codes.add(failure.code)
    # Binomial(2000, 0.3): sd ~20.5, so +-100 is ~5 sd.
    assert 500 <= failures <= 700
    assert codes == {"PROVIDER_TIMEOUT", "RATE_LIMITED", "PROVIDER_ERROR", "INVALID_OUTPUT"}
    assert all(isinstance(SimulatedProcessor(failure_rate=0.0, time_scale=0).transcribe(item(n)).text, str)
               for n in range(200))


def test_fail_stages_always_fail_only_those_stages() -> None:
    p = SimulatedProcessor(fail_stages=("claims_extraction",), time_scale=0)
    for n in range(20):
        t = p.transcribe(item(n))
        with pytest.raises(StageFailure) as excinfo:
            p.extract_claims(item(n), ClaimsInput(t.text))
        assert excinfo.value.code == "SIMULATED_FAILURE"


def test_time_scale_sleeps_the_scaled_realistic_duration() -> None:
    slept: list[float] = []
    p = SimulatedProcessor(time_scale=0.01, sleep=slept.append)
    for n in range(200):
        p.transcribe(item(n))
    mean = sum(slept) / len(slept) / 0.01
    # Nominal transcription ~20 s for a one-minute-ish note (6 s + 0.2 x audio).
    assert 0.7 * MEAN_SECONDS["transcription"] < mean < 1.3 * MEAN_SECONDS["transcription"]
    real = SimulatedProcessor(time_scale=0.002)
    started = time.monotonic()
    real.transcribe(item(5))
    elapsed = time.monotonic() - started
    expected: list[float] = []
    SimulatedProcessor(time_scale=0.002, sleep=expected.append).transcribe(item(5))
    assert elapsed >= expected[0] * 0.95


def test_the_processor_is_chosen_by_settings() -> None:
    settings = load_settings({"VOICEPIPE_SIMULATOR_SEED": "5", "VOICEPIPE_SIMULATOR_FAILURE_RATE": "0.25",
                              "VOICEPIPE_SIMULATOR_FAIL_STAGES": "transcription",
                              "VOICEPIPE_SIMULATOR_TIME_SCALE": "0.5"})
    p = get_processor(settings)
    assert p == SimulatedProcessor(seed=5, failure_rate=0.25, fail_stages=("transcription",), time_scale=0.5)


def test_synthetic_history_covers_every_event_type_within_its_hours_and_is_valid() -> None:
    from datetime import UTC, datetime, timedelta

    from voicepipe.domain import EVENT_TYPES
    from voicepipe.events.recording import parse_events
    from voicepipe.pipeline.synthetic import synthetic_history

    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    history = synthetic_history(seed=3, organizations=["o1", "o2"], hours=6, now=now, staff_user="s")
    events = parse_events(history, now=now)  # every event is valid for voicepipe.events.record_batch
    assert {e.event_type for e in events} == set(EVENT_TYPES)
    assert all(now - timedelta(hours=6) <= e.occurred_at <= now for e in events)
    # Speech-to-text of audio takes seconds and costs money (typed notes pass through free).
    completed = [e for e in events if e.event_type == "transcription_completed"
                 and e.metadata["sourceChannel"] != "whatsapp_text"]
    assert completed and all(e.duration_ms and e.duration_ms > 1000 and e.metadata["aiCost"] > 0 for e in completed)
    # Same seed, same ids: recording the history twice adds nothing.
    again = synthetic_history(seed=3, organizations=["o1", "o2"], hours=6, now=now, staff_user="s")
    assert [e["event_id"] for e in again] == [e["event_id"] for e in history]
