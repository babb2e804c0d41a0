"""`voicepipe dev`, `migrate`, `rebuild-counters`, `stop-embedded`, `upgrade-embedded`."""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from datetime import timedelta

from voicepipe.errors import SettingsError
from voicepipe.settings import Settings, get_settings

CHILD_STOP_TIMEOUT_S = 20
DEV_FLOWER_USER = "dev"
DEV_DASHBOARD_PORT = 8050


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    dev = sub.add_parser(
        "dev",
        help="run the whole stack locally: database, broker, migrations, worker, beat, Flower, dashboard, simulator",
    )
    dev.add_argument("--flower-port", type=int, default=5555, help="Flower's port (default 5555)")
    dev.add_argument("--dashboard-port", type=int, default=None,
                     help=f"the dashboard's port (default {DEV_DASHBOARD_PORT}, or a free one when that is taken)")
    dev.add_argument("--concurrency", type=int, default=2, help="worker processes (default 2)")
    dev.add_argument("--no-simulate", action="store_true", help="do not run the simulated producer")
    dev.add_argument(
        "--simulate-on-configured-servers", action="store_true",
        help="run the simulator even though DATABASE_URL or BROKER_URL names a server "
             "(it writes simulated organizations, users and events there)",
    )
    dev.add_argument(
        "--beat-interval", type=int, default=60,
        help="seconds between beat emissions in dev (production uses the crontab schedule)",
    )
    dev.set_defaults(func=cmd_dev)

    migrate = sub.add_parser(
        "migrate", help="apply database migrations to DATABASE_URL, then recount the counters carried over from "
                        "the 64-bucket histogram whose events are kept, for finer percentiles")
    migrate.add_argument(
        "--app-role", metavar="NAME",
        help="then create or update the application's role NAME (password from VOICEPIPE_APP_DB_PASSWORD): "
             "rows only, no schema changes; run as the schema owner",
    )
    migrate.set_defaults(func=cmd_migrate)

    rebuild = sub.add_parser(
        "rebuild-counters",
        help="recompute event counters from stored events for a range of days (repairs a counting bug)",
    )
    rebuild.add_argument("--from", dest="start", required=True, help="first day, YYYY-MM-DD (UTC)")
    rebuild.add_argument("--to", dest="end", required=True, help="last day, YYYY-MM-DD (UTC), inclusive")
    rebuild.set_defaults(func=cmd_rebuild_counters)

    stop = sub.add_parser("stop-embedded", help="stop the embedded PostgreSQL and Redis (data is kept)")
    stop.set_defaults(func=cmd_stop_embedded)

    upgrade = sub.add_parser(
        "upgrade-embedded",
        help="move an earlier release's running embedded PostgreSQL (16) into this release's (18), data kept",
    )
    upgrade.set_defaults(func=cmd_upgrade_embedded)


def _database_url() -> str:
    from models.session import database_url

    return database_url()


def cmd_migrate(args: argparse.Namespace) -> int:
    from voicepipe.migrate import upgrade

    url = _database_url()
    password = os.environ.get("VOICEPIPE_APP_DB_PASSWORD", "")
    if args.app_role and not password.strip():
        raise SettingsError("VOICEPIPE_APP_DB_PASSWORD must be set with --app-role (the role's password)")
    upgrade(url)
    print("voicepipe: database migrated to head")
    _refine_percentiles()
    if args.app_role:
        from voicepipe.infra.db_roles import grant_app_role

        grant_app_role(url, args.app_role, password)
        print(f"voicepipe: role {args.app_role} may read and write rows, not change the schema")
    return 0


def _refine_percentiles() -> None:
    """Counters carried over from the 64-bucket histogram, recounted where their events are kept."""
    from models.session import session_scope
    from voicepipe.events.recording import refine_coarse_counters

    result = refine_coarse_counters(session_scope)
    if result.days:
        print(f"voicepipe: recounted {result.counter_rows} counter rows over {result.days} days from their "
              "events: their windows' percentiles are within 1 % once the next aggregation runs re-aggregate them")
    if result.kept_coarse:
        print(f"voicepipe: {result.kept_coarse} older counter rows keep coarse percentiles (within 25 %, "
              "end-to-end only): their events are gone")


def cmd_rebuild_counters(args: argparse.Namespace) -> int:
    from models.session import session_scope
    from voicepipe.events.recording import rebuild_counters
    from voicepipe.windows import day_start, parse_day

    first, last = parse_day(args.start, "--from"), parse_day(args.end, "--to")
    start, end = day_start(first), day_start(last) + timedelta(days=1)
    with session_scope() as session:
        result = rebuild_counters(session, start, end)
    print(
        f"voicepipe: rebuilt {result.counter_rows} counter rows over {result.hours} hours "
        f"from {result.events} events; the next aggregation run re-aggregates those windows"
    )
    return 0


