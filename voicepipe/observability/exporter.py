"""`voicepipe exporter`: the pipeline's health as Prometheus metrics on /metrics.

A custom collector reads the database, the broker and beat's heartbeat at scrape time
(voicepipe/observability/probe.py), so a scrape shows the state of that moment, with
one exception: the due windows, whose reading sums the counter revisions of both
horizons (0.3 s for 10,000 organizations), are read by a background thread every
probe.DUE_REFRESH_S and served from its latest reading (probe.DueWindows). Basic
authentication from VOICEPIPE_EXPORTER_AUTH is required: the page names organizations
and their figures.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from sqlalchemy.orm import Session

from voicepipe.errors import SettingsError
from voicepipe.events.sketch import PERCENTS
from voicepipe.observability.probe import PERIODS, DueWindows, PipelineHealth, read_only_session

log = logging.getLogger(__name__)

AUTH_VARIABLE = "VOICEPIPE_EXPORTER_AUTH"
REALM = "voicepipe exporter"

# name -> (type, help): docs/howto/monitoring.md's table is checked against this (tests/unit/test_monitoring_files.py).
METRICS: dict[str, tuple[str, str]] = {
    "voicepipe_up": ("gauge", "1 when the exporter could read the database at this scrape, else 0"),
    "voicepipe_window_lag_seconds": (
        "gauge", "Age of the newest complete window's end, per period (+Inf when none was ever computed)"),
    "voicepipe_windows_due": (
        "gauge", "Closed windows within the catch-up horizon that are missing or stale, per period and kind"),
    "voicepipe_windows_failing": ("gauge", "Windows whose latest aggregation attempt failed, per period"),
    "voicepipe_artifacts": (
        "gauge", "Artifacts per status: all in a working status; completed and failed ones changed in the last 24 h"),
    "voicepipe_artifacts_stalled": (
        "gauge", "Artifacts in a working status that have not moved for the stall timeout"),
    "voicepipe_queue_depth": ("gauge", "Messages waiting in each broker queue"),
    "voicepipe_broker_up": ("gauge", "1 when the broker's queue depths could be read at this scrape, else 0"),
    "voicepipe_retries": ("counter", "Operator retries, by outcome (initiated, succeeded, failed)"),
    "voicepipe_dead_letters": ("gauge", "Write messages parked as dead letters, waiting for replay or discard"),
    "voicepipe_beat_last_tick_age_seconds": (
        "gauge", "Seconds since beat's scheduler last ticked (+Inf without a heartbeat file)"),
    "voicepipe_beat_last_send_age_seconds": (
        "gauge", "Seconds since beat last sent a task (or started; +Inf without a heartbeat file)"),
    "voicepipe_newest_hour_start_timestamp_seconds": (
        "gauge", "Start of the newest hourly snapshot the per-organization series come from (Unix time)"),
    "voicepipe_organization_artifacts_received": (
        "gauge", "Artifacts received by the organization in the newest hourly snapshot"),
    "voicepipe_organization_failure_rate": (
        "gauge",
        "Overall failure rate (failed / (completed + failed)) of the organization in the newest hourly snapshot"),
    "voicepipe_organization_artifacts_finished": (
        "gauge", "Artifacts completed or failed by the organization in the newest hourly snapshot"),
    "voicepipe_organization_p95_latency_seconds": (
        "gauge", "95th percentile end-to-end latency of the organization in the newest hourly snapshot"),
    "voicepipe_organization_latency_seconds": (
        "gauge", "End-to-end latency percentiles (quantile 0.5, 0.9, 0.95, 0.99) of the organization in the newest "
                 "hourly snapshot"),
    "voicepipe_latency_seconds": (
        "gauge", "Latency percentiles of the platform in the newest hourly snapshot, per latency (end_to_end and "
                 "each stage) and quantile (0.5, 0.9, 0.95, 0.99)"),
    "voicepipe_latency_percentile_error": (
        "gauge", "Bound on the relative error of the newest hour's percentiles: 0.01, or 0.25 for an hour "
                 "recorded before latency sketches"),
    "voicepipe_organization_ai_cost_usd": (
        "gauge", "AI cost (USD) of the organization in the newest hourly snapshot"),
    "voicepipe_organizations_not_shown": (
        "gauge", "Organizations of the newest hourly snapshot beyond VOICEPIPE_EXPORTER_MAX_ORGANIZATIONS, "
                 "summed into the series with an empty organization label"),
    "voicepipe_scrape_duration_seconds": ("gauge", "Time this scrape spent reading the database and broker"),
}


def _gauge(name: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, METRICS[name][1], labels=labels)


def health_metrics(health: PipelineHealth) -> list[Metric]:
    """The metric families of one health reading."""
    out: list[Metric] = []
    lag = _gauge("voicepipe_window_lag_seconds", ["period"])
    for period in PERIODS:
        lag.add_metric([period], health.window_lag_s(period))
    due = _gauge("voicepipe_windows_due", ["period", "kind"])
    for (period, kind), n in sorted(health.windows_due.items()):
        due.add_metric([period, kind], n)
    failing = _gauge("voicepipe_windows_failing", ["period"])
    for period, n in health.windows_failing.items():
        failing.add_metric([period], n)
    artifacts = _gauge("voicepipe_artifacts", ["status"])
    for status, n in health.artifacts.items():
        artifacts.add_metric([status], n)
    stalled = _gauge("voicepipe_artifacts_stalled")
    stalled.add_metric([], health.artifacts_stalled)
    out += [lag, due, failing, artifacts, stalled]

    depth = _gauge("voicepipe_queue_depth", ["queue"])
    for queue, waiting in health.queues.items():
        if waiting is not None:  # unreadable: absent, and voicepipe_broker_up says why
            depth.add_metric([queue], waiting)
    broker_up = _gauge("voicepipe_broker_up")
    broker_up.add_metric([], 0 if any(w is None for w in health.queues.values()) else 1)
    retries = CounterMetricFamily("voicepipe_retries", METRICS["voicepipe_retries"][1], labels=["outcome"])
    for outcome, n in health.retries.items():
        retries.add_metric([outcome], n)
    out += [depth, broker_up, retries]
    if health.dead_letters is not None:
        dead = _gauge("voicepipe_dead_letters")
        dead.add_metric([], health.dead_letters)
        out.append(dead)

    tick = _gauge("voicepipe_beat_last_tick_age_seconds")
    tick.add_metric([], math.inf if health.beat.tick_age_s is None else health.beat.tick_age_s)
    send = _gauge("voicepipe_beat_last_send_age_seconds")
    send.add_metric([], math.inf if health.beat.send_age_s is None else health.beat.send_age_s)
    out += [tick, send]

    if health.newest_hour is not None:
        newest = _gauge("voicepipe_newest_hour_start_timestamp_seconds")
        newest.add_metric([], health.newest_hour.timestamp())
        out.append(newest)
    if health.latencies is not None:
        latency = _gauge("voicepipe_latency_seconds", ["latency", "quantile"])
        for name, values in health.latencies.percentiles_ms.items():
            for quantile, value in zip(QUANTILES, values, strict=True):
                latency.add_metric([name.removesuffix("_latency"), quantile], value / 1000.0)
        error = _gauge("voicepipe_latency_percentile_error")
        error.add_metric([], health.latencies.percentile_error)
        out += [latency, error]
    return out


QUANTILES = tuple(str(p / 100) for p in PERCENTS)  # "0.5", "0.9", "0.95", "0.99"


# The per-organization families, (name, value of an OrganizationHour).
PER_ORGANIZATION: tuple[tuple[str, Callable[[Any], float]], ...] = (
    ("voicepipe_organization_artifacts_received", lambda o: o.artifacts_received),
    ("voicepipe_organization_artifacts_finished", lambda o: o.artifacts_completed + o.artifacts_failed),
    ("voicepipe_organization_failure_rate", lambda o: o.failure_rate),
    ("voicepipe_organization_p95_latency_seconds", lambda o: o.p95_end_to_end_latency_ms / 1000.0),
    ("voicepipe_organization_ai_cost_usd", lambda o: o.ai_cost),
)


def _label_value(value: str) -> str:
    """A label value escaped as the text format wants (backslash, double quote, newline)."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def organization_exposition(health: PipelineHealth, limit: int | None = None) -> bytes:
    """The per-organization families in the text format, written directly.

    They are nine series per organization of the newest hour: 90,000 samples for 10,000
    organizations, which prometheus_client's generic writer formats at ~4 us each
    (0.2 s a scrape); one f-string a line here. Same HELP, TYPE, escaping and value
    format (floatToGoString) as the generic writer.

    With a limit (VOICEPIPE_EXPORTER_MAX_ORGANIZATIONS), only the organizations with the
    most artifacts received keep series of their own; the rest are summed into one series
    with an empty organization label (which no organization id can be), without a p95,
    so producers sending new organization ids cannot grow the page.
    """
    orgs = health.organizations
    rest: list[Any] = []
    if limit is not None and len(orgs) > limit:
        ranked = sorted(orgs, key=lambda o: (-o.artifacts_received, o.organization_id))
        keep = {id(o) for o in ranked[:limit]}
        rest = [o for o in orgs if id(o) not in keep]
        orgs = [o for o in orgs if id(o) in keep]
    lines: list[str] = []
    labels = [_label_value(o.organization_id) for o in orgs]
    rest_values = _rest(rest) if rest else {}
    for name, value in PER_ORGANIZATION:
        lines.append(f"# HELP {name} {METRICS[name][1]}\n# TYPE {name} gauge\n")
        lines.extend(f'{name}{{organization="{label}"}} {floatToGoString(value(o))}\n'
                     for label, o in zip(labels, orgs, strict=True))
        if name in rest_values:
            lines.append(f'{name}{{organization=""}} {floatToGoString(rest_values[name])}\n')
    # Percentiles do not add up: the organizations beyond the limit have none.
    name = "voicepipe_organization_latency_seconds"
    lines.append(f"# HELP {name} {METRICS[name][1]}\n# TYPE {name} gauge\n")
    lines.extend(f'{name}{{organization="{label}",quantile="{q}"}} {floatToGoString(ms / 1000.0)}\n'
                 for label, o in zip(labels, orgs, strict=True) for q, ms in zip(QUANTILES, o.percentiles_ms,
                                                                                 strict=False))
    if limit is not None:
        name = "voicepipe_organizations_not_shown"
        lines.append(f"# HELP {name} {METRICS[name][1]}\n# TYPE {name} gauge\n{name} {float(len(rest))}\n")
    return "".join(lines).encode()


