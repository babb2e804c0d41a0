"""Event recording with counters through the batch API, against raw pipelined upserts;
and one event per Celery task against batches, through a real worker."""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime, timedelta

from psycopg.types.json import Jsonb
from sqlalchemy import func, select, text

from bench import data
from bench.harness import Env, Result
from models import PipelineEvent
from tests.support.helpers import (
    celery_cmd,
    is_amqp,
    new_vhost,
    producer,
    rabbitmqctl,
    redis_client,
    service_env,
    spawn,
    wait_for,
    with_vhost,
)
from voicepipe.events.recording import record_events
from voicepipe.windows import hour_label
from worker.routes import TASK_QUEUES

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
    """One event per task, as producers send them, through one worker process (-c 1).

    Three ways over the same kind of events: the batched single-event path
    (worker/batching.py), the per-message path it replaced (bench/unbatched_app.py: one
    task, one transaction per event), and 1,000-event batch tasks. The messages are
    queued before the worker starts and the rate is taken from the first committed event
    to the last, so neither the producer's sending nor the worker's start is counted.
    """
    n_alone = 2000 if env.quick else 10_000
    n_single = 20_000 if env.quick else 100_000
    n_batched = 20_000 if env.quick else 50_000
    batched_rate = _drain(env, "worker", "batched",
                          [("voicepipe.events.record", e) for e in
                           data.events(n_single, start, timedelta(hours=1), orgs=100, seed=23)])
    alone_rate = _drain(env, "bench.unbatched_app", "alone",
                        [("voicepipe.events.record", e) for e in
                         data.events(n_alone, start, timedelta(hours=1), orgs=100, seed=21)])
    batched = data.events(n_batched, start, timedelta(hours=1), orgs=100, seed=22)
    batch_task_rate = _drain(env, "worker", "batch-tasks",
                             [("voicepipe.events.record_batch", {"events": batched[i : i + BATCH]})
                              for i in range(0, n_batched, BATCH)], events=n_batched)
    latencies = _latency_alone(env)
    p50 = sorted(latencies)[len(latencies) // 2]
    results = []
    amqp = os.environ.get("BENCH_AMQP_URL")
    if amqp:
        # The same two paths on RabbitMQ (a fresh vhost): no Redis ack emulation per message.
        vhost = new_vhost("vp_bench")
        url = with_vhost(amqp, vhost)
        try:
            rabbit_batched = _drain(env, "worker", "rabbit-batched",
                                    [("voicepipe.events.record", e) for e in
                                     data.events(n_single, start, timedelta(hours=1), orgs=100, seed=24)],
                                    broker_url=url)
            rabbit_alone = _drain(env, "bench.unbatched_app", "rabbit-alone",
                                  [("voicepipe.events.record", e) for e in
                                   data.events(n_alone, start, timedelta(hours=1), orgs=100, seed=25)],
                                  broker_url=url)
        finally:
            rabbitmqctl("delete_vhost", vhost)
        results.append(Result(
            "recording", f"as above, on RabbitMQ ({n_single:,} tasks)", rabbit_batched, "events/s",
            baseline=rabbit_alone, baseline_name=f"1 event per task, one transaction each ({n_alone:,} tasks)",
            ratio=rabbit_batched / rabbit_alone, goal=">= 3,000/s", met=rabbit_batched >= 3000,
        ))
    return [
        Result(
            "recording", f"through 1 worker process: 1 event per task, batched in the worker ({n_single:,} tasks)",
            batched_rate, "events/s", baseline=alone_rate,
            baseline_name=f"1 event per task, one transaction each ({n_alone:,} tasks)",
            ratio=batched_rate / alone_rate, goal=">= 3,000/s", met=batched_rate >= 3000,
            extra={"1000-event batch tasks (events/s)": round(batch_task_rate)},
        ),
        Result(
            "recording", f"one event alone reaches its counter (idle worker, p50 of {len(latencies)})",
            p50 * 1000, "ms", goal="< 1 s", met=max(latencies) < 1.0,
            extra={"max_ms": round(max(latencies) * 1000, 1)},
        ),
        *results,
    ]


def _event_rows(env: Env) -> int:
    with env.session() as s:
        return int(s.scalar(select(func.count()).select_from(PipelineEvent)) or 0)


def _drain(env: Env, app_module: str, name: str, messages: list[tuple[str, dict]], events: int | None = None,
           broker_url: str | None = None) -> float:
    """Queue the messages, start a worker, return events/s from its first commit to its last."""
    n = events if events is not None else len(messages)
    broker = broker_url or env.broker_url
    if not is_amqp(broker):
        redis_client(broker).flushdb()
    app = producer(broker)
    try:
        for task, kwargs in messages:
            app.send_task(task, kwargs=kwargs, queue=TASK_QUEUES[task])
    finally:
        app.close()
    base = _event_rows(env)
    # Each task on its own route, as deployed: single events on `events`, batches on `pipeline`.
    queues = ",".join(sorted({TASK_QUEUES[task] for task, _ in messages}))
    args = celery_cmd("worker", "-Q", queues, "-c", "1", "-n", f"bench-{name}@test",
                      "--without-mingle", "--without-gossip", "-l", "WARNING")
    args[args.index("-A") + 1] = app_module
    proc = spawn(args, service_env(env.database_url, broker, env.scratch / "w"),
                 env.scratch / f"bench-worker-{name}.log")
    try:
        first = wait_for(lambda: (c := _event_rows(env) - base) > 0 and (c, time.perf_counter()),
                         timeout=120, interval=0.05)
        wait_for(lambda: _event_rows(env) - base >= n, timeout=900, interval=0.05)
        last = time.perf_counter()
    finally:
        proc.stop()
    done_at_first, t_first = first
    return (n - done_at_first) / (last - t_first)


def _latency_alone(env: Env, probes: int = 20) -> list[float]:
    """Seconds from sending one event to an idle batched worker until its counter row is committed."""
    redis_client(env.broker_url).flushdb()
    proc = spawn(celery_cmd("worker", "-Q", "events", "-c", "1", "-n", "bench-latency@test",
                            "--without-mingle", "--without-gossip", "-l", "WARNING"),
                 service_env(env.database_url, env.broker_url, env.scratch / "w"),
                 env.scratch / "bench-worker-latency.log")
    app = producer(env.broker_url)
    out = []
    try:
        wait_for(lambda: app.control.ping(destination=["bench-latency@test"], timeout=0.5), timeout=60)
        with env.engine.connect() as conn:
            for i in range(probes):
                org = f"latency-probe-{uuid.uuid4().hex[:8]}"
                t0 = time.perf_counter()
                app.send_task("voicepipe.events.record", queue="events", kwargs={
                    "event_type": "artifact_received", "organization_id": org,
                    "occurred_at": datetime.now(UTC).isoformat()})

                def arrived(org: str = org) -> bool:
                    conn.rollback()
                    return conn.execute(text("SELECT 1 FROM event_counters WHERE organization_id = :o"),
                                        {"o": org}).first() is not None

                wait_for(arrived, timeout=30, interval=0.002)
                out.append(time.perf_counter() - t0)
                time.sleep(0.3 + 0.1 * (i % 3))  # idle between events: each one is alone
    finally:
        app.close()
        proc.stop()
    return out
