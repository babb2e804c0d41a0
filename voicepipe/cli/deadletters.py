"""`voicepipe dead-letters list|replay|discard`: the parked write messages (worker/deadletters.py)."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("dead-letters", help="list, replay or discard parked write messages",
                            description="Write messages a task gave up on (retries exhausted, time limit, "
                                        "delivery limit) are parked in the dead_letters table.")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    show = actions.add_parser("list", help="the parked messages, oldest first")
    show.add_argument("--all", action="store_true", help="also the replayed and discarded ones")
    show.add_argument("--json", action="store_true", help="print JSON instead of text")
    show.set_defaults(func=cmd_list)

    replay = actions.add_parser("replay", help="re-send parked messages through the broker (idempotent)")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", type=int, action="append", dest="ids", metavar="ID", help="one dead letter (repeatable)")
    which.add_argument("--all", action="store_true", dest="all_parked", help="every message still parked")
    replay.set_defaults(func=cmd_replay)

    discard = actions.add_parser("discard", help="give up on one dead letter (kept, marked discarded)")
    discard.add_argument("--id", type=int, required=True, dest="letter_id", metavar="ID")
    discard.set_defaults(func=cmd_discard)


def _row(letter: Any) -> dict[str, Any]:
    return {
        "id": letter.id, "status": letter.status, "task_name": letter.task_name, "task_id": letter.task_id,
        "queue": letter.queue, "reason": letter.reason, "error": letter.error, "attempts": letter.attempts,
        "deliveries": letter.deliveries, "times_parked": letter.times_parked, "replays": letter.replays,
        "first_failed_at": letter.first_failed_at.isoformat(), "last_failed_at": letter.last_failed_at.isoformat(),
        "kwargs": letter.kwargs,
    }


def cmd_list(args: argparse.Namespace) -> int:
    from models.session import session_scope
    from worker.deadletters import list_dead_letters

    with session_scope() as session:
        rows = [_row(letter) for letter in list_dead_letters(session, include_done=args.all)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no dead letters")
        return 0
    for r in rows:
        error = (r["error"] or "").splitlines()[0][:100]
        print(f"{r['id']:>6} {r['status']:<9} {r['task_name']} task_id={r['task_id']} reason={r['reason']} "
              f"attempts={r['attempts']} deliveries={r['deliveries']} last={r['last_failed_at']} error={error}")
    print(f"{len(rows)} dead letter(s)")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from celery import Celery

    from models.dead_letters import DeadLetter
    from worker import broker_url
    from worker.config import celery_config
    from worker.deadletters import replay

    app = Celery("voicepipe-replay")
    app.config_from_object(celery_config(broker_url()))

    def send(letter: DeadLetter) -> None:
        # The same task id: ids derived from it are the same, so a replay records nothing twice.
        app.send_task(letter.task_name, kwargs=letter.kwargs, queue=letter.queue, task_id=letter.task_id)

    try:
        # Each letter is marked replayed in its own transaction once sent (worker/deadletters.py).
        sent = replay(send, ids=args.ids or (), all_parked=args.all_parked)
        summary = [(letter.id, letter.task_name, letter.task_id) for letter in sent]
    finally:
        app.close()
    for letter_id, name, task_id in summary:
        print(f"replayed {letter_id} {name} task_id={task_id}")
    print(f"{len(summary)} dead letter(s) replayed")
    return 0


def cmd_discard(args: argparse.Namespace) -> int:
    from models.session import session_scope
    from worker.deadletters import discard

    with session_scope() as session:
        letter = discard(session, args.letter_id)
        print(f"discarded {letter.id} {letter.task_name} task_id={letter.task_id}")
    return 0
