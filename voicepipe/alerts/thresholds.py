"""Alert thresholds from VOICEPIPE_ALERT_* variables (docs/howto/monitoring.md), validated at use."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields

from voicepipe.observability.health import DEFAULT_BEAT_MAX_SILENCE_S
from voicepipe.settings import parse_float


@dataclass(frozen=True)
class Thresholds:
    # Normal hourly lag peaks near 90 min (hour HH closes at HH+1:00, is aggregated at
    # HH+1:30); 3 h means two hourly runs in a row did not complete.
    hourly_lag_seconds: float = 3 * 3600
    # Normal daily lag peaks near 49.5 h (yesterday is aggregated at 01:30); 54 h
    # leaves the daily run four hours to recover before anyone is told.
    daily_lag_seconds: float = 54 * 3600
    # Between :00 and :30 the previous hour is legitimately missing; more than 2 is not.
    hourly_windows_due: float = 2
    # Between 00:00 and 01:30 yesterday is legitimately missing; more than 1 is not.
    daily_windows_due: float = 1
    windows_failing: float = 0
    # Per organization, in the newest hourly snapshot, once it finished enough artifacts
    # for a rate to mean something.
    failure_rate: float = 0.2
    min_artifacts: float = 5
    p95_latency_seconds: float = 300
    queue_depth: float = 1000
    stalled_artifacts: float = 10
    # Artifacts needing disambiguation per organization over the last 24 hours.
    disambiguation_backlog: float = 50
    # No artifact received platform-wide for this long (0 disables the check).
    inactivity_hours: float = 6
    beat_silence_seconds: float = DEFAULT_BEAT_MAX_SILENCE_S
    dead_letters: float = 0


def variable(name: str) -> str:
    return "VOICEPIPE_ALERT_" + name.upper()


def load_thresholds(env: Mapping[str, str] | None = None) -> Thresholds:
    """Every threshold, from VOICEPIPE_ALERT_<NAME> or its default; SettingsError names a bad one."""
    env = os.environ if env is None else env
    defaults = Thresholds()
    return Thresholds(**{
        f.name: parse_float(env, variable(f.name), getattr(defaults, f.name), 0.0) for f in fields(Thresholds)
    })
