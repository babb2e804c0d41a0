"""Servers, a scratch database, the machine's description, timing and the report table."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url


@dataclass
class Result:
    bench: str
    case: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    # How many times better than the baseline (>1 = better); with a spread, its median.
    ratio: float | None = None
    goal: str = ""
    met: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # (min, median, max) of the ratio over repetitions, each a fresh pair of measurements.
    spread: tuple[float, float, float] | None = None
    # A limit measured in the same run that no implementation passes on this machine (the
    # broker's delivery alone, a retry's round trips alone, every core busy, the bare
    # statement's own growth), as "what, figure" (beside_goal), and whether that limit
    # meets the goal: a miss whose limit misses too is the machine's, not the code's.
    limit: str = ""
    limit_meets_goal: bool | None = None
    # Goals of this row missed that have no limit (a row may hold several goals): its miss
    # is then the code's, whatever its limit says.
    misses_without_limit: int = 0

    def __post_init__(self) -> None:
        # The goal is judged on the median of the pairwise ratios: show that one, not the
        # ratio of the medians, which can sit on the other side of the goal.
        if self.spread is not None:
            self.ratio = self.spread[1]


@dataclass
class Env:
    database_url: str
    broker_url: str
    embedded: dict[str, bool]
    quick: bool
    scratch: Path
    engine: Engine

    def session(self) -> Any:
        from sqlalchemy.orm import Session

        return Session(bind=self.engine, expire_on_commit=False)


def timed(fn: Callable[[], Any], repeat: int = 5, warmup: int = 1) -> float:
    """Median wall time of fn over `repeat` runs, after `warmup` unmeasured runs."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def ratio_spread(
    ours: Callable[[], Any], baseline: Callable[[], Any], repeat: int = 5, warmup: int = 1,
) -> tuple[float, float, tuple[float, float, float]]:
    """Time OURS and BASELINE alternately REPEAT times; (median ours s, median baseline s, ratio spread).

    Alternating puts both under the same machine state in each pair; the ratio (baseline
    time / ours, >1 = ours faster) is taken pair by pair, so its spread is the spread a reader
    should expect from one run to the next on this machine.
    """
    for _ in range(warmup):
        ours()
        baseline()
    mine, base = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        ours()
        t1 = time.perf_counter()
        baseline()
        t2 = time.perf_counter()
        mine.append(t1 - t0)
        base.append(t2 - t1)
    return statistics.median(mine), statistics.median(base), spread_of([b / m for m, b in zip(mine, base, strict=True)])


def spread_of(ratios: list[float]) -> tuple[float, float, float]:
    return (min(ratios), statistics.median(ratios), max(ratios))


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def _admin(url: str, sql: str) -> None:
    eng = create_engine(url, isolation_level="AUTOCOMMIT")
    with eng.connect() as conn:
        conn.execute(text(sql))
    eng.dispose()


@contextmanager
def bench_env(quick: bool) -> Iterator[Env]:
    """A fresh migrated database and a broker: the ones named by BENCH_/TEST_ variables, else embedded."""
    from models import session as db_session
    from voicepipe.infra import embedded
    from voicepipe.migrate import upgrade

    scratch = Path(tempfile.mkdtemp(prefix="vpb-", dir="/tmp"))
    admin = os.environ.get("BENCH_DATABASE_URL") or os.environ.get("TEST_DATABASE_URL")
    broker = os.environ.get("BENCH_BROKER_URL") or os.environ.get("TEST_BROKER_URL")
    emb = {"database": admin is None, "broker": broker is None}
    if admin is None:
        admin = embedded.postgres_url(scratch)
    if broker is None:
        broker = embedded.redis_url(scratch / "redis")
    admin = db_session.normalize_url(admin)
    name = f"vp_bench_{uuid.uuid4().hex[:8]}"
    _admin(admin, f'CREATE DATABASE "{name}"')
    url = make_url(admin).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(url)
        db_session.configure(url)
        engine = db_session.make_engine(url)  # the product's connection settings
        yield Env(url, broker, emb, quick, scratch, engine)
        engine.dispose()
        db_session.configure(None)
    finally:
        _admin(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if emb["broker"]:
            embedded.stop(scratch / "redis")
        if emb["database"]:
            embedded.stop(scratch)


def machine(env: Env) -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    with env.engine.connect() as conn:
        pg = conn.execute(text("SHOW server_version")).scalar_one()
    import redis

    from tests.support.helpers import redis_client

    try:
        rv = redis_client(env.broker_url).info("server")["redis_version"]
    except (redis.RedisError, KeyError):
        rv = "?"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": mem_gb,
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "postgresql": f"{pg} ({'embedded' if env.embedded['database'] else 'server'})",
        "redis": f"{rv} ({'embedded' if env.embedded['broker'] else 'server'})",
        "mode": "quick" if env.quick else "full",
    }