def cmd_stop_embedded(args: argparse.Namespace) -> int:
    from voicepipe.infra import embedded

    embedded.stop(get_settings().data_dir)
    print(f"voicepipe: embedded servers under {get_settings().data_dir} stopped")
    return 0


def cmd_upgrade_embedded(args: argparse.Namespace) -> int:
    from voicepipe.infra import embedded

    print(f"voicepipe: {embedded.upgrade_postgres(get_settings().data_dir)}")
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from voicepipe.infra import embedded

    settings = get_settings()
    _refuse_simulating_on_configured_servers(settings, args)
    data_dir = settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    started_embedded = not (settings.database_url and settings.broker_url)
    db_url, broker = _servers_ready(settings)
    env, flower_auth, dashboard_auth = _child_env(settings, args, db_url, broker)
    dashboard_port = args.dashboard_port if args.dashboard_port is not None else _dashboard_port()
    logs = data_dir / "logs"
    logs.mkdir(exist_ok=True)
    children = _children(settings, args, dashboard_port)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    from voicepipe.cli.output import Prefixer

    output = Prefixer(list(children))
    stopping = False

    def stop_all(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop_all)
    signal.signal(signal.SIGTERM, stop_all)
    try:
        for name, cmd in children.items():
            child = procs[name] = subprocess.Popen(
                cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches us only; we stop children in order
            )
            assert child.stdout is not None
            # The terminal shows every child's lines, prefixed and coloured; the log file keeps them.
            output.pump(name, child.stdout, logs / f"{name}.log")
            print(f"voicepipe dev: started {name} (pid {procs[name].pid}, log {logs / (name + '.log')})",
                  flush=True)
        _print_addresses(settings, args, flower_auth, dashboard_auth, dashboard_port)
        print("voicepipe dev: press Ctrl-C to stop everything", flush=True)
        while not stopping:
            exited = next((name for name, proc in procs.items() if proc.poll() is not None), None)
            if exited is not None:
                print(f"voicepipe dev: {exited} exited with {procs[exited].returncode}; "
                      f"see {logs / (exited + '.log')}; stopping", flush=True)
                break
            time.sleep(0.5)
    finally:
        _stop_children(procs)
        output.join()
        if started_embedded:
            embedded.stop(data_dir)
        print("voicepipe dev: stopped", flush=True)
    return 0


def _refuse_simulating_on_configured_servers(settings: Settings, args: argparse.Namespace) -> None:
    configured = [name for name, value in (("DATABASE_URL", settings.database_url),
                                           ("BROKER_URL", settings.broker_url)) if value]
    if configured and not args.no_simulate and not args.simulate_on_configured_servers:
        raise SettingsError(
            f"voicepipe dev refuses to run the simulator against {' and '.join(configured)} (not the "
            "embedded servers): it would write simulated data there. Unset them, pass --no-simulate, "
            "or pass --simulate-on-configured-servers if that is what you want"
        )


def _servers_ready(settings: Settings) -> tuple[str, str]:
    """The database (migrated) and broker URLs: the configured ones, or embedded servers started."""
    from kombu.utils.url import maybe_sanitize_url

    from voicepipe.infra import embedded
    from voicepipe.migrate import upgrade

    data_dir = settings.data_dir
    print(f"voicepipe dev: data in {data_dir}", flush=True)
    db_url, broker = embedded.resolve_urls(settings.database_url, settings.broker_url, data_dir)
    print(f"voicepipe dev: database {'(embedded) ' if not settings.database_url else ''}ready", flush=True)
    where = "" if settings.broker_url else f" (embedded; password in {data_dir / embedded.BROKER_STATE})"
    print(f"voicepipe dev: broker {maybe_sanitize_url(broker)}{where}", flush=True)
    upgrade(db_url)
    print("voicepipe dev: migrations applied", flush=True)
    return db_url, broker


def _child_env(settings: Settings, args: argparse.Namespace, db_url: str, broker: str
               ) -> tuple[dict[str, str], str, str]:
    """The children's environment, with Flower's and the dashboard's credentials."""
    env = dict(os.environ)
    env.update(DATABASE_URL=db_url, BROKER_URL=broker, VOICEPIPE_DEV="1", PYTHONUNBUFFERED="1")
    env.setdefault("VOICEPIPE_BEAT_INTERVAL_SECONDS", str(args.beat_interval))
    # A local stack is a closed deployment: `voicepipe retry` works unsigned here.
    env.setdefault("VOICEPIPE_UNSIGNED_RETRIES", "1")
    # Flower always asks for credentials, also in dev (any local process or web page could
    # otherwise send tasks through it): a password generated for this run, unless set.
    env.pop("FLOWER_UNAUTHENTICATED_API", None)
    flower_auth = settings.flower_basic_auth or f"{DEV_FLOWER_USER}:{secrets.token_urlsafe(18)}"
    env["FLOWER_BASIC_AUTH"] = flower_auth
    # The dashboard asks for credentials too: its own variable if set, else Flower's (generated) ones,
    # and, where the simulator makes its staff user platform staff (embedded database), that user
    # with the same password: signed in as it, an operator may retry from the artifact pages.
    dashboard_auth = (os.environ.get("VOICEPIPE_DASHBOARD_AUTH") or "").strip() or flower_auth
    if dashboard_auth == flower_auth and _grants_staff(settings, args):
        from voicepipe.cli.operations import SIM_STAFF

        dashboard_auth = f"{flower_auth},{SIM_STAFF}:{flower_auth.split(':', 1)[1]}"
    env["VOICEPIPE_DASHBOARD_AUTH"] = dashboard_auth
    from voicepipe.observability.exporter import parse_credentials

    parse_credentials(env, "VOICEPIPE_DASHBOARD_AUTH", "the dashboard")  # refuse before starting anything
    # Stage work at 5 % of its realistic duration so artifacts flow through in seconds.
    env.setdefault("VOICEPIPE_SIMULATOR_TIME_SCALE", "0.05")
    return env, flower_auth, dashboard_auth


