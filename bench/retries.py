"""Retries through a real worker on Redis: send_task -> the stage task's start, and retries per second.

The stage's start is the `transcription_started` event the stage task records when it
claims the artifact. The baseline is one hop of the smallest task there is (a directory
upsert, from send to its row committed) through the same broker: a retry is two hops
(the retry task, then the stage task it queues after its commit).

As deployed, the retry queue has its own worker and the pipeline queue its own: latency
is measured one retry at a time on idle workers (each artifact's pipeline finishes before
the next retry), throughput as retries accepted per second by the retry worker alone,
against a burst of the smallest task (`upsert_organization`) on that same worker, beside
a burst of a retry's round trips alone (bench/retry_trips_app.py: the ceiling for
retries, printed without a goal), the three in turn, forwards then backwards.

Both goals are ratios to the smallest task, measured in REPEAT fresh pairs (new
artifacts, new organization and user ids each time) so that each pair's two sides see
the same machine state; a row's value and baseline are the medians, its ratio the median
pair's, and its spread the (min, median, max) of the pairs' ratios:

- throughput: >= 0.8x the smallest task's rate on the same worker;
- latency p50: <= 2.5x one hop of the smallest task (ratio >= 0.4). A retry is two hops,
  each allowed the same 1/0.8 = 1.25x of the smallest task as the throughput goal allows.

Each goal is printed beside its limit, a retry's round trips alone measured the same way:
one at a time with its stage's message to a task that only marks its start (latency), and
in bursts (throughput).
"""

from __future__ import annotations

import functools
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select

from bench.harness import Env, Result, beside_goal, percentile, spread_of
from models import Artifact, Organization, PipelineEvent, RetryRequest, User
from tests.support.helpers import celery_cmd, producer, redis_client, service_env, spawn, wait_for

STAFF = "bench-staff"
# bench/retry_trips_app.py
TRIPS_TASK, DONE_STATUS, STARTED_STATUS = "bench.retry_trips", "bench-retried", "bench-started"
# Fresh (smallest task, retries) pairs whose ratios make each goal's spread.
REPEAT = 3
# Retries per second, at least this fraction of the smallest task's rate on the same worker.
OVER_SMALLEST_TASK = 0.8
# send -> stage start, p50: at most this many hops of the smallest task (two hops, 1.25x each).
LATENCY_HOPS = 2.5


def _failed_artifacts(env: Env, n: int) -> list[uuid.UUID]:
    now = datetime.now(UTC)
    ids = [uuid.uuid4() for _ in range(n)]
    with env.session() as s:
        s.add_all(Artifact(
            id=i, organization_id=f"org-{k % 50}", coach_id="coach-1", source_channel="whatsapp_audio",
            status="failed", failed_stage="transcription", error_code="PROVIDER_TIMEOUT",
            metadata_={"retryAttempt": 0}, created_at=now, updated_at=now,
        ) for k, i in enumerate(ids))
        if s.get(User, STAFF) is None:
            s.add(User(id=STAFF, email="staff@example.com", is_platform_staff=True))
        s.commit()
    return ids


def _started_at(env: Env, ids: list[uuid.UUID]) -> dict[uuid.UUID, datetime]:
    with env.session() as s:
        rows = s.execute(select(PipelineEvent.artifact_id, func.min(PipelineEvent.occurred_at)).where(
            PipelineEvent.event_type == "transcription_started", PipelineEvent.artifact_id.in_(ids),
        ).group_by(PipelineEvent.artifact_id)).all()
    return {a: t for a, t in rows}


def _status(env: Env, art: uuid.UUID) -> str | None:
    with env.session() as s:
        return s.scalar(select(Artifact.status).where(Artifact.id == art))


def _orgs(env: Env) -> int:
    with env.session() as s:
        return int(s.scalar(select(func.count()).select_from(Organization)) or 0)


def _initiated(env: Env, ids: list[uuid.UUID]) -> int:
    with env.session() as s:
        return int(s.scalar(select(func.count()).select_from(PipelineEvent).where(
            PipelineEvent.event_type == "retry_initiated", PipelineEvent.artifact_id.in_(ids))) or 0)


