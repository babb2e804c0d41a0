"""Event recording with counters, each goal a ratio to a baseline measured in the same run.

The batch API against raw pipelined upserts of the same rows; one event per Celery task,
through a real worker, against the smallest Celery task on the same worker and against
celery-batches writing with the same batch writer, beside the broker's delivery alone (its
ceiling); and how soon one event alone reaches its counter.
"""

from __future__ import annotations

import importlib.util
import os
import re
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from psycopg.types.json import Jsonb
from sqlalchemy import func, select, text

from bench import data
from bench.harness import Env, Result, beside_goal, ratio_spread, spread_of
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
from voicepipe.events.recording import foreign_artifact_events, parse_events, record_events, record_parsed
from voicepipe.infra.gcpause import cyclic_gc_paused
from voicepipe.windows import hour_label
from worker.routes import EVENTS_QUEUE, TASK_QUEUES

BATCH = 1000
# The batch API's goal: at least this share of the raw baseline's rate.
BATCH_API_SHARE = 0.5
# Fresh (ours, baseline) pairs whose ratios make each goal's spread (harness.ratio_spread).
REPEAT = 3
# The worker goals' multiples.
OVER_SMALLEST_TASK = 6.0
EVENT_TASK = "voicepipe.events.record"
NOOP_TASK = "bench.noop"  # bench/smallest_app.py
BATCHES_TASK = "bench.celery_batches.record"  # bench/batches_app.py
DELIVERED_TASK = "bench.delivered"  # bench/delivery_app.py

RAW_INSERT = (
    "INSERT INTO bench_raw_events (id, event_type, artifact_id, organization_id, coach_id, stage,"
    " occurred_at, time_window, duration_ms, error_code, error_message, metadata)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING"
)


