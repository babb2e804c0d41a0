"""One vocabulary: the stages with AI work are named together in one place of the shipped code."""

from __future__ import annotations

import ast

from tests.support.helpers import REPO_ROOT
from voicepipe.domain import PIPELINE, STAGE_ORDER

SHIPPED = ("voicepipe", "tasks", "worker", "models", "beat_schedule.py")
LITERALS = (ast.Tuple, ast.List, ast.Set, ast.Dict)


def literals_naming_every_stage() -> list[str]:
    """Outermost literals (tuple, list, set, dict) whose strings include all four stage names."""
    found = []
    for root in SHIPPED:
        path = REPO_ROOT / root
        for file in [path] if path.is_file() else sorted(path.rglob("*.py")):
            tree = ast.parse(file.read_text(), filename=str(file))
            inner: set[int] = set()
            for node in ast.walk(tree):
                if not isinstance(node, LITERALS) or id(node) in inner:
                    continue
                strings = {n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
                if set(STAGE_ORDER) <= strings:
                    found.append(f"{file.relative_to(REPO_ROOT)}:{node.lineno}")
                    inner.update(id(n) for n in ast.walk(node))
    return found


def test_the_four_stage_names_appear_together_in_one_literal() -> None:
    assert STAGE_ORDER == ("transcription", "claims_extraction", "entity_resolution", "draft_generation")
    assert [where.split(":")[0] for where in literals_naming_every_stage()] == ["voicepipe/domain.py"]


def test_each_stage_moves_an_artifact_from_where_the_one_before_left_it() -> None:
    for before, stage in zip(PIPELINE, PIPELINE[1:], strict=False):
        assert before.done in stage.claimable, stage.name
        assert stage.working in stage.claimable, stage.name
    assert PIPELINE[0].claimable[0] == "received" and PIPELINE[-1].done == "completed"
