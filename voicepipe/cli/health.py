"""`voicepipe health ...`: health checks for each process type (operations)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Added by the operations work."""
