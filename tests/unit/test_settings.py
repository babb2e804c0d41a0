from __future__ import annotations

import pytest

from voicepipe.errors import SettingsError
from voicepipe.settings import load_settings


def test_defaults() -> None:
    s = load_settings({})
    assert (s.database_url, s.broker_url) == (None, None)
    assert s.hourly_horizon_hours == 72 and s.daily_horizon_days == 7
    assert s.simulator_fail_stages == () and s.simulator_time_scale == 1.0
    assert s.data_dir.name == ".voicepipe"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
        ({"BROKER_URL": "kafka://x"}, "BROKER_URL"),
        ({"VOICEPIPE_HOURLY_HORIZON_HOURS": "seventy"}, "VOICEPIPE_HOURLY_HORIZON_HOURS"),
        ({"VOICEPIPE_HOURLY_HORIZON_HOURS": "0"}, "VOICEPIPE_HOURLY_HORIZON_HOURS"),
        ({"VOICEPIPE_SIMULATOR_FAILURE_RATE": "1.5"}, "VOICEPIPE_SIMULATOR_FAILURE_RATE"),
        ({"VOICEPIPE_SIMULATOR_FAILURE_RATE": "nan"}, "VOICEPIPE_SIMULATOR_FAILURE_RATE"),
        ({"VOICEPIPE_SIMULATOR_FAIL_STAGES": "transcription,typo"}, "VOICEPIPE_SIMULATOR_FAIL_STAGES"),
        ({"FLOWER_BASIC_AUTH": "admin"}, "FLOWER_BASIC_AUTH"),
        ({"VOICEPIPE_FAKE_NOW": "2026-01-01T00:00:00"}, "VOICEPIPE_FAKE_NOW"),
        ({"VOICEPIPE_LOG_LEVEL": "LOUD"}, "VOICEPIPE_LOG_LEVEL"),
    ],
)
def test_a_wrong_value_names_its_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        load_settings(env)


def test_fail_stages_are_parsed() -> None:
    s = load_settings({"VOICEPIPE_SIMULATOR_FAIL_STAGES": " transcription , draft_generation"})
    assert s.simulator_fail_stages == ("transcription", "draft_generation")
