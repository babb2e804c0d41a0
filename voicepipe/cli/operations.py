"""`voicepipe retry` and `voicepipe simulate` (pipeline and retries).

Both talk to the workers only through the broker, by task name, exactly as a
producer service would (`simulate` also reads the database to pick failed
artifacts for staff retries, when it can reach it).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import signal
import sys
import time
import uuid
from datetime import UTC, datetime
from types import FrameType
from typing import Any

from voicepipe.domain import RETRY_STAGES, STAGE_ORDER

log = logging.getLogger("voicepipe.simulate")

STAGE_ALIASES = {"full": "full_pipeline"}
SIM_STAFF = "sim-staff"
EVENT_BATCH = 1000  # events per voicepipe.events.record_batch message


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    retry = sub.add_parser(
        "retry", help="ask the workers to retry an artifact, or every artifact failed at a stage (staff only)",
        description="Send voicepipe.retry.<stage> through the broker and print its task id. With --failed-at, "
                    "send one for every artifact that failed at that stage in [--since, --until) (and "
                    "--organization), at most --rate a second; --dry-run only lists them. Each bulk retry "
                    "carries a request id derived from the request: repeating it retries nothing twice.")
    retry.add_argument("artifact", nargs="?", help="the artifact id (UUID); not with --failed-at")
    retry.add_argument("--stage", type=_stage, help=f"one of {', '.join(RETRY_STAGES)} (or 'full')")
    retry.add_argument("--failed-at", metavar="STAGE", choices=STAGE_ORDER,
                       help=f"retry every artifact failed at this stage: {', '.join(STAGE_ORDER)}")
    retry.add_argument("--since", metavar="TIME", help="with --failed-at: failed at or after (ISO 8601, with offset)")
    retry.add_argument("--until", metavar="TIME", help="with --failed-at: failed before (default now)")
    retry.add_argument("--organization", help="with --failed-at: only this organization's artifacts")
    retry.add_argument("--dry-run", action="store_true", help="with --failed-at: list them, send nothing")
    retry.add_argument("--rate", type=_positive_float, default=20.0,
                       help="with --failed-at: retries sent per second at most (default 20)")
    retry.add_argument("--as", dest="requested_by", required=True, metavar="USER",
                       help="the requesting user's id; must be platform staff in the users table")
    retry.add_argument("--reason", help="why (kept in the retry history and the retry_initiated event)")
    retry.add_argument("--request-id", help="an idempotency key: repeating it returns the first outcome")
    retry.add_argument("--wait", action="store_true", help="wait for the retry's outcome (not for the stage)")
    retry.add_argument("--timeout", type=float, default=60.0, help="seconds to wait with --wait (default 60)")
    retry.set_defaults(func=run_retry)

    history = sub.add_parser("retry-history",
                             help="print an artifact's retries (refused ones too): who, when, why, outcome",
                             description="Read the artifact's retry history from the database (JSON).")
    history.add_argument("artifact", help="the artifact id (UUID)")
    history.set_defaults(func=run_retry_history)

    sim = sub.add_parser("simulate", help="drive a realistic load of voice notes through the workers",
                         description="Upsert organizations and a staff user, optionally record synthetic "
                                     "history, then ingest artifacts at a steady rate.")
    sim.add_argument("--artifacts", type=_non_negative_int, default=100,
                     help="artifacts to ingest; 0 runs until Ctrl-C (default 100)")
    sim.add_argument("--organizations", type=_positive_int, default=3, help="organizations (default 3)")
    sim.add_argument("--rate", type=_positive_float, default=1.0, help="artifacts per second (default 1)")
    sim.add_argument("--seed", type=int, default=0, help="seed of the load's mix and history (default 0)")
    sim.add_argument("--history-hours", type=float, default=0.0,
                     help="also record this many hours of synthetic past events (default 0)")
    sim.add_argument("--no-retries", dest="retries", action="store_false",
                     help="do not have the staff user retry failed artifacts")
    sim.add_argument("--grant-staff", action="store_true",
                     help=f"make {SIM_STAFF} platform staff for the run (audited) and revoke it at the end; "
                          "without it the simulated user is not staff and its retries are refused. "
                          "`voicepipe dev` passes it for its embedded database only")
    sim.set_defaults(func=run_simulate)


def _stage(value: str) -> str:
    stage = STAGE_ALIASES.get(value, value)
    if stage not in RETRY_STAGES:
        raise argparse.ArgumentTypeError(f"unknown stage {value!r}; one of {', '.join(RETRY_STAGES)}, full")
    return stage


def _non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return number


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return number


def _positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return number


def _send(name: str, /, **kwargs: Any) -> Any:
    """Send a task; a retry or a user upsert signed with VOICEPIPE_DIRECTORY_SECRET when it is set."""
    from voicepipe.authority import REDACTED_FIELDS, redact, sign, signed_tasks
    from voicepipe.clock import utcnow
    from voicepipe.settings import get_settings
    from worker import app
    from worker.routes import TASK_QUEUES

    secret = get_settings().directory_secret
    if name in signed_tasks() and secret:
        kwargs = sign(name, kwargs, secret, now=utcnow())
        return app.send_task(name, kwargs=kwargs, queue=TASK_QUEUES[name],
                             kwargsrepr=repr(redact(kwargs, REDACTED_FIELDS)))
    return app.send_task(name, kwargs=kwargs, queue=TASK_QUEUES[name])


# -- retry -------------------------------------------------------------------------


def run_retry(args: argparse.Namespace) -> int:
    bulk_only = [f"--{n.replace('_', '-')}" for n in ("since", "until", "organization") if getattr(args, n)]
    bulk_only += ["--dry-run"] if args.dry_run else []
    if args.failed_at is not None:
        if args.artifact is not None or args.stage is not None or args.request_id is not None or args.wait:
            print("voicepipe retry: --failed-at takes no ARTIFACT, --stage, --request-id or --wait", file=sys.stderr)
            return 2
        return run_bulk_retry(args)
    if args.artifact is None or args.stage is None or bulk_only:
        print("voicepipe retry: give ARTIFACT and --stage, or --failed-at STAGE --since TIME"
              + (f" ({', '.join(bulk_only)} go with --failed-at)" if bulk_only else ""), file=sys.stderr)
        return 2
    kwargs: dict[str, Any] = {"artifact_id": args.artifact, "requested_by": args.requested_by}
    if args.reason is not None:
        kwargs["reason"] = args.reason
    if args.request_id is not None:
        kwargs["request_id"] = args.request_id
    result = _send(f"voicepipe.retry.{args.stage}", **kwargs)
    print(f"task {result.id} voicepipe.retry.{args.stage} artifact={args.artifact}")
    if not args.wait:
        return 0
    outcome = result.get(timeout=args.timeout, propagate=False)
    if result.failed():
        print(f"refused: {type(outcome).__name__}: {outcome}", file=sys.stderr)
        return 1
    print(json.dumps(outcome, indent=2, sort_keys=True))
    return 0


def run_bulk_retry(args: argparse.Namespace) -> int:
    """Every artifact failed at a stage in a range: listed (--dry-run) or sent, one retry each."""
    from models.session import session_scope
    from voicepipe.retry.bulk import BulkRequest, select_failed

    if args.since is None:
        print("voicepipe retry: --failed-at needs --since", file=sys.stderr)
        return 2
    request = BulkRequest.parse(args.failed_at, args.since, args.until, args.organization)
    with session_scope() as session:
        found = select_failed(session, request)
    scope = f" of {request.organization_id}" if request.organization_id else ""
    print(f"{len(found)} artifacts{scope} failed at {request.stage} from {request.since.isoformat()} "
          f"to {request.until.isoformat()}{' (dry run: nothing sent)' if args.dry_run else ''}", flush=True)
    if args.dry_run:
        for art in found:
            print(f"{art.id} {art.organization_id} failed {art.failed_at.isoformat()} {art.error_code or ''}".rstrip())
        return 0
    interval, next_at = 1.0 / args.rate, time.monotonic()
    for art in found:
        kwargs: dict[str, Any] = {"artifact_id": str(art.id), "requested_by": args.requested_by,
                                  "request_id": request.request_id(args.requested_by, art.id)}
        if args.reason is not None:
            kwargs["reason"] = args.reason
        time.sleep(max(0.0, next_at - time.monotonic()))
        next_at = max(next_at, time.monotonic()) + interval
        _send(f"voicepipe.retry.{request.stage}", **kwargs)
    print(f"sent {len(found)} retries of voicepipe.retry.{request.stage} (`voicepipe retry-history ARTIFACT` "
          "tells each outcome)")
    return 0


def run_retry_history(args: argparse.Namespace) -> int:
    from models.session import session_scope
    from voicepipe.errors import ArtifactNotFound
    from voicepipe.retry.history import retry_history
    from voicepipe.retry.refusals import refusals_for

    with session_scope() as session:
        refused = [r.to_json() for r in refusals_for(session, args.artifact)]
        try:
            attempts = [a.to_json() for a in retry_history(session, args.artifact)]
        except ArtifactNotFound:
            if not refused:
                raise
            attempts = []  # refused requests for an artifact that does not exist
    # Accepted attempts and refused requests, in the order they were asked.
    entries = sorted(attempts + refused, key=lambda e: str(e["requested_at"]))
    print(json.dumps(entries, indent=2))
    return 0


# -- simulate ----------------------------------------------------------------------


def run_simulate(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    orgs = [f"sim-org-{i:02d}" for i in range(1, args.organizations + 1)]
    for org in orgs:
        _send("voicepipe.directory.upsert_organization", id=org, name=f"Simulated Club {org[-2:]}")
    if args.grant_staff:
        _grant_sim_staff(True)
    else:
        # Never platform staff through a message: an unsigned upsert_user cannot grant it.
        _send("voicepipe.directory.upsert_user", id=SIM_STAFF, email="staff@simulated.example",
              is_platform_staff=False)  # signed by _send when a secret is configured
    print(f"simulate: {len(orgs)} organizations, user {SIM_STAFF} "
          f"({'platform staff for this run' if args.grant_staff else 'not staff: no retries'})",
          flush=True)
    try:
        return _simulate(args, rng, orgs)
    finally:
        if args.grant_staff:
            _grant_sim_staff(False)


def _grant_sim_staff(staff: bool) -> None:
    """Make the simulated user staff for the run (or revoke it), audited like `voicepipe staff`."""
    from sqlalchemy.dialects.postgresql import insert as pg_insert

    from models.directory import User
    from models.session import session_scope
    from voicepipe.directory.staff import set_staff

    with session_scope() as session:
        session.execute(pg_insert(User).values(id=SIM_STAFF, email="staff@simulated.example")
                        .on_conflict_do_nothing(index_elements=[User.id]))
        set_staff(session, SIM_STAFF, staff, by="voicepipe-simulate",
                  reason="simulated staff for this run" if staff else "simulation ended")


def _simulate(args: argparse.Namespace, rng: random.Random, orgs: list[str]) -> int:

    if args.history_hours > 0:
        from voicepipe.pipeline.synthetic import synthetic_history

        history = synthetic_history(seed=args.seed, organizations=orgs, hours=args.history_hours,
                                    now=datetime.now(UTC), staff_user=SIM_STAFF)
        for start in range(0, len(history), EVENT_BATCH):
            _send("voicepipe.events.record_batch", events=history[start : start + EVENT_BATCH])
        print(f"simulate: queued {len(history)} historical events over {args.history_hours:g} h", flush=True)

    stop = _stop_flag()
    sent, interval = 0, 1.0 / args.rate
    next_at, next_retry_scan = time.monotonic(), time.monotonic() + 30
    retried: set[str] = set()
    from voicepipe.pipeline.synthetic import CHANNELS

    while not stop["now"] and (args.artifacts == 0 or sent < args.artifacts):
        org = rng.choice(orgs)
        channel = rng.choices([c for c, _ in CHANNELS], [w for _, w in CHANNELS])[0]
        art_id = uuid.uuid4()  # new ids on every run: a restarted simulator never collides
        _send("voicepipe.pipeline.ingest", organization_id=org, coach_id=f"{org}-coach-{rng.randint(1, 5)}",
              source_channel=channel, media_ref=f"sim://{org}/{art_id}.ogg", artifact_id=str(art_id))
        sent += 1
        if sent % 50 == 0:
            print(f"simulate: {sent} artifacts ingested", flush=True)
        if args.retries and args.grant_staff and time.monotonic() >= next_retry_scan:
            next_retry_scan = time.monotonic() + 30
            _retry_failed(orgs, retried)
        # Poisson arrivals around the requested rate (exponential gaps), not a metronome.
        next_at += rng.expovariate(1.0 / interval)
        delay = next_at - time.monotonic()
        while delay > 0 and not stop["now"]:
            time.sleep(min(delay, 0.5))
            delay = next_at - time.monotonic()
    print(f"simulate: done, {sent} artifacts ingested", flush=True)
    return 0


def _stop_flag() -> dict[str, bool]:
    flag = {"now": False}

    def stop(signum: int, frame: FrameType | None) -> None:
        flag["now"] = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    return flag


def _retry_failed(orgs: list[str], retried: set[str]) -> None:
    """As the staff user, retry the failed stage of simulated artifacts that failed (once each)."""
    try:
        from sqlalchemy import select

        from models.artifacts import Artifact
        from models.session import session_scope

        with session_scope() as session:
            rows = session.execute(
                select(Artifact.id, Artifact.failed_stage).where(
                    Artifact.organization_id.in_(orgs), Artifact.status == "failed",
                    Artifact.active_retry_attempt.is_(None),
                ).limit(20)
            ).all()
    except Exception as exc:
        log.warning("simulate: cannot read failed artifacts, skipping retries: %s", exc)
        return
    for art_id, stage in rows:
        key = f"{art_id}"
        if key in retried:
            continue
        retried.add(key)
        name = stage if stage in RETRY_STAGES else "full_pipeline"
        _send(f"voicepipe.retry.{name}", artifact_id=key, requested_by=SIM_STAFF,
              reason="simulated staff retry", request_id=f"sim-{key}")
