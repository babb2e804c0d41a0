"""`voicepipe dev` starts the dashboard with Flower's generated password and prints its URL."""

from __future__ import annotations

import base64
import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.acceptance.test_dev_stack import flower_login, free_port, start_dev, stop_dev
from tests.support.helpers import wait_for


def dashboard_get(port: int, path: str, credentials: str | None) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if credentials is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(credentials.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


@pytest.mark.slow
def test_dev_serves_the_dashboard_with_the_generated_password(short_tmp: Path) -> None:
    log = short_tmp / "dev-dashboard.log"
    proc = start_dev(short_tmp / "devdash", free_port(), log)
    try:
        wait_for(lambda: "dashboard at" in log.read_text(), timeout=120, what="dev to print the dashboard's URL")
        match = re.search(r"dashboard at http://([^:@\s]+):([^@\s]+)@127\.0\.0\.1:(\d+)/", log.read_text())
        assert match, log.read_text()[-2000:]
        user, password, port = match.group(1), match.group(2), int(match.group(3))
        assert (user, password) == flower_login(log)  # one generated password for the run
        credentials = f"{user}:{password}"

        def answers() -> bool:
            try:
                return dashboard_get(port, "/api/aggregation", credentials)[0] == 200
            except OSError:
                return False

        wait_for(answers, timeout=60, what="the dashboard to answer")
        for wrong in (None, f"{user}:wrong", ":"):
            assert dashboard_get(port, "/", wrong)[0] == 401
        status, body = dashboard_get(port, "/", credentials)
        assert status == 200 and b"<svg" in body
        series = json.loads(dashboard_get(port, "/api/platform/series?period=hourly", credentials)[1])
        assert series["period"] == "hourly" and "windows" in series
    finally:
        if proc.poll() is None:
            stop_dev(proc, log)
    assert "voicepipe dev: stopped" in log.read_text()
