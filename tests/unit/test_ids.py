"""Ids from producers carry no control characters (they reach log lines, labels and pages)."""

from __future__ import annotations

import pytest

from voicepipe.errors import InvalidInput
from voicepipe.validation import check_id


@pytest.mark.parametrize("bad", ["org-1\nINFO forged line", "org\r1", "org\t1", "org\x1b[31m", "org\u200b1",
                                 "org\u2028x", "org\x7f"])
def test_an_id_with_a_control_character_is_refused_by_name(bad: str) -> None:
    with pytest.raises(InvalidInput, match="organization_id: contains a control or non-printable character"):
        check_id(bad, "organization_id")


@pytest.mark.parametrize("good", ["org-1", "Club Atlético", "user@example.com", "組織-7", "a b"])
def test_ordinary_ids_pass_unchanged(good: str) -> None:
    assert check_id(good, "organization_id") == good
