"""The Celery app: `celery -A worker worker|beat|flower`.

Configuration is resolved lazily (on first use), from environment variables; an
unset BROKER_URL is refused naming it, unless VOICEPIPE_EMBEDDED=1 asks for the
embedded Redis under VOICEPIPE_DATA_DIR.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from worker.routes import TASK_MODULES


def broker_url() -> str:
    from voicepipe.settings import get_settings

    settings = get_settings()
    if settings.broker_url:
        return settings.broker_url
    from voicepipe.infra.embedded import redis_url, require_allowed

    require_allowed("BROKER_URL")  # refused unless VOICEPIPE_EMBEDDED=1 (`voicepipe dev` passes URLs)
    return redis_url(settings.data_dir)


def _configure(sender: Celery, **_: Any) -> None:
    from voicepipe.settings import get_settings
    from worker.config import celery_config

    settings = get_settings()
    sender.config_from_object(
        celery_config(broker_url(), settings.result_backend, settings.beat_interval_seconds)
    )


class _App(Celery):
    def on_configure(self) -> None:  # type: ignore[override]
        # A method, not Celery's on_configure signal: a signal receiver's error is only
        # logged and the app would go on with Celery's default broker (amqp://localhost);
        # a method's SettingsError (an unset BROKER_URL) stops the command, naming it.
        _configure(self)


app = _App("voicepipe", include=list(TASK_MODULES))

import worker.signals  # noqa: E402,F401  (engine lifecycle hooks)

# Buffered single-event messages go back to the broker at a warm shutdown (by name: no import cycle).
app.steps["consumer"].add("worker.batching:HandBack")
from worker.flower_guard import install as _install_flower_guard  # noqa: E402

_install_flower_guard()  # `celery -A worker flower` refuses to start without auth

__all__ = ["app"]
