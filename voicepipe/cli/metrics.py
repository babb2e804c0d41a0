"""`voicepipe backfill` and `voicepipe status` (metrics engine)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date, datetime, timedelta
from typing import Any

from voicepipe.observability.queues import QUEUE_NAMES, queue_depths

__all__ = ["QUEUE_NAMES", "queue_depths", "register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    backfill = sub.add_parser(
        "backfill",
        help="compute missing or stale hourly and daily snapshots (and AI usage rollups) for a range of days",
    )
    backfill.add_argument("--from", dest="first", required=True, metavar="DAY", help="first UTC day, YYYY-MM-DD")
    backfill.add_argument("--to", dest="last", required=True, metavar="DAY", help="last UTC day (inclusive)")
    backfill.add_argument("--force", action="store_true", help="recompute days that are already up to date")
    backfill.add_argument("--no-usage", action="store_true", help="skip the AI usage rollups")
    backfill.set_defaults(func=cmd_backfill)

    status = sub.add_parser("status", help="latest windows, missing/stale/failing windows, queue depths")
    status.add_argument("--json", action="store_true", help="print JSON instead of text")
    status.set_defaults(func=cmd_status)


# ---------------------------------------------------------------- backfill


def cmd_backfill(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from models.session import session_scope
    from voicepipe.clock import utcnow
    from voicepipe.errors import InvalidInput
    from voicepipe.maintenance.cleanup import recomputable_from, usage_recomputable_from
    from voicepipe.metrics.daily import aggregate_day
    from voicepipe.metrics.due import day_state
    from voicepipe.usage.rollup import aggregate_usage_day, usage_day_mismatches
    from voicepipe.windows import parse_day

    first, last = parse_day(args.first, "--from"), parse_day(args.last, "--to")
    if last < first:
        raise InvalidInput.field("--to", f"{last} is before --from {first}")
    now = utcnow()
    yesterday = now.date() - timedelta(days=1)
    oldest = recomputable_from(now).date()
    usage_oldest = usage_recomputable_from(now).date()
    if last > yesterday:
        print(f"note: {max(first, yesterday + timedelta(days=1))}..{last} not closed yet, skipped", file=sys.stderr)
        last = yesterday
    if first < oldest:
        print(
            f"note: days before {oldest} are past the counter retention; their snapshots are final, skipped",
            file=sys.stderr,
        )
        first = oldest
    days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    computed = usage_rolled = 0
    # One transaction per day: an interruption keeps the days already done, and a
    # re-run skips them (a day is recomputed only when missing or stale).
    for day in tqdm(days, desc="backfill", unit="day", file=sys.stderr, disable=not days):
        with session_scope() as session:
            if args.force or day_state(session, day).due:
                aggregate_day(session, day)
                computed += 1
            if not args.no_usage and day >= usage_oldest and (
                args.force or usage_day_mismatches(session, day, day)
            ):
                aggregate_usage_day(session, day)
                usage_rolled += 1
    print(
        f"backfill {first}..{last}: {len(days)} days, {computed} recomputed, "
        f"{len(days) - computed} already up to date; AI usage rolled up for {usage_rolled} days"
    )
    return 0


# ---------------------------------------------------------------- status


def collect_status(now: datetime, broker_url: str | None) -> dict[str, Any]:
    from models.session import session_scope
    from voicepipe.metrics.bookkeeping import DAILY, HOURLY, failing_windows, newest_computed
    from voicepipe.metrics.due import day_states, hour_states
    from voicepipe.settings import get_settings
    from voicepipe.usage.rollup import due_usage_days
    from worker.deadletters import parked_count

    settings = get_settings()
    with session_scope() as session:
        hours = hour_states(session, now, settings.hourly_horizon_hours)
        days = day_states(session, now, settings.daily_horizon_days)
        status: dict[str, Any] = {
            "now": now.isoformat(),
            "newest_hourly": _iso(newest_computed(session, HOURLY)),
            "newest_daily": _iso(newest_computed(session, DAILY)),
            "hourly_horizon_hours": settings.hourly_horizon_hours,
            "daily_horizon_days": settings.daily_horizon_days,
            "missing_hours": [s.start.isoformat() for s in hours if s.missing],
            "stale_hours": [s.start.isoformat() for s in hours if s.stale],
            "missing_days": [s.start.date().isoformat() for s in days if s.missing],
            "stale_days": [s.start.date().isoformat() for s in days if s.stale],
            "due_usage_days": [d.isoformat() for d in due_usage_days(session, now, settings.daily_horizon_days)],
            "failing_windows": [
                {**w, "period_start": w["period_start"].isoformat(), "last_error_at": _iso(w["last_error_at"])}
                for w in failing_windows(session)
            ],
            # Write messages parked for an operator (`voicepipe dead-letters list`).
            "dead_letters": parked_count(session),
        }
    status["queues"] = queue_depths(broker_url) if broker_url else {q: None for q in QUEUE_NAMES}
    return status


def _iso(value: datetime | date | None) -> str | None:
    return value.isoformat() if value is not None else None


def _windows(label: str, values: list[str]) -> str:
    if not values:
        return f"  {label}: none"
    shown = ", ".join(values[:6]) + (f", ... ({len(values)} in all)" if len(values) > 6 else "")
    return f"  {label} ({len(values)}): {shown}"


def render(status: dict[str, Any]) -> str:
    lines = [
        f"voicepipe status at {status['now']}",
        "",
        "Latest windows",
        f"  newest hourly: {status['newest_hourly'] or 'none yet'}",
        f"  newest daily:  {status['newest_daily'] or 'none yet'}",
        "",
        f"Due windows (hourly horizon {status['hourly_horizon_hours']} h, daily {status['daily_horizon_days']} days)",
        _windows("missing hours", status["missing_hours"]),
        _windows("stale hours", status["stale_hours"]),
        _windows("missing days", status["missing_days"]),
        _windows("stale days", status["stale_days"]),
        _windows("AI usage days to roll up", status["due_usage_days"]),
        "",
        "Failing windows",
    ]
    if not status["failing_windows"]:
        lines.append("  none")
    for w in status["failing_windows"]:
        error = (w["last_error"] or "").splitlines()[0][:120] if w["last_error"] else ""
        lines.append(f"  {w['period_type']} {w['period_start']}: {w['failures']} failures, last: {error}")
    lines += ["", f"Dead letters (parked write messages): {status['dead_letters']}"
              + (" - see `voicepipe dead-letters list`" if status["dead_letters"] else "")]
    lines += ["", "Queue depths"]
    for queue, depth in status["queues"].items():
        lines.append(f"  {queue:<9} {'unknown' if depth is None else depth}")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    from voicepipe.clock import utcnow
    from voicepipe.settings import get_settings

    settings = get_settings()
    broker: str | None = settings.broker_url
    if broker is None:
        from voicepipe.infra.embedded import redis_url, require_allowed

        require_allowed("BROKER_URL")
        broker = redis_url(settings.data_dir)
    status = collect_status(utcnow(), broker)
    print(json.dumps(status, indent=2) if args.json else render(status))
    return 0
