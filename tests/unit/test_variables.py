"""The environment variables' table (voicepipe/variables.py, the configuration reference's
source) against the code: every variable read is documented, every documented one is
read, and each documented default is the one the settings apply."""

from __future__ import annotations

import ast
import re
from dataclasses import fields
from pathlib import Path

from tests.support.helpers import REPO_ROOT
from voicepipe.settings import load_settings
from voicepipe.variables import VARIABLES

SHIPPED = ("voicepipe", "worker", "tasks", "models", "beat_schedule.py", "migrations/env.py")
NAME = re.compile(r"^(VOICEPIPE_[A-Z0-9_]+|DATABASE_URL|BROKER_URL|RESULT_BACKEND|FLOWER_[A-Z_]+)$")
# Flower's own switch, which `voicepipe dev` removes from its children's environment.
NOT_OURS = {"FLOWER_UNAUTHENTICATED_API"}


def names_in_code() -> set[str]:
    found = set()
    for root in SHIPPED:
        path = REPO_ROOT / root
        for file in [path] if path.is_file() else path.rglob("*.py"):
            for node in ast.walk(ast.parse(file.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and NAME.match(node.value):
                    found.add(node.value)
    return found - NOT_OURS


def documented(name: str) -> bool:
    return any(name == v.name or (v.name.endswith("*") and name.startswith(v.name[:-1])) for v in VARIABLES)


def test_every_variable_the_code_reads_is_documented_and_nothing_else() -> None:
    read = names_in_code()
    assert sorted(n for n in read if not documented(n)) == []
    families = {v.name for v in VARIABLES if v.name.endswith("*")}
    assert sorted({v.name for v in VARIABLES} - read - families) == []
    assert all(any(n.startswith(f[:-1]) for n in read) for f in families)


def test_each_documented_default_is_the_settings_default() -> None:
    defaults = load_settings({})
    checked = 0
    for variable in VARIABLES:
        field = variable.name.removeprefix("VOICEPIPE_").lower()
        if field not in {f.name for f in fields(defaults)} or not variable.default.startswith("`"):
            continue
        written = variable.default[1:].split("`", 1)[0]
        value = getattr(defaults, field)
        if field == "data_dir":  # made absolute from the working directory
            value = f"./{value.relative_to(Path.cwd())}"
        assert written == (str(int(value)) if isinstance(value, bool) else str(value)), variable.name
        checked += 1
    assert checked >= 30
