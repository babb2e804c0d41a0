"""One reading of the pipeline's health: what the exporter serves and the alerts evaluate.

Every figure comes from a cheap indexed query (or the broker, or beat's heartbeat
file) at call time, except the due windows: DueWindows reads them every 10 s in the
background (a reader past 30 s, or in a new hour, reads them itself). Window lag and
due windows come from the same functions `voicepipe status` uses.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from models.artifacts import Artifact, RetryRequest
from models.metrics import AggregationWindow, MetricsSnapshot
from voicepipe.domain import STATUSES, WORKING_STATUSES
from voicepipe.events import sketch
from voicepipe.events.parts import COARSE_PART
from voicepipe.metrics.bookkeeping import DAILY, HOURLY, newest_computed, utc
from voicepipe.metrics.derive import percentile_error
from voicepipe.metrics.due import day_states, first_data_hour, hour_states
from voicepipe.windows import DAY, HOUR, floor_day, floor_hour

log = logging.getLogger(__name__)

PERIODS: dict[str, timedelta] = {HOURLY: HOUR, DAILY: DAY}


def floor_window(ts: datetime, period: str) -> datetime:
    return floor_hour(ts) if period == HOURLY else floor_day(ts)
TERMINAL_STATUSES = tuple(s for s in STATUSES if s not in WORKING_STATUSES)
# Completed and failed artifacts are counted over this recent span only: an index range
# on (status, updated_at) stays cheap however many artifacts history holds.
TERMINAL_SPAN = timedelta(hours=24)
RETRY_OUTCOMES = ("initiated", "succeeded", "failed")


@dataclass(frozen=True)
class BeatState:
    """Beat's heartbeat file as read now; ages are None when there is no heartbeat."""

    tick_age_s: float | None
    send_age_s: float | None
    reason: str

    @property
    def silence_s(self) -> float:
        """Seconds since beat last showed life: the larger of tick and send age (inf without a heartbeat)."""
        if self.tick_age_s is None or self.send_age_s is None:
            return math.inf
        return max(self.tick_age_s, self.send_age_s)


@dataclass(frozen=True)
class OrganizationHour:
    """One organization's figures in the newest hourly snapshot."""

    organization_id: str
    artifacts_received: int
    artifacts_completed: int
    artifacts_failed: int
    failure_rate: float
    p95_end_to_end_latency_ms: float
    ai_cost: float
    # p50, p90, p95 and p99 end-to-end (NaN for p50, p90 and p99 of a window computed before sketches).
    percentiles_ms: tuple[float, ...] = ()


@dataclass(frozen=True)
class HourLatencies:
    """The platform's latency percentiles in the newest hourly snapshot."""

    percentiles_ms: dict[str, tuple[float, ...]]  # latency (sketch.KINDS) -> p50, p90, p95, p99
    percentile_error: float  # the bound on their relative error (derive.percentile_error)


@dataclass
class PipelineHealth:
    now: datetime
    newest_window: dict[str, datetime | None]
    windows_due: dict[tuple[str, str], int]
    windows_failing: dict[str, int]
    artifacts: dict[str, int]
    artifacts_stalled: int
    queues: dict[str, int | None]
    retries: dict[str, int]
    dead_letters: int | None  # None: not read (kept optional for readers without the table)
    beat: BeatState
    newest_hour: datetime | None = None
    organizations: list[OrganizationHour] = field(default_factory=list)
    latencies: HourLatencies | None = None
    # The oldest hour with counters; None when nothing was recorded (or all is past retention).
    first_data: datetime | None = None

    def window_lag_s(self, period: str) -> float:
        """How far the period's aggregation is behind: the age of the newest computed window's end.

        With none computed, the age of the end of the first window with data (0 while it is
        open, or when nothing was ever recorded: there is nothing to be behind on).
        """
        start = self.newest_window[period]
        length = PERIODS[period]
        if start is None:
            if self.first_data is None:
                return 0.0
            first_end = floor_window(self.first_data, period) + length
            return max(0.0, (self.now - first_end).total_seconds())
        return (self.now - (start + length)).total_seconds()