def _accepted(env: Env) -> int:
    """Retries accepted so far: one retry_requests row each, committed with its retry_initiated.

    The clock's poll, as cheap as the baseline's count of organizations (0.3 ms of this
    process's CPU a poll): _initiated's IN list of 600 ids cost 3.8 ms here and 0.5 to
    2.5 ms in PostgreSQL, about a tenth of a core at one poll per 50 ms, taken from the
    two cores the measured worker runs on.
    """
    with env.session() as s:
        return int(s.scalar(select(func.count()).select_from(RetryRequest)) or 0)


def _hop(env: Env, app: Any, user: str) -> float:
    """One hop of the smallest task: send upsert_user -> its row committed, in ms."""
    t0 = datetime.now(UTC)
    app.send_task("voicepipe.directory.upsert_user", queue="pipeline",
                  kwargs={"id": user, "email": "x@example.com", "is_platform_staff": False})

    def stored() -> datetime | None:
        with env.session() as s:
            return s.scalar(select(User.updated_at).where(User.id == user))

    return (wait_for(stored, timeout=30, interval=0.001) - t0).total_seconds() * 1000


def _one_at_a_time(env: Env, app: Any, n: int, task: str, kwargs: dict[str, Any], end_status: str,
                   started_at: Callable[[Env, list[uuid.UUID]], dict[uuid.UUID, datetime]]) -> list[float]:
    """N TASKs on fresh failed artifacts, each awaited until its artifact reaches END_STATUS:
    send -> the time STARTED_AT reads for it, in ms."""
    ids = _failed_artifacts(env, n)
    sent: dict[uuid.UUID, datetime] = {}
    for art in ids:
        sent[art] = datetime.now(UTC)
        app.send_task(task, queue="retry", kwargs={"artifact_id": str(art), "requested_by": STAFF, **kwargs})
        wait_for(lambda art=art: _status(env, art) == end_status, timeout=30, interval=0.002)
    started = started_at(env, ids)
    return [(started[a] - sent[a]).total_seconds() * 1000 for a in ids]


def _retry_latencies(env: Env, app: Any, n: int) -> list[float]:
    """N retries, one at a time: send -> the stage task's start (its transcription_started), in ms."""
    return _one_at_a_time(env, app, n, "voicepipe.retry.transcription", {"reason": "bench"}, "completed",
                          _started_at)


def _marked_at(env: Env, ids: list[uuid.UUID]) -> dict[uuid.UUID, datetime]:
    with env.session() as s:
        return dict(s.execute(select(Artifact.id, Artifact.updated_at).where(Artifact.id.in_(ids))).all())


def _trips_latencies(env: Env, app: Any, n: int) -> list[float]:
    """N of a retry's round trips alone, one at a time, their stage's message to the pipeline
    worker: send -> that task's mark, in ms (the latency limit for retries)."""
    return _one_at_a_time(env, app, n, TRIPS_TASK, {"stage_queue": "pipeline"}, STARTED_STATUS, _marked_at)


def _timed_burst(app: Any, task: str, kwargs: list[dict[str, Any]], count: Callable[[], int]) -> float:
    """One TASK per KWARGS through the retry worker, until COUNT grew by as many: tasks per second.

    COUNT must grow by exactly that many: every task of the burst did its work, and only those.
    """
    n = len(kwargs)
    before = count()
    t0 = time.perf_counter()
    for each in kwargs:
        app.send_task(task, queue="retry", kwargs=each)
    wait_for(lambda: count() >= before + n, timeout=600, interval=0.05)
    rate = n / (time.perf_counter() - t0)
    assert count() == before + n, f"{task}: {count() - before} of a burst of {n} counted"
    return rate


def _org_burst(env: Env, app: Any, n: int, rep: int) -> float:
    """N upsert_organization tasks of new organizations: tasks per second."""
    return _timed_burst(app, "voicepipe.directory.upsert_organization",
                        [{"id": f"org-b{rep}-{k}", "name": "bench"} for k in range(n)], functools.partial(_orgs, env))


