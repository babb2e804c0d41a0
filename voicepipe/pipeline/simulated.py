"""SimulatedProcessor: a stand-in for the real speech and LLM providers (demos, tests, benchmarks).

Everything it returns is drawn from a random generator seeded by (seed, artifact id,
stage, attempt), so one artifact's run is reproducible and a retry (the next attempt)
draws fresh luck. It sleeps a realistic duration times VOICEPIPE_SIMULATOR_TIME_SCALE
(the stage layer records the durations it measures, not the nominal ones), prices
calls like the providers it imitates, fails a stage run with probability
VOICEPIPE_SIMULATOR_FAILURE_RATE and always fails VOICEPIPE_SIMULATOR_FAIL_STAGES.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from voicepipe.domain import STAGE_ORDER
from voicepipe.pipeline.processor import (
    ClaimsInput,
    ClaimsResult,
    Cost,
    DraftsInput,
    DraftsResult,
    EntitiesInput,
    EntitiesResult,
    ExtractedClaim,
    ResolvedEntity,
    StageFailure,
    StageInput,
    TranscriptionResult,
)
from voicepipe.settings import Settings

# Nominal mean durations in seconds at time scale 1.0 (what providers take for a
# one-minute voice note), in STAGE_ORDER: speech-to-text dominates, entity lookup is quick.
MEAN_SECONDS = dict(zip(STAGE_ORDER, (20.0, 8.0, 4.0, 10.0), strict=True))
# Provider-style failures, in rough order of how often they happen.
FAILURE_CODES: tuple[tuple[str, str], ...] = (
    ("PROVIDER_TIMEOUT", "the provider did not answer within its deadline"),
    ("RATE_LIMITED", "the provider returned 429 Too Many Requests"),
    ("PROVIDER_ERROR", "the provider returned 503 Service Unavailable"),
    ("INVALID_OUTPUT", "the model's answer did not parse as the expected JSON"),
)
# The model each stage calls, in STAGE_ORDER.
MODELS = dict(zip(STAGE_ORDER, ("whisper-1", "gpt-4o-mini", "gpt-4o-mini", "claude-3-5-sonnet"), strict=True))
# USD: whisper per audio minute; LLMs per input / output token.
WHISPER_PER_MINUTE = 0.006
PRICE_PER_TOKEN = {
    "gpt-4o-mini": (0.15e-6, 0.60e-6),
    "claude-3-5-sonnet": (3.0e-6, 15.0e-6),
}
TEXT_CHANNELS = ("whatsapp_text",)

_PLAYERS = ("Sam", "Alex", "Jordan", "Casey", "Riley", "Morgan", "Taylor", "Jamie", "Quinn", "Avery")
_SKILLS = ("first touch", "passing range", "pressing", "positioning", "finishing", "work rate",
           "communication", "weak foot", "decision making", "defensive shape")
_VERDICTS = ("has really improved", "still struggles with", "showed great", "needs to work on",
             "was excellent at", "has been inconsistent with")


def _words(text: str) -> int:
    return len(text.split())


@dataclass(frozen=True)
class SimulatedProcessor:
    """Deterministic, realistically slow and priced, and failing on demand."""

    seed: int = 0
    failure_rate: float = 0.0
    fail_stages: tuple[str, ...] = ()
    time_scale: float = 1.0
    sleep: Callable[[float], None] = time.sleep
    name: str = "simulated"

    @classmethod
    def from_settings(cls, settings: Settings) -> SimulatedProcessor:
        return cls(
            seed=settings.simulator_seed,
            failure_rate=settings.simulator_failure_rate,
            fail_stages=settings.simulator_fail_stages,
            time_scale=settings.simulator_time_scale,
        )

    # -- the stages ---------------------------------------------------------

    def transcribe(self, item: StageInput) -> TranscriptionResult:
        rng = self.rng(item, "transcription")
        if item.source_channel in TEXT_CHANNELS:
            # A typed message needs no speech-to-text: fast, free, exact.
            nominal = rng.uniform(0.2, 0.6)
            self._maybe_fail(rng, item, "transcription", nominal, None)
            text = self._sentences(rng, rng.randint(2, 6))
            self._wait(nominal)
            return TranscriptionResult(text, _words(text), 1.0, 0.0, Cost("passthrough", 0.0))
        audio = round(rng.uniform(12.0, 150.0), 1)
        # Latency grows with the audio: a fixed overhead plus a share of real time.
        nominal = (6.0 + 0.2 * audio) * rng.lognormvariate(0.0, 0.25)
        self._maybe_fail(rng, item, "transcription", nominal, audio / 60.0 * WHISPER_PER_MINUTE)
        # ~140 spoken words a minute, fewer in a noisy dressing room.
        text = self._sentences(rng, max(1, int(audio * 2.3 / 9)))
        confidence = round(min(0.99, max(0.55, rng.gauss(0.9, 0.05))), 3)
        self._wait(nominal)
        cost = Cost("whisper-1", round(audio / 60.0 * WHISPER_PER_MINUTE, 6))
        return TranscriptionResult(text, _words(text), confidence, audio, cost)

    def extract_claims(self, item: StageInput, data: ClaimsInput) -> ClaimsResult:
        rng = self.rng(item, "claims_extraction")
        words = _words(data.transcript)
        nominal = MEAN_SECONDS["claims_extraction"] * rng.lognormvariate(0.0, 0.3)
        in_tokens, out_tokens = int(words * 1.3) + 600, 0
        self._maybe_fail(rng, item, "claims_extraction", nominal, self._llm_cost("gpt-4o-mini", in_tokens, 0))
        sentences = [s.strip() for s in data.transcript.split(".") if s.strip()] or [data.transcript]
        count = max(1, min(len(sentences), rng.randint(1, 8)))
        claims = [
            ExtractedClaim(sentences[i] + ".", round(min(0.99, max(0.4, rng.gauss(0.82, 0.08))), 3))
            for i in sorted(rng.sample(range(len(sentences)), count))
        ]
        out_tokens = sum(_words(c.text) for c in claims) * 2 + 40
        self._wait(nominal)
        confidence = round(sum(c.confidence for c in claims) / len(claims), 3)
        cost = Cost("gpt-4o-mini", self._llm_cost("gpt-4o-mini", in_tokens, out_tokens))
        return ClaimsResult(claims, confidence, cost)

    def resolve_entities(self, item: StageInput, data: EntitiesInput) -> EntitiesResult:
        rng = self.rng(item, "entity_resolution")
        nominal = MEAN_SECONDS["entity_resolution"] * rng.lognormvariate(0.0, 0.3)
        in_tokens = sum(_words(c) for c in data.claims) * 2 + 800
        self._maybe_fail(rng, item, "entity_resolution", nominal, self._llm_cost("gpt-4o-mini", in_tokens, 0))
        mentions = sorted({p for c in data.claims for p in _PLAYERS if p in c})
        entities = []
        for mention in mentions:
            # About one mention in seven is ambiguous (two players share the name).
            ambiguous = rng.random() < 0.15
            entity_id = None if ambiguous else f"player-{hashlib.sha1(mention.encode()).hexdigest()[:8]}"
            confidence = round(rng.uniform(0.35, 0.6) if ambiguous else rng.uniform(0.85, 0.99), 3)
            entities.append(ResolvedEntity(mention, entity_id, confidence))
        self._wait(nominal)
        confidence = round(sum(e.confidence for e in entities) / len(entities), 3) if entities else 1.0
        cost = Cost("gpt-4o-mini", self._llm_cost("gpt-4o-mini", in_tokens, 30 * len(entities) + 20))
        return EntitiesResult(entities, confidence, cost)

    def generate_drafts(self, item: StageInput, data: DraftsInput) -> DraftsResult:
        rng = self.rng(item, "draft_generation")
        nominal = MEAN_SECONDS["draft_generation"] * rng.lognormvariate(0.0, 0.3)
        in_tokens = sum(_words(c) for c in data.claims) * 2 + 1500
        self._maybe_fail(rng, item, "draft_generation", nominal,
                         self._llm_cost("claude-3-5-sonnet", in_tokens, 0))
        count = max(1, min(3, len(data.claims)))
        drafts = []
        for i in range(count):
            about = data.claims[i % len(data.claims)] if data.claims else "this session"
            drafts.append(f"Insight for the coach: {about} Suggested follow-up: "
                          f"{rng.choice(_SKILLS)} drill next training.")
        out_tokens = sum(_words(d) for d in drafts) * 2 + 60
        self._wait(nominal)
        confidence = round(min(0.99, max(0.5, rng.gauss(0.86, 0.06))), 3)
        cost = Cost("claude-3-5-sonnet", self._llm_cost("claude-3-5-sonnet", in_tokens, out_tokens))
        return DraftsResult(drafts, confidence, cost)

    # -- helpers ------------------------------------------------------------

    def rng(self, item: StageInput, stage: str) -> random.Random:
        """The generator of one stage run: same (seed, artifact, stage, attempt), same draws."""
        key = f"{self.seed}|{item.artifact_id}|{stage}|{item.attempt}".encode()
        return random.Random(int.from_bytes(hashlib.sha256(key).digest()[:8], "big"))

    def _maybe_fail(
        self, rng: random.Random, item: StageInput, stage: str, nominal: float, cost: float | None
    ) -> None:
        # Always draw, so a stage's later draws do not depend on the failure settings.
        draw, code_index, fraction = rng.random(), rng.randrange(len(FAILURE_CODES)), rng.uniform(0.2, 1.0)
        if stage in self.fail_stages:
            self._wait(nominal * fraction)
            raise StageFailure(
                "SIMULATED_FAILURE",
                f"{stage} is set to always fail (VOICEPIPE_SIMULATOR_FAIL_STAGES)",
                ai_model=MODELS[stage], ai_cost=0.0,
            )
        if draw < self.failure_rate:
            code, message = FAILURE_CODES[code_index]
            self._wait(nominal * fraction)
            raise StageFailure(code, f"{message} (simulated, {stage})", ai_model=MODELS[stage],
                               ai_cost=round((cost or 0.0) * fraction, 6) if code != "RATE_LIMITED" else 0.0)

    def _wait(self, nominal_seconds: float) -> None:
        if self.time_scale > 0:
            self.sleep(nominal_seconds * self.time_scale)

    @staticmethod
    def _llm_cost(model: str, in_tokens: int, out_tokens: int) -> float:
        price_in, price_out = PRICE_PER_TOKEN[model]
        return round(in_tokens * price_in + out_tokens * price_out, 6)

    @staticmethod
    def _sentences(rng: random.Random, n: int) -> str:
        parts: Iterable[str] = (
            f"{rng.choice(_PLAYERS)} {rng.choice(_VERDICTS)} {rng.choice(_SKILLS)}." for _ in range(n)
        )
        return " ".join(parts)
