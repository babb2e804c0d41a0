"""Flower refuses to start without real authentication (`voicepipe dev` generates a password).

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

import os
from collections.abc import Mapping, Sequence
from typing import Any

from voicepipe.errors import SettingsError


class FlowerAuthMissing(SystemExit):
    """Stops the Flower process with a message naming FLOWER_BASIC_AUTH."""


def refusal(env: Mapping[str, str], basic_auth: Sequence[str] | None, oauth: object) -> str | None:
    """Why Flower must not start (None when it may).

    Checks both the variable and the credentials Flower parsed from it (or from
    --basic_auth): Flower turns an empty FLOWER_BASIC_AUTH into [""], a list that
    looks configured and lets an empty `Authorization: Basic` header in.
    """
    from voicepipe.settings import basic_auth_problem, load_settings

    if "FLOWER_BASIC_AUTH" in env:
        problem = basic_auth_problem(env["FLOWER_BASIC_AUTH"])
        if problem is not None:
            # Never echo the value: it holds passwords.
            return f"Flower refuses to start: FLOWER_BASIC_AUTH {problem}; set it to user:password"
    for credential in basic_auth or ():
        problem = basic_auth_problem(credential)
        if problem is not None:
            return f"Flower refuses to start: FLOWER_BASIC_AUTH (or --basic_auth) {problem}"
    try:
        load_settings(env)  # any other wrong variable stops Flower too, naming itself
    except SettingsError as exc:
        return f"Flower refuses to start: {exc}"
    if basic_auth or oauth:
        return None
    return (
        "Flower refuses to start without authentication: set FLOWER_BASIC_AUTH=user:password "
        "(several users separated by commas)."
    )


def _running_flower() -> bool:
    import click

    ctx = click.get_current_context(silent=True)
    return ctx is not None and ctx.command.name == "flower"


def check_flower_auth(**_: Any) -> None:
    """Signal receiver: stop `celery -A worker flower` unless every credential is real."""
    if not _running_flower():
        return
    from tornado.options import options  # Flower's parsed options (env, flags, flowerconfig.py)

    reason = refusal(os.environ, options.basic_auth, options.auth)
    if reason is not None:
        raise FlowerAuthMissing(reason)
    _metrics_behind_auth()


def _metrics_behind_auth() -> None:
    """Flower serves /metrics (task names, workers, counts) without login; ask for it like the UI."""
    from flower.views.monitor import Metrics
    from tornado import web

    if not getattr(Metrics.get, "_voicepipe_authenticated", False):
        guarded = web.authenticated(Metrics.get)
        guarded._voicepipe_authenticated = True  # type: ignore[attr-defined]
        Metrics.get = guarded  # type: ignore[method-assign]


def install() -> None:
    from celery.signals import import_modules

    import_modules.connect(check_flower_auth, weak=False, dispatch_uid="voicepipe-flower-auth")
