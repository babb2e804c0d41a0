"""Dashboard queries: 30 days of an organization's AI usage from rollups against the raw log,
and the organization breakdown over 30 days for 1,000 organizations."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import text

from bench.baselines import bare_sums, bare_usage
from bench.data import seed_daily_snapshots
from bench.harness import Env, Result, ratio_spread
from voicepipe.metrics.queries import organization_breakdown
from voicepipe.usage.queries import TOP, UsageGroup, _raw, _top, usage_for_organization
from voicepipe.usage.rollup import aggregate_usage_day

ORG = "org-usage"
OPERATIONS = ["parent_summary", "voice_note_transcription", "claims_extraction", "draft_generation",
              "entity_resolution", "session_plan"]


def _load_usage(env: Env, first: datetime, days: int, per_day: int) -> None:
    rng = random.Random(5)
    raw = env.engine.raw_connection()
    try:
        with raw.cursor() as cur, cur.copy(
            "COPY ai_usage_log (id, occurred_at, organization_id, coach_id, player_id, operation, model,"
            " input_tokens, cached_tokens, output_tokens, cost) FROM STDIN"
        ) as copy:
            for d in range(days):
                for _ in range(per_day):
                    inp = rng.randint(200, 4000)
                    copy.write_row((
                        uuid.uuid4(), first + timedelta(days=d, seconds=rng.uniform(0, 86399)), ORG,
                        f"coach-{rng.randrange(40)}", f"player-{rng.randrange(400)}" if rng.random() < 0.7 else None,
                        rng.choice(OPERATIONS), "gpt-x", inp, rng.randint(0, inp), rng.randint(50, 800),
                        Decimal(rng.randint(1, 5000)) / Decimal(100_000),
                    ))
        raw.commit()
    finally:
        raw.close()
    with env.engine.connect() as conn:
        conn.execute(text("ANALYZE ai_usage_log"))




def run(env: Env) -> list[Result]:
    per_day = 10_000  # the raw log's cost grows with calls, the rollups' does not: the issue's size
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    first = today - timedelta(days=33)  # 30 full days ending 3 days ago: all rolled up
    last_day = (first + timedelta(days=29)).date()
    _load_usage(env, first, 30, per_day)
    for d in range(30):
        with env.session() as s:
            aggregate_usage_day(s, (first + timedelta(days=d)).date())
            s.commit()

    def rollups() -> None:
        with env.session() as s:
            usage_for_organization(s, ORG, first.date(), last_day)

    def raw() -> None:
        with env.session() as s:
            _raw(s, ORG, first.date(), last_day, UsageGroup())

    with env.session() as s:  # both paths return the same figures
        a = usage_for_organization(s, ORG, first.date(), last_day)
        g = UsageGroup()
        _raw(s, ORG, first.date(), last_day, g)
    from_raw = (g.totals, dict(sorted(g.by_operation.items())), _top(g.by_coach, TOP), _top(g.by_player, TOP))
    if (a.totals, a.by_operation, a.top_coaches, a.top_players) != from_raw:
        raise AssertionError("usage from rollups differs from the same query on the raw log")
    t_roll, t_raw, raw_spread = ratio_spread(rollups, raw, repeat=5 if not env.quick else 3)
    t_roll_b, t_bare, bare_spread = ratio_spread(
        rollups, lambda: bare_usage(env.engine, ORG, first.date(), last_day), repeat=15)
    results = [
        Result("dashboard", f"org usage, 30 days at {per_day:,} calls/day", t_roll, "s",
               baseline=t_raw, baseline_name="same query on the raw log",
               goal=">= 100x the raw log", met=raw_spread[1] >= 100, spread=raw_spread,
               extra={"calls": a.totals.calls}),
        Result("dashboard", f"org usage, 30 days at {per_day:,} calls/day", t_roll_b, "s",
               baseline=t_bare, baseline_name="bare SQL sums of the same rollup rows, every key",
               goal="within 2x of bare SQL", met=bare_spread[1] >= 0.5, spread=bare_spread),
    ]
    # 30 days well before the other benchmarks' windows, so their rows cannot collide.
    lo, hi = today - timedelta(days=70), today - timedelta(days=40)
    with env.engine.begin() as conn:
        seed_daily_snapshots(conn, 1000, lo, hi, "org-", digits=4)

    def breakdown() -> None:
        with env.session() as s:
            organization_breakdown(s, "daily", lo, hi)

    t_ours, t_sql, spread = ratio_spread(
        breakdown, lambda: bare_sums(env.engine, "daily", lo, hi, breakdown=True), repeat=5)
    results.append(Result(
        "dashboard", "organization breakdown, 30 days x 1,000 orgs, after the other benches' loads", t_ours, "s",
        baseline=t_sql, baseline_name="bare SQL sums of the same rows (sketches: end-to-end only)",
        goal="within 2x of bare SQL", met=spread[1] >= 0.5, spread=spread,
    ))
    return results
