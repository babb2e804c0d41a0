"""`voicepipe retry` and `voicepipe simulate` (pipeline and retries)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Added by the pipeline and retry work."""
