"""Health checks for each process type, used by docker-compose and `voicepipe health`.

Each check answers one question that matters for its process and returns a
``Health`` with a one-line reason:

- worker: the named local worker answers a ping and consumes its queues;
- beat: the beat loop ticks and its sends succeed (``HeartbeatScheduler`` writes a
  heartbeat file each tick), and it has sent something recently;
- db: ``SELECT 1`` works and the schema is at the migrations' head;
- broker: a connection opens and the server answers.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery.beat import PersistentScheduler

# The shortest production schedule entry fires every 5 minutes
# (requeue-stalled-artifacts); two periods without a send, plus a minute of
# grace, means beat has stopped emitting.
DEFAULT_BEAT_MAX_SILENCE_S = 2 * 300 + 60
# HeartbeatScheduler ticks at least every 15 s; four missed ticks is a hung loop.
DEFAULT_BEAT_MAX_TICK_AGE_S = 60
HEARTBEAT_FILENAME = "beat-heartbeat.json"


@dataclass(frozen=True)
class Health:
    ok: bool
    reason: str

    def line(self) -> str:
        # One line whatever the reason holds: exception texts (Celery's among them) wrap.
        reason = " ".join(self.reason.split())
        return f"{'healthy' if self.ok else 'unhealthy'}: {reason}"


def _app() -> Any:
    from worker import app

    return app


# --- worker -----------------------------------------------------------------

def worker_nodename(name: str | None) -> str:
    """Expand %h/%n/%d like `celery worker -n` does; default celery@<hostname>."""
    from celery.utils.nodenames import default_nodename, host_format

    return host_format(default_nodename(name))


def check_worker(name: str | None = None, queues: Sequence[str] = (), timeout: float = 3.0) -> Health:
    """The worker NAME answers a ping and consumes every queue in QUEUES (at least one)."""
    app = _app()
    node = worker_nodename(name)
    replies = app.control.ping(destination=[node], timeout=timeout)
    if not any(node in reply for reply in replies or []):
        return Health(False, f"worker {node} did not answer a ping within {timeout:g}s")
    active = app.control.inspect(destination=[node], timeout=timeout).active_queues() or {}
    if node not in active:
        return Health(False, f"worker {node} did not report its queues within {timeout:g}s")
    consumed = sorted(q["name"] for q in active[node])
    if not consumed:
        return Health(False, f"worker {node} answers but consumes no queue")
    missing = sorted(set(queues) - set(consumed))
    if missing:
        return Health(False, f"worker {node} does not consume {', '.join(missing)} "
                             f"(consumes {', '.join(consumed)})")
    return Health(True, f"worker {node} answers and consumes {', '.join(consumed)}")


# --- broker -----------------------------------------------------------------

def check_broker(timeout: float = 5.0) -> Health:
    """A connection to the broker opens and the server answers."""
    app = _app()
    with app.connection_for_write() as conn:
        safe = conn.as_uri()
        try:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0.2, timeout=timeout)
            channel = conn.default_channel
            client = getattr(channel, "client", None)
            if client is not None and hasattr(client, "ping"):
                client.ping()  # Redis: a round trip, not only an open socket
        except Exception as exc:
            return Health(False, f"broker {safe} unreachable: {type(exc).__name__}: {exc}")
    return Health(True, f"broker {safe} answers")


# --- database ---------------------------------------------------------------

def check_db() -> Health:
    """SELECT 1 works and the schema is at the migrations' head."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy import text

    from models.session import database_url, make_engine
    from voicepipe.migrate import alembic_config

    url = database_url()
    engine = make_engine(url, poolclass=None)
    safe = engine.url.render_as_string(hide_password=True)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            current = set(MigrationContext.configure(conn).get_current_heads())
    except Exception as exc:
        return Health(False, f"database {safe} unreachable: {type(exc).__name__}: {exc}".splitlines()[0])
    finally:
        engine.dispose()
    heads = set(ScriptDirectory.from_config(alembic_config(url)).get_heads())
    if current != heads:
        return Health(False, f"database schema at {', '.join(sorted(current)) or 'no revision'}, "
                             f"migrations head is {', '.join(sorted(heads))}: run `voicepipe migrate`")
    return Health(True, f"database answers, schema at head {', '.join(sorted(heads))}")


