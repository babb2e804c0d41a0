"""`voicepipe dev`'s terminal: every child's output, prefixed and coloured per process.

As foreman and honcho do: ``worker    | [..] Task voicepipe.events.record[..] succeeded``.
Each line also goes, unchanged, to the child's log file (VOICEPIPE_DATA_DIR/logs/NAME.log).
Colours only on a terminal (or with FORCE_COLOR), never with NO_COLOR (no-color.org).
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import IO, TextIO

# ANSI foreground colours, one per process in start order: cyan, yellow, green, magenta, blue, red.
COLOURS = ("36", "33", "32", "35", "34", "31")


def use_colour(stream: TextIO) -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    return bool(getattr(stream, "isatty", lambda: False)())


class Prefixer:
    """Copies children's output to the terminal (prefixed) and to their log files."""

    def __init__(self, names: list[str], stream: TextIO | None = None, colour: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        self.colour = use_colour(self.stream) if colour is None else colour
        self.width = max((len(name) for name in names), default=0)
        self.colours = {name: COLOURS[i % len(COLOURS)] for i, name in enumerate(names)}
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []

    def prefix(self, name: str) -> str:
        label = f"{name:<{self.width}} |"
        return f"\x1b[{self.colours.get(name, '0')}m{label}\x1b[0m" if self.colour else label

    def pump(self, name: str, source: IO[bytes], log_path: Path) -> None:
        """Start copying source (a child's stdout) until it closes."""
        thread = threading.Thread(target=self._copy, args=(name, source, log_path), name=f"dev-{name}",
                                  daemon=True)
        thread.start()
        self.threads.append(thread)

    def _copy(self, name: str, source: IO[bytes], log_path: Path) -> None:
        prefix = self.prefix(name)
        with open(log_path, "ab") as log:
            for raw in iter(source.readline, b""):
                log.write(raw)
                log.flush()
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                with self.lock:
                    try:
                        self.stream.write(f"{prefix} {line}\n")
                        self.stream.flush()
                    except (OSError, ValueError):
                        pass  # the terminal went away (closed pipe): the log file still gets every line
        source.close()

    def join(self, timeout: float = 5.0) -> None:
        for thread in self.threads:
            thread.join(timeout)
