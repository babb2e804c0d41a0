"""The built-in health checks: conditions of one health reading, stored as deduplicated alerts.

The same conditions as deploy/prometheus/alerts.yml, for teams without Prometheus,
plus the reference's disambiguation backlog and inactivity checks. Each condition
is keyed by (kind, organization); an open alert (resolved_at NULL) exists at most
once per key (a partial unique index), is refreshed by every evaluation that still
finds it, and is closed by the first evaluation that does not. Acknowledging keeps
it open: it says someone is on it, not that it is over.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from models.alerts import Alert
from models.events import EventCounter
from voicepipe.alerts.thresholds import Thresholds, load_thresholds
from voicepipe.errors import InvalidInput, VoicepipeError
from voicepipe.metrics.bookkeeping import DAILY, HOURLY
from voicepipe.observability.probe import PipelineHealth

log = logging.getLogger(__name__)

# pg_advisory_xact_lock key: evaluations run one at a time (two beats, a manual run
# and the beat's run), so "is it open?" and "open it" cannot interleave.
_EVALUATION_LOCK = 0x76700A1E
# Resolved alerts are history; each evaluation deletes (a bounded batch of) those older
# than this, so a flapping condition cannot grow the table without end.
RESOLVED_RETENTION = timedelta(days=90)
_DELETE_BATCH = 1000

KINDS: tuple[str, ...] = (
    "aggregation_lag_hourly", "aggregation_lag_daily", "windows_due_hourly", "windows_due_daily",
    "windows_failing", "failure_rate", "latency_p95", "queue_depth", "stalled_artifacts",
    "disambiguation_backlog", "inactivity", "beat_silent", "dead_letters",
)


class AlertNotFound(VoicepipeError):
    """No alert has the given id."""


@dataclass(frozen=True)
class Finding:
    kind: str
    organization_id: str | None
    message: str
    value: float
    threshold: float


@dataclass
class EvaluationReport:
    findings: list[Finding] = field(default_factory=list)
    opened: list[int] = field(default_factory=list)
    resolved: list[int] = field(default_factory=list)
    evaluated: set[str] = field(default_factory=set)

    def to_json(self) -> dict[str, Any]:
        return {
            "conditions": [f"{f.kind}:{f.organization_id or '-'}" for f in self.findings],
            "opened": self.opened,
            "resolved": self.resolved,
        }


def _seconds(value: float) -> str:
    return "never" if value == float("inf") else f"{value / 3600:.1f} h"


_UNIT = {HOURLY: "hour", DAILY: "day"}


def _utc(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%d %H:%M UTC")


def lag_sentence(health: PipelineHealth, period: str, lag: float, limit: float) -> str:
    newest = health.newest_window[period]
    if newest is None:
        since = _utc(health.first_data) if health.first_data else "?"
        return (f"No {period} window has been aggregated since the data began at {since}: the first one closed "
                f"{_seconds(lag)} ago (alert past {_seconds(limit)}).")
    return (f"The {period} aggregation is {_seconds(lag)} behind: the newest {_UNIT[period]} aggregated began at "
            f"{_utc(newest)} (alert past {_seconds(limit)}).")


def due_sentence(period: str, missing: int, stale: int, limit: float) -> str:
    unit = _UNIT[period]
    return (f"{missing} closed {unit}s of the catch-up horizon were never aggregated and {stale} changed after "
            f"they were (alert past {limit:g}); `voicepipe status` lists them.")


def health_findings(health: PipelineHealth, th: Thresholds) -> tuple[list[Finding], set[str]]:
    """Conditions visible in one health reading, and the kinds it could evaluate."""
    found: list[Finding] = []
    evaluated = {"aggregation_lag_hourly", "aggregation_lag_daily", "windows_due_hourly", "windows_due_daily",
                 "windows_failing", "failure_rate", "latency_p95", "stalled_artifacts", "beat_silent"}
    for period, limit in ((HOURLY, th.hourly_lag_seconds), (DAILY, th.daily_lag_seconds)):
        lag = health.window_lag_s(period)
        if lag > limit:
            found.append(Finding(f"aggregation_lag_{period}", None, lag_sentence(health, period, lag, limit),
                                 lag, limit))
    for period, limit in ((HOURLY, th.hourly_windows_due), (DAILY, th.daily_windows_due)):
        missing, stale = health.windows_due[(period, "missing")], health.windows_due[(period, "stale")]
        if missing + stale > limit:
            found.append(Finding(f"windows_due_{period}", None, due_sentence(period, missing, stale, limit),
                                 missing + stale, limit))
    failing = sum(health.windows_failing.values())
    if failing > th.windows_failing:
        found.append(Finding(
            "windows_failing", None,
            f"{failing} windows failing to aggregate "
            f"({', '.join(f'{p} {n}' for p, n in health.windows_failing.items())}); "
            "see `voicepipe status`", failing, th.windows_failing))
    hour = health.newest_hour.isoformat() if health.newest_hour else "?"
    for org in health.organizations:
        finished = org.artifacts_completed + org.artifacts_failed
        if finished >= th.min_artifacts and org.failure_rate > th.failure_rate:
            found.append(Finding(
                "failure_rate", org.organization_id,
                f"{org.artifacts_failed} of {finished} artifacts failed in hour {hour} "
                f"(rate {org.failure_rate:.2f}, limit {th.failure_rate:g})", org.failure_rate, th.failure_rate))
        p95_s = org.p95_end_to_end_latency_ms / 1000.0
        if finished >= th.min_artifacts and p95_s > th.p95_latency_seconds:
            found.append(Finding(
                "latency_p95", org.organization_id,
                f"p95 end-to-end latency {p95_s:.0f} s in hour {hour} (limit {th.p95_latency_seconds:g} s)",
                p95_s, th.p95_latency_seconds))
    if all(n is not None for n in health.queues.values()):
        evaluated.add("queue_depth")
        deep = {q: n for q, n in health.queues.items() if n is not None and n > th.queue_depth}
        if deep:
            found.append(Finding(
                "queue_depth", None,
                "queues backing up: " + ", ".join(f"{q} {n}" for q, n in deep.items())
                + f" messages (limit {th.queue_depth:g})", max(deep.values()), th.queue_depth))
    if health.artifacts_stalled > th.stalled_artifacts:
        found.append(Finding(
            "stalled_artifacts", None,
            f"{health.artifacts_stalled} artifacts stalled in a working status (limit {th.stalled_artifacts:g})",
            health.artifacts_stalled, th.stalled_artifacts))
    silence = health.beat.silence_s
    if silence > th.beat_silence_seconds:
        detail = health.beat.reason if silence == float("inf") else f"silent for {silence:.0f} s"
        found.append(Finding(
            "beat_silent", None,
            f"beat {detail} (limit {th.beat_silence_seconds:g} s): scheduled work is not being sent",
            silence, th.beat_silence_seconds))
    if health.dead_letters is not None:
        evaluated.add("dead_letters")
        if health.dead_letters > th.dead_letters:
            found.append(Finding(
                "dead_letters", None,
                f"{health.dead_letters} messages parked as dead letters; see `voicepipe dead-letters list`",
                health.dead_letters, th.dead_letters))
    return found, evaluated


def counter_findings(session: Session, now: datetime, th: Thresholds) -> tuple[list[Finding], set[str]]:
    """Disambiguation backlog per organization and platform inactivity, from the hourly counters."""
    found: list[Finding] = []
    since = now - timedelta(hours=24)
    rows = session.execute(
        select(EventCounter.organization_id, func.sum(EventCounter.n_entity_needs_disambiguation))
        .where(EventCounter.hour_start >= since, EventCounter.organization_id.is_not(None))
        .group_by(EventCounter.organization_id)
        .having(func.sum(EventCounter.n_entity_needs_disambiguation) > th.disambiguation_backlog)
    ).all()
    for org, n in sorted(rows):
        found.append(Finding(
            "disambiguation_backlog", org,
            f"{n} artifacts needed entity disambiguation in the last 24 h "
            f"(limit {th.disambiguation_backlog:g})", float(n), th.disambiguation_backlog))
    evaluated = {"disambiguation_backlog"}
    if th.inactivity_hours > 0:
        evaluated.add("inactivity")
        since = now - timedelta(hours=th.inactivity_hours)
        received = session.scalar(
            select(func.coalesce(func.sum(EventCounter.n_artifact_received), 0))
            .where(EventCounter.hour_start >= since.replace(minute=0, second=0, microsecond=0))
        )
        if not received:
            found.append(Finding(
                "inactivity", None,
                f"no artifact received in the last {th.inactivity_hours:g} h", th.inactivity_hours,
                th.inactivity_hours))
    return found, evaluated


def store(session: Session, now: datetime, found: list[Finding], evaluated: set[str]) -> EvaluationReport:
    """Open or refresh an alert per finding; close open alerts of evaluated kinds no longer found."""
    session.execute(select(func.pg_advisory_xact_lock(_EVALUATION_LOCK)))
    report = EvaluationReport(findings=found, evaluated=evaluated)
    for f in found:
        stmt = pg_insert(Alert).values(
            kind=f.kind, organization_id=f.organization_id, message=f.message, value=f.value,
            threshold=f.threshold, opened_at=now, last_seen_at=now, evaluations=1,
        )
        row = session.execute(
            stmt.on_conflict_do_update(
                index_elements=[Alert.kind, Alert.organization_id],
                index_where=Alert.resolved_at.is_(None),
                set_={
                    "message": stmt.excluded.message,
                    "value": stmt.excluded.value,
                    "threshold": stmt.excluded.threshold,
                    "last_seen_at": stmt.excluded.last_seen_at,
                    "evaluations": Alert.evaluations + 1,
                },
            ).returning(Alert.id, Alert.evaluations)
        ).one()
        if row.evaluations == 1:
            report.opened.append(int(row.id))
            log.warning("alert opened id=%s kind=%s organization=%s: %s", row.id, f.kind, f.organization_id,
                        f.message)
    keys = [(f.kind, f.organization_id or "") for f in found]
    close = update(Alert).where(Alert.resolved_at.is_(None), Alert.kind.in_(sorted(evaluated)))
    if keys:
        close = close.where(tuple_(Alert.kind, func.coalesce(Alert.organization_id, "")).not_in(keys))
    for alert_id, kind, org in session.execute(
        close.values(resolved_at=now).returning(Alert.id, Alert.kind, Alert.organization_id)
    ).all():
        report.resolved.append(int(alert_id))
        log.info("alert resolved id=%s kind=%s organization=%s", alert_id, kind, org)
    old = select(Alert.id).where(Alert.resolved_at < now - RESOLVED_RETENTION).limit(_DELETE_BATCH)
    session.execute(delete(Alert).where(Alert.id.in_(old.scalar_subquery())))
    return report


def evaluate(session: Session, now: datetime, health: PipelineHealth,
             thresholds: Thresholds | None = None) -> EvaluationReport:
    """Every condition of HEALTH and the counters, stored as alerts (helpers never commit)."""
    th = thresholds or load_thresholds()
    found, evaluated = health_findings(health, th)
    more, more_evaluated = counter_findings(session, now, th)
    return store(session, now, found + more, evaluated | more_evaluated)


def open_alerts(session: Session, include_resolved: bool = False, limit: int = 200) -> list[Alert]:
    """Open alerts, oldest first; with include_resolved, the newest LIMIT alerts of any state."""
    query = select(Alert)
    if include_resolved:
        return list(session.scalars(query.order_by(Alert.opened_at.desc(), Alert.id.desc()).limit(limit)))
    return list(session.scalars(query.where(Alert.resolved_at.is_(None)).order_by(Alert.opened_at, Alert.id)))


def acknowledge(session: Session, alert_id: int, by: str, now: datetime) -> Alert:
    """Record who acknowledged an alert; a second acknowledgement keeps the first."""
    by = by.strip()
    if not by:
        raise InvalidInput.field("--by", "must name who acknowledges")
    alert = session.get(Alert, alert_id, with_for_update=True)
    if alert is None:
        raise AlertNotFound(f"no alert has id {alert_id}")
    if alert.acknowledged_at is None:
        alert.acknowledged_at = now
        alert.acknowledged_by = by
    return alert
