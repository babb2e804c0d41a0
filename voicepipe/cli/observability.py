"""`voicepipe exporter` (Prometheus /metrics) and `voicepipe alerts` (built-in health checks)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    exporter = sub.add_parser(
        "exporter", help="serve the pipeline's health on /metrics for Prometheus (basic auth)",
        description="Serve /metrics in the Prometheus text format; VOICEPIPE_EXPORTER_AUTH=user:password "
                    "is required.")
    exporter.add_argument("--port", type=_port, required=True, help="TCP port (0: any free port)")
    exporter.add_argument("--address", default="127.0.0.1",
                          help="address to bind (default 127.0.0.1; 0.0.0.0 in a container)")
    exporter.set_defaults(func=cmd_exporter)

    alerts = sub.add_parser("alerts", help="list open alerts; `alerts ack ID --by USER`; `alerts evaluate`",
                            description="Open alerts of the built-in health checks (voicepipe.alerts.evaluate).")
    alerts.add_argument("--all", action="store_true", help="also resolved alerts (newest 200)")
    alerts.add_argument("--json", action="store_true", help="print JSON instead of text")
    alerts.set_defaults(func=cmd_alerts_list)
    actions = alerts.add_subparsers(dest="action", metavar="ACTION")
    ack = actions.add_parser("ack", help="acknowledge an alert: it stays open until its condition clears")
    ack.add_argument("id", type=_alert_id, help="the alert's id (from `voicepipe alerts`)")
    ack.add_argument("--by", required=True, metavar="USER", help="who acknowledges")
    ack.set_defaults(func=cmd_alerts_ack)
    run = actions.add_parser(
        "evaluate", help="evaluate the health checks now (what beat runs every 5 minutes)",
        description="Run the checks once in this process. Beat silence can only be raised by an "
                    "evaluation beat did not send: run this from cron where that matters.")
    run.set_defaults(func=cmd_alerts_evaluate)


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a port number, got {value!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 0 and 65535, got {port}")
    return port


def _alert_id(value: str) -> int:
    try:
        alert_id = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an alert id (a number), got {value!r}") from None
    if alert_id <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive alert id, got {alert_id}")
    return alert_id


def cmd_exporter(args: argparse.Namespace) -> int:
    from voicepipe.observability.exporter import parse_credentials, serve

    parse_credentials(os.environ)  # refuse before touching anything else
    serve(args.address, args.port, os.environ)
    return 0


def _row(alert: Any) -> dict[str, Any]:
    def iso(value: Any) -> str | None:
        return value.isoformat() if value is not None else None

    return {
        "id": alert.id, "kind": alert.kind, "organization_id": alert.organization_id,
        "message": alert.message, "value": alert.value, "threshold": alert.threshold,
        "opened_at": iso(alert.opened_at), "last_seen_at": iso(alert.last_seen_at),
        "evaluations": alert.evaluations, "acknowledged_at": iso(alert.acknowledged_at),
        "acknowledged_by": alert.acknowledged_by, "resolved_at": iso(alert.resolved_at),
    }


def _line(row: dict[str, Any]) -> str:
    state = "resolved " + row["resolved_at"] if row["resolved_at"] else (
        f"acked by {row['acknowledged_by']}" if row["acknowledged_by"] else "OPEN")
    org = row["organization_id"] or "-"
    return (f"{row['id']:>6}  {state:<28} {row['kind']:<24} {org:<20} since {row['opened_at']} "
            f"({row['evaluations']}x): {row['message']}")


def cmd_alerts_list(args: argparse.Namespace) -> int:
    from models.session import session_scope
    from voicepipe.alerts.evaluate import open_alerts

    with session_scope() as session:
        rows = [_row(a) for a in open_alerts(session, include_resolved=args.all)]
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print("no open alerts" if not args.all else "no alerts")
    else:
        print("\n".join(_line(r) for r in rows))
    return 0


def cmd_alerts_ack(args: argparse.Namespace) -> int:
    from models.session import session_scope
    from voicepipe.alerts.evaluate import acknowledge
    from voicepipe.clock import utcnow

    with session_scope() as session:
        row = _row(acknowledge(session, args.id, args.by, utcnow()))
    print(_line(row))
    return 0


def cmd_alerts_evaluate(args: argparse.Namespace) -> int:
    from models.session import session_scope
    from voicepipe.alerts.evaluate import evaluate
    from voicepipe.alerts.thresholds import load_thresholds
    from voicepipe.clock import utcnow
    from voicepipe.observability.probe import collect_now

    thresholds = load_thresholds()
    now = utcnow()
    with session_scope() as session:
        report = evaluate(session, now, collect_now(session, now), thresholds)
    print(json.dumps(report.to_json()), file=sys.stdout)
    return 0