def _rest(orgs: list[Any]) -> dict[str, float]:
    """The summed figures of the organizations beyond the limit (no p95: it does not add up)."""
    completed = sum(o.artifacts_completed for o in orgs)
    failed = sum(o.artifacts_failed for o in orgs)
    return {
        "voicepipe_organization_artifacts_received": float(sum(o.artifacts_received for o in orgs)),
        "voicepipe_organization_artifacts_finished": float(completed + failed),
        "voicepipe_organization_failure_rate": failed / (completed + failed) if completed + failed else 0.0,
        "voicepipe_organization_ai_cost_usd": float(sum(o.ai_cost for o in orgs)),
    }


class PipelineCollector(Collector):
    """Reads the pipeline's health at each scrape (see scrape())."""

    def __init__(self, read: Callable[[], PipelineHealth]) -> None:
        self._read = read
        self._local = threading.local()

    def collect(self) -> Iterator[Metric]:
        t0 = time.perf_counter()
        up = _gauge("voicepipe_up")
        self._local.health = None
        try:
            health = self._read()
        except Exception as exc:
            log.warning("scrape could not read the pipeline's health: %s: %s", type(exc).__name__,
                        str(exc).splitlines()[0] if str(exc) else "")
            up.add_metric([], 0)
            yield up
        else:
            self._local.health = health
            up.add_metric([], 1)
            yield up
            yield from health_metrics(health)
        duration = _gauge("voicepipe_scrape_duration_seconds")
        duration.add_metric([], time.perf_counter() - t0)
        yield duration

    def scrape(self, registry: CollectorRegistry) -> bytes:
        """The whole /metrics page: the registry's families, then this reading's per-organization ones."""
        body = generate_latest(registry)
        health = getattr(self._local, "health", None)
        if health is None:
            return body
        from voicepipe.settings import get_settings

        return body + organization_exposition(health, get_settings().exporter_max_organizations)


