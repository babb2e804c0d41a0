"""Typed settings from environment variables, validated once at start.

A wrong value stops the process with a SettingsError naming the variable.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from voicepipe.domain import STAGES
from voicepipe.errors import SettingsError

T = TypeVar("T")


@dataclass(frozen=True)
class Settings:
    database_url: str | None
    broker_url: str | None
    result_backend: str | None
    data_dir: Path
    flower_basic_auth: str | None
    directory_secret: str | None = None
    hourly_horizon_hours: int = 72
    daily_horizon_days: int = 7
    retention_events_days: int = 30
    retention_counters_days: int = 35
    retention_hourly_days: int = 90
    retention_daily_days: int = 730
    retention_ai_usage_days: int = 90
    retention_ai_usage_daily_days: int = 730
    # Records of handled incidents: settled dead letters, refusals, delivery counts.
    retention_records_days: int = 365
    max_retry_attempts: int = 3
    # Retries of one artifact within any hour: a third attempt right after two failed ones
    # would most likely meet the same outage; it waits.
    max_retries_per_hour: int = 2
    stall_timeout_seconds: int = 900
    max_clock_skew_seconds: int = 300
    max_requeues: int = 3
    processor: str = "simulated"
    simulator_seed: int = 0
    simulator_failure_rate: float = 0.0
    simulator_fail_stages: tuple[str, ...] = field(default_factory=tuple)
    simulator_time_scale: float = 1.0
    fake_now: datetime | None = None
    beat_interval_seconds: int | None = None
    log_level: str = "INFO"
    task_max_retries: int = 10
    lock_timeout_ms: int = 10_000
    delivery_limit: int = 5
    max_batch_size: int = 5_000
    # Byte limits on what producers send: an event's metadata (compact JSON, non-ASCII
    # escaped as \uXXXX: at least as many bytes as its UTF-8 form), and a whole
    # task message (its body; a single-event message at most SINGLE_EVENT_MESSAGE_BYTES).
    max_metadata_bytes: int = 16_384
    max_message_bytes: int = 8_388_608
    # Closed hours one batch of late events may touch (each is aggregated again).
    max_late_hours: int = 72
    # Output bounded by configuration, never by what producers send: organizations with
    # series of their own on the exporter, rows of a breakdown on the dashboard.
    exporter_max_organizations: int = 1_000
    # Signed authority (voicepipe/authority.py): how old a signed message may be; whether a
    # retry's requested_by is trusted unsigned (a closed deployment's choice, off by default).
    signature_max_age_seconds: int = 900
    unsigned_retries: bool = False
    dashboard_max_rows: int = 100
    # How long a single-event message may wait in the worker for its batch (worker/batching.py).
    record_flush_ms: int = 50
    # VOICEPIPE_EMBEDDED=1: start embedded servers for unset DATABASE_URL/BROKER_URL
    # (`voicepipe dev` does so itself); otherwise an unset URL is refused.
    embedded: bool = False


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be >= {minimum}, got {value}")
    return value


def parse_float(
    env: Mapping[str, str], name: str, default: float, lo: float, hi: float | None = None
) -> float:
    """A number from env[name] in [lo, hi], or default when unset or blank; SettingsError names it."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if not (value >= lo and (hi is None or value <= hi)) or math.isnan(value):
        bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise SettingsError(f"{name} must be {bound}, got {raw!r}")
    return value


# Values that may carry passwords are never echoed back in an error message.
SECRET_VARIABLES = frozenset(
    {"DATABASE_URL", "BROKER_URL", "RESULT_BACKEND", "FLOWER_BASIC_AUTH", "VOICEPIPE_DIRECTORY_SECRET"}
)


def _optional(env: Mapping[str, str], name: str, check: Callable[[str], bool], what: str) -> str | None:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None
    if not check(raw.strip()):
        if name in SECRET_VARIABLES:
            raise SettingsError(f"{name} must be {what} (its value is not shown: it may hold a password)")
        raise SettingsError(f"{name} must be {what}, got {raw!r}")
    return raw.strip()


# .env.example's placeholder password: a deployment that copied the example without
# replacing it must not run (Flower refuses it; tests/unit/test_settings.py reads the file).
PLACEHOLDER_PASSWORD = "change-me"


