"""The documentation's reference pages are what docs/reference.py generates from the code now."""

from __future__ import annotations

import importlib.util

import pytest

from tests.support.helpers import REPO_ROOT

spec = importlib.util.spec_from_file_location("docs_reference", REPO_ROOT / "docs" / "reference.py")
assert spec and spec.loader
reference = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reference)


@pytest.mark.parametrize("page", sorted(reference.PAGES))
def test_the_reference_page_is_current(page: str) -> None:
    written = (REPO_ROOT / "docs" / page).read_text()
    assert written == reference.PAGES[page](), f"docs/{page} is stale: run `python docs/reference.py --write`"
