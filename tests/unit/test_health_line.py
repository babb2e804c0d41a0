from __future__ import annotations

from voicepipe.observability.health import Health


def test_a_health_line_is_one_line_whatever_the_reason_holds() -> None:
    reason = "could not send: Retry limit exceeded while trying to reconnect\nbackend.  The app must\trestart."
    line = Health(False, reason).line()
    assert line == ("unhealthy: could not send: Retry limit exceeded while trying to reconnect "
                    "backend. The app must restart.")
    assert Health(True, "worker answers").line() == "healthy: worker answers"
