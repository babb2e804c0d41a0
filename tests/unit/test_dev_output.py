"""voicepipe dev's terminal output: prefixed, coloured per process, and the log files unchanged."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from voicepipe.cli.output import Prefixer, use_colour


def pumped(tmp_path: Path, colour: bool) -> tuple[str, dict[str, bytes]]:
    terminal = io.StringIO()
    out = Prefixer(["worker", "simulator"], stream=terminal, colour=colour)
    for name, payload in (("worker", b"[INFO] ready\nTask x succeeded\n"), ("simulator", b"sent 3 \xff events\n")):
        read, write = os.pipe()
        os.write(write, payload)
        os.close(write)
        out.pump(name, os.fdopen(read, "rb"), tmp_path / f"{name}.log")
        out.join()
    return terminal.getvalue(), {p.stem: p.read_bytes() for p in tmp_path.glob("*.log")}


def test_lines_are_prefixed_with_the_padded_process_name_and_logged_unchanged(tmp_path: Path) -> None:
    shown, logs = pumped(tmp_path, colour=False)
    assert shown.splitlines() == [
        "worker    | [INFO] ready",
        "worker    | Task x succeeded",
        "simulator | sent 3 \ufffd events",
    ]
    assert logs == {"worker": b"[INFO] ready\nTask x succeeded\n", "simulator": b"sent 3 \xff events\n"}


def test_each_process_gets_its_own_colour(tmp_path: Path) -> None:
    shown, _ = pumped(tmp_path, colour=True)
    lines = shown.splitlines()
    assert lines[0] == "\x1b[36mworker    |\x1b[0m [INFO] ready"
    assert lines[2] == "\x1b[33msimulator |\x1b[0m sent 3 \ufffd events"


def test_colour_only_on_a_terminal_unless_forced_and_never_with_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    for variable in ("NO_COLOR", "FORCE_COLOR"):
        monkeypatch.delenv(variable, raising=False)
    assert use_colour(Tty()) and not use_colour(io.StringIO())
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert use_colour(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_colour(Tty())
