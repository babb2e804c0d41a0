"""Read docker-compose.yml the way `docker compose` does (interpolation from .env), for tests.

No Docker engine runs here, so tests parse the file and run each service's command
and health check directly as local processes.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.support.helpers import REPO_ROOT

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
# Where the image keeps its data (Dockerfile: VOICEPIPE_DATA_DIR, the beat volume).
IMAGE_DATA_DIR = "/var/lib/voicepipe"

_VAR = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|:\?|-|\?)(?P<arg>[^}]*))?\}")


def raw() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return data


def env_example() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?error} and $$, applied recursively."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name"), match.group("op"), match.group("arg")
        current = env.get(name)
        if op == ":-":
            return current if current else arg
        if op == ":?":
            if not current:
                raise KeyError(f"{name}: {arg}")
            return current
        return current or ""

    return _VAR.sub(sub, value)


def services(env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = interpolate(raw()["services"], env)
    return result


def local_command(command: list[str], data_dir: Path, port: int | None = None) -> list[str]:
    """A service's command as a local process: this interpreter, the test's folders and port."""
    args = [arg.replace(IMAGE_DATA_DIR, str(data_dir)) for arg in command]
    if port is not None:
        args = [arg.replace("5555", str(port)) for arg in args]
    if args[0] == "celery":
        return [sys.executable, "-m", "celery", *args[1:]]
    if args[0] == "voicepipe":
        return [sys.executable, "-m", "voicepipe.cli", *args[1:]]
    if args[0] == "python":
        return [sys.executable, *args[1:]]
    raise AssertionError(f"unexpected program {args[0]!r}")


def healthcheck_command(service: dict[str, Any], data_dir: Path, port: int | None = None) -> list[str]:
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD", test
    return local_command(test[1:], data_dir, port)
