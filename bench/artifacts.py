"""The dashboard's artifacts list at 1,000,000 artifacts, against a bare indexed query of the same page.

Ours is the list's data function (filters, keyset cursor, rows shaped for the page and
/api/artifacts) in one read-only transaction, as the dashboard runs it; the baseline is
one hand-written SELECT of the same page's rows with the same conditions and order, on
the same indexes, with nothing shaped. Each filter is measured on its first page and on
a page 40 pages deep (by cursor: keyset, so it costs what the first does).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text

from bench.harness import Env, Result, ratio_spread
from voicepipe.dashboard import artifacts
from voicepipe.dashboard.data import read

SEED = """
INSERT INTO artifacts (id, organization_id, coach_id, source_channel, status, failed_stage, current_stage,
  error_code, error_message, metadata, created_at, updated_at)
SELECT gen_random_uuid(), 'org-' || lpad((n % 1000)::text, 4, '0'), 'coach-' || (n % 7), 'whatsapp_audio', s.status,
  CASE WHEN s.status = 'failed' THEN s.stage END,
  CASE WHEN s.status NOT IN ('failed', 'completed') THEN s.stage END,
  CASE WHEN s.status = 'failed' THEN 'PROVIDER_TIMEOUT' END,
  CASE WHEN s.status = 'failed' THEN 'the provider did not answer in time' END,
  '{"retryAttempt": 0}', :now - (n * interval '2 seconds'),
  :now - (n * interval '2 seconds') + CASE WHEN n % 50 = 7 THEN interval '0 s' ELSE interval '3 minutes' END
FROM generate_series(1, :n) n
CROSS JOIN LATERAL (SELECT
  CASE WHEN n % 20 = 0 THEN 'failed' WHEN n % 50 = 7 THEN 'processing' WHEN n < 300 THEN 'processing'
       ELSE 'completed' END AS status,
  (ARRAY['transcription', 'claims_extraction', 'entity_resolution', 'draft_generation'])[1 + (n / 20) % 4] AS stage
) s
"""

# The same page as list_artifacts reads it: conditions, order, LIMIT page + 1.
BARE = """
SELECT id, organization_id, coach_id, created_at, updated_at, status, current_stage, failed_stage,
  (metadata ->> 'retryAttempt')::int, error_code, left(error_message, 161)
FROM artifacts WHERE {where} ORDER BY created_at DESC, id DESC LIMIT 51
"""


def _cases(now: datetime) -> list[tuple[str, dict[str, Any], str, dict[str, Any]]]:
    stall = now - timedelta(seconds=900)
    working = "status IN ('received', 'transcribing', 'transcribed', 'processing')"
    return [
        ("no filter", {}, "true", {}),
        ("failed", {"status": "failed"}, "status = 'failed'", {}),
        ("failed at draft generation", {"status": "failed", "stage": "draft_generation"},
         "status = 'failed' AND failed_stage = 'draft_generation'", {}),
        ("stalled", {"status": "stalled"}, f"{working} AND updated_at < :stall", {"stall": stall}),
        ("one organization", {"organization": "org-0042"}, "organization_id = 'org-0042'", {}),
        ("one organization, failed, last 2 days",
         {"organization": "org-0040", "status": "failed", "since": now - timedelta(days=2)},
         "status = 'failed' AND organization_id = 'org-0040' AND created_at >= :since",
         {"since": now - timedelta(days=2)}),
    ]


def run(env: Env) -> list[Result]:
    n = 100_000 if env.quick else 1_000_000
    now = datetime.now(UTC).replace(microsecond=0)
    with env.engine.begin() as conn:
        conn.execute(text(SEED), {"n": n, "now": now})
    with env.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE artifacts"))
    results = []
    for name, filters, where, params in _cases(now):
        def ours(cursor: str | None = None, filters: dict[str, Any] = filters) -> dict[str, Any]:
            return read(lambda s, _: artifacts.list_artifacts(s, now, cursor=cursor, **filters), now, sums=False)

        # A cursor 40 pages deep, found by walking (keyset: no OFFSET anywhere).
        deep, cursor = None, None
        for _ in range(40):
            cursor = ours(cursor)["next"]
            if cursor is None:
                break
            deep = cursor
        for depth, at in (("first page", None), ("page 41", deep)):
            if depth == "page 41" and at is None:
                continue
            bare_where, bare_params = where, dict(params)
            if at is not None:
                bare_where += " AND (created_at, id) < (:c_at, :c_id)"
                bare_params["c_at"], bare_params["c_id"] = artifacts.decode_cursor(at)
            sql = text(BARE.format(where=bare_where))

            def bare(sql: Any = sql, bare_params: dict[str, Any] = bare_params) -> None:
                with env.engine.connect() as conn:
                    conn.execute(sql, bare_params).all()

            def page_of(at: str | None = at) -> None:
                ours(at)

            t_ours, t_bare, spread = ratio_spread(page_of, bare, repeat=15, warmup=2)
            results.append(Result(
                "artifacts list", f"{name}, {depth}, {n:,} artifacts", t_ours, "s", baseline=t_bare,
                baseline_name="bare indexed SELECT of the same page", spread=spread,
                goal="within 2x of bare SQL", met=spread[1] >= 0.5,
            ))
    return results