def read_beat(path: Path, now: float | None = None) -> BeatState:
    """Ages of beat's last tick and last successful send, from its heartbeat file."""
    now = time.time() if now is None else now
    try:
        beat = json.loads(path.read_text())
        started = float(beat["started_at"])
    except FileNotFoundError:
        return BeatState(None, None, f"no beat heartbeat at {path}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return BeatState(None, None, f"beat heartbeat {path} unreadable: {exc}")
    ticked = float(beat.get("ticked_at") or started)
    sent = float(beat.get("last_sent_at") or started)
    return BeatState(max(0.0, now - ticked), max(0.0, now - sent), "heartbeat read")


def windows_due(session: Session, now: datetime, hourly_h: int, daily_d: int) -> dict[tuple[str, str], int]:
    """Closed windows missing or stale, per (period, kind): sums the counter revisions of both
    horizons (0.3 s for 10,000 organizations x 7 days)."""
    due: dict[tuple[str, str], int] = {}
    for period, states in ((HOURLY, hour_states(session, now, hourly_h)), (DAILY, day_states(session, now, daily_d))):
        due[(period, "missing")] = sum(1 for s in states if s.missing)
        due[(period, "stale")] = sum(1 for s in states if s.stale)
    return due


def _windows_failing(session: Session) -> dict[str, int]:
    rows = session.execute(
        select(AggregationWindow.period_type, func.count())
        .where(AggregationWindow.failures > 0)
        .group_by(AggregationWindow.period_type)
    ).all()
    found = {period: int(n) for period, n in rows}
    return {period: found.get(period, 0) for period in PERIODS}


def _artifacts(session: Session, now: datetime) -> dict[str, int]:
    rows = session.execute(
        select(Artifact.status, func.count())
        .where(or_(
            Artifact.status.in_(WORKING_STATUSES),
            and_(Artifact.status.in_(TERMINAL_STATUSES), Artifact.updated_at >= now - TERMINAL_SPAN),
        ))
        .group_by(Artifact.status)
    ).all()
    found = {status: int(n) for status, n in rows}
    return {status: found.get(status, 0) for status in STATUSES}


def _stalled(session: Session, now: datetime, stall_timeout_s: int) -> int:
    """Artifacts in a working status that have not moved for the stall timeout (as the sweeper sees them)."""
    return int(session.scalar(
        select(func.count()).select_from(Artifact).where(
            Artifact.status.in_(WORKING_STATUSES),
            Artifact.updated_at < now - timedelta(seconds=stall_timeout_s),
        )
    ) or 0)


def _retries(session: Session) -> dict[str, int]:
    rows = session.execute(select(RetryRequest.outcome, func.count()).group_by(RetryRequest.outcome)).all()
    found = {outcome: int(n) for outcome, n in rows}
    return {
        "initiated": sum(found.values()),
        "succeeded": found.get("succeeded", 0),
        "failed": found.get("failed", 0),
    }


def dead_letter_count(session: Session) -> int:
    """Messages parked as dead letters and neither replayed nor discarded (indexed on status)."""
    from models.dead_letters import PARKED, DeadLetter

    return int(session.scalar(
        select(func.count()).select_from(DeadLetter).where(DeadLetter.status == PARKED)
    ) or 0)


def _ms(value: float | None) -> float:
    return math.nan if value is None else float(value)


def newest_hour_latencies(session: Session, newest: datetime) -> HourLatencies | None:
    """Every latency's percentiles in the newest hour, from the platform row's sketch."""
    row = session.execute(
        select(MetricsSnapshot.latency_sketch, MetricsSnapshot.coarse_percentiles).where(
            MetricsSnapshot.period_type == HOURLY, MetricsSnapshot.period_start == newest,
            MetricsSnapshot.organization_id.is_(None))
    ).one_or_none()
    if row is None:
        return None
    entries = row[0]
    return HourLatencies(
        {name: sketch.quantiles(entries, kind) for kind, name in enumerate(sketch.KINDS)},
        percentile_error({COARSE_PART: row[1]}),
    )


def newest_hour_organizations(session: Session) -> tuple[datetime | None, list[OrganizationHour]]:
    """Every organization of the newest hourly snapshot (bounded: those active in that hour)."""
    newest = session.scalar(
        select(func.max(MetricsSnapshot.period_start)).where(MetricsSnapshot.period_type == HOURLY)
    )
    if newest is None:
        return None, []
    rows = session.execute(
        select(
            MetricsSnapshot.organization_id,
            MetricsSnapshot.artifacts_received,
            MetricsSnapshot.artifacts_completed,
            MetricsSnapshot.artifacts_failed,
            MetricsSnapshot.overall_failure_rate,
            MetricsSnapshot.p95_end_to_end_latency,
            MetricsSnapshot.total_ai_cost,
            MetricsSnapshot.p50_end_to_end_latency,
            MetricsSnapshot.p90_end_to_end_latency,
            MetricsSnapshot.p99_end_to_end_latency,
        )
        .where(
            MetricsSnapshot.period_type == HOURLY,
            MetricsSnapshot.period_start == newest,
            MetricsSnapshot.organization_id.is_not(None),
        )
        .order_by(MetricsSnapshot.organization_id)
    ).all()
    return utc(newest), [
        OrganizationHour(str(org), int(rec), int(done), int(failed), float(rate), float(p95), float(cost),
                         (_ms(p50), _ms(p90), float(p95), _ms(p99)))
        for org, rec, done, failed, rate, p95, cost, p50, p90, p99 in rows
    ]


def collect(
    session: Session,
    now: datetime,
    *,
    broker_url: str | None,
    heartbeat: Path,
    hourly_horizon_hours: int,
    daily_horizon_days: int,
    stall_timeout_s: int,
    due: Callable[[Session, datetime], dict[tuple[str, str], int]] | None = None,
    organizations: bool = True,
) -> PipelineHealth:
    """Read every figure of the pipeline's health as of NOW (the due windows through DUE when given;
    without ORGANIZATIONS, not the per-organization figures of the newest hour)."""
    from voicepipe.observability.queues import QUEUE_NAMES, queue_depths

    newest_hour, per_organization = newest_hour_organizations(session) if organizations else (None, [])
    return PipelineHealth(
        now=now,
        newest_window={period: newest_computed(session, period) for period in PERIODS},
        windows_due=(due(session, now) if due is not None
                     else windows_due(session, now, hourly_horizon_hours, daily_horizon_days)),
        windows_failing=_windows_failing(session),
        artifacts=_artifacts(session, now),
        artifacts_stalled=_stalled(session, now, stall_timeout_s),
        queues=queue_depths(broker_url) if broker_url else {q: None for q in QUEUE_NAMES},
        retries=_retries(session),
        dead_letters=dead_letter_count(session),
        beat=read_beat(heartbeat, now.timestamp()),
        newest_hour=newest_hour,
        organizations=per_organization,
        latencies=newest_hour_latencies(session, newest_hour) if newest_hour is not None else None,
        first_data=first_data_hour(session),
    )


# How often the background thread reads the due windows, and the age past which a
# reader reads them itself (the thread is late or failing).
DUE_REFRESH_S = 10.0
DUE_MAX_AGE_S = 3 * DUE_REFRESH_S


class DueWindows:
    """The due windows, read every DUE_REFRESH_S by a background thread, not at each scrape."""

    def __init__(self, refresh_s: float = DUE_REFRESH_S) -> None:
        self._refresh_s = refresh_s
        self._lock = threading.Lock()
        self._reading: tuple[float, datetime, dict[tuple[str, str], int]] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, now: Callable[[], datetime]) -> None:
        """Read in the background from now on (once per process: a second start does nothing)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop = stop = threading.Event()

        def loop() -> None:
            while not stop.wait(self._refresh_s):
                try:
                    with read_only_session() as session:
                        self._read(session, now())
                except Exception as exc:  # the next reader past DUE_MAX_AGE_S reads them itself
                    log.warning("due windows not read: %s: %s", type(exc).__name__,
                                str(exc).splitlines()[0] if str(exc) else "")

        self._thread = threading.Thread(target=loop, name="due-windows", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _read(self, session: Session, now: datetime) -> dict[tuple[str, str], int]:
        from voicepipe.settings import get_settings

        settings = get_settings()
        due = windows_due(session, now, settings.hourly_horizon_hours, settings.daily_horizon_days)
        with self._lock:
            self._reading = (time.monotonic(), floor_hour(now), due)
        return due

    def __call__(self, session: Session, now: datetime) -> dict[tuple[str, str], int]:
        """The background thread's latest reading; read here when there is no thread running,
        or its reading is older than DUE_MAX_AGE_S or from another hour."""
        with self._lock:
            reading = self._reading
        running = self._thread is not None and self._thread.is_alive()
        if (running and reading is not None and reading[1] == floor_hour(now)
                and time.monotonic() - reading[0] < DUE_MAX_AGE_S):
            return reading[2]
        return self._read(session, now)


def read_only_session() -> AbstractContextManager[Session]:
    """A unit of work that refuses writes (session_scope(read_only=True)): pages and scrapes."""
    from models.session import session_scope

    return session_scope(read_only=True)


def heartbeat_file() -> Path:
    """VOICEPIPE_BEAT_HEARTBEAT_FILE, else beat's own default (VOICEPIPE_DATA_DIR/beat-heartbeat.json).

    A deployment whose beat runs elsewhere (compose: another container) shares the
    file through a volume and names it here.
    """
    import os

    from voicepipe.observability.health import heartbeat_path

    raw = os.environ.get("VOICEPIPE_BEAT_HEARTBEAT_FILE", "").strip()
    return Path(raw) if raw else heartbeat_path()


def collect_now(
    session: Session, now: datetime, due: Callable[[Session, datetime], dict[tuple[str, str], int]] | None = None
) -> PipelineHealth:
    """collect() with the process's settings (broker, horizons, stall timeout, heartbeat)."""
    from voicepipe.settings import get_settings

    settings = get_settings()
    broker = settings.broker_url
    if broker is None:
        from voicepipe.infra.embedded import redis_url, require_allowed

        require_allowed("BROKER_URL")
        broker = redis_url(settings.data_dir)
    return collect(
        session, now, broker_url=broker, heartbeat=heartbeat_file(),
        hourly_horizon_hours=settings.hourly_horizon_hours,
        daily_horizon_days=settings.daily_horizon_days,
        stall_timeout_s=settings.stall_timeout_seconds,
        due=due,
    )
