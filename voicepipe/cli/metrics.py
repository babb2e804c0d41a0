"""`voicepipe backfill` and `voicepipe status` (metrics engine)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Added by the metrics engine."""
