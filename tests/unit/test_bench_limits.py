"""The bench's summary tells the misses past a same-run limit from the others.

A goal missed whose limit (the broker's delivery alone, a retry's round trips alone,
every core busy, the bare statement's growth) misses it too is the machine's: the summary
counts those, the table says so beside "met", a row that also misses a goal without a
limit stays the code's, and a run kept before limits were measured says nothing of them.
"""

from __future__ import annotations

from bench.harness import Result, beside_goal, goal_summary, table


def result(met: bool | None, limit: str = "", meets: bool | None = None, unlimited: int = 0) -> Result:
    return Result("b", "case", 1.0, "x", goal="" if met is None else ">= 2x", met=met, limit=limit,
                  limit_meets_goal=meets, misses_without_limit=unlimited)


def test_misses_past_their_limit_are_counted_apart() -> None:
    results = [
        result(True),
        result(None),
        result(False),  # no limit measured
        result(False, "delivery alone, 4.25x", meets=False),
        result(False, "every core busy, 1.80x", meets=True),  # the limit passes: the code's miss
        result(False, "round trips alone, 0.69x", meets=False),
        result(False, "every core busy, 1.41x", meets=False, unlimited=1),  # and a growth goal missed too
    ]
    assert goal_summary(results) == "goals met: 1 of 6; misses past a limit measured in the same run: 2 of 5"
    rows = table(results).splitlines()[2:]
    assert rows[3].endswith("| **no** (limit: delivery alone, 4.25x, short of the goal too) |")
    assert rows[4].endswith("| **no** (limit: every core busy, 1.80x) |")
    assert rows[2].endswith("| **no** |")
    assert rows[6].endswith("| **no** (limit: every core busy, 1.41x, short of the goal too) |")


def test_runs_kept_before_limits_say_nothing_of_them() -> None:
    assert goal_summary([result(True), result(False), result(None)]) == "goals met: 1 of 2"
    assert goal_summary([result(True)]) == "goals met: 1 of 1"


def test_a_figure_beside_its_goal_never_reads_as_the_goal() -> None:
    assert beside_goal(4.254, 6.0) == "4.25"
    assert beside_goal(0.798, 0.8) == "0.798"
    assert beside_goal(10.004, 10.0) == "10.004"
    assert beside_goal(1.69996, 1.7) == "1.69996"
    assert beside_goal(0.8, 0.8) == "0.80"
