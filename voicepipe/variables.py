"""Every environment variable voicepipe reads: what it means and its default.

The documentation's configuration reference is generated from this table
(docs/reference.py), and tests/unit/test_variables.py checks it against the code: every
variable the shipped code reads is here, nothing here is unread, and each default
written here is the one voicepipe/settings.py applies.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variable:
    name: str  # a name ending in * stands for a family (VOICEPIPE_ALERT_*)
    meaning: str  # Markdown
    default: str  # Markdown; a setting's default first, in backquotes


VARIABLES: tuple[Variable, ...] = (
    Variable(
        "DATABASE_URL",
        "SQLAlchemy URL, `postgresql+psycopg://user:pass@host/db`",
        "refused, naming it; `voicepipe dev` (or `VOICEPIPE_EMBEDDED=1`) starts an embedded PostgreSQL "
        "under `VOICEPIPE_DATA_DIR`",
    ),
    Variable(
        "BROKER_URL",
        "Celery broker: `redis://`, `redis+socket://` or `amqp://`",
        "refused, naming it; `voicepipe dev` (or `VOICEPIPE_EMBEDDED=1`) starts an embedded Valkey under "
        "`VOICEPIPE_DATA_DIR`",
    ),
    Variable(
        "VOICEPIPE_EMBEDDED",
        "`1`: any command may start (or reuse) the embedded servers for an unset "
        "`DATABASE_URL`/`BROKER_URL`",
        "`0`: only `voicepipe dev` does",
    ),
    Variable(
        "RESULT_BACKEND",
        "where task results and refusals are stored",
        "the broker for Redis; for RabbitMQ the database, `db+DATABASE_URL` (tables `celery_taskmeta`, "
        "`celery_tasksetmeta`, made by the worker; durable and readable by any process, which `rpc://` "
        "is not)",
    ),
    Variable(
        "VOICEPIPE_TASK_MAX_RETRIES",
        "transient retries (database or broker down, lock or statement timeout) of a task, with jittered "
        "backoff 2, 4, … 60 s; then a write task parks its message as a dead letter, an aggregation task "
        "fails for the next wrapper run",
        "`10` (about 3 minutes)",
    ),
    Variable(
        "VOICEPIPE_LOCK_TIMEOUT_MS",
        "`lock_timeout` of every transaction: a task blocked on a lock fails fast as transient and is "
        "retried, then parked; statements are bounded too, 5 s below the task's soft time limit (`SET "
        "LOCAL` per transaction)",
        "`10000`",
    ),
    Variable(
        "VOICEPIPE_DELIVERY_LIMIT",
        "deliveries of one message (a worker lost each time: OOM, segfault, kill) before it is parked "
        "instead of redelivered again",
        "`5`",
    ),
    Variable(
        "VOICEPIPE_MAX_BATCH_SIZE",
        "items per `record_batch` message (events or AI calls); larger batches are refused with "
        "`InvalidInput`",
        "`5000`",
    ),
    Variable(
        "VOICEPIPE_EXPORTER_MAX_ORGANIZATIONS",
        "organizations with exporter series of their own (the most active); the rest summed into one "
        "series",
        "`1000`",
    ),
    Variable(
        "VOICEPIPE_DASHBOARD_MAX_ROWS",
        "rows of a dashboard breakdown (AI usage by operation, coach, player: the costliest); the rest "
        "summed into one `(others)` row",
        "`100`",
    ),
    Variable(
        "VOICEPIPE_MAX_LATE_HOURS",
        "closed hours one `record_batch` may touch with late events (each is aggregated again); more is "
        "refused with `InvalidInput` naming `events`",
        "`72`",
    ),
    Variable(
        "VOICEPIPE_MAX_METADATA_BYTES",
        "an event's `metadata`, as compact JSON with non-ASCII characters escaped (`é` is `\\u00e9`, "
        "6 bytes); larger is refused with `InvalidInput` naming `metadata`",
        "`16384`",
    ),
    Variable(
        "VOICEPIPE_MAX_MESSAGE_BYTES",
        "a task message's body (a single-event message: at most 256 KiB); larger is parked unread as a "
        "dead letter (`too_large`, its size kept, not its body)",
        "`8388608`",
    ),
    Variable(
        "VOICEPIPE_RECORD_FLUSH_MS",
        "longest wait of a single-event message (`record`, `usage.record`) for its batch in the worker, "
        "when no pool process is busy with one",
        "`50`",
    ),
    Variable(
        "VOICEPIPE_DATA_DIR",
        "where embedded servers keep their data",
        "`./.voicepipe`",
    ),
    Variable(
        "FLOWER_BASIC_AUTH",
        "`user:password[,user2:pw2]` for Flower; an empty or blank value, an empty user or password, or "
        "`.env.example`'s placeholder password stops Flower at start, naming the variable (never echoing "
        "it)",
        "required (`voicepipe dev` generates one)",
    ),
    Variable(
        "VOICEPIPE_DIRECTORY_SECRET",
        "the platform's HMAC-SHA256 signing secret: `upsert_user` and retries must then be signed, fresh "
        "and unused, and only such messages set platform staff or act as staff (see Security)",
        "unset: no message can set staff",
    ),
    Variable(
        "VOICEPIPE_SIGNATURE_MAX_AGE_SECONDS",
        "how old a signed message may be when a worker takes it",
        "`900`",
    ),
    Variable(
        "VOICEPIPE_UNSIGNED_RETRIES",
        "`1`: trust a retry's `requested_by` unsigned (a closed deployment's choice)",
        "`0`",
    ),
    Variable(
        "VOICEPIPE_APP_DB_PASSWORD",
        "`voicepipe migrate --app-role NAME` only: the password it gives the application's role",
        "unset",
    ),
    Variable(
        "VOICEPIPE_HOURLY_HORIZON_HOURS",
        "catch-up horizon of the hourly run",
        "`72`",
    ),
    Variable(
        "VOICEPIPE_DAILY_HORIZON_DAYS",
        "catch-up horizon of the daily runs",
        "`7`",
    ),
    Variable(
        "VOICEPIPE_RETENTION_EVENTS_DAYS",
        "pipeline events kept (counters can be rebuilt within it)",
        "`30`",
    ),
    Variable(
        "VOICEPIPE_RETENTION_COUNTERS_DAYS",
        "event counters kept (well past the horizons)",
        "`35`",
    ),
    Variable(
        "VOICEPIPE_RETENTION_HOURLY_DAYS",
        "hourly snapshots kept",
        "`90`",
    ),
    Variable(
        "VOICEPIPE_RETENTION_DAILY_DAYS",
        "daily snapshots kept",
        "`730`",
    ),
    Variable(
        "VOICEPIPE_RETENTION_AI_USAGE_DAYS",
        "raw AI usage rows kept",
        "`90`",
    ),
    Variable(
        "VOICEPIPE_RETENTION_AI_USAGE_DAILY_DAYS",
        "daily AI usage rollups kept",
        "`730`",
    ),
    Variable(
        "VOICEPIPE_RETENTION_RECORDS_DAYS",
        "records of handled incidents kept: replayed or discarded dead letters, retry and signature "
        "refusals, delivery counts (parked letters and the staff audit are kept)",
        "`365`",
    ),
    Variable(
        "VOICEPIPE_MAX_RETRY_ATTEMPTS",
        "retries allowed per artifact",
        "`3`",
    ),
    Variable(
        "VOICEPIPE_MAX_RETRIES_PER_HOUR",
        "retries of one artifact accepted within any hour (past it: `RetryRateLimited`)",
        "`2`",
    ),
    Variable(
        "VOICEPIPE_STALL_TIMEOUT_SECONDS",
        "no progress for this long = stalled (retryable, re-queued by the sweeper)",
        "`900`",
    ),
    Variable(
        "VOICEPIPE_MAX_REQUEUES",
        "sweeper re-queues of a stalled stage before the artifact is failed",
        "`3`",
    ),
    Variable(
        "VOICEPIPE_MAX_CLOCK_SKEW_SECONDS",
        "how far in the future an event's or AI call's time may lie (producers' clock skew); later ones "
        "are refused",
        "`300`",
    ),
    Variable(
        "VOICEPIPE_PROCESSOR",
        "the stage processor",
        "`simulated`",
    ),
    Variable(
        "VOICEPIPE_SIMULATOR_SEED",
        "seed of the simulated processor",
        "`0`",
    ),
    Variable(
        "VOICEPIPE_SIMULATOR_FAILURE_RATE",
        "probability that a simulated stage run fails",
        "`0.0`",
    ),
    Variable(
        "VOICEPIPE_SIMULATOR_FAIL_STAGES",
        "stages that always fail, comma-separated",
        "none",
    ),
    Variable(
        "VOICEPIPE_SIMULATOR_TIME_SCALE",
        "factor on realistic stage durations (0.01: a 20 s transcription takes 0.2 s)",
        "`1.0`",
    ),
    Variable(
        "VOICEPIPE_BEAT_INTERVAL_SECONDS",
        "dev and tests only: every beat entry fires this often instead of its crontab",
        "unset",
    ),
    Variable(
        "VOICEPIPE_FAKE_NOW",
        "tests and rehearsals only: pins the clock windows are computed from",
        "unset",
    ),
    Variable(
        "VOICEPIPE_LOG_LEVEL",
        "log level of every process: the `voicepipe` commands, workers and beat (it wins over `celery "
        "-l`), `voicepipe dev`'s children, and compose's workers, beat and Flowers (`-l`/`--logging`)",
        "`INFO`",
    ),
    Variable(
        "VOICEPIPE_EXPORTER_AUTH",
        "`user:password[,user2:pw2]` for `voicepipe exporter`; the same rules as `FLOWER_BASIC_AUTH` (no "
        "empty user or password, no placeholder)",
        "required: the exporter refuses to start without it",
    ),
    Variable(
        "VOICEPIPE_DASHBOARD_AUTH",
        "`user:password[,user2:pw2]` for `voicepipe dashboard` (pages and `/api`); the same rules and "
        "the same check as `VOICEPIPE_EXPORTER_AUTH`",
        "required: the dashboard refuses to start without it; `voicepipe dev` passes Flower's generated "
        "credentials",
    ),
    Variable(
        "VOICEPIPE_BEAT_HEARTBEAT_FILE",
        "where the exporter and the alerts read beat's heartbeat (compose: beat's volume, read-only)",
        "`VOICEPIPE_DATA_DIR/beat-heartbeat.json`",
    ),
    Variable(
        "VOICEPIPE_ALERT_*",
        "thresholds of the built-in health checks (see Operations, Alerts)",
        "see there",
    ),
)
