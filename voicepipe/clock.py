"""The one clock every window computation reads.

VOICEPIPE_FAKE_NOW pins it for tests and rehearsals (e.g. catch-up after a
simulated outage); production leaves it unset and gets UTC wall time.
"""

from __future__ import annotations

from datetime import UTC, datetime

from voicepipe.settings import get_settings


def utcnow() -> datetime:
    fake = get_settings().fake_now
    return fake.astimezone(UTC) if fake is not None else datetime.now(UTC)