def _trips_burst(env: Env, app: Any, n: int) -> float:
    """N tasks of a retry's round trips alone (bench/retry_trips_app.py) on fresh failed artifacts: tasks/s."""
    burst = _failed_artifacts(env, n)

    def done() -> int:  # a poll as cheap as _accepted's (an index on status), not an IN list of the burst
        with env.session() as s:
            return int(s.scalar(select(func.count()).select_from(Artifact).where(Artifact.status == DONE_STATUS))
                       or 0)

    return _timed_burst(app, TRIPS_TASK, [{"artifact_id": str(art), "requested_by": STAFF} for art in burst], done)


def _retry_burst(env: Env, app: Any, n: int) -> float:
    """N retries of fresh failed artifacts: retries accepted per second."""
    burst = _failed_artifacts(env, n)
    rate = _timed_burst(app, "voicepipe.retry.transcription",
                        [{"artifact_id": str(art), "requested_by": STAFF} for art in burst],
                        functools.partial(_accepted, env))
    # And each recorded its retry_initiated.
    assert _initiated(env, burst) == n
    return rate


def _with_trips(cmd: list[str]) -> list[str]:
    """A worker command of production's app with a retry's round trips alone added."""
    cmd[cmd.index("-A") + 1] = "bench.retry_trips_app"
    return cmd


