"""The per-organization families written directly: the same bytes prometheus_client's own writer gives."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from voicepipe.observability.exporter import METRICS, organization_exposition
from voicepipe.observability.probe import BeatState, OrganizationHour, PipelineHealth

NAMES = ("voicepipe_organization_artifacts_received", "voicepipe_organization_artifacts_finished",
         "voicepipe_organization_failure_rate", "voicepipe_organization_p95_latency_seconds",
         "voicepipe_organization_ai_cost_usd")
QUANTILE_FAMILY = "voicepipe_organization_latency_seconds"
# Ids a label value must escape (quote, backslash, newline), and non-ASCII.
AWKWARD = ['club "north"', "back\\slash", "two\nlines", "Zürich-ü", "plain-0"]


def health(orgs: list[OrganizationHour]) -> PipelineHealth:
    return PipelineHealth(now=datetime.now(UTC), newest_window={}, windows_due={}, windows_failing={},
                          artifacts={}, artifacts_stalled=0, queues={}, retries={}, dead_letters=0,
                          beat=BeatState(None, None, ""), organizations=orgs)


def organizations(rng: random.Random) -> list[OrganizationHour]:
    ids = AWKWARD + [f"org-{i:05d}" for i in range(200)]
    return [OrganizationHour(org, rng.randint(0, 10**6), (done := rng.randint(0, 500)), (bad := rng.randint(0, 50)),
                             rng.choice([0.0, 1.0, bad / (done + bad) if done + bad else 0.0, math.nan]),
                             rng.choice([0.0, rng.uniform(0, 1e8), math.inf]), rng.uniform(0, 100) * 1e-3,
                             (rng.choice([math.nan, 0.0, rng.uniform(0, 1e6)]), rng.uniform(0, 1e7),
                              rng.uniform(0, 1e7), rng.choice([math.nan, rng.uniform(0, 1e8)])))
            for org in ids]


class _Families:
    def __init__(self, families: list[GaugeMetricFamily]) -> None:
        self.families = families

    def collect(self):  # type: ignore[no-untyped-def]
        return iter(self.families)


def reference(orgs: list[OrganizationHour]) -> bytes:
    """The same families through prometheus_client's generic writer."""
    values = {
        NAMES[0]: lambda o: o.artifacts_received,
        NAMES[1]: lambda o: o.artifacts_completed + o.artifacts_failed,
        NAMES[2]: lambda o: o.failure_rate,
        NAMES[3]: lambda o: o.p95_end_to_end_latency_ms / 1000.0,
        NAMES[4]: lambda o: o.ai_cost,
    }
    families = []
    for name in NAMES:
        family = GaugeMetricFamily(name, METRICS[name][1], labels=["organization"])
        for o in orgs:
            family.add_metric([o.organization_id], values[name](o))
        families.append(family)
    quantiles = GaugeMetricFamily(QUANTILE_FAMILY, METRICS[QUANTILE_FAMILY][1], labels=["organization", "quantile"])
    for o in orgs:
        for q, ms in zip(("0.5", "0.9", "0.95", "0.99"), o.percentiles_ms, strict=True):
            quantiles.add_metric([o.organization_id, q], ms / 1000.0)
    families.append(quantiles)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))  # type: ignore[arg-type]
    return generate_latest(registry)


def test_direct_exposition_equals_the_generic_writer_byte_for_byte() -> None:
    orgs = organizations(random.Random(7))
    assert organization_exposition(health(orgs)) == reference(orgs)
    assert organization_exposition(health([])) == reference([])


def test_direct_exposition_parses_back_to_every_organization_and_value() -> None:
    orgs = organizations(random.Random(11))
    families = list(text_string_to_metric_families(organization_exposition(health(orgs)).decode()))
    parsed = {f.name: {s.labels["organization"]: s.value for s in f.samples} for f in families
              if f.name != QUANTILE_FAMILY}
    assert set(parsed) == set(NAMES)
    (quantiles,) = [f for f in families if f.name == QUANTILE_FAMILY]
    by_org = {(s.labels["organization"], s.labels["quantile"]): s.value for s in quantiles.samples}
    for o in orgs:
        for q, ms in zip(("0.5", "0.9", "0.95", "0.99"), o.percentiles_ms, strict=True):
            got = by_org[(o.organization_id, q)]
            assert got == ms / 1000.0 or (math.isnan(ms) and math.isnan(got))
    received = parsed["voicepipe_organization_artifacts_received"]
    assert received == {o.organization_id: float(o.artifacts_received) for o in orgs}
    assert set(received) >= set(AWKWARD)
    cost = parsed["voicepipe_organization_ai_cost_usd"]
    assert all(cost[o.organization_id] == o.ai_cost for o in orgs)


def test_beyond_the_limit_organizations_are_summed_into_one_series_without_a_p95() -> None:
    orgs = organizations(random.Random(13))
    parsed = {f.name: {s.labels.get("organization", ""): s.value for s in f.samples}
              for f in text_string_to_metric_families(organization_exposition(health(orgs), limit=50).decode())}
    ranked = sorted(orgs, key=lambda o: (-o.artifacts_received, o.organization_id))
    shown, rest = ranked[:50], ranked[50:]
    received = parsed["voicepipe_organization_artifacts_received"]
    assert received == {**{o.organization_id: float(o.artifacts_received) for o in shown},
                        "": float(sum(o.artifacts_received for o in rest))}
    finished = sum(o.artifacts_completed + o.artifacts_failed for o in rest)
    assert parsed["voicepipe_organization_artifacts_finished"][""] == finished
    assert parsed["voicepipe_organization_failure_rate"][""] == sum(o.artifacts_failed for o in rest) / finished
    assert math.isclose(parsed["voicepipe_organization_ai_cost_usd"][""], sum(o.ai_cost for o in rest))
    for name in ("voicepipe_organization_p95_latency_seconds", QUANTILE_FAMILY):
        assert "" not in parsed[name]
        assert len(parsed[name]) == 50
    assert parsed["voicepipe_organizations_not_shown"] == {"": float(len(rest))}
