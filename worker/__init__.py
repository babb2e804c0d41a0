"""The Celery app: `celery -A worker worker|beat|flower`.

Configuration is resolved lazily (on first use), from environment variables; when
BROKER_URL is unset the embedded Redis under VOICEPIPE_DATA_DIR is used.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from worker.routes import TASK_MODULES

app = Celery("voicepipe", include=list(TASK_MODULES))


def broker_url() -> str:
    from voicepipe.settings import get_settings

    settings = get_settings()
    if settings.broker_url:
        return settings.broker_url
    from voicepipe.embedded import redis_url

    return redis_url(settings.data_dir)


def _configure(sender: Celery, **_: Any) -> None:
    from voicepipe.settings import get_settings
    from worker.config import celery_config

    settings = get_settings()
    sender.config_from_object(
        celery_config(broker_url(), settings.result_backend, settings.beat_interval_seconds)
    )


app.on_configure.connect(_configure, weak=False)

import worker.signals  # noqa: E402,F401  (engine lifecycle hooks)
from voicepipe.flower_guard import install as _install_flower_guard  # noqa: E402

_install_flower_guard()  # `celery -A worker flower` refuses to start without auth

__all__ = ["app"]
