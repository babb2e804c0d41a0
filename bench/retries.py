"""Retries through a real worker on Redis: send_task -> the stage task's start, and retries per second.

The stage's start is the `transcription_started` event the stage task records when it
claims the artifact. The baseline is one hop of the smallest task there is (a directory
upsert, from send to its row committed) through the same broker: a retry is two hops
(the retry task, then the stage task it queues after its commit).

As deployed, the retry queue has its own worker and the pipeline queue its own: latency
is measured one retry at a time on idle workers (each artifact's pipeline finishes before
the next retry), throughput as retries accepted per second by the retry worker alone.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

from sqlalchemy import func, select

from bench.harness import Env, Result, percentile
from models import Artifact, Organization, PipelineEvent, RetryRequest, User
from tests.support.helpers import celery_cmd, producer, redis_client, service_env, spawn, wait_for

STAFF = "bench-staff"


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


def run(env: Env) -> list[Result]:
    n_latency = 100 if env.quick else 300
    n_burst = 200 if env.quick else 600
    redis_client(env.broker_url).flushdb()
    procs = [
        spawn(celery_cmd("worker", "-Q", queue, "-c", "1", "-n", f"bench-{queue}@test",
                         "--without-mingle", "--without-gossip", "-l", "WARNING"),
              service_env(env.database_url, env.broker_url, env.scratch / f"w{queue}",
                          VOICEPIPE_SIMULATOR_TIME_SCALE="0.001"),
              env.scratch / f"bench-{queue}-worker.log")
        for queue in ("retry", "pipeline")
    ]
    app = producer(env.broker_url)
    try:
        for queue in ("retry", "pipeline"):
            wait_for(lambda q=queue: app.control.ping(destination=[f"bench-{q}@test"], timeout=0.5), timeout=60)
        # Baseline: one hop of the smallest task.
        base = []
        for k in range(n_latency):
            user = f"u-{k}"
            t0 = datetime.now(UTC)
            app.send_task("voicepipe.directory.upsert_user", queue="pipeline",
                          kwargs={"id": user, "email": "x@example.com", "is_platform_staff": False})

            def stored(user: str = user) -> datetime | None:
                with env.session() as s:
                    return s.scalar(select(User.updated_at).where(User.id == user))

            base.append((wait_for(stored, timeout=30, interval=0.001) - t0).total_seconds() * 1000)
        # Latency: one retry at a time on idle workers, send -> the stage task's start.
        ids = _failed_artifacts(env, n_latency)
        sent: dict[uuid.UUID, datetime] = {}
        for art in ids:
            sent[art] = datetime.now(UTC)
            app.send_task("voicepipe.retry.transcription", queue="retry",
                          kwargs={"artifact_id": str(art), "requested_by": STAFF, "reason": "bench"})
            wait_for(lambda art=art: _status(env, art) == "completed", timeout=30, interval=0.002)
        started = _started_at(env, ids)
        lat = [(started[a] - sent[a]).total_seconds() * 1000 for a in ids]
        # Throughput: a burst of retries through the retry worker (2 processes) alone.
        procs[1].stop()
        procs[0].stop()
        procs.append(spawn(
            celery_cmd("worker", "-Q", "retry", "-c", "2", "-n", "bench-retry2@test",
                       "--without-mingle", "--without-gossip", "-l", "WARNING"),
            service_env(env.database_url, env.broker_url, env.scratch / "wretry2"),
            env.scratch / "bench-retry2-worker.log"))
        wait_for(lambda: app.control.ping(destination=["bench-retry2@test"], timeout=0.5), timeout=60)
        # Baseline: the smallest task, same worker, same burst size.
        t0 = time.perf_counter()
        for k in range(n_burst):
            app.send_task("voicepipe.directory.upsert_organization", queue="retry",
                          kwargs={"id": f"org-b{k}", "name": "bench"})
        wait_for(lambda: _orgs(env) >= n_burst, timeout=600, interval=0.05)
        base_rate = n_burst / (time.perf_counter() - t0)
        burst = _failed_artifacts(env, n_burst)
        accepted = _accepted(env)
        t0 = time.perf_counter()
        for art in burst:
            app.send_task("voicepipe.retry.transcription", queue="retry",
                          kwargs={"artifact_id": str(art), "requested_by": STAFF})
        wait_for(lambda: _accepted(env) >= accepted + n_burst, timeout=600, interval=0.05)
        rate = n_burst / (time.perf_counter() - t0)
        # Every retry of the burst, and only those, recorded its retry_initiated.
        assert _accepted(env) == accepted + n_burst and _initiated(env, burst) == n_burst
    finally:
        app.close()
        for proc in procs:
            proc.stop()
    p50, p95, b50 = percentile(lat, 0.5), percentile(lat, 0.95), percentile(base, 0.5)
    return [
        Result("retries", f"send -> stage start, p50 ({n_latency} sequential)", p50, "ms",
               baseline=b50, baseline_name="1 hop of the smallest task, p50", ratio=b50 / p50,
               goal="p50 < 25 ms", met=p50 < 25),
        Result("retries", "send -> stage start, p95", p95, "ms", goal="", extra={"p95_baseline": percentile(base,
                                                                                                            0.95)}),
        Result("retries", f"throughput, burst of {n_burst}, retry worker -c 2", rate, "retries/s",
               baseline=base_rate, baseline_name="smallest task, same worker", ratio=rate / base_rate,
               goal=">= 200/s", met=rate >= 200),
    ]
