"""Event recording with counters through the batch API, against raw pipelined upserts;
and one event per Celery task against batches, through a real worker."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

from psycopg.types.json import Jsonb
from sqlalchemy import func, select, text

from bench import data
from bench.harness import Env, Result
from models import PipelineEvent
from tests.helpers import celery_cmd, producer, redis_client, service_env, spawn, wait_for
from voicepipe.events.recording import record_events
from voicepipe.windows import hour_label

BATCH = 1000


def run(env: Env) -> list[Result]:
    n = 20_000 if env.quick else 100_000
    # 10 days back: clear of the other benchmarks' windows (they share the database).
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=10)
    evs = data.events(n, start, timedelta(hours=24), orgs=1000, seed=11)

    t0 = time.perf_counter()
    for i in range(0, n, BATCH):
        with env.session() as s:
            record_events(s, evs[i : i + BATCH])
            s.commit()
    ours = n / (time.perf_counter() - t0)

    # Baseline: the same rows, pipelined INSERT ... ON CONFLICT DO NOTHING into a copy of
    # the events table: the cost of storing events with no counters and no validation.
    with env.engine.begin() as conn:
        conn.execute(text("CREATE TABLE bench_raw_events (LIKE pipeline_events INCLUDING ALL)"))
    rows = [
        (uuid.uuid4(), e["event_type"], None, e["organization_id"], None, None,
         datetime.fromisoformat(e["occurred_at"]), hour_label(datetime.fromisoformat(e["occurred_at"])),
         e.get("duration_ms"), None, None, Jsonb(e["metadata"]))
        for e in evs
    ]
    raw_conn = env.engine.raw_connection()
    try:
        t0 = time.perf_counter()
        cur = raw_conn.cursor()
        for i in range(0, n, BATCH):
            cur.executemany(
                "INSERT INTO bench_raw_events (id, event_type, artifact_id, organization_id, coach_id, stage,"
                " occurred_at, time_window, duration_ms, error_code, error_message, metadata)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
                rows[i : i + BATCH],
            )
            raw_conn.commit()
        raw = n / (time.perf_counter() - t0)
    finally:
        raw_conn.close()
    results = [Result(
        "recording", f"batch API, {n:,} events in batches of {BATCH}", ours, "events/s",
        baseline=raw, baseline_name="raw pipelined upserts", ratio=ours / raw,
        goal=">= 10k/s and >= 40% of raw", met=ours >= 10_000 and ours / raw >= 0.4,
    )]
    results.extend(_through_worker(env, start))
    return results


def _through_worker(env: Env, start: datetime) -> list[Result]:
    """One event per task against 1,000-event batch tasks, through one real worker process."""
    n_single = 1000 if env.quick else 3000
    n_batched = 20_000 if env.quick else 50_000
    redis_client(env.broker_url).flushdb()
    proc = spawn(celery_cmd("worker", "-Q", "pipeline", "-c", "1", "-n", "bench@test",
                            "--without-mingle", "--without-gossip", "-l", "WARNING"),
                 service_env(env.database_url, env.broker_url, env.scratch / "w"),
                 env.scratch / "bench-worker.log")
    app = producer(env.broker_url)
    try:
        wait_for(lambda: app.control.ping(destination=["bench@test"], timeout=0.5), timeout=60)

        def count() -> int:
            with env.session() as s:
                return int(s.scalar(select(func.count()).select_from(PipelineEvent)) or 0)

        base = count()
        singles = data.events(n_single, start, timedelta(hours=1), orgs=100, seed=21)
        t0 = time.perf_counter()
        for e in singles:
            app.send_task("voicepipe.events.record", kwargs=e, queue="pipeline")
        wait_for(lambda: count() >= base + n_single, timeout=600, interval=0.2)
        single_rate = n_single / (time.perf_counter() - t0)

        base = count()
        batched = data.events(n_batched, start, timedelta(hours=1), orgs=100, seed=22)
        t0 = time.perf_counter()
        for i in range(0, n_batched, BATCH):
            app.send_task("voicepipe.events.record_batch", kwargs={"events": batched[i : i + BATCH]},
                          queue="pipeline")
        wait_for(lambda: count() >= base + n_batched, timeout=600, interval=0.2)
        batch_rate = n_batched / (time.perf_counter() - t0)
    finally:
        app.close()
        proc.stop()
    return [Result(
        "recording", f"through 1 worker process: 1 event per task ({n_single:,} tasks)", single_rate,
        "events/s", baseline=batch_rate, baseline_name=f"{BATCH}-event batch tasks",
        ratio=single_rate / batch_rate, goal="(why producers batch)",
    )]
