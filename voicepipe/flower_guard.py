"""Flower refuses to start without authentication, except under `voicepipe dev`.

Flower reads FLOWER_BASIC_AUTH (and every other FLOWER_* variable) itself; this
module only checks, once Flower has parsed its options, that some authentication
is configured. Flower shows task arguments and can send tasks, so an open Flower is
an open door into the pipeline.

The hook is Celery's ``import_modules`` signal: Flower sends it from its
constructor (``capp.loader.import_default_modules()``), after its options are
parsed and before it binds a port. The worker sends it too, so the check first
makes sure the running command is ``celery ... flower``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from voicepipe.errors import SettingsError

log = logging.getLogger(__name__)

DEV_FLAG = "VOICEPIPE_DEV"


class FlowerAuthMissing(SystemExit):
    """Stops the Flower process with a message naming FLOWER_BASIC_AUTH."""


def refusal(env: Mapping[str, str], basic_auth: object, oauth: object) -> str | None:
    """Why Flower must not start (None when it may): no auth configured outside dev."""
    from voicepipe.settings import load_settings

    raw = env.get("FLOWER_BASIC_AUTH", "").strip()
    if raw and not all(":" in pair and pair.split(":", 1)[1] for pair in raw.split(",")):
        # Never echo the value: it holds passwords.
        return "Flower refuses to start: FLOWER_BASIC_AUTH must be user:password[,user:password]"
    try:
        load_settings(env)  # any other wrong variable stops Flower too, naming itself
    except SettingsError as exc:
        return f"Flower refuses to start: {exc}"
    if basic_auth or oauth:
        return None
    if env.get(DEV_FLAG, "").strip() == "1":
        return None
    return (
        "Flower refuses to start without authentication: set FLOWER_BASIC_AUTH=user:password "
        "(several users separated by commas). Only `voicepipe dev` runs it without."
    )


def _running_flower() -> bool:
    import click

    ctx = click.get_current_context(silent=True)
    return ctx is not None and ctx.command.name == "flower"


def check_flower_auth(**_: Any) -> None:
    """Signal receiver: stop `celery -A worker flower` when no authentication is set."""
    if not _running_flower():
        return
    from tornado.options import options  # Flower's parsed options (env, flags, flowerconfig.py)

    reason = refusal(os.environ, options.basic_auth, options.auth)
    if reason is not None:
        raise FlowerAuthMissing(reason)
    if not (options.basic_auth or options.auth):
        log.warning("Flower runs without authentication (%s=1, development only)", DEV_FLAG)


def install() -> None:
    from celery.signals import import_modules

    import_modules.connect(check_flower_auth, weak=False, dispatch_uid="voicepipe-flower-auth")
