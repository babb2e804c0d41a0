"""Additive parts: what one event adds to its (organization, hour) counters.

A ``Parts`` is a plain dict from column name (models.events.AdditiveParts) to value.
Parts of any set of events are the element-wise sum of the events' parts, which is
what makes counters, hourly and daily snapshots all exactly summable. The latency
sketch (voicepipe.events.sketch) is summed key by key: a dict while recording, the
stored entry list otherwise. The coarse flag, set on rows carried over from the fixed
64-bucket histogram, is summed by OR.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from voicepipe.domain import ENTITY_OUTCOMES, EVENT_TYPES, PIPELINE
from voicepipe.events import sketch

Parts = dict[str, Any]

COUNT_PARTS: tuple[str, ...] = tuple(f"n_{t}" for t in EVENT_TYPES)

# (event types, sum column, count column): mean durations of those events.
LATENCIES: tuple[tuple[tuple[str, ...], str], ...] = (
    *((stage.completed_events, stage.latency) for stage in PIPELINE),
    (("artifact_completed",), "end_to_end_latency"),
)
CONFIDENCES: tuple[tuple[str, str], ...] = (
    ("transcription_completed", "transcript_confidence"),
    ("claims_extracted", "claim_confidence"),
)
# (event types, metadata key, column)
TOTALS: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("claims_extracted",), "claimCount", "claims_total"),
    (ENTITY_OUTCOMES, "entityCount", "entities_total"),
    (("drafts_generated",), "draftCount", "drafts_total"),
)

INT_PARTS: tuple[str, ...] = (
    COUNT_PARTS
    + tuple(f"{name}_count" for _, name in LATENCIES)
    + tuple(f"{name}_count" for _, name in CONFIDENCES)
    + tuple(column for _, _, column in TOTALS)
)
FLOAT_PARTS: tuple[str, ...] = tuple(f"{name}_sum" for _, name in LATENCIES) + tuple(
    f"{name}_sum" for _, name in CONFIDENCES
)
DECIMAL_PARTS: tuple[str, ...] = ("ai_cost_sum",)
SKETCH_PART = "latency_sketch"
COARSE_PART = "coarse_percentiles"
SCALAR_PARTS: tuple[str, ...] = INT_PARTS + FLOAT_PARTS + DECIMAL_PARTS
ALL_PARTS: tuple[str, ...] = SCALAR_PARTS + (SKETCH_PART, COARSE_PART)

assert tuple(name for _, name in LATENCIES) == sketch.KINDS
_LATENCY_OF = {t: name for types, name in LATENCIES for t in types}
_KIND_OF = {t: sketch.KIND_OF[name] for t, name in _LATENCY_OF.items()}
_CONFIDENCE_OF = dict(CONFIDENCES)
_TOTALS_OF: dict[str, list[tuple[str, str]]] = {}
for _types, _key, _column in TOTALS:
    for _t in _types:
        _TOTALS_OF.setdefault(_t, []).append((_key, _column))


_EMPTY_SCALARS: Parts = {
    **{name: 0 for name in INT_PARTS}, **{name: 0.0 for name in FLOAT_PARTS}, "ai_cost_sum": Decimal(0),
    COARSE_PART: False,
}


def empty_parts() -> Parts:
    # A copy of a template (the scalars are immutable) and a new sketch: recording
    # makes one per (organization, hour) of a batch, up to 1,000 a batch.
    parts = dict(_EMPTY_SCALARS)
    parts[SKETCH_PART] = {}
    return parts


def add_event(
    parts: Parts,
    event_type: str,
    duration_ms: float | None,
    metadata: Mapping[str, Any],
) -> None:
    """Add one (validated) event's contribution to parts, in place."""
    parts[f"n_{event_type}"] += 1
    latency = _LATENCY_OF.get(event_type)
    if latency is not None and duration_ms is not None:
        parts[f"{latency}_sum"] += float(duration_ms)
        parts[f"{latency}_count"] += 1
        sketch.add(parts[SKETCH_PART], _KIND_OF[event_type], float(duration_ms))
    confidence = _CONFIDENCE_OF.get(event_type)
    score = metadata.get("confidenceScore")
    if confidence is not None and score is not None:
        parts[f"{confidence}_sum"] += float(score)
        parts[f"{confidence}_count"] += 1
    for key, column in _TOTALS_OF.get(event_type, ()):
        value = metadata.get(key)
        if value is not None:
            parts[column] += int(value)
    cost = metadata.get("aiCost")
    if cost is not None:
        parts["ai_cost_sum"] += Decimal(str(cost))


def sum_parts(rows: Iterable[Mapping[str, Any]]) -> Parts:
    """Element-wise sum of parts rows (counter rows or snapshot rows, or Parts)."""
    total = empty_parts()
    sketches = []
    for row in rows:
        for name in INT_PARTS:
            total[name] += int(row[name] or 0)
        for name in FLOAT_PARTS:
            total[name] += float(row[name] or 0.0)
        total["ai_cost_sum"] += Decimal(row["ai_cost_sum"] or 0)
        sketches.append(row[SKETCH_PART] or ())
        total[COARSE_PART] = total[COARSE_PART] or bool(row[COARSE_PART])
    total[SKETCH_PART] = sketch.merge(sketches)
    return total


def parts_of_row(values: Sequence[Any]) -> Parts:
    """Parts from one row of the ALL_PARTS columns, as PostgreSQL returns them (no NULLs)."""
    return dict(zip(ALL_PARTS, values, strict=True))


def sum_part_rows(rows: Sequence[Sequence[Any]]) -> Parts:
    """Element-wise sum of rows of the ALL_PARTS columns (as parts_of_row takes them).

    Column by column with built-in sums, not value by value as sum_parts goes: the
    platform row of an hour sums 1,001 counter rows. Float parts use math.fsum, the
    correctly rounded sum, so the result does not depend on the order of the rows.
    """
    # Without rows there are no columns (strict=False); every row has every part.
    columns: dict[str, Sequence[Any]] = dict(zip(ALL_PARTS, zip(*rows, strict=True), strict=False))
    total = empty_parts()
    for name in INT_PARTS:
        total[name] = sum(columns.get(name, ()))
    for name in FLOAT_PARTS:
        total[name] = math.fsum(columns.get(name, ()))
    for name in DECIMAL_PARTS:
        total[name] = sum(columns.get(name, ()), Decimal(0))
    total[SKETCH_PART] = sketch.merge(columns.get(SKETCH_PART, ()))
    total[COARSE_PART] = any(columns.get(COARSE_PART, ()))
    return total
