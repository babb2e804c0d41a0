"""Latency sketches: sparse relative-error histograms that add up exactly.

A duration d >= MIN_MS goes to bucket i = ceil(log_γ d), which holds (γ**(i-1), γ**i] ms,
with γ = (1 + ALPHA) / (1 - ALPHA); the bucket's value 2 γ**i / (γ + 1) is within ALPHA
(1 %) of every duration in it. Durations below MIN_MS (1 µs) count as 0. A percentile
read by nearest rank from the summed counts lands in the bucket of the exact value, so
it is within ALPHA of it, in any window and any range, from 1 µs to years.

Only non-empty buckets are kept, each as one integer: key << COUNT_BITS | count, where a
key holds the latency kind (KINDS) and the bucket. A sketch is a list of them, the same
in PostgreSQL (a bigint[] column) and in Python; it means the sum of the counts per key,
so lists add by concatenation, and entries may come in any order and a key may repeat
(counter rows grow by appending; vp_sketch_add, migration 0011, compacts them). Merged
and packed sketches are sorted with each key once. While recording, a sketch is built as
a dict from key to count.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from itertools import chain

ALPHA = 0.01
GAMMA = (1 + ALPHA) / (1 - ALPHA)
_LOG_GAMMA = math.log(GAMMA)
MIN_MS = 0.001
MAX_MS = 1e13  # about 317 years: past the longest duration events may carry
# The latencies sketched, in the order of voicepipe.events.parts.LATENCIES.
KINDS: tuple[str, ...] = (
    "transcription_latency",
    "claims_extraction_latency",
    "entity_resolution_latency",
    "draft_generation_latency",
    "end_to_end_latency",
)
KIND_OF = {name: kind for kind, name in enumerate(KINDS)}
END_TO_END = KIND_OF["end_to_end_latency"]
PERCENTS: tuple[int, ...] = (50, 90, 95, 99)

_SLOT_BITS = 16
_OFFSET = 1024  # slot = bucket + _OFFSET; slot 0 is the zero bucket
COUNT_BITS = 40
_COUNT_MASK = (1 << COUNT_BITS) - 1
_TOP_BUCKET = math.ceil(math.log(MAX_MS) / _LOG_GAMMA)

Sketch = dict[int, int]  # key -> count, while recording
KIND_SHIFT = _SLOT_BITS + COUNT_BITS  # an entry >> KIND_SHIFT is its kind


def key_of(kind: int, duration_ms: float) -> int:
    """The key of the bucket a duration (ms, >= 0) of that kind falls in."""
    if duration_ms < MIN_MS:
        return kind << _SLOT_BITS
    bucket = min(math.ceil(math.log(duration_ms) / _LOG_GAMMA), _TOP_BUCKET)
    return (kind << _SLOT_BITS) | (bucket + _OFFSET)


@lru_cache(maxsize=4096)  # an hour's 10,000 rows read 40,000 values of a few hundred buckets
def value_of(key: int) -> float:
    """The value a bucket stands for: 0 for the zero bucket, else within ALPHA of its durations."""
    slot = key & ((1 << _SLOT_BITS) - 1)
    if slot == 0:
        return 0.0
    return 2.0 * GAMMA ** (slot - _OFFSET) / (GAMMA + 1.0)


def kind_sql(entry: str, kind: int) -> str:
    """The SQL condition that the stored entry (a bigint expression) is of that kind."""
    return f"{entry} >> {KIND_SHIFT} = {int(kind)}"


def add(sketch: Sketch, kind: int, duration_ms: float, count: int = 1) -> None:
    key = key_of(kind, duration_ms)
    sketch[key] = sketch.get(key, 0) + count


def merge(sketches: Iterable[Sequence[int] | Mapping[int, int]]) -> list[int]:
    """Sketches (entry lists, or dicts) added up: sorted, each key once.

    Identical entries are counted first, in C (Counter): across an hour's organizations
    most buckets hold one or two durations, so 252,000 entries of 1,000 organizations
    are 3,000 distinct ones, and only those are added up in Python.
    """
    same = Counter(chain.from_iterable(pack(s) if isinstance(s, Mapping) else s for s in sketches))
    totals: dict[int, int] = {}
    for entry, times in same.items():
        key = entry >> COUNT_BITS
        totals[key] = totals.get(key, 0) + (entry & _COUNT_MASK) * times
    return [(key << COUNT_BITS) | n for key, n in sorted(totals.items()) if n]


def pack(sketch: Mapping[int, int] | Sequence[int]) -> list[int]:
    """The entry list PostgreSQL stores: sorted, each key once, empty buckets left out."""
    if not isinstance(sketch, Mapping):
        return merge([sketch])
    return [(key << COUNT_BITS) | count for key, count in sorted(sketch.items()) if count]


def unpack(entries: Sequence[int] | Mapping[int, int] | None) -> Sketch:
    """A dict from key to count (for tests and readers that want one)."""
    if isinstance(entries, Mapping):
        return dict(entries)
    return {entry >> COUNT_BITS: entry & _COUNT_MASK for entry in merge([entries or ()])}


def count(sketch: Sequence[int] | Mapping[int, int], kind: int) -> int:
    return sum(n for key, n in unpack(sketch).items() if key >> _SLOT_BITS == kind)


def quantiles(sketch: Sequence[int] | Mapping[int, int], kind: int,
              percents: Sequence[int] = PERCENTS) -> tuple[float, ...]:
    """The nearest-rank percentiles (integer percents, ascending) of one kind; 0 when empty.

    Rank ceil(p n / 100), in integers: exact for any count.
    """
    # A list first: the ABC check of Mapping costs as much as sorting a stored sketch.
    entries = sorted(sketch) if isinstance(sketch, list) or not isinstance(sketch, Mapping) else pack(sketch)
    run = entries[bisect_left(entries, kind << KIND_SHIFT):bisect_left(entries, (kind + 1) << KIND_SHIFT)]
    total = sum(run) & _COUNT_MASK  # the counts' sum: the keys' parts are multiples of 2**40
    if total == 0:
        return tuple(0.0 for _ in percents)
    result = []
    seen, i = 0, -1
    for p in percents:
        rank = max(1, -(-p * total // 100))
        while seen < rank:
            i += 1
            seen += run[i] & _COUNT_MASK
        result.append(value_of(run[i] >> COUNT_BITS))
    return tuple(result)