def read_health_now(
    now: Callable[[], datetime] | None = None,
    due: Callable[[Session, datetime], dict[tuple[str, str], int]] | None = None,
) -> PipelineHealth:
    from voicepipe.clock import utcnow
    from voicepipe.observability.probe import collect_now

    with read_only_session() as session:
        return collect_now(session, (now or utcnow)(), due)


def parse_credentials(
    env: Mapping[str, str], variable: str = AUTH_VARIABLE, what: str = "the exporter"
) -> list[tuple[str, str]]:
    """The user:password pairs of VARIABLE (VOICEPIPE_EXPORTER_AUTH, or the dashboard's
    VOICEPIPE_DASHBOARD_AUTH); SettingsError when unset or unusable."""
    from voicepipe.settings import basic_auth_problem  # the same rule as FLOWER_BASIC_AUTH

    raw = env.get(variable)
    if raw is None or raw.strip() == "":
        raise SettingsError(
            f"{what} refuses to start without authentication: set {variable}=user:password "
            "(several users separated by commas)"
        )
    problem = basic_auth_problem(raw.strip())
    if problem is not None:
        raise SettingsError(f"{variable} {problem} (its value is not shown: it holds a password)")
    return [(u, p) for u, _, p in (pair.partition(":") for pair in raw.strip().split(","))]


