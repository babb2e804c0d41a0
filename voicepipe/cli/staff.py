"""`voicepipe staff grant|revoke USER --by WHO --reason WHY` and `voicepipe staff audit`."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    staff = sub.add_parser("staff", help="grant or revoke platform staff (who may retry); list the audit",
                           description="Operators' path to platform-staff status; every change is audited.")
    actions = staff.add_subparsers(dest="staff_command", required=True, metavar="ACTION")
    for name, value in (("grant", True), ("revoke", False)):
        action = actions.add_parser(name, help=f"{name} platform staff (audited: who, when, why)")
        action.add_argument("user", help="the user's id (the directory sync creates users)")
        action.add_argument("--by", required=True, metavar="WHO", help="the operator making the change")
        action.add_argument("--reason", required=True, metavar="WHY", help="why (kept in the audit)")
        action.set_defaults(func=run_change, staff=value)
    audit = actions.add_parser("audit", help="every change of staff status, oldest first (JSON)")
    audit.add_argument("--user", help="only this user's changes")
    audit.add_argument("--limit", type=int, default=1000, help="the latest N changes (default 1000)")
    audit.set_defaults(func=run_audit)


def run_change(args: argparse.Namespace) -> int:
    from models.session import session_scope
    from voicepipe.directory.staff import set_staff

    with session_scope() as session:
        change = set_staff(session, args.user, args.staff, by=args.by, reason=args.reason)
    verb = "granted" if args.staff else "revoked"
    if change.changed:
        print(f"voicepipe: platform staff {verb} for {change.user_id} by {args.by} (audited)")
    else:
        print(f"voicepipe: {change.user_id} already {'is' if args.staff else 'is not'} platform staff; nothing changed")
    return 0


def run_audit(args: argparse.Namespace) -> int:
    from models.session import session_scope
    from voicepipe.directory.staff import staff_audit

    with session_scope() as session:
        entries = [e.to_json() for e in staff_audit(session, args.user, max(1, args.limit))]
    print(json.dumps(entries, indent=2))
    return 0
