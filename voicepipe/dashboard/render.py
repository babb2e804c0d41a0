"""How the pages show figures: formatting (display only: the values come from data.py
unchanged), the charts of a series, and the page templates."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from voicepipe.dashboard import charts, data
from voicepipe.events.sketch import ALPHA, PERCENTS
from voicepipe.metrics.bookkeeping import HOURLY


def fmt_int(value: Any) -> str:
    return f"{int(value):,}"


def fmt_pct(value: Any) -> str:
    return f"{float(value) * 100:.1f} %"


def fmt_ms(value: Any) -> str:
    """Milliseconds as seconds with one decimal."""
    return f"{float(value) / 1000:.1f} s"


def fmt_usd(value: Any) -> str:
    return f"${Decimal(str(value)):,.4f}"


def fmt_age(seconds: Any) -> str:
    if seconds is None:
        return "never"
    s = float(seconds)
    return f"{s / 3600:.1f} h" if abs(s) >= 3600 else f"{s / 60:.0f} min"


FORMAT: dict[str, Callable[[Any], str]] = {
    "artifacts_received": fmt_int, "artifacts_completed": fmt_int, "artifacts_failed": fmt_int,
    "windows": fmt_int, "completed": fmt_int, "failed": fmt_int, "calls": fmt_int,
    "input_tokens": fmt_int, "cached_tokens": fmt_int, "output_tokens": fmt_int,
    "avg_end_to_end_latency": fmt_ms, "avg_latency": fmt_ms,
    **{f"p{p}_end_to_end_latency": fmt_ms for p in PERCENTS}, **{f"p{p}_latency": fmt_ms for p in PERCENTS},
    "total_ai_cost": fmt_usd, "avg_cost_per_artifact": fmt_usd, "cost": fmt_usd,
    "cache_hit_rate": fmt_pct, "failure_rate": fmt_pct,
}


def fmt(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key.endswith("_rate"):
        return fmt_pct(value)
    return FORMAT.get(key, str)(value)


def figure(key: str, value: Any) -> Markup:
    """A shown figure: formatted text, with the exact value of the JSON beside it."""
    raw = "" if value is None else str(value)
    return Markup('<span class="figure" data-figure="{}" data-value="{}">{}</span>').format(key, raw, fmt(key, value))


LABELS: dict[str, str] = {
    "artifacts_received": "Received", "artifacts_completed": "Completed", "artifacts_failed": "Failed",
    "overall_failure_rate": "Failure rate", "transcription_failure_rate": "Transcription",
    "claims_extraction_failure_rate": "Claims extraction", "entity_resolution_failure_rate": "Entity resolution",
    "draft_generation_failure_rate": "Draft generation", "avg_end_to_end_latency": "Avg end-to-end",
    **{f"p{p}_end_to_end_latency": f"p{p} end-to-end" for p in PERCENTS}, "total_ai_cost": "AI cost",
    "avg_cost_per_artifact": "AI cost / artifact", "windows": "Windows", "name": "Organization",
    "organization_id": "Id",
}
# (chart, title, figures, formatter)
CHARTS: tuple[tuple[str, str, tuple[str, ...], Callable[[float], str]], ...] = (
    ("artifacts", "Artifacts", ("artifacts_received", "artifacts_completed", "artifacts_failed"),
     lambda v: f"{v:,.4g}"),
    ("failure-rates", "Failure rates", (
        "overall_failure_rate", "transcription_failure_rate", "claims_extraction_failure_rate",
        "entity_resolution_failure_rate", "draft_generation_failure_rate"), lambda v: f"{v * 100:.4g} %"),
    ("latency", "End-to-end latency", ("avg_end_to_end_latency", "p50_end_to_end_latency",
                                        "p95_end_to_end_latency", "p99_end_to_end_latency"),
     lambda v: f"{v / 1000:,.4g} s"),
    ("cost", "AI cost (USD)", ("total_ai_cost",), lambda v: f"${v:,.4g}"),
)


def series_charts(payload: dict[str, Any], prefix: str, api: str) -> list[tuple[str, Markup]]:
    start, end = datetime.fromisoformat(payload["start"]), datetime.fromisoformat(payload["end"])
    hourly = payload["period"] == HOURLY
    x_label: Callable[[datetime], str] = (lambda ts: ts.strftime("%d %H:00")) if hourly else (
        lambda ts: ts.strftime("%b %d"))
    out = []
    for key, title, figures, value_fmt in CHARTS:
        lines = [
            # Windows computed before latency sketches have no p50, p90 or p99.
            charts.Series(f, LABELS[f], [(datetime.fromisoformat(w["period_start"]), float(w[f]))
                                         for w in payload["windows"] if w[f] is not None])
            for f in figures
        ]
        out.append((title, charts.line_chart(f"{prefix}-{payload['period']}-{key}", lines, start, end,
                                             value_fmt, x_label, api)))
    return out


def precision(error: float) -> str:
    """What a percentile_error means, in words."""
    if error > ALPHA:
        return (f"Percentiles within {error:.0%}: some windows were recorded before latency sketches "
                "(end-to-end only, from 64 buckets)")
    return f"Percentiles within {error:.0%} of exact"


def stage_bars(section: dict[str, Any]) -> Markup:
    return charts.bar_chart(
        f"stages-{section['period']}", [(st["stage"], float(st["failure_rate"])) for st in section["stages"]["stages"]],
        fmt_pct, section["stages_api"])


_env = Environment(loader=PackageLoader("voicepipe.dashboard", "templates"), autoescape=select_autoescape())
_env.globals.update(figure=figure, fmt=fmt, fmt_age=fmt_age, LABELS=LABELS, FIGURES=data.FIGURES, precision=precision,
                    PERCENTILE_FIGURES={f"p{p}_end_to_end_latency" for p in PERCENTS}, FINE_ERROR=ALPHA,
                    ORGANIZATION_COLUMNS=data.ORGANIZATION_COLUMNS, stage_bars=stage_bars)


def page(template: str, **context: Any) -> HTMLResponse:
    return HTMLResponse(_env.get_template(template).render(**context))


def error(request: Request, status: int, exc: Exception) -> Response:
    """A refusal: JSON for /api, the error page otherwise."""
    body = {"error": type(exc).__name__, "message": str(exc)}
    if request.url.path.startswith("/api/"):
        return JSONResponse(body, status_code=status)
    return HTMLResponse(_env.get_template("error.html").render(status=status, **body), status_code=status)
