"""The dashboard's artifacts list and one artifact's story, over a real `voicepipe dashboard`.

Expected lists are computed here from the rows the test wrote (their order and filters
in Python), never from the dashboard's query.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models import Artifact, PipelineEvent
from models.artifacts import Claim, Transcript
from tests.integration.test_dashboard import CREDENTIALS, get, start_dashboard
from tests.support.helpers import Proc, service_env, wait_for
from tests.support.pipeline import add_user
from voicepipe.events.recording import record_events
from voicepipe.retry.service import request_retry

STALL = timedelta(seconds=900)  # VOICEPIPE_STALL_TIMEOUT_SECONDS' default


@dataclass(frozen=True)
class Seeded:
    id: uuid.UUID
    organization_id: str
    created_at: datetime
    status: str
    stage: str | None  # failed_stage when failed, else current_stage
    stalled: bool


def seed(session: Session, now: datetime) -> list[Seeded]:
    """160 artifacts of two organizations over 40 hours: failed at two stages, completed, working."""
    rng = random.Random(7)
    rows: list[Seeded] = []
    for i in range(160):
        kind = rng.choice(["failed-t", "failed-c", "completed", "processing", "stalled"])
        created = now - timedelta(hours=40) + timedelta(seconds=rng.uniform(0, 40 * 3600))
        if i % 10 == 0 and rows:  # ties on the received time: the id breaks them
            created = rows[-1].created_at
        status = {"failed-t": "failed", "failed-c": "failed", "completed": "completed"}.get(kind, "processing")
        stage = {"failed-t": "transcription", "failed-c": "claims_extraction", "completed": None}.get(
            kind, rng.choice(["claims_extraction", "draft_generation"]))
        updated = now - (STALL + timedelta(minutes=5) if kind == "stalled" else timedelta(minutes=1))
        art = Artifact(
            id=uuid.uuid4(), organization_id=rng.choice(["org-a", "org-b"]), coach_id="coach-1",
            source_channel="whatsapp_audio", status=status,
            failed_stage=stage if status == "failed" else None, current_stage=None if status == "failed" else stage,
            error_code="PROVIDER_TIMEOUT" if status == "failed" else None,
            error_message=("the provider did not answer " * 20) if status == "failed" else None,
            metadata_={"retryAttempt": 0}, created_at=created, updated_at=updated)
        session.add(art)
        rows.append(Seeded(art.id, art.organization_id, created, status, stage, kind == "stalled"))
    session.commit()
    return rows


def expected(rows: list[Seeded], *, status: str | None = None, stage: str | None = None,
             organization: str | None = None, since: datetime | None = None) -> list[str]:
    def keep(r: Seeded) -> bool:
        shown = "stalled" if r.stalled else ("processing" if r.status == "processing" else r.status)
        return ((status is None or shown == status) and (stage is None or r.stage == stage)
                and (organization is None or r.organization_id == organization)
                and (since is None or r.created_at >= since))

    return [str(r.id) for r in sorted(filter(keep, rows), key=lambda r: (r.created_at, r.id), reverse=True)]


def api(port: int, path: str) -> tuple[int, Any]:
    status, body, _ = get(port, path, CREDENTIALS)
    return status, json.loads(body)


def walk(port: int, **filters: str) -> list[dict[str, Any]]:
    """Every artifact of the list, following `next` page by page (pages of 25)."""
    got: list[dict[str, Any]] = []
    query = {**filters, "limit": "25"}
    while True:
        status, body = api(port, "/api/artifacts?" + urlencode(query))
        assert status == 200, body
        assert len(body["artifacts"]) <= 25
        got += body["artifacts"]
        if body["next"] is None:
            return got
        query["cursor"] = body["next"]


@pytest.fixture
def dashboard(db_url: str, broker_url: str, service_data_dir: Path, tmp_path: Path,
              session: Session) -> Iterator[tuple[int, datetime, list[Seeded]]]:
    now = datetime.now(UTC)
    rows = seed(session, now)
    env = service_env(db_url, broker_url, service_data_dir, VOICEPIPE_DASHBOARD_AUTH=CREDENTIALS)
    proc, port = start_dashboard(env, tmp_path / "dashboard.log")
    try:
        yield port, now, rows
    finally:
        proc.stop()


def test_the_list_filters_and_pages_by_keyset_newest_first(dashboard: tuple[int, datetime, list[Seeded]]) -> None:
    port, now, rows = dashboard
    cases: list[dict[str, str]] = [
        {}, {"status": "failed"}, {"status": "failed", "stage": "transcription"}, {"status": "stalled"},
        {"status": "processing", "stage": "draft_generation"}, {"status": "completed", "organization": "org-b"},
        {"since": (now - timedelta(hours=10)).isoformat(), "organization": "org-a"},
    ]
    for filters in cases:
        want = expected(rows, status=filters.get("status"), stage=filters.get("stage"),
                        organization=filters.get("organization"),
                        since=datetime.fromisoformat(filters["since"]) if "since" in filters else None)
        got = walk(port, **filters)
        assert [a["id"] for a in got] == want, filters
        assert want, filters  # every case selects something
    by_id = {str(r.id): r for r in rows}
    for a in walk(port, status="failed", stage="claims_extraction"):
        r = by_id[a["id"]]
        assert (a["organization_id"], a["status"], a["stage"], a["attempts"]) == (r.organization_id, "failed",
                                                                                 "claims_extraction", 0)
        assert a["last_error"]["code"] == "PROVIDER_TIMEOUT" and len(a["last_error"]["message"]) == 161  # trimmed
    # The page shows the same first page, and a next link that keeps the filters.
    status, body, _ = get(port, "/artifacts?status=failed&stage=transcription", CREDENTIALS)
    page = body.decode()
    assert status == 200
    first = expected(rows, status="failed", stage="transcription")[:50]
    assert [line.split('"')[1] for line in page.split('data-artifact-id=')[1:]] == first


def test_bad_filters_are_named_and_unknown_artifacts_are_404(
    dashboard: tuple[int, datetime, list[Seeded]]
) -> None:
    port, _, _ = dashboard
    for query, field in (("status=broken", "status"), ("stage=mixing", "stage"), ("cursor=xyz", "cursor"),
                         ("limit=0", "limit"), ("limit=500", "limit"), ("since=yesterday", "since")):
        status, body = api(port, f"/api/artifacts?{query}")
        assert status == 400 and body["error"] == "InvalidInput" and field in body["message"], query
    assert api(port, f"/api/artifacts/{uuid.uuid4()}")[0] == 404
    status, body = api(port, "/api/artifacts/not-a-uuid")
    assert status == 400 and "artifact_id" in body["message"]
    assert get(port, "/api/artifacts")[0] == 401  # credentials, as everywhere


def test_one_artifacts_story_is_its_events_in_order_with_what_it_produced(
    dashboard: tuple[int, datetime, list[Seeded]], session: Session
) -> None:
    port, now, rows = dashboard
    art = next(r for r in rows if r.status == "failed" and r.stage == "claims_extraction")
    base = {"artifact_id": str(art.id), "organization_id": art.organization_id, "coach_id": "coach-1"}
    at = art.created_at

    def after(seconds: int) -> str:
        return (at + timedelta(seconds=seconds)).isoformat()

    record_events(session, [
        {**base, "event_type": "artifact_received", "stage": "ingestion", "occurred_at": at.isoformat()},
        {**base, "event_type": "transcription_completed", "stage": "transcription", "duration_ms": 2100.0,
         "metadata": {"aiModel": "whisper-1", "aiCost": 0.006}, "occurred_at": after(3)},
        {**base, "event_type": "claims_extraction_failed", "stage": "claims_extraction",
         "error_code": "PROVIDER_TIMEOUT", "error_message": "no answer",
         "metadata": {"aiModel": "gpt-4o-mini", "aiCost": 0.001}, "occurred_at": after(9)},
    ])
    session.add(Transcript(artifact_id=art.id, text="we pressed high", word_count=3, confidence=0.9))
    session.add_all([Claim(artifact_id=art.id, text=f"claim {i}", confidence=0.8) for i in range(3)])
    session.commit()
    add_user(session, "staff-1")
    request_retry(session, stage="claims_extraction", artifact_id=art.id, requested_by="staff-1", reason="outage")
    session.commit()
    session.info.pop("after_commit", None)  # the stage task is not sent: no worker here

    status, story = api(port, f"/api/artifacts/{art.id}")
    assert status == 200, story
    stored = session.execute(select(PipelineEvent.id, PipelineEvent.event_type).where(
        PipelineEvent.artifact_id == art.id).order_by(PipelineEvent.occurred_at, PipelineEvent.id)).all()
    assert [(e["id"], e["event_type"]) for e in story["timeline"]] == [(str(i), t) for i, t in stored]
    assert [e["event_type"] for e in story["timeline"]][:3] == [
        "artifact_received", "transcription_completed", "claims_extraction_failed"]
    initiated = next(e for e in story["timeline"] if e["event_type"] == "retry_initiated")
    assert initiated["requested_by"] == "staff-1" and initiated["attempt"] == 1
    # The retry of claims extraction deleted the claims it will redo; the transcript stays.
    assert story["produced"] == {"transcripts": 1, "claims": 0, "entities": 0, "drafts": 0}
    assert story["ai_cost"] == "0.007" and [c["model"] for c in story["ai_calls"]] == ["whisper-1", "gpt-4o-mini"]
    (retry,) = story["retries"]
    assert (retry["attempt"], retry["requested_by"], retry["reason"]) == (1, "staff-1", "outage")
    assert story["artifact"]["status"] == "transcribed" and story["artifact"]["attempts"] == 1  # its entry status
    page = get(port, f"/artifacts/{art.id}", CREDENTIALS)[1].decode()
    assert page.count("data-event-id=") == len(stored)


STAFF, VIEWER = ("ops-alice", "alice-password-1"), ("viewer", "viewer-password-1")


def test_staff_repair_an_artifact_from_its_page_and_no_one_else_can(
    db_url: str, broker_url: str, service_data_dir: Path, tmp_path: Path, session: Session,
    start_worker: Callable[..., Proc],
) -> None:
    from playwright.sync_api import sync_playwright

    from tests.integration.test_dashboard import CHROMIUM
    from tests.support.pipeline import FAST, add_artifact, status_of

    add_user(session, STAFF[0])
    add_user(session, VIEWER[0], staff=False)
    # Failed at two stages; the one repaired is failed at claims extraction.
    target = add_artifact(session, status="failed", failed_stage="claims_extraction")
    others = [add_artifact(session, status="failed", failed_stage="transcription") for _ in range(3)]
    base = {"artifact_id": str(target), "organization_id": "org-1", "coach_id": "coach-1"}
    record_events(session, [{**base, "event_type": "claims_extraction_failed", "stage": "claims_extraction",
                             "error_code": "PROVIDER_TIMEOUT", "occurred_at": datetime.now(UTC).isoformat()}])
    # Its transcript, which claims extraction reads when it is retried.
    session.add(Transcript(artifact_id=target, text="Sam pressed high and won the ball", word_count=7, confidence=0.9))
    session.commit()
    env = service_env(db_url, broker_url, service_data_dir,
                      VOICEPIPE_DASHBOARD_AUTH=f"{STAFF[0]}:{STAFF[1]},{VIEWER[0]}:{VIEWER[1]}")
    proc, port = start_dashboard(env, tmp_path / "dashboard.log")
    start_worker(queues="pipeline,retry", **FAST)
    url = f"http://127.0.0.1:{port}"
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            try:
                staff = browser.new_context(http_credentials={"username": STAFF[0], "password": STAFF[1]}).new_page()
                # Filter the failed artifacts of one stage: exactly the target.
                staff.goto(url + "/artifacts")
                staff.select_option("select[name=status]", "failed")
                staff.select_option("select[name=stage]", "claims_extraction")
                staff.click("#artifact-filters button")
                staff.wait_for_url("**/artifacts?*")
                listed = staff.locator("#artifacts tr[data-artifact-id]").evaluate_all(
                    "els => els.map(e => e.dataset.artifactId)")
                assert listed == [str(target)]
                staff.click(f'#artifacts tr[data-artifact-id="{target}"] a')
                staff.wait_for_url(f"**/artifacts/{target}")
                shown = staff.locator("#artifact-timeline tr[data-event-id]").evaluate_all(
                    "els => els.map(e => e.dataset.eventId)")
                session.rollback()
                stored = session.scalars(select(PipelineEvent.id).where(PipelineEvent.artifact_id == target)
                                         .order_by(PipelineEvent.occurred_at, PipelineEvent.id)).all()
                assert shown == [str(i) for i in stored] and len(shown) == 1
                # Retry: the real worker takes it from claims extraction to completed.
                staff.click("#retry")
                staff.wait_for_url(f"**/artifacts/{target}?sent=*")
                wait_for(lambda: status_of(session, target) == "completed", timeout=60, what="the repaired artifact")
                staff.reload()
                assert staff.locator("#artifact-status").text_content() == "completed"
                assert staff.locator("#retry").count() == 0  # completed: nothing to retry

                viewer = browser.new_context(
                    http_credentials={"username": VIEWER[0], "password": VIEWER[1]}).new_page()
                viewer.goto(f"{url}/artifacts/{others[0]}")
                assert viewer.locator("#artifact-status").text_content() == "failed"
                assert viewer.locator("#retry").count() == 0  # not staff: no button
                since = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
                viewer.goto(f"{url}/artifacts?" + urlencode({"status": "failed", "stage": "transcription",
                                                              "since": since}))
                assert viewer.locator("#bulk-retry").count() == 0
                staff.goto(f"{url}/artifacts/{others[0]}")
                token = staff.locator("input[name=csrf]").get_attribute("value")
                assert token

                # Forged POSTs: the viewer with a staff token, staff without a token or with another.
                def post(who: tuple[str, str], path: str, **form: str) -> int:
                    return post_form(port, path, who, form)

                one = f"/artifacts/{others[0]}/retry"
                assert post(VIEWER, one, stage="transcription", csrf=token) == 403
                assert post(STAFF, one, stage="transcription") == 403
                assert post(STAFF, one, stage="transcription", csrf="0" * 64) == 403
                assert post(STAFF, f"/artifacts/{target}/retry", stage="full_pipeline", csrf=token) == 409
                assert post(STAFF, one, stage="mixing", csrf=token) == 400
                assert post(VIEWER, "/artifacts/retry-failed", stage="transcription", since=since, csrf=token) == 403
                assert post(STAFF, "/artifacts/retry-failed", stage="transcription", since=since) == 403
                session.rollback()
                assert [status_of(session, a) for a in others] == ["failed"] * 3
                assert initiated(session) == {target: 1}  # the staff retry alone

                # Bulk, from the page: the three failed at transcription, each retried once.
                staff.goto(f"{url}/artifacts?" + urlencode({"status": "failed", "stage": "transcription",
                                                             "since": since}))
                assert "Retry the 3 artifacts" in (staff.locator("#bulk-retry").text_content() or "")
                staff.click("#bulk-retry")
                staff.wait_for_url("**bulk_sent=3**")
                wait_for(lambda: [status_of(session, a) for a in others] == ["completed"] * 3, timeout=90,
                         what="the bulk-repaired artifacts")
                assert initiated(session) == {target: 1, **{a: 1 for a in others}}
            finally:
                browser.close()
    finally:
        proc.stop()


def initiated(session: Session) -> dict[uuid.UUID, int]:
    session.rollback()
    rows = session.execute(select(PipelineEvent.artifact_id, func.count()).where(
        PipelineEvent.event_type == "retry_initiated").group_by(PipelineEvent.artifact_id)).all()
    return {art: int(n) for art, n in rows if art is not None}


def post_form(port: int, path: str, who: tuple[str, str], form: dict[str, str]) -> int:
    import base64
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=urlencode(form).encode(), method="POST",
                                     headers={"Content-Type": "application/x-www-form-urlencoded",
                                              "Authorization": "Basic " + base64.b64encode(
                                                  f"{who[0]}:{who[1]}".encode()).decode()})
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
