"""`voicepipe dashboard`: the operators' web pages and their JSON endpoints."""

from __future__ import annotations

import argparse
import os


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from voicepipe.cli.observability import _port

    dashboard = sub.add_parser(
        "dashboard", help="serve the operators' dashboard (pages and /api JSON; basic auth)",
        description="Serve the platform and organization pages and their /api JSON endpoints; "
                    "VOICEPIPE_DASHBOARD_AUTH=user:password is required (`voicepipe dev` generates one).")
    dashboard.add_argument("--port", type=_port, required=True, help="TCP port")
    dashboard.add_argument("--address", default="127.0.0.1",
                           help="address to bind (default 127.0.0.1; 0.0.0.0 in a container)")
    dashboard.set_defaults(func=cmd_dashboard)


def cmd_dashboard(args: argparse.Namespace) -> int:
    from voicepipe.dashboard.app import AUTH_VARIABLE, serve
    from voicepipe.observability.exporter import parse_credentials

    parse_credentials(os.environ, AUTH_VARIABLE, "the dashboard")  # refuse before touching anything else
    serve(args.address, args.port, os.environ)
    return 0