# --- beat -------------------------------------------------------------------

def heartbeat_path(data_dir: Path | None = None) -> Path:
    if data_dir is None:
        from voicepipe.settings import get_settings

        data_dir = get_settings().data_dir
    return data_dir / HEARTBEAT_FILENAME


def _write_json_atomically(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, path)  # a reader never sees half a file


class HeartbeatScheduler(PersistentScheduler):  # type: ignore[misc]
    """Celery's persistent scheduler that records, each tick, that it ticked and what it sent.

    Selected by ``beat_scheduler`` in worker/config.py; `voicepipe health beat`
    reads the file it writes (VOICEPIPE_DATA_DIR/beat-heartbeat.json).
    """

    # Celery's default is 300 s: with entries 5 minutes apart beat would sleep that
    # long between ticks and a hung loop could not be told from a sleeping one.
    max_interval = 15

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._heartbeat: dict[str, Any] = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": time.time(),
            "ticked_at": None,
            "last_sent_at": None,
            "last_sent": None,
            "last_error_at": None,
            "last_error": None,
        }
        self._heartbeat_path = heartbeat_path()
        super().__init__(*args, **kwargs)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        interval: float = super().tick(*args, **kwargs)
        self._heartbeat["ticked_at"] = time.time()
        _write_json_atomically(self._heartbeat_path, self._heartbeat)
        return interval

    def apply_async(self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any) -> Any:
        try:
            result = super().apply_async(entry, producer=producer, advance=advance, **kwargs)
        except Exception as exc:
            self._heartbeat["last_error_at"] = time.time()
            self._heartbeat["last_error"] = f"{entry.name}: {exc}"[:500]
            raise
        self._heartbeat["last_sent_at"] = time.time()
        self._heartbeat["last_sent"] = entry.name
        return result


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_beat(
    path: Path | None = None,
    max_tick_age: float = DEFAULT_BEAT_MAX_TICK_AGE_S,
    max_silence: float = DEFAULT_BEAT_MAX_SILENCE_S,
    now: float | None = None,
) -> Health:
    """Beat's loop ticked within MAX_TICK_AGE, its last send succeeded, and it sent recently."""
    path = path or heartbeat_path()
    now = time.time() if now is None else now
    try:
        beat = json.loads(path.read_text())
    except FileNotFoundError:
        return Health(False, f"no beat heartbeat at {path}: beat not running here")
    except (OSError, ValueError) as exc:
        return Health(False, f"beat heartbeat {path} unreadable: {exc}")
    if beat.get("host") == socket.gethostname() and not _pid_alive(int(beat["pid"])):
        return Health(False, f"beat process {beat['pid']} is not running")
    ticked_at = beat.get("ticked_at") or beat["started_at"]
    if now - ticked_at > max_tick_age:
        return Health(False, f"beat last ticked {now - ticked_at:.0f}s ago (limit {max_tick_age:g}s)")
    sent_at, error_at = beat.get("last_sent_at"), beat.get("last_error_at")
    if error_at is not None and (sent_at is None or error_at > sent_at):
        return Health(False, f"beat could not send {beat['last_error']}")
    quiet_since = sent_at or beat["started_at"]
    if now - quiet_since > max_silence:
        return Health(False, f"beat has sent nothing for {now - quiet_since:.0f}s (limit {max_silence:g}s)")
    if sent_at is None:
        return Health(True, f"beat ticking, nothing due since it started {now - beat['started_at']:.0f}s ago")
    return Health(True, f"beat ticking, last sent {beat['last_sent']} {now - sent_at:.0f}s ago")