def run(env: Env) -> list[Result]:
    n_latency = 40 if env.quick else 100  # per pair: REPEAT pairs of n_latency hops and n_latency retries
    n_burst = 200 if env.quick else 600  # per burst: REPEAT pairs of bursts
    redis_client(env.broker_url).flushdb()
    procs = [
        # Production's app with a retry's round trips alone added (bench/retry_trips_app.py).
        spawn(_with_trips(celery_cmd("worker", "-Q", queue, "-c", "1", "-n", f"bench-{queue}@test",
                                     "--without-mingle", "--without-gossip", "-l", "WARNING")),
              service_env(env.database_url, env.broker_url, env.scratch / f"w{queue}",
                          VOICEPIPE_SIMULATOR_TIME_SCALE="0.001"),
              env.scratch / f"bench-{queue}-worker.log")
        for queue in ("retry", "pipeline")
    ]
    app = producer(env.broker_url)
    base: list[float] = []  # one hop of the smallest task, ms
    lat: list[float] = []  # send -> stage start, ms
    lat_ratios: list[float] = []  # per pair: its hops' p50 / its retries' p50 (>1 = retries faster)
    trips_lat: list[float] = []  # send -> stage start of a retry's round trips alone, ms
    trips_lat_ratios: list[float] = []  # per pair: its hops' p50 / those p50
    base_rates: list[float] = []  # per pair: smallest task, tasks/s
    rates: list[float] = []  # per pair: retries/s
    trip_rates: list[float] = []  # per pair: a retry's round trips alone, tasks/s
    try:
        for queue in ("retry", "pipeline"):
            wait_for(functools.partial(app.control.ping, destination=[f"bench-{queue}@test"], timeout=0.5), timeout=60)
        # Latency on idle workers: REPEAT triples of (N hops of the smallest task, N retries
        # one at a time, N of a retry's round trips alone one at a time).
        for rep in range(REPEAT):
            measures: list[tuple[str, Callable[[], list[float]]]] = [
                ("hops", lambda rep=rep: [_hop(env, app, f"u-{rep}-{k}") for k in range(n_latency)]),
                ("retries", functools.partial(_retry_latencies, env, app, n_latency)),
                ("trips", functools.partial(_trips_latencies, env, app, n_latency)),
            ]
            # In turn forwards and backwards, as the bursts below: the machine's drift alike.
            got = {name: measure() for name, measure in (measures if rep % 2 == 0 else measures[::-1])}
            base += got["hops"]
            lat += got["retries"]
            trips_lat += got["trips"]
            lat_ratios.append(percentile(got["hops"], 0.5) / percentile(got["retries"], 0.5))
            trips_lat_ratios.append(percentile(got["hops"], 0.5) / percentile(got["trips"], 0.5))
        # Throughput: the retry worker (2 processes) alone, REPEAT triples of bursts (the
        # smallest task, a retry's round trips alone, retries), each of fresh rows.
        procs[1].stop()
        procs[0].stop()
        retry2 = _with_trips(celery_cmd("worker", "-Q", "retry", "-c", "2", "-n", "bench-retry2@test",
                                        "--without-mingle", "--without-gossip", "-l", "WARNING"))
        procs.append(spawn(retry2, service_env(env.database_url, env.broker_url, env.scratch / "wretry2"),
                           env.scratch / "bench-retry2-worker.log"))
        wait_for(lambda: app.control.ping(destination=["bench-retry2@test"], timeout=0.5), timeout=60)
        for rep in range(REPEAT):
            bursts = [(base_rates, functools.partial(_org_burst, env, app, n_burst, rep)),
                      (trip_rates, functools.partial(_trips_burst, env, app, n_burst)),
                      (rates, functools.partial(_retry_burst, env, app, n_burst))]
            for into, burst in bursts if rep % 2 == 0 else bursts[::-1]:  # in turn: the machine's drift alike
                into.append(burst())
    finally:
        app.close()
        for proc in procs:
            proc.stop()
    p50, p95, b50 = percentile(lat, 0.5), percentile(lat, 0.95), percentile(base, 0.5)
    lat_spread = spread_of(lat_ratios)
    trips_lat_spread = spread_of(trips_lat_ratios)
    rate_spread = spread_of([r / b for r, b in zip(rates, base_rates, strict=True)])
    trips_spread = spread_of([t / b for t, b in zip(trip_rates, base_rates, strict=True)])
    share = spread_of([r / t for r, t in zip(rates, trip_rates, strict=True)])
    return [
        Result("retries", f"send -> stage start, p50 ({REPEAT} x {n_latency} sequential)", p50, "ms",
               baseline=b50, baseline_name="1 hop of the smallest task, p50",
               goal=f"<= {LATENCY_HOPS:g}x 1 hop (ratio >= {1 / LATENCY_HOPS:.2f})",
               met=lat_spread[1] >= 1 / LATENCY_HOPS, spread=lat_spread,
               limit=f"a retry's round trips alone, {beside_goal(trips_lat_spread[1], 1 / LATENCY_HOPS)}x",
               limit_meets_goal=trips_lat_spread[1] >= 1 / LATENCY_HOPS),
        Result("retries", "send -> stage start, p95", p95, "ms", goal="",
               extra={"p95_baseline": percentile(base, 0.95)}),
        Result("retries", f"send -> stage start, p50: a retry's round trips alone, the limit for retries "
               f"(as in the throughput's row, its stage's message to a task that only marks its start; "
               f"{REPEAT} x {n_latency} sequential)",
               percentile(trips_lat, 0.5), "ms", baseline=b50, baseline_name="1 hop of the smallest task, p50",
               goal="", met=None, spread=trips_lat_spread),
        Result("retries", f"throughput, burst of {n_burst}, retry worker -c 2 (median of {REPEAT})",
               statistics.median(rates), "retries/s", baseline=statistics.median(base_rates),
               baseline_name="smallest task, same worker",
               goal=f">= {OVER_SMALLEST_TASK:g}x smallest task", met=rate_spread[1] >= OVER_SMALLEST_TASK,
               spread=rate_spread,
               limit=f"a retry's round trips alone, {beside_goal(trips_spread[1], OVER_SMALLEST_TASK)}x",
               limit_meets_goal=trips_spread[1] >= OVER_SMALLEST_TASK,
               extra={"retries/s": [round(r, 1) for r in rates],
                      "smallest task (tasks/s)": [round(b, 1) for b in base_rates]}),
        Result("retries", f"throughput, burst of {n_burst}: a retry's round trips alone, the ceiling for retries "
               f"(transaction, two statements, one message queued, result stored; median of {REPEAT})",
               statistics.median(trip_rates), "tasks/s", baseline=statistics.median(base_rates),
               baseline_name="smallest task, same worker", goal="", met=None,
               spread=trips_spread,
               extra={"round trips alone (tasks/s)": [round(r, 1) for r in trip_rates],
                      "retries / round trips alone (min, median, max)": [round(x, 2) for x in share]}),
    ]
