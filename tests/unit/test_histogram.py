from __future__ import annotations

import math
import random

import pytest

from voicepipe.events import histogram


def exact_nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def test_layout_is_geometric_from_100_ms_to_beyond_a_day() -> None:
    assert histogram.N_BUCKETS == 64
    assert histogram.EDGES[0] == 100.0
    assert histogram.EDGES[-1] > 24 * 3600 * 1000
    ratios = {round(b / a, 9) for a, b in zip(histogram.EDGES, histogram.EDGES[1:], strict=False)}
    assert ratios == {1.25}


@pytest.mark.parametrize(
    ("duration", "bucket"),
    [(0.0, 0), (99.999, 0), (100.0, 1), (124.9, 1), (125.0, 2), (1000.0, 11), (1e12, 63)],
)
def test_bucket_of(duration: float, bucket: int) -> None:
    assert histogram.bucket_of(duration) == bucket
    lower, upper = histogram.bucket_bounds(bucket)
    assert lower <= duration < upper


@pytest.mark.parametrize("seed", range(20))
def test_p95_is_within_the_bucket_of_the_exact_value(seed: int) -> None:
    rng = random.Random(seed)
    values = [rng.lognormvariate(10, 1.5) for _ in range(rng.randint(1, 3000))]
    hist = histogram.empty()
    for v in values:
        hist[histogram.bucket_of(v)] += 1
    exact = exact_nearest_rank(values, 0.95)
    lower, upper = histogram.bucket_bounds(histogram.bucket_of(exact))
    assert lower <= histogram.percentile(hist, 0.95) < upper


def test_percentile_of_an_empty_histogram_is_zero() -> None:
    assert histogram.percentile(histogram.empty(), 0.95) == 0.0


def test_merge_treats_empty_arrays_as_zeros() -> None:
    a = histogram.empty()
    a[3] = 2
    assert histogram.merge([a, [], [0, 1]])[:4] == [0, 1, 0, 2]
