"""The cyclic collector is paused for bulk work and resumed exactly as it was."""

from __future__ import annotations

import gc
import threading

import pytest

from voicepipe.infra.gcpause import cyclic_gc_paused, without_cyclic_gc


@pytest.fixture(autouse=True)
def _collector_restored() -> object:
    was = gc.isenabled()
    yield
    if was:
        gc.enable()
    else:
        gc.disable()


def test_paused_inside_and_enabled_after() -> None:
    gc.enable()
    with cyclic_gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_nested_pauses_resume_only_at_the_outermost_end() -> None:
    gc.enable()
    with cyclic_gc_paused():
        with cyclic_gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()


def test_a_collector_disabled_before_stays_disabled() -> None:
    gc.disable()
    with cyclic_gc_paused():
        pass
    assert not gc.isenabled()


def test_resumed_after_an_exception_and_the_exception_goes_through() -> None:
    gc.enable()

    @without_cyclic_gc
    def fails() -> None:
        assert not gc.isenabled()
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        fails()
    assert gc.isenabled()


def test_overlapping_pauses_in_two_threads_resume_when_both_ended() -> None:
    gc.enable()
    inside, release = threading.Event(), threading.Event()

    def other() -> None:
        with cyclic_gc_paused():
            inside.set()
            release.wait(5)

    thread = threading.Thread(target=other)
    with cyclic_gc_paused():
        thread.start()
        assert inside.wait(5)
    assert not gc.isenabled(), "the other thread's pause is still in progress"
    release.set()
    thread.join(5)
    assert gc.isenabled()


def test_the_decorator_returns_the_result_and_keeps_the_name() -> None:
    @without_cyclic_gc
    def add(a: int, b: int) -> int:
        return a + b

    assert add(2, b=3) == 5
    assert add.__name__ == "add"