# Secrets anyone guesses first: refused wherever a password or a signing secret is read.
MIN_SECRET_LENGTH = 12
WEAK_SECRETS = frozenset({
    PLACEHOLDER_PASSWORD, "changeme", "password", "passw0rd", "password123", "admin", "administrator",
    "secret", "letmein", "qwertyuiop", "123456789012", "voicepipe", "postgres", "guest",
})


def secret_problem(secret: str) -> str | None:
    """Why a password or secret is too weak to use (None when it is not); never includes it."""
    if not secret.isprintable():
        return "contains a non-printable character (a zero-width space, a control character)"
    if secret.strip().lower() == PLACEHOLDER_PASSWORD:
        return f"still holds the placeholder of .env.example ({PLACEHOLDER_PASSWORD})"
    if len(secret) < MIN_SECRET_LENGTH:
        return f"is shorter than {MIN_SECRET_LENGTH} characters"
    if secret.lower() in WEAK_SECRETS or len(set(secret)) < 4:
        return "is a well-known or trivial password"
    return None


def basic_auth_problem(value: str) -> str | None:
    """Why a `user:password[,user:password]` value cannot be used (None when it can).

    Never includes the value: it holds passwords.
    """
    if value.strip() == "":
        return "is empty"
    for pair in value.split(","):
        user, sep, password = pair.partition(":")
        if not sep:
            return "must be user:password (comma-separated for several users)"
        if user.strip() == "" or password.strip() == "":
            return "has a credential with an empty user or password"
        weak = secret_problem(password)
        if weak is not None:
            return f"has a password that {weak}"
    return None


def _basic_auth(env: Mapping[str, str], name: str) -> str | None:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None  # unset; Flower itself refuses to start without it (worker/flower_guard.py)
    problem = basic_auth_problem(raw.strip())
    if problem is not None:
        raise SettingsError(f"{name} {problem} (its value is not shown: it holds a password)")
    return raw.strip()


def _directory_secret(env: Mapping[str, str], name: str) -> str | None:
    raw = (env.get(name) or "").strip()
    if raw == "":
        return None  # no message can set platform staff (voicepipe/directory/)
    weak = secret_problem(raw)
    if weak is not None:
        raise SettingsError(f"{name} {weak} (its value is not shown); replace it or leave it empty")
    return raw


