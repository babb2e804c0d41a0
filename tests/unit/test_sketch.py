"""Latency sketches: percentiles within 2 % of the exact nearest rank, whatever the data and the merge order."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from voicepipe.events import sketch

PERCENTS = (50, 90, 95, 99)


def nearest_rank(values: list[float], percent: int) -> float:
    """The exact percentile: the value at rank ceil(p n / 100) of the sorted values (integers only)."""
    ordered = sorted(values)
    rank = max(1, (percent * len(ordered) + 99) // 100)
    return ordered[rank - 1]


DISTRIBUTIONS: dict[str, Callable[[random.Random], float]] = {
    "lognormal": lambda r: r.lognormvariate(10, 1.2),
    "bimodal": lambda r: r.gauss(800, 60) if r.random() < 0.7 else r.gauss(240_000, 20_000),
    "long tail": lambda r: 50 * r.paretovariate(1.1),
    "single value": lambda r: 1234.5,
    "tiny": lambda r: r.uniform(0.001, 2.0),
    "huge": lambda r: r.uniform(1, 9) * 86_400_000,
    "uniform, 1 ms to a day": lambda r: r.uniform(1, 86_400_000),
    "zeros and more": lambda r: 0.0 if r.random() < 0.3 else r.expovariate(1 / 5000),
}


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
@pytest.mark.parametrize("seed", range(4))
def test_merged_sketches_give_every_percentile_within_2_percent(name: str, seed: int) -> None:
    rng = random.Random(f"{name}-{seed}")
    values = [abs(DISTRIBUTIONS[name](rng)) for _ in range(rng.choice((1, 7, 100, 2_000)))]
    # Sketched in random parts, then merged: as hours make a day and days a range.
    parts: list[dict[int, int]] = [{} for _ in range(rng.randint(1, 30))]
    for v in values:
        sketch.add(rng.choice(parts), sketch.END_TO_END, v)
    merged = sketch.unpack(sketch.pack(sketch.merge(parts)))
    assert sketch.count(merged, sketch.END_TO_END) == len(values)
    got = sketch.quantiles(merged, sketch.END_TO_END, PERCENTS)
    for p, value in zip(PERCENTS, got, strict=True):
        exact = nearest_rank(values, p)
        assert value == pytest.approx(exact, rel=0.02, abs=0 if exact else 1e-12), (p, exact, value)


def test_every_value_is_within_alpha_of_its_bucket_value() -> None:
    rng = random.Random(3)
    for _ in range(20_000):
        v = 10 ** rng.uniform(-3, 12)
        estimate = sketch.value_of(sketch.key_of(0, v))
        assert abs(estimate - v) <= sketch.ALPHA * v * (1 + 1e-9), v


def test_kinds_are_kept_apart_and_an_empty_kind_reads_zero() -> None:
    s: dict[int, int] = {}
    for v in (10.0, 20.0, 30.0):
        sketch.add(s, 0, v)
    sketch.add(s, sketch.END_TO_END, 90_000.0)
    assert sketch.quantiles(s, 0, (50,)) == pytest.approx((20.0,), rel=0.01)
    assert sketch.quantiles(s, sketch.END_TO_END, (50, 99)) == pytest.approx((90_000.0, 90_000.0), rel=0.01)
    assert sketch.quantiles(s, 1, PERCENTS) == (0.0, 0.0, 0.0, 0.0)
    assert sketch.count(s, 0) == 3


def test_the_rank_is_the_nearest_rank_at_its_boundary() -> None:
    # p95 of 100 values is the 95th, and p96 the 96th: one rank off reads 50 times too much.
    s: dict[int, int] = {}
    sketch.add(s, 0, 1_000.0, count=95)
    sketch.add(s, 0, 50_000.0, count=5)
    assert sketch.quantiles(s, 0, (95, 96)) == pytest.approx((1_000.0, 50_000.0), rel=0.01)


def test_appended_entry_lists_mean_what_their_merge_means() -> None:
    # Counter rows grow by appending a batch's entries: keys repeat, order is lost.
    rng = random.Random(9)
    batches = []
    for _ in range(30):
        s: dict[int, int] = {}
        for _ in range(rng.randint(0, 20)):
            sketch.add(s, rng.randrange(len(sketch.KINDS)), rng.lognormvariate(7, 2))
        batches.append(sketch.pack(s))
    appended = [e for batch in reversed(batches) for e in batch]
    merged = sketch.merge(batches)
    assert merged == sorted(merged) and len({e >> 40 for e in merged}) == len(merged)
    assert sketch.pack(appended) == merged
    for kind in range(len(sketch.KINDS)):
        assert sketch.quantiles(appended, kind) == sketch.quantiles(merged, kind)
        assert sketch.count(appended, kind) == sum(sketch.count(b, kind) for b in batches)


def test_packing_is_sorted_and_drops_empty_buckets() -> None:
    s = {sketch.key_of(sketch.END_TO_END, 5.0): 2, sketch.key_of(0, 5.0): 1, sketch.key_of(0, 9.0): 0}
    packed = sketch.pack(s)
    assert packed == sorted(packed) and len(packed) == 2
    assert sketch.unpack(packed) == {k: n for k, n in s.items() if n}