def run(env: Env) -> list[Result]:
    n = 20_000 if env.quick else 100_000
    # 10 days back: clear of the other benchmarks' windows (they share the database).
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=10)
    # One slice of N fresh events per measurement (a warm-up pair, then REPEAT pairs): each
    # pair writes the same rows both ways, and no slice's ids were seen before.
    evs = data.events(n * (REPEAT + 1), start, timedelta(hours=24), orgs=1000, seed=11)
    slices = [evs[i : i + n] for i in range(0, len(evs), n)]
    # The same rows again under other ids, validated beforehand: the batch API's writes
    # alone against the same baseline, what is left if validation cost nothing.
    checked = [[event for i in range(0, n, BATCH) for event in parse_events(
        [{**e, "event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, e["event_id"]))} for e in part[i : i + BATCH]])]
        for part in slices]

    # Baseline: the same rows, pipelined INSERT ... ON CONFLICT DO NOTHING into a copy of
    # the events table: the cost of storing events with no counters and no validation.
    with env.engine.begin() as conn:
        conn.execute(text("CREATE TABLE bench_raw_events (LIKE pipeline_events INCLUDING ALL)"))
    raw_slices = [[
        (uuid.uuid4(), e["event_type"], None, e["organization_id"], None, None,
         datetime.fromisoformat(e["occurred_at"]), hour_label(datetime.fromisoformat(e["occurred_at"])),
         e.get("duration_ms"), None, None, Jsonb(e["metadata"]))
        for e in part] for part in slices]
    ours_next, raw_next = iter(slices), iter(raw_slices)

    def ours() -> None:
        part = next(ours_next)
        for i in range(0, n, BATCH):
            with env.session() as s:
                record_events(s, part[i : i + BATCH])
                s.commit()

    raw_conn = env.engine.raw_connection()

    def raw() -> None:
        part = next(raw_next)
        cur = raw_conn.cursor()
        for i in range(0, n, BATCH):
            cur.executemany(RAW_INSERT, part[i : i + BATCH])
            raw_conn.commit()

    checked_next = iter(checked)

    def writes_alone() -> None:
        part = next(checked_next)
        for i in range(0, n, BATCH):
            # As record_events runs them: the cyclic collector paused.
            with env.session() as s, cyclic_gc_paused():
                batch = part[i : i + BATCH]
                assert not foreign_artifact_events(s, batch)
                record_parsed(s, batch)
                s.commit()

    try:
        t_ours, t_raw, spread = ratio_spread(ours, raw, repeat=REPEAT, warmup=1)
        raw_next = iter(_fresh_ids(raw_slices))
        t_alone, t_raw2, alone = ratio_spread(writes_alone, raw, repeat=REPEAT, warmup=1)
    finally:
        raw_conn.close()
    results = [Result(
        "recording", f"batch API, {n:,} events in batches of {BATCH} (median of {REPEAT} fresh pairs)",
        n / t_ours, "events/s", baseline=n / t_raw, baseline_name="raw pipelined upserts of the same rows",
        goal=f">= {BATCH_API_SHARE:g}x raw upserts", met=spread[1] >= BATCH_API_SHARE, spread=spread,
    ), Result(
        # What validation costs, not a limit: these are our own writes, which other code could beat.
        "recording", f"batch API with validation free: the same batches checked beforehand, their writes alone "
        f"(median of {REPEAT} fresh pairs)",
        n / t_alone, "events/s", baseline=n / t_raw2, baseline_name="raw pipelined upserts of the same rows",
        goal="", met=None, spread=alone,
    )]
    results.extend(_through_worker(env, start))
    return results


def _fresh_ids(slices: list[list[tuple[Any, ...]]]) -> list[list[tuple[Any, ...]]]:
    """The raw baseline's rows under new ids (the first column), for another set of pairs."""
    return [[(uuid.uuid4(), *row[1:]) for row in part] for part in slices]


def _single(n: int, start: datetime, seed: int, task: str = EVENT_TASK) -> list[tuple[str, dict[str, Any]]]:
    """N single-event messages of fresh events (one seed, one set of ids) for TASK."""
    return [(task, e) for e in data.events(n, start, timedelta(hours=1), orgs=100, seed=seed)]


def _celery_batches() -> str | None:
    """celery-batches' version if it can be imported here (and so by the bench's workers), else None."""
    if importlib.util.find_spec("celery_batches") is None:
        return None
    try:
        return version("celery-batches")
    except PackageNotFoundError:
        return "?"


def _through_worker(env: Env, start: datetime) -> list[Result]:
    """One event per task, as producers send them, through one worker process (-c 1).

    The batched single-event path (worker/batching.py) against three baselines drained
    the same way in the same run: the smallest Celery task (bench/smallest_app.py: a
    no-op taking the same messages, on the same worker configuration), celery-batches
    (bench/batches_app.py: the same messages batched by the library, each flush written
    with the same batch writer), and the broker's delivery alone (bench/delivery_app.py:
    the ceiling of any strategy on this broker). Each repetition drains all four, in turn,
    over fresh events. Also measured once, for the record: the per-message path batching replaced
    (bench/unbatched_app.py: one task, one transaction per event) and 1,000-event batch
    tasks. The messages are queued before the worker starts and the rate is taken from
    the first completed message to the last, so neither the producer's sending nor the
    worker's start is counted.
    """
    # Small in --quick: on 2 cores a drain runs at a few hundred events/s, and sending
    # (~1 ms a message) costs about as much again.
    n_single = 4000 if env.quick else 10_000
    n_noop = 1500 if env.quick else 3_000
    n_alone = 1000 if env.quick else 2_000
    n_batched = 20_000 if env.quick else 50_000
    batches_version = _celery_batches()
    ours: list[float] = []
    smallest: list[float] = []
    delivery: list[float] = []
    lib: list[float] = []
    lib_error = ""
    # Each path: the rates it adds to, its worker's app, its task, its seeds, its messages, the rows it leaves.
    paths = {
        "batched": (ours, "worker", EVENT_TASK, 1100, n_single, None),
        "smallest": (smallest, "bench.smallest_app", NOOP_TASK, 1200, n_noop, 0),
        "celery-batches": (lib, "bench.batches_app", BATCHES_TASK, 1300, n_single, None),
        "delivery": (delivery, "bench.delivery_app", DELIVERED_TASK, 1400, n_single, 0),
    }
    for rep in range(REPEAT):
        # In turn forwards and backwards: what the machine does over these minutes (autovacuum
        # after the batch API's writes, a checkpoint) falls on each path alike. All four are
        # counted alike, by the broker's acknowledgements (the no-op and the delivery leave no
        # row); the two that record are checked to have stored every event.
        for name in list(paths) if rep % 2 == 0 else list(paths)[::-1]:
            rates, app_module, task, seed, n, rows = paths[name]
            if name == "celery-batches" and (batches_version is None or lib_error):
                continue
            try:
                rates.append(_drain(env, app_module, f"{name}-{rep}", _single(n, start, seed=seed + rep, task=task),
                                    queue=EVENTS_QUEUE, by_acks=True, rows=rows,
                                    timeout=120 if name == "celery-batches" else 900))
            except AssertionError as exc:
                if name != "celery-batches":
                    raise
                lib_error = _last_error(env, f"{name}-{rep}") or str(exc)[:200]  # say why, measure nothing
    alone_rate = _drain(env, "bench.unbatched_app", "alone", _single(n_alone, start, seed=21))
    batched = data.events(n_batched, start, timedelta(hours=1), orgs=100, seed=22)
    batch_task_rate = _drain(env, "worker", "batch-tasks",
                             [("voicepipe.events.record_batch", {"events": batched[i : i + BATCH]})
                              for i in range(0, n_batched, BATCH)], events=n_batched)
    latencies = _latency_alone(env)
    p50 = sorted(latencies)[len(latencies) // 2]

    over_smallest = spread_of([o / s for o, s in zip(ours, smallest, strict=True)])
    # The broker's delivery alone, against the same no-op: no strategy beats it on this broker.
    delivery_limit = spread_of([d / s for d, s in zip(delivery, smallest, strict=True)])[1]
    results = [
        Result(
            "recording", f"through 1 worker process: 1 event per task, batched in the worker ({n_single:,} tasks, "
            f"median of {REPEAT})",
            _median(ours), "events/s", baseline=_median(smallest),
            baseline_name=f"smallest Celery task: a no-op taking the same messages, same worker ({n_noop:,} tasks)",
            goal=f">= {OVER_SMALLEST_TASK:g}x smallest task",
            met=over_smallest[1] >= OVER_SMALLEST_TASK, spread=over_smallest,
            limit=f"the broker's delivery alone, {beside_goal(delivery_limit, OVER_SMALLEST_TASK)}x",
            limit_meets_goal=delivery_limit >= OVER_SMALLEST_TASK,
            extra={f"1 event per task, one transaction each ({n_alone:,} tasks, events/s)": round(alone_rate),
                   "1000-event batch tasks (events/s)": round(batch_task_rate),
                   "ours (events/s)": [round(x) for x in ours],
                   "smallest task (tasks/s)": [round(x) for x in smallest]},
        ),
        _against_celery_batches(ours, lib, n_single, REPEAT, batches_version, lib_error),
        _delivery_alone(ours, smallest, delivery, n_single),
        Result(
            "recording", f"one event alone reaches its counter (idle worker, p50 of {len(latencies)})",
            p50 * 1000, "ms", goal="< 1 s", met=max(latencies) < 1.0,
            extra={"max_ms": round(max(latencies) * 1000, 1)},
        ),
    ]
    amqp = os.environ.get("BENCH_AMQP_URL")
    if amqp:
        # The same two paths on RabbitMQ (a fresh vhost): no Redis ack emulation per message.
        vhost = new_vhost("vp_bench")
        url = with_vhost(amqp, vhost)
        try:
            rabbit_batched = _drain(env, "worker", "rabbit-batched", _single(n_single, start, seed=24),
                                    broker_url=url)
            rabbit_alone = _drain(env, "bench.unbatched_app", "rabbit-alone", _single(n_alone, start, seed=25),
                                  broker_url=url)
        finally:
            rabbitmqctl("delete_vhost", vhost)
        results.append(Result(
            "recording", f"as above, on RabbitMQ ({n_single:,} tasks)", rabbit_batched, "events/s",
            baseline=rabbit_alone, baseline_name=f"1 event per task, one transaction each ({n_alone:,} tasks)",
            ratio=rabbit_batched / rabbit_alone, goal="", met=None,
        ))
    return results


def _against_celery_batches(ours: list[float], lib: list[float], n: int, repeat: int, lib_version: str | None,
                            error: str) -> Result:
    case = f"through 1 worker process: 1 event per task, batched in the worker, against celery-batches ({n:,} tasks"
    goal = "ahead of celery-batches (> 1x)"
    if lib_version is None or error or not lib:
        why = (f"celery-batches {lib_version} failed: {error}" if lib_version is not None else
               "celery-batches not installed: its latest release (0.11) declares celery<5.7, so install it "
               "beside celery 5.7 without its dependencies: pip install --no-deps celery-batches==0.11")
        return Result("recording", f"{case}): NOT MEASURED, {why}", _median(ours), "events/s", goal=goal,
                      extra={"celery-batches": why})
    against = spread_of([o / b for o, b in zip(ours, lib, strict=True)])
    return Result(
        "recording", f"{case}, median of {repeat})", _median(ours), "events/s", baseline=_median(lib),
        baseline_name=f"celery-batches {lib_version}, same messages, flushes written with record_events",
        goal=goal, met=against[1] > 1.0, spread=against,
        extra={"celery-batches (events/s)": [round(x) for x in lib],
               "celery-batches declares": "celery<5.7,>=5.0 (installed beside celery 5.7 without its dependencies)"},
    )


def _delivery_alone(ours: list[float], smallest: list[float], delivery: list[float], n: int) -> Result:
    """The transport's ceiling for one event per task: how far above the smallest task, and ours against it."""
    over_smallest = spread_of([d / s for d, s in zip(delivery, smallest, strict=True)])
    share = spread_of([o / d for o, d in zip(ours, delivery, strict=True)])
    return Result(
        "recording", f"through 1 worker process: the broker's delivery alone, the ceiling of any strategy ({n:,} "
        f"messages decoded and acknowledged by batches, nothing run; median of {len(delivery)})",
        _median(delivery), "messages/s", baseline=_median(smallest),
        baseline_name="smallest Celery task, as above", goal="", met=None,
        spread=over_smallest,
        extra={"delivery alone (messages/s)": [round(x) for x in delivery],
               "ours / delivery alone (min, median, max)": [round(x, 2) for x in share]},
    )


def _median(values: list[float]) -> float:
    return spread_of(values)[1]


def _event_rows(env: Env) -> int:
    with env.session() as s:
        return int(s.scalar(select(func.count()).select_from(PipelineEvent)) or 0)


def _acked(broker_url: str, queue: str, n: int) -> Callable[[], int]:
    """How many of the N messages queued on QUEUE were acknowledged: neither waiting nor delivered unacked.

    kombu's Redis transport keeps a delivered, unacknowledged message in the `unacked`
    hash until its ack (late: after the task ran). A message between its BRPOP and that
    hash (microseconds, one at a time) counts as done early: one message in thousands.
    """
    client = redis_client(broker_url)

    def acked() -> int:
        pipe = client.pipeline()
        pipe.llen(queue)
        pipe.hlen("unacked")
        waiting, unacked = pipe.execute()
        return n - int(waiting) - int(unacked)

    return acked


def _last_error(env: Env, name: str) -> str:
    """The last `SomethingError: ...` line of the worker NAME's log (what stopped it), if any."""
    try:
        lines = (env.scratch / f"bench-worker-{name}.log").read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return next((line.strip()[:300] for line in reversed(lines) if re.match(r"\s*[\w.]+(Error|Exception): ", line)),
                "")


def _drain(env: Env, app_module: str, name: str, messages: list[tuple[str, dict]], events: int | None = None,
           broker_url: str | None = None, queue: str | None = None, by_acks: bool = False,
           rows: int | None = None, timeout: float = 900) -> float:
    """Queue the messages, start a worker, return events/s from its first completion to its last.

    A message is complete when its events' rows are committed or, BY_ACKS (Redis, one
    queue), when the broker has its acknowledgement (any message, row or not; one cheap
    poll); then the ROWS the drain must leave (default: one per event) are checked once
    it is over. QUEUE: where all the messages go, else each task's route. A worker that
    exits, or leaves rows missing, raises AssertionError naming why.
    """
    n = events if events is not None else len(messages)
    broker = broker_url or env.broker_url
    if not is_amqp(broker):
        redis_client(broker).flushdb()
    app = producer(broker)
    try:
        with app.producer_or_acquire() as publisher:  # one connection for all: half the time per send
            for task, kwargs in messages:
                app.send_task(task, kwargs=kwargs, queue=queue or TASK_QUEUES[task], producer=publisher)
    finally:
        app.close()
    # Each task on its own route, as deployed: single events on `events`, batches on `pipeline`.
    queues = queue or ",".join(sorted({TASK_QUEUES[task] for task, _ in messages}))
    base = _event_rows(env)

    def stored() -> int:
        return _event_rows(env) - base

    count = _acked(broker, queues, len(messages)) if by_acks else stored
    args = celery_cmd("worker", "-Q", queues, "-c", "1", "-n", f"bench-{name}@test",
                      "--without-mingle", "--without-gossip", "-l", "WARNING")
    args[args.index("-A") + 1] = app_module
    proc = spawn(args, service_env(env.database_url, broker, env.scratch / "w"),
                 env.scratch / f"bench-worker-{name}.log")

    def running() -> bool:
        """False while the worker runs (the wait goes on); it exiting ends the drain."""
        if not proc.alive():
            raise AssertionError(f"worker {name} exited: {_last_error(env, name) or 'see its log'}")
        return False

    try:
        first = wait_for(lambda: running() or ((c := count()) > 0 and (c, time.perf_counter())), timeout=120,
                         interval=0.05)
        wait_for(lambda: running() or count() >= n, timeout=timeout, interval=0.05)
        last = time.perf_counter()
    finally:
        proc.stop()
    expected = n if rows is None else rows
    if by_acks and expected and stored() < expected:
        raise AssertionError(f"{name}: {n} messages acknowledged, {stored()} of {expected} event rows stored")
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