def machine_state() -> dict[str, Any]:
    """What else the machine is doing now: load, free memory and page cache (from /proc)."""
    state: dict[str, Any] = {}
    with suppress(OSError):
        state["load_1m"], state["load_5m"] = (float(x) for x in os.getloadavg()[:2])
    try:
        info = {k: int(v.split()[0]) for k, v in
                (line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())}
        state["mem_available_gb"] = round(info["MemAvailable"] / 1024 / 1024, 1)
        state["page_cache_gb"] = round(info["Cached"] / 1024 / 1024, 1)
        state["dirty_mb"] = round(info["Dirty"] / 1024, 1)
    except (OSError, KeyError, ValueError):
        pass
    return state


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if unit == "s":
        return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"
    if unit == "ms":
        return f"{value:.1f} ms"
    if value >= 1000:
        return f"{value:,.0f}{(' ' + unit) if unit else ''}"
    return f"{value:.2f}{(' ' + unit) if unit else ''}"


def table(results: list[Result]) -> str:
    lines = [
        "| benchmark | case | voicepipe | baseline | ratio | spread (min / median / max) | goal | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        base = f"{fmt(r.baseline, r.unit)} ({r.baseline_name})" if r.baseline is not None else "-"
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else "-"
        spread = " / ".join(f"{x:.2f}" for x in r.spread) if r.spread else "-"
        met = "-" if r.met is None else ("yes" if r.met else "**no**")
        if r.limit:
            met += f" (limit: {r.limit}{'' if r.limit_meets_goal else ', short of the goal too'})"
        lines.append(f"| {r.bench} | {r.case} | {fmt(r.value, r.unit)} | {base} | {ratio} | {spread} | {r.goal} "
                     f"| {met} |")
    return "\n".join(lines)


def beside_goal(value: float, goal: float) -> str:
    """VALUE with two decimals, or as many more as it takes not to read as GOAL (0.798 beside 0.8)."""
    for digits in range(2, 7):
        text = f"{value:.{digits}f}"
        if value == goal or float(text) != goal:
            return text
    return text


def goal_summary(results: list[Result]) -> str:
    """How many goals were met; of the misses, how many lie past a limit measured in the same run."""
    goals = [r for r in results if r.met is not None]
    missed = [r for r in goals if not r.met]
    past = sum(r.limit_meets_goal is False and not r.misses_without_limit for r in missed)
    line = f"goals met: {len(goals) - len(missed)} of {len(goals)}"
    if missed and any(r.limit for r in results):  # runs kept before limits were measured have none
        line += f"; misses past a limit measured in the same run: {past} of {len(missed)}"
    return line


def write_json(path: str, info: dict[str, Any], results: list[Result], seconds: float,
               states: dict[str, Any] | None = None) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(
        {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": info, "machine_state": states or {},
         "total_seconds": round(seconds, 1), "results": [asdict(r) for r in results]},
        indent=2, default=str,
    ))


def at_two_scales(
    env: Env, orgs: int, measure: Callable[[int], list[Result]], grow: Callable[[int], None]
) -> list[Result]:
    """MEASURE(orgs); in a full run, then GROW(10 x orgs) and MEASURE again (the issue's 10,000-organization
    scale)."""
    results = measure(orgs)
    if not env.quick:
        grow(10 * orgs)
        results += measure(10 * orgs)
    return results


def settle_late_marks(env: Env) -> None:
    """Do what the hourly wrapper does with late marks: drop those of windows that need nothing.

    Earlier benchmarks record events for hours days back with no wrapper running, which
    leaves marks (voicepipe.metrics.late) that a deployment clears within the hour; a scrape or a
    page measured with them would measure those leftovers, not the steady state.
    """
    from datetime import UTC, datetime

    from voicepipe.metrics.due import plan_and_clear
    from voicepipe.settings import get_settings

    settings = get_settings()
    with env.session() as session:
        plan_and_clear(session, datetime.now(UTC), settings.hourly_horizon_hours, settings.daily_horizon_days)
        session.commit()


@contextmanager
def cli_server(
    env: Env, command: str, auth_variable: str, credentials: str, ready: Callable[[int], Any]
) -> Iterator[int]:
    """Run `voicepipe COMMAND --port P` as a subprocess with only this run's settings; yield P.

    The server sees the bench's database and broker, the credentials in auth_variable, and
    none of the caller's VOICEPIPE_/FLOWER_ variables; P is yielded once ready(P) stops
    raising OSError (30 s at most), and the server is stopped on exit.
    """
    import subprocess
    import sys

    from tests.support.redis_server import free_port

    port = free_port()
    process_env = {k: v for k, v in os.environ.items() if not k.startswith(("VOICEPIPE_", "FLOWER_"))}
    process_env.update({"DATABASE_URL": env.database_url, "BROKER_URL": env.broker_url,
                        auth_variable: credentials, "VOICEPIPE_DATA_DIR": str(env.scratch / command)})
    with open(env.scratch / f"{command}.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "voicepipe.cli", command, "--port", str(port)],
                                env=process_env, cwd=Path(__file__).resolve().parent.parent,
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    ready(port)
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise
                    time.sleep(0.2)
            yield port
        finally:
            proc.terminate()
            proc.wait(10)
