"""parts_of_row / sum_part_rows: the column-wise paths agree with the value-by-value sum_parts."""

from __future__ import annotations

import math
import random
from decimal import Decimal
from typing import Any

from voicepipe.events import histogram
from voicepipe.events.parts import (
    ALL_PARTS,
    DECIMAL_PARTS,
    FLOAT_PARTS,
    HISTOGRAM_PART,
    INT_PARTS,
    empty_parts,
    parts_of_row,
    sum_part_rows,
    sum_parts,
)


def counter_row(rng: random.Random) -> tuple[Any, ...]:
    """One row of ALL_PARTS values as PostgreSQL returns a counter row."""
    values: dict[str, Any] = {name: rng.randint(0, 1000) for name in INT_PARTS}
    values.update({name: rng.uniform(0, 1e6) for name in FLOAT_PARTS})
    values.update({name: Decimal(rng.randint(0, 10**8)) / 10**6 for name in DECIMAL_PARTS})
    # Counters store an all-zero histogram empty.
    values[HISTOGRAM_PART] = [] if rng.random() < 0.3 else [rng.randint(0, 5) for _ in range(histogram.N_BUCKETS)]
    return tuple(values[name] for name in ALL_PARTS)


def test_a_row_with_an_empty_histogram_gets_every_bucket() -> None:
    rng = random.Random(1)
    row = list(counter_row(rng))
    row[ALL_PARTS.index(HISTOGRAM_PART)] = []
    parts = parts_of_row(row)
    assert parts[HISTOGRAM_PART] == histogram.empty()
    assert parts == sum_parts([dict(zip(ALL_PARTS, row, strict=True))])


def test_summing_rows_column_by_column_matches_sum_parts() -> None:
    rng = random.Random(7)
    rows = [counter_row(rng) for _ in range(200)]
    fast = sum_part_rows(rows)
    slow = sum_parts([dict(zip(ALL_PARTS, row, strict=True)) for row in rows])
    assert set(fast) == set(slow)
    for name in (*INT_PARTS, *DECIMAL_PARTS, HISTOGRAM_PART):
        assert fast[name] == slow[name], name
        assert type(fast[name]) is type(slow[name]), name
    for name in FLOAT_PARTS:
        # fsum is the correctly rounded sum; the running sum may differ in the last bits.
        assert math.isclose(fast[name], slow[name], rel_tol=1e-12), name
        assert fast[name] == math.fsum(row[ALL_PARTS.index(name)] for row in reversed(rows)), name


def test_no_rows_sum_to_empty_parts() -> None:
    assert sum_part_rows([]) == empty_parts()
