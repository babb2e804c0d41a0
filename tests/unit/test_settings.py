from __future__ import annotations

import pytest

from voicepipe.errors import SettingsError
from voicepipe.settings import PLACEHOLDER_PASSWORD, load_settings


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
        ({"FLOWER_BASIC_AUTH": "admin:"}, "FLOWER_BASIC_AUTH"),
        ({"FLOWER_BASIC_AUTH": ":pw"}, "FLOWER_BASIC_AUTH"),
        ({"FLOWER_BASIC_AUTH": "admin:pw,ops: "}, "FLOWER_BASIC_AUTH"),
        ({"FLOWER_BASIC_AUTH": f"admin:{PLACEHOLDER_PASSWORD}"}, "FLOWER_BASIC_AUTH"),
        ({"VOICEPIPE_DIRECTORY_SECRET": PLACEHOLDER_PASSWORD}, "VOICEPIPE_DIRECTORY_SECRET"),
        ({"VOICEPIPE_DIRECTORY_SECRET": "too-short"}, "VOICEPIPE_DIRECTORY_SECRET"),
        ({"FLOWER_BASIC_AUTH": "admin:admin"}, "FLOWER_BASIC_AUTH"),
        ({"FLOWER_BASIC_AUTH": "admin:administrator"}, "FLOWER_BASIC_AUTH"),
        ({"FLOWER_BASIC_AUTH": "admin:long-enough-\u200b-but-hidden"}, "FLOWER_BASIC_AUTH"),
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


@pytest.mark.parametrize(
    ("name", "value"),
    [("DATABASE_URL", "mysql://app:s3cret-pw@db/app"), ("FLOWER_BASIC_AUTH", "s3cret-pw"),
     ("BROKER_URL", "kafka://u:s3cret-pw@k"), ("RESULT_BACKEND", "s3cret-pw")],
)
def test_an_error_never_echoes_a_value_that_may_hold_a_password(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name) as excinfo:
        load_settings({name: value})
    assert "s3cret-pw" not in str(excinfo.value)
