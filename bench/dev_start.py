"""`python -m bench.dev_start`: seconds from `voicepipe dev` to its first recorded event, and to stop.

A new user's first impression: a fresh data folder (the embedded servers are created, not
reused), the simulator on, the clock started when the command is. It reads the embedded
database through its unix socket (`<data>/pg`), so it measures earlier releases the same way.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg


def first_event_seconds(data: Path, started: float, deadline: float, proc: subprocess.Popen[bytes]) -> float:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"voicepipe dev exited with {proc.returncode}; see {data / 'logs'}")
        try:
            with psycopg.connect(host=str(data / "pg"), user="postgres", dbname="postgres", connect_timeout=2) as conn:
                count = conn.execute("SELECT count(*) FROM pipeline_events").fetchone()
                if count and count[0] > 0:
                    return time.monotonic() - started
        except psycopg.Error:
            pass
        time.sleep(0.2)
    raise SystemExit("no event recorded within the time allowed")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dev_start")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    for run in range(1, args.runs + 1):
        data = Path(tempfile.mkdtemp(prefix="vpdev-", dir="/tmp"))
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "BROKER_URL")}
        env["VOICEPIPE_DATA_DIR"] = str(data)
        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "voicepipe.cli", "dev", "--flower-port", str(free_port()),
                                 "--dashboard-port", str(free_port())], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            first = first_event_seconds(data, started, started + args.timeout, proc)
            proc.send_signal(signal.SIGINT)
            t_stop = time.monotonic()
            code = proc.wait(60)
            stopped = time.monotonic() - t_stop
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        print(f"run {run}: first event after {first:.1f} s; Ctrl-C stopped it in {stopped:.1f} s (exit {code})",
              flush=True)
        shutil.rmtree(data, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
