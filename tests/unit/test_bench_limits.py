"""The bench's summary tells the misses past a same-run limit from the others.

A goal missed whose limit (the broker's delivery alone, a retry's round trips alone,
every core busy, the bare statement's growth) misses it too is the machine's: the summary
counts those, the table says so beside "met", and a run kept before limits were measured
says nothing of them.
"""

from __future__ import annotations

from bench.harness import Result, goal_summary, table


def result(met: bool | None, limit: str = "", meets: bool | None = None) -> Result:
    return Result("b", "case", 1.0, "x", goal="" if met is None else ">= 2x", met=met, limit=limit,
                  limit_meets_goal=meets)


def test_misses_past_their_limit_are_counted_apart() -> None:
    results = [
        result(True),
        result(None),
        result(False),  # no limit measured
        result(False, "delivery alone, 4.25x", meets=False),
        result(False, "validation free, 0.53x", meets=True),  # the limit passes: the code's miss
        result(False, "round trips alone, 0.69x", meets=False),
    ]
    assert goal_summary(results) == "goals met: 1 of 5; misses past a limit measured in the same run: 2 of 4"
    rows = table(results).splitlines()[2:]
    assert rows[3].endswith("| **no** (limit: delivery alone, 4.25x, short of the goal too) |")
    assert rows[4].endswith("| **no** (limit: validation free, 0.53x) |")
    assert rows[2].endswith("| **no** |")


def test_runs_kept_before_limits_say_nothing_of_them() -> None:
    assert goal_summary([result(True), result(False), result(None)]) == "goals met: 1 of 2"
    assert goal_summary([result(True)]) == "goals met: 1 of 1"
