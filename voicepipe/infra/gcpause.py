"""Pause Python's cyclic garbage collector around bulk row work.

An hour of 10,000 organizations builds a few million short-lived objects (fetched
rows, parts dicts, figures, COPY buffers). None of them is in a reference cycle, so
reference counting frees each as soon as it is dropped; the cyclic collector,
triggered every 700 allocations, only walks them to find nothing: 40 to 100 ms of a
500 ms hour (bench/scale.py). Paused for the duration and resumed after, the next
collection finds any cycle made meanwhile, as it would have.
"""

from __future__ import annotations

import functools
import gc
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

_lock = threading.Lock()
_depth = 0  # pauses in progress, in any thread: the collector is process-wide
_resume = False  # whether the collector was enabled when the first pause began


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Disable the cyclic collector until the outermost pause in the process ends."""
    global _depth, _resume
    with _lock:
        if _depth == 0:
            _resume = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _resume:
                gc.enable()


def without_cyclic_gc(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorator form of cyclic_gc_paused."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with cyclic_gc_paused():
            return fn(*args, **kwargs)

    return wrapper