def _children(settings: Settings, args: argparse.Namespace, dashboard_port: int) -> dict[str, list[str]]:
    """The processes of the stack, by name, in the order they start."""
    celery = [sys.executable, "-m", "celery", "-A", "worker"]
    children: dict[str, list[str]] = {
        "worker": celery + ["worker", "-Q", "metrics,pipeline,retry", "-c", str(args.concurrency),
                            "-n", "dev@%h", "-l", settings.log_level],
        # Single-event messages have a worker of their own, which records them in batches.
        "events": celery + ["worker", "-Q", "events", "-c", "1", "-n", "events@%h", "-l", settings.log_level],
        "beat": celery + ["beat", "-s", str(settings.data_dir / "celerybeat-schedule"), "-l", settings.log_level],
        "flower": celery + ["flower", f"--port={args.flower_port}", "--address=127.0.0.1",
                            f"--logging={settings.log_level}"],
        "dashboard": [sys.executable, "-m", "voicepipe.cli", "dashboard", "--port", str(dashboard_port)],
    }
    if not args.no_simulate:
        children["simulator"] = [sys.executable, "-m", "voicepipe.cli", "simulate", "--artifacts", "0",
                                 "--rate", "0.5", "--history-hours", "6"]
        if _grants_staff(settings, args):
            children["simulator"].append("--grant-staff")
    return children


def _grants_staff(settings: Settings, args: argparse.Namespace) -> bool:
    """Embedded database only: the simulated staff user may retry, for this run."""
    return not args.no_simulate and not settings.database_url


def _print_addresses(settings: Settings, args: argparse.Namespace, flower_auth: str, dashboard_auth: str,
                     dashboard_port: int) -> None:
    """Where Flower and the dashboard answer, and whose password opens them."""
    _print_address("Flower", f"127.0.0.1:{args.flower_port}", flower_auth,
                   "FLOWER_BASIC_AUTH" if settings.flower_basic_auth else None, "password {}, generated for this run")
    dashboard_source = ("VOICEPIPE_DASHBOARD_AUTH" if (os.environ.get("VOICEPIPE_DASHBOARD_AUTH") or "").strip()
                        else "FLOWER_BASIC_AUTH" if settings.flower_basic_auth else None)
    _print_address("dashboard", f"127.0.0.1:{dashboard_port}/", dashboard_auth, dashboard_source,
                   "Flower's generated password")
    staff = [user for user, _, _ in (pair.partition(":") for pair in dashboard_auth.split(",")[1:])]
    if dashboard_source is None and staff:
        print(f"voicepipe dev: sign in to the dashboard as {staff[0]} (same password), platform staff in this run, "
              "to retry artifacts from their pages (/artifacts)", flush=True)


def _print_address(what: str, where: str, auth: str, source: str | None, generated: str) -> None:
    """A configured password is named by its variable; a generated one is printed, in the URL too."""
    user, _, password = auth.split(",", 1)[0].partition(":")
    if source is not None:
        print(f"voicepipe dev: {what} at http://{where} (user {user}, password from {source})", flush=True)
    else:
        print(f"voicepipe dev: {what} at http://{user}:{password}@{where} "
              f"(user {user}, {generated.format(password)})", flush=True)


def _dashboard_port() -> int:
    """DEV_DASHBOARD_PORT when it is free, else any free port (two dev stacks on one machine)."""
    import socket

    for port in (DEV_DASHBOARD_PORT, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise SettingsError("no free TCP port for the dashboard")


def _stop_children(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    # Producers first, then beat (no new work), then the worker (finishes its task), Flower last.
    order = ["simulator", "beat", "worker", "events", "flower", "dashboard"]
    for name in order:
        proc = procs.get(name)
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
    deadline = time.monotonic() + CHILD_STOP_TIMEOUT_S
    for name in order:
        proc = procs.get(name)
        if proc is None:
            continue
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"voicepipe dev: {name} did not stop in time; killing it", flush=True)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