def _stages(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    raw = env.get(name, "")
    stages = tuple(s.strip() for s in raw.split(",") if s.strip())
    for stage in stages:
        if stage not in STAGES:
            raise SettingsError(
                f"{name} names an unknown stage {stage!r}; stages are {', '.join(STAGES)}"
            )
    return stages


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise SettingsError(f"{name} must be 1 or 0, got {raw!r}")


def _fake_now(env: Mapping[str, str], name: str) -> datetime | None:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        value = datetime.fromisoformat(raw.strip())
    except ValueError:
        raise SettingsError(f"{name} must be an ISO-8601 timestamp, got {raw!r}") from None
    if value.tzinfo is None:
        raise SettingsError(f"{name} must carry a UTC offset, got {raw!r}")
    return value


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every setting; raise SettingsError naming a bad variable."""
    env = os.environ if env is None else env
    db = _optional(
        env,
        "DATABASE_URL",
        lambda v: v.startswith(("postgresql", "postgres")),
        "a PostgreSQL URL such as postgresql+psycopg://user@host/db",
    )
    broker = _optional(
        env,
        "BROKER_URL",
        lambda v: v.startswith(("redis://", "rediss://", "redis+socket://", "amqp://", "amqps://")),
        "a redis://, redis+socket:// or amqp:// URL",
    )
    auth = _basic_auth(env, "FLOWER_BASIC_AUTH")
    level = env.get("VOICEPIPE_LOG_LEVEL", "INFO").strip().upper() or "INFO"
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise SettingsError(f"VOICEPIPE_LOG_LEVEL must be a logging level, got {level!r}")
    processor = env.get("VOICEPIPE_PROCESSOR", "simulated").strip() or "simulated"
    return Settings(
        database_url=db,
        broker_url=broker,
        result_backend=_optional(env, "RESULT_BACKEND", lambda v: "://" in v, "a Celery result backend URL"),
        data_dir=Path(env.get("VOICEPIPE_DATA_DIR", "").strip() or ".voicepipe").absolute(),
        flower_basic_auth=auth,
        directory_secret=_directory_secret(env, "VOICEPIPE_DIRECTORY_SECRET"),
        hourly_horizon_hours=_int(env, "VOICEPIPE_HOURLY_HORIZON_HOURS", 72, minimum=1),
        daily_horizon_days=_int(env, "VOICEPIPE_DAILY_HORIZON_DAYS", 7, minimum=1),
        retention_events_days=_int(env, "VOICEPIPE_RETENTION_EVENTS_DAYS", 30, minimum=1),
        retention_counters_days=_int(env, "VOICEPIPE_RETENTION_COUNTERS_DAYS", 35, minimum=8),
        retention_hourly_days=_int(env, "VOICEPIPE_RETENTION_HOURLY_DAYS", 90, minimum=1),
        retention_daily_days=_int(env, "VOICEPIPE_RETENTION_DAILY_DAYS", 730, minimum=1),
        retention_records_days=_int(env, "VOICEPIPE_RETENTION_RECORDS_DAYS", 365, minimum=1),
        retention_ai_usage_days=_int(env, "VOICEPIPE_RETENTION_AI_USAGE_DAYS", 90, minimum=8),
        retention_ai_usage_daily_days=_int(env, "VOICEPIPE_RETENTION_AI_USAGE_DAILY_DAYS", 730, minimum=1),
        max_retry_attempts=_int(env, "VOICEPIPE_MAX_RETRY_ATTEMPTS", 3, minimum=1),
        max_retries_per_hour=_int(env, "VOICEPIPE_MAX_RETRIES_PER_HOUR", 2, minimum=1),
        stall_timeout_seconds=_int(env, "VOICEPIPE_STALL_TIMEOUT_SECONDS", 900, minimum=1),
        max_clock_skew_seconds=_int(env, "VOICEPIPE_MAX_CLOCK_SKEW_SECONDS", 300, minimum=0),
        max_requeues=_int(env, "VOICEPIPE_MAX_REQUEUES", 3, minimum=0),
        processor=processor,
        simulator_seed=_int(env, "VOICEPIPE_SIMULATOR_SEED", 0),
        simulator_failure_rate=parse_float(env, "VOICEPIPE_SIMULATOR_FAILURE_RATE", 0.0, 0.0, 1.0),
        simulator_fail_stages=_stages(env, "VOICEPIPE_SIMULATOR_FAIL_STAGES"),
        simulator_time_scale=parse_float(env, "VOICEPIPE_SIMULATOR_TIME_SCALE", 1.0, 0.0),
        fake_now=_fake_now(env, "VOICEPIPE_FAKE_NOW"),
        beat_interval_seconds=_int(env, "VOICEPIPE_BEAT_INTERVAL_SECONDS", 0, minimum=0) or None,
        log_level=level,
        task_max_retries=_int(env, "VOICEPIPE_TASK_MAX_RETRIES", 10, minimum=0),
        lock_timeout_ms=_int(env, "VOICEPIPE_LOCK_TIMEOUT_MS", 10_000, minimum=1),
        delivery_limit=_int(env, "VOICEPIPE_DELIVERY_LIMIT", 5, minimum=1),
        max_batch_size=_int(env, "VOICEPIPE_MAX_BATCH_SIZE", 5_000, minimum=1),
        max_metadata_bytes=_int(env, "VOICEPIPE_MAX_METADATA_BYTES", 16_384, minimum=256),
        max_message_bytes=_int(env, "VOICEPIPE_MAX_MESSAGE_BYTES", 8_388_608, minimum=65_536),
        max_late_hours=_int(env, "VOICEPIPE_MAX_LATE_HOURS", 72, minimum=1),
        exporter_max_organizations=_int(env, "VOICEPIPE_EXPORTER_MAX_ORGANIZATIONS", 1_000, minimum=1),
        signature_max_age_seconds=_int(env, "VOICEPIPE_SIGNATURE_MAX_AGE_SECONDS", 900, minimum=1),
        unsigned_retries=_flag(env, "VOICEPIPE_UNSIGNED_RETRIES"),
        dashboard_max_rows=_int(env, "VOICEPIPE_DASHBOARD_MAX_ROWS", 100, minimum=1),
        record_flush_ms=_int(env, "VOICEPIPE_RECORD_FLUSH_MS", 50, minimum=1),
        embedded=_flag(env, "VOICEPIPE_EMBEDDED"),
    )


_cached: Settings | None = None


def get_settings() -> Settings:
    """The process's settings, loaded on first use."""
    global _cached
    if _cached is None:
        _cached = load_settings()
    return _cached


def reset_settings() -> None:
    """Forget cached settings (tests that change the environment call this)."""
    global _cached
    _cached = None