def authorized(header: str | None, credentials: list[tuple[str, str]]) -> bool:
    if not header or not header.startswith("Basic "):
        return False
    try:
        user, sep, password = base64.b64decode(header[6:].strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    if not sep or not user or not password:
        return False
    ok = False
    for want_user, want_password in credentials:  # compare with every pair: no timing hint
        ok |= hmac.compare_digest(user.encode(), want_user.encode()) & hmac.compare_digest(
            password.encode(), want_password.encode())
    return ok


IDLE_TIMEOUT_S = 10


def make_server(address: str, port: int, body: Callable[[], bytes],
                credentials: list[tuple[str, str]]) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        server_version = "voicepipe-exporter"
        # A connection that sends no complete request within this is closed (each holds a thread).
        timeout = IDLE_TIMEOUT_S

        def do_GET(self) -> None:
            if not authorized(self.headers.get("Authorization"), credentials):
                self._reply(401, b"authentication required\n", "text/plain; charset=utf-8",
                            {"WWW-Authenticate": f'Basic realm="{REALM}"'})
                return
            if self.path.split("?", 1)[0] != "/metrics":
                self._reply(404, b"not found: the metrics are at /metrics\n", "text/plain; charset=utf-8")
                return
            self._reply(200, body(), CONTENT_TYPE_LATEST)

        def _reply(self, code: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s " + format, self.address_string(), *args)

    return ThreadingHTTPServer((address, port), Handler)


def serve(address: str, port: int, env: Mapping[str, str]) -> None:
    """Serve /metrics until interrupted; refuses to start without usable credentials."""
    from voicepipe.clock import utcnow

    credentials = parse_credentials(env)
    due = DueWindows()
    collector = PipelineCollector(partial(read_health_now, due=due))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    server = make_server(address, port, partial(collector.scrape, registry), credentials)
    due.start(utcnow)
    log.info("exporter serving http://%s:%d/metrics", address, server.server_address[1])
    try:
        server.serve_forever()
    finally:
        due.stop()
        server.server_close()
