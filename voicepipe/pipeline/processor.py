"""The processor interface: what does each stage's AI work, chosen by VOICEPIPE_PROCESSOR.

A processor is called with no database session and no row lock held; it returns
the stage's results with their cost, model and confidence, or raises StageFailure.
The stage layer (stages.py) measures its duration and records it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Protocol

from voicepipe.settings import Settings, get_settings


class StageFailure(Exception):
    """The stage's work failed; code and message end up on the artifact and its events."""

    def __init__(self, code: str, message: str, *, ai_model: str | None = None, ai_cost: float = 0.0) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        # A call that failed half-way may still have been billed.
        self.ai_model = ai_model
        self.ai_cost = ai_cost


@dataclass(frozen=True)
class StageInput:
    """What every stage knows about the artifact it works on."""

    artifact_id: uuid.UUID
    organization_id: str
    coach_id: str | None
    source_channel: str
    media_ref: str | None
    attempt: int  # metadata.retryAttempt: a retry draws fresh (but reproducible) luck


@dataclass(frozen=True)
class Cost:
    ai_model: str
    ai_cost: float  # USD


@dataclass(frozen=True)
class TranscriptionResult:
    text: str
    word_count: int
    confidence: float
    audio_seconds: float
    cost: Cost


@dataclass(frozen=True)
class ExtractedClaim:
    text: str
    confidence: float


@dataclass(frozen=True)
class ClaimsResult:
    claims: list[ExtractedClaim]
    confidence: float
    cost: Cost


@dataclass(frozen=True)
class ResolvedEntity:
    mention: str
    resolved_entity_id: str | None  # None: needs disambiguation by a coach
    confidence: float


@dataclass(frozen=True)
class EntitiesResult:
    entities: list[ResolvedEntity]
    confidence: float
    cost: Cost

    @property
    def disambiguation_count(self) -> int:
        return sum(1 for e in self.entities if e.resolved_entity_id is None)

    @property
    def auto_resolved_count(self) -> int:
        return len(self.entities) - self.disambiguation_count


@dataclass(frozen=True)
class DraftsResult:
    drafts: list[str]
    confidence: float
    cost: Cost


@dataclass(frozen=True)
class ClaimsInput:
    transcript: str


@dataclass(frozen=True)
class EntitiesInput:
    claims: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DraftsInput:
    claims: list[str] = field(default_factory=list)
    entities: list[tuple[str, str | None]] = field(default_factory=list)


class Processor(Protocol):
    """One method per stage; each returns its results or raises StageFailure."""

    @property
    def name(self) -> str: ...

    def transcribe(self, item: StageInput) -> TranscriptionResult: ...

    def extract_claims(self, item: StageInput, data: ClaimsInput) -> ClaimsResult: ...

    def resolve_entities(self, item: StageInput, data: EntitiesInput) -> EntitiesResult: ...

    def generate_drafts(self, item: StageInput, data: DraftsInput) -> DraftsResult: ...


PROCESSORS = ("simulated",)


def get_processor(settings: Settings | None = None) -> Processor:
    """The processor named by VOICEPIPE_PROCESSOR (only "simulated" ships)."""
    settings = settings or get_settings()
    if settings.processor == "simulated":
        from voicepipe.pipeline.simulated import SimulatedProcessor

        return SimulatedProcessor.from_settings(settings)
    from voicepipe.errors import SettingsError

    raise SettingsError(
        f"VOICEPIPE_PROCESSOR names an unknown processor {settings.processor!r}; "
        f"known: {', '.join(PROCESSORS)}"
    )
