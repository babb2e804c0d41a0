"""A Prometheus scrape of `voicepipe exporter` (a real subprocess, over HTTP) at 1,000 organizations.

The database holds what a busy deployment has within the exporter's reach: counters
for 1,000 organizations over the whole daily horizon (7 days = 168,000 counter rows,
also the 72-hour hourly horizon), their window bookkeeping (a few windows missing and
stale), the newest hourly snapshot of every organization, 200,000 artifacts (most of
them completed long ago) and 5,000 retries. Goal: a scrape under 200 ms. The full run
measures again with 10,000 organizations.
"""

from __future__ import annotations

import base64
import statistics
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from functools import partial

from sqlalchemy import text

from bench.harness import Env, Result, at_two_scales, cli_server, percentile, settle_late_marks, timed
from voicepipe.observability.probe import DUE_REFRESH_S, windows_due
from voicepipe.settings import get_settings

ORGS = 1000
CREDENTIALS = "bench:bench-password"

SEED_COUNTERS = """
INSERT INTO event_counters (organization_id, hour_start, n_artifact_received, n_artifact_completed,
  n_artifact_failed, n_entity_needs_disambiguation)
SELECT 'exp-org-' || lpad(o::text, 4, '0'), h, 4, 3, 1, o % 3
FROM generate_series(:first, :orgs - 1) o,
     generate_series(CAST(:lo AS timestamptz), CAST(:hi AS timestamptz) - interval '1 hour', interval '1 hour') h
"""

# Every closed window computed from its current revision, except the two newest hours
# (missing, as before the :30 run) and one hour made stale below.
SEED_WINDOWS = """
INSERT INTO aggregation_windows (period_type, period_start, source_revision, computed_at)
SELECT 'hourly', hour_start, sum(revision), now() FROM event_counters
WHERE hour_start >= :lo AND hour_start < :hi - interval '2 hours' GROUP BY hour_start
UNION ALL
SELECT 'daily', date_trunc('day', hour_start), sum(revision), now() FROM event_counters
WHERE hour_start >= :lo AND hour_start < date_trunc('day', CAST(:hi AS timestamptz)) - interval '1 day'
GROUP BY date_trunc('day', hour_start)
ON CONFLICT (period_type, period_start) DO UPDATE SET source_revision = excluded.source_revision
"""

SEED_SNAPSHOTS = """
INSERT INTO metrics_snapshots (organization_id, period_type, period_start, period_end, artifacts_received,
  artifacts_completed, artifacts_failed, overall_failure_rate, p95_end_to_end_latency, total_ai_cost)
SELECT 'exp-org-' || lpad(o::text, 4, '0'), 'hourly', CAST(:newest AS timestamptz),
  CAST(:newest AS timestamptz) + interval '1 hour', 4, 3, 1, 0.25, 45000 + o, 0.04
FROM generate_series(0, :orgs - 1) o
ON CONFLICT DO NOTHING
"""

SEED_ARTIFACTS = """
INSERT INTO artifacts (id, organization_id, coach_id, source_channel, status, current_stage, created_at, updated_at)
SELECT gen_random_uuid(), 'exp-org-' || lpad((a % :orgs)::text, 4, '0'), 'coach', 'whatsapp_audio',
  CASE WHEN a % 100 = 0 THEN 'failed' WHEN a % 250 = 1 THEN 'processing' ELSE 'completed' END,
  CASE WHEN a % 250 = 1 THEN 'claims_extraction' END,
  now() - (a || ' seconds')::interval * 10, now() - (a || ' seconds')::interval * 10
FROM generate_series(0, :n - 1) a
"""

SEED_RETRIES = """
INSERT INTO retry_requests (id, artifact_id, stage, requested_by, attempt, outcome)
SELECT gen_random_uuid(), id, 'full_pipeline', 'staff', 1,
  CASE WHEN random() < 0.8 THEN 'succeeded' ELSE 'failed' END
FROM artifacts WHERE status = 'failed' LIMIT :n
"""


def seed(env: Env, now: datetime, orgs: int = ORGS, first: int = 0) -> None:
    """Organizations FIRST..ORGS-1 (counters, newest snapshots); artifacts and retries once."""
    hour = now.replace(minute=0, second=0, microsecond=0)
    lo, hi = hour - timedelta(days=7, hours=hour.hour), hour + timedelta(hours=1)
    with env.engine.begin() as conn:
        conn.execute(text(SEED_COUNTERS), {"orgs": orgs, "first": first, "lo": lo, "hi": hi})
        conn.execute(text(SEED_WINDOWS), {"lo": lo, "hi": hour})
        # A late event: one computed hour is stale.
        conn.execute(text("UPDATE event_counters SET revision = nextval('counter_revision_seq') "
                          "WHERE organization_id = 'exp-org-0007' AND hour_start = :h"),
                     {"h": hour - timedelta(hours=5)})
        conn.execute(text(SEED_SNAPSHOTS), {"orgs": orgs, "newest": hour - timedelta(hours=3)})
        if first == 0:
            conn.execute(text(SEED_ARTIFACTS), {"orgs": orgs, "n": 200_000})
            conn.execute(text(SEED_RETRIES), {"n": 5_000})
        for table in ("event_counters", "aggregation_windows", "metrics_snapshots", "artifacts",
                      "retry_requests"):
            conn.execute(text(f"ANALYZE {table}"))


def scrape(port: int) -> tuple[float, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={
        "Authorization": "Basic " + base64.b64encode(CREDENTIALS.encode()).decode()})
    t0 = time.perf_counter()
    with urllib.request.urlopen(request, timeout=30) as response:
        body = response.read()
    return time.perf_counter() - t0, body


def measure(env: Env, orgs: int) -> list[Result]:
    with cli_server(env, "exporter", "VOICEPIPE_EXPORTER_AUTH", CREDENTIALS, scrape) as port:
        _, body = scrape(port)
        series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
        org_series = body.count(b'organization="exp-org-')
        samples = [scrape(port)[0] for _ in range(10 if env.quick else 30)]
    p50 = statistics.median(samples)

    def due() -> None:
        with env.session() as s:
            windows_due(s, datetime.now(UTC), settings.hourly_horizon_hours, settings.daily_horizon_days)

    settings = get_settings()
    return [
        Result("exporter", f"scrape /metrics, {orgs:,} organizations (p50 of {len(samples)})", p50, "s",
               goal="< 200 ms", met=p50 < 0.200,
               extra={"series": series, "organization_series": org_series}),
        Result("exporter", f"scrape /metrics, {orgs:,} organizations, p95", percentile(samples, 0.95), "s",
               goal="< 200 ms", met=percentile(samples, 0.95) < 0.200),
        # Read off the scrape path, by the exporter's background thread every DUE_REFRESH_S.
        Result("exporter", f"due windows reading (background, every {DUE_REFRESH_S:.0f} s), {orgs:,} organizations",
               timed(due, repeat=3), "s"),
    ]


def run(env: Env) -> list[Result]:
    settle_late_marks(env)
    now = datetime.now(UTC)
    seed(env, now)
    return at_two_scales(env, ORGS, partial(measure, env), lambda orgs: seed(env, now, orgs=orgs, first=ORGS))
