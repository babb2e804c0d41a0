"""`voicepipe health worker|beat|db|broker`: exit 0 healthy, 1 not, one line saying why."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from voicepipe.observability import health


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "health", help="check one process type (exit 0 healthy, 1 not); used by docker-compose"
    )
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="KIND")

    worker = kinds.add_parser("worker", help="the local worker answers a ping and consumes its queues")
    worker.add_argument(
        "--name", default=None,
        help="worker node name as given to `celery worker -n` (%%h = this host); default celery@%%h",
    )
    worker.add_argument("--queues", default="", help="comma-separated queues it must consume")
    worker.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for replies")
    worker.set_defaults(func=_worker)

    beat = kinds.add_parser("beat", help="beat ticks, its sends succeed and it sent recently")
    beat.add_argument("--file", type=Path, default=None,
                      help=f"heartbeat file (default VOICEPIPE_DATA_DIR/{health.HEARTBEAT_FILENAME})")
    beat.add_argument("--max-tick-age", type=float, default=health.DEFAULT_BEAT_MAX_TICK_AGE_S,
                      help="seconds since beat's last tick before it counts as hung")
    beat.add_argument("--max-silence", type=float, default=health.DEFAULT_BEAT_MAX_SILENCE_S,
                      help="seconds without any send before beat counts as silent")
    beat.set_defaults(func=_beat)

    db = kinds.add_parser("db", help="SELECT 1 works and migrations are at head")
    db.set_defaults(func=_db)

    broker = kinds.add_parser("broker", help="the broker answers")
    broker.add_argument("--timeout", type=float, default=5.0)
    broker.set_defaults(func=_broker)


def _report(result: health.Health) -> int:
    print(result.line(), file=sys.stdout if result.ok else sys.stderr)
    return 0 if result.ok else 1


def _guarded(check: object) -> health.Health:
    try:
        return check()  # type: ignore[operator,no-any-return]
    except Exception as exc:
        return health.Health(False, f"{type(exc).__name__}: {exc}".splitlines()[0])


def _worker(args: argparse.Namespace) -> int:
    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    return _report(_guarded(lambda: health.check_worker(args.name, queues, args.timeout)))


def _beat(args: argparse.Namespace) -> int:
    return _report(_guarded(lambda: health.check_beat(args.file, args.max_tick_age, args.max_silence)))


def _db(args: argparse.Namespace) -> int:
    logging.getLogger("alembic").setLevel(logging.WARNING)  # keep the answer one line
    return _report(_guarded(health.check_db))


def _broker(args: argparse.Namespace) -> int:
    return _report(_guarded(lambda: health.check_broker(args.timeout)))
