"""parts_of_row / sum_part_rows: the column-wise paths agree with the value-by-value sum_parts."""

from __future__ import annotations

import math
import random
from decimal import Decimal
from typing import Any

from voicepipe.events import sketch
from voicepipe.events.parts import (
    ALL_PARTS,
    COARSE_PART,
    DECIMAL_PARTS,
    FLOAT_PARTS,
    INT_PARTS,
    SKETCH_PART,
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
    durations: dict[int, int] = {}
    for _ in range(rng.choice((0, 1, 5, 40))):
        sketch.add(durations, rng.randrange(len(sketch.KINDS)), rng.lognormvariate(8, 2))
    values[SKETCH_PART] = sketch.pack(durations)
    values[COARSE_PART] = rng.random() < 0.1
    return tuple(values[name] for name in ALL_PARTS)


def test_a_row_without_durations_has_an_empty_sketch() -> None:
    rng = random.Random(1)
    row = list(counter_row(rng))
    row[ALL_PARTS.index(SKETCH_PART)] = []
    parts = parts_of_row(row)
    assert parts[SKETCH_PART] == []
    assert parts == sum_parts([dict(zip(ALL_PARTS, row, strict=True))])


def test_summing_rows_column_by_column_matches_sum_parts() -> None:
    rng = random.Random(7)
    rows = [counter_row(rng) for _ in range(200)]
    fast = sum_part_rows(rows)
    slow = sum_parts([dict(zip(ALL_PARTS, row, strict=True)) for row in rows])
    assert set(fast) == set(slow)
    assert fast[COARSE_PART] is slow[COARSE_PART] is True
    for name in (*INT_PARTS, *DECIMAL_PARTS, SKETCH_PART):
        assert fast[name] == slow[name], name
        assert type(fast[name]) is type(slow[name]), name
    for name in FLOAT_PARTS:
        # fsum is the correctly rounded sum; the running sum may differ in the last bits.
        assert math.isclose(fast[name], slow[name], rel_tol=1e-12), name
        assert fast[name] == math.fsum(row[ALL_PARTS.index(name)] for row in reversed(rows)), name


def test_no_rows_sum_to_empty_parts() -> None:
    assert sum_part_rows([]) == {**empty_parts(), SKETCH_PART: []}
