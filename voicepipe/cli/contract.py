"""`voicepipe contract --write | --check`: the task contract as JSON Schema files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    contract = sub.add_parser(
        "contract",
        help="write or check contract/tasks/*.schema.json, the JSON Schema of every public task",
    )
    mode = contract.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="(re)write the schema files")
    mode.add_argument("--check", action="store_true", help="exit 1 when the files are not current")
    contract.add_argument("--root", type=Path, default=Path("."), help="the repository (default: here)")
    contract.set_defaults(func=cmd_contract)


def cmd_contract(args: argparse.Namespace) -> int:
    from voicepipe.contract import SCHEMA_DIR, differences, write

    if args.write:
        names = write(args.root)
        print(f"voicepipe: wrote {len(names)} task schemas to {args.root / SCHEMA_DIR}")
        return 0
    problems = differences(args.root)
    for problem in problems:
        print(f"voicepipe contract: {problem}", file=sys.stderr)
    if problems:
        print("voicepipe contract: run `voicepipe contract --write` and commit the files", file=sys.stderr)
        return 1
    print("voicepipe: task schemas are current")
    return 0
