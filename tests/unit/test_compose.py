"""docker-compose.yml, Dockerfile and .env.example, checked without a Docker engine.

Each service's command is run for real in tests/integration/test_compose_commands.py.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.support.compose import ENV_EXAMPLE, env_example, raw, services
from tests.support.helpers import REPO_ROOT
from worker.routes import QUEUES

APP_SERVICES = {"migrate", "worker-metrics", "worker-pipeline", "worker-retry", "worker-events", "beat", "flower",
                "exporter", "flower-admin"}
SECRET_WORDS = re.compile(r"PASSWORD|SECRET|TOKEN|AUTH|KEY", re.IGNORECASE)
INTERPOLATION = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?[-?][^}]*)?\}")


@pytest.fixture(scope="module")
def svc() -> dict[str, dict[str, Any]]:
    return services(env_example())


def option(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_the_stack_has_exactly_the_expected_services() -> None:
    assert set(raw()["services"]) == {"postgres", "redis", "prometheus"} | APP_SERVICES


def test_postgres_16_and_redis_7_append_only_with_healthchecks(svc: dict[str, dict[str, Any]]) -> None:
    assert svc["postgres"]["image"].startswith("postgres:16")
    assert "pg_isready" in " ".join(svc["postgres"]["healthcheck"]["test"])
    assert svc["redis"]["image"].startswith("redis:7")
    assert option(svc["redis"]["command"], "--appendonly") == "yes"
    # What tests/faults/test_redis_restart.py proved: "everysec" lost acknowledged messages.
    assert option(svc["redis"]["command"], "--appendfsync") == "always"
    # The healthcheck authenticates without putting the password on redis-cli's command line.
    assert svc["redis"]["healthcheck"]["test"] == [
        "CMD-SHELL", 'REDISCLI_AUTH="$REDIS_PASSWORD" redis-cli ping | grep -q PONG']
    # Data survives container replacement: both keep it on named volumes.
    assert any(v.endswith(":/var/lib/postgresql/data") for v in svc["postgres"]["volumes"])
    assert any(v.endswith(":/data") for v in svc["redis"]["volumes"])


def test_migrate_runs_once_and_every_voicepipe_service_waits_for_it(svc: dict[str, dict[str, Any]]) -> None:
    migrate = svc["migrate"]
    assert migrate["command"] == ["voicepipe", "migrate", "--app-role", env_example()["POSTGRES_APP_USER"]]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in APP_SERVICES - {"migrate"}:
        depends = svc[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["redis"]["condition"] == "service_healthy", name


def test_one_scalable_worker_service_per_queue_with_a_consuming_health_check(
    svc: dict[str, dict[str, Any]],
) -> None:
    seen = []
    for queue in QUEUES:
        worker = svc[f"worker-{queue}"]
        command = worker["command"]
        assert command[:4] == ["celery", "-A", "worker", "worker"]
        assert option(command, "-Q") == queue
        assert "-B" not in command and "--beat" not in command  # beat runs once, elsewhere
        # Scalable with --scale: no fixed container name, no host port.
        assert "container_name" not in worker and "ports" not in worker
        check = worker["healthcheck"]["test"]
        assert check[:4] == ["CMD", "voicepipe", "health", "worker"]
        assert option(check, "--name") == option(command, "-n") == f"{queue}@%h"
        assert option(check, "--queues") == queue
        seen.append(queue)
    assert sorted(seen) == sorted(QUEUES)


def test_exactly_one_beat_that_cannot_be_scaled_and_is_health_checked(svc: dict[str, dict[str, Any]]) -> None:
    beats = [name for name, s in svc.items() if "beat" in (s.get("command") or [])[:4]]
    assert beats == ["beat"]
    beat = svc["beat"]
    assert beat["command"][:4] == ["celery", "-A", "worker", "beat"]
    assert beat.get("container_name")  # `--scale beat=2` fails instead of starting a second one
    assert beat["healthcheck"]["test"] == ["CMD", "voicepipe", "health", "beat"]
    # The schedule and heartbeat live on a volume at the image's data folder.
    assert option(beat["command"], "-s").startswith(beat["environment"].get("VOICEPIPE_DATA_DIR", "/var/lib/voicepipe"))


def test_flower_takes_its_credentials_from_the_environment_and_is_published_on_loopback(
    svc: dict[str, dict[str, Any]],
) -> None:
    flower_raw = raw()["services"]["flower"]
    assert flower_raw["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH")
    flower = svc["flower"]
    assert flower["command"][:4] == ["celery", "-A", "worker", "flower"]
    assert all(p.startswith("127.0.0.1:") for p in flower["ports"])
    assert "/healthcheck" in " ".join(flower["healthcheck"]["test"])


def test_every_app_service_has_a_healthcheck_except_the_one_shot_migration(svc: dict[str, dict[str, Any]]) -> None:
    for name in APP_SERVICES - {"migrate"}:
        assert svc[name]["healthcheck"]["test"], name
    assert "healthcheck" not in svc["migrate"]


def test_configuration_comes_only_from_environment_variables_and_no_secret_is_written_down() -> None:
    text = (REPO_ROOT / "docker-compose.yml").read_text()
    for name, service in raw()["services"].items():
        assert "env_file" not in service, name
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            assert not source.startswith((".", "/")), f"{name} mounts a file or folder: {volume}"
        for key, value in (service.get("environment") or {}).items():
            if SECRET_WORDS.search(key):
                assert INTERPOLATION.fullmatch(str(value)), f"{name}.{key} is written down: {value!r}"
    # A password inside a URL comes from the environment too.
    for user_password in re.findall(r"://([^@/\s]+)@", text):
        _, _, password = user_password.partition(":")
        assert password.startswith("${"), f"literal password in a URL: {user_password}"
    assert "change-me" not in text


@pytest.mark.parametrize(
    "missing", ["POSTGRES_PASSWORD", "POSTGRES_APP_PASSWORD", "REDIS_PASSWORD", "FLOWER_BASIC_AUTH"])
def test_compose_stops_when_a_password_is_missing(missing: str) -> None:
    example = env_example()
    with pytest.raises(KeyError, match=missing):
        services({k: v for k, v in example.items() if k != missing})
    with pytest.raises(KeyError, match=missing):
        services({**example, missing: ""})


def test_services_connect_as_the_app_role_and_only_migrate_as_the_owner(svc: dict[str, dict[str, Any]]) -> None:
    example = env_example()
    owner = f"://{example['POSTGRES_USER']}:{example['POSTGRES_PASSWORD']}@"
    app = f"://{example['POSTGRES_APP_USER']}:{example['POSTGRES_APP_PASSWORD']}@"
    assert example["POSTGRES_APP_USER"] != example["POSTGRES_USER"]
    assert owner in svc["migrate"]["environment"]["DATABASE_URL"]
    assert svc["migrate"]["environment"]["VOICEPIPE_APP_DB_PASSWORD"] == example["POSTGRES_APP_PASSWORD"]
    for name in APP_SERVICES - {"migrate"}:
        assert app in svc[name]["environment"]["DATABASE_URL"], name
        assert "VOICEPIPE_APP_DB_PASSWORD" not in svc[name]["environment"], name


def test_redis_requires_the_password_that_every_broker_url_carries(svc: dict[str, dict[str, Any]]) -> None:
    password = env_example()["REDIS_PASSWORD"]
    assert option(svc["redis"]["command"], "--requirepass") == password
    assert svc["redis"]["environment"]["REDIS_PASSWORD"] == password
    for name in APP_SERVICES:
        assert svc[name]["environment"]["BROKER_URL"] == f"redis://:{password}@redis:6379/0", name


def test_the_operators_flower_is_read_only_and_the_admin_one_runs_only_in_its_profile(
    svc: dict[str, dict[str, Any]],
) -> None:
    flower, admin = svc["flower"], svc["flower-admin"]
    assert "--read_only=true" in flower["command"]
    assert "profiles" not in flower
    assert admin["profiles"] == ["admin"]
    assert not any(arg.startswith("--read_only") for arg in admin["command"])
    assert admin["environment"]["FLOWER_BASIC_AUTH"] == env_example()["FLOWER_ADMIN_BASIC_AUTH"]
    assert all(p.startswith("127.0.0.1:") for p in admin["ports"])
    # Only the workers that verify the platform's signatures hold its secret: the directory
    # sync's (pipeline) and the retries' (retry).
    holders = [name for name, s in svc.items() if "VOICEPIPE_DIRECTORY_SECRET" in (s.get("environment") or {})]
    assert sorted(holders) == ["worker-pipeline", "worker-retry"]


def test_env_example_documents_every_variable_with_placeholders_only() -> None:
    example = env_example()
    referenced = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", (REPO_ROOT / "docker-compose.yml").read_text()))
    assert referenced <= set(example), f"not in .env.example: {sorted(referenced - set(example))}"
    for key, value in example.items():
        if SECRET_WORDS.search(key):
            assert "change-me" in value, f"{key} in .env.example must be a placeholder"
    gitignore = (REPO_ROOT / ".gitignore").read_text().split()
    assert ".env" in gitignore and ENV_EXAMPLE.name not in gitignore


def test_the_image_installs_the_package_and_runs_as_a_non_root_user() -> None:
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    lines = [line.strip() for line in dockerfile.splitlines() if line.strip() and not line.startswith("#")]
    # The base image is pinned to a patch release and a Debian release, never a moving tag.
    assert lines[0] == "FROM python:3.11.7-slim-bookworm"
    assert any(line.startswith("RUN pip install -c constraints.txt .") for line in lines)
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert "ENV VOICEPIPE_DATA_DIR=/var/lib/voicepipe" in lines


# Issue 15: reproducible images, VOICEPIPE_LOG_LEVEL everywhere, Flower persistence.
PINNED_TAG = re.compile(r"^[a-z0-9./_-]+:(?!latest$)v?\d+\.\d+(\.\d+)?([-.][a-z0-9]+)*$")


def test_every_service_image_is_pinned_to_a_release_never_latest() -> None:
    for name, service in raw()["services"].items():
        image = service.get("image")
        if image is None or image == "voicepipe:local":  # built from the Dockerfile
            continue
        assert PINNED_TAG.match(image), f"{name}: image {image!r} is not pinned to a major.minor[.patch] tag"
        assert not image.endswith(":latest"), name
    assert raw()["x-voicepipe"]["image"] == "voicepipe:local"


def _requirement_name(spec: str) -> str:
    return re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0].strip().lower().replace("_", "-")


def test_constraints_pin_every_dependency_exactly() -> None:
    import tomllib

    pins: dict[str, str] = {}
    for line in (REPO_ROOT / "constraints.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and version.strip(), f"not an exact pin: {line!r}"
        pins[name.strip().lower().replace("_", "-")] = version.strip()
    assert "voicepipe" not in pins  # the project itself is built from the source tree
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["dev"],
              *project["optional-dependencies"]["embedded"]]
    missing = {_requirement_name(spec) for spec in wanted if not spec.startswith("voicepipe")} - set(pins)
    assert not missing, f"constraints.txt lacks {sorted(missing)}: regenerate it (docs/howto/deploy.md)"
    # Transitive dependencies too (celery's, kombu's ...), not only the direct ones.
    assert {"amqp", "billiard", "vine", "tornado"} <= set(pins)


@pytest.mark.parametrize("name", ["worker-metrics", "worker-pipeline", "worker-retry", "worker-events", "beat"])
def test_workers_and_beat_log_at_voicepipe_log_level(name: str) -> None:
    assert option(raw()["services"][name]["command"], "-l") == "${VOICEPIPE_LOG_LEVEL:-INFO}"
    quiet = services({**env_example(), "VOICEPIPE_LOG_LEVEL": "WARNING"})
    assert option(quiet[name]["command"], "-l") == "WARNING"


def test_flowers_log_at_voicepipe_log_level_and_the_operators_flower_persists_on_a_volume() -> None:
    svc = services({**env_example(), "VOICEPIPE_LOG_LEVEL": "ERROR"})
    for name in ("flower", "flower-admin"):
        assert "--logging=ERROR" in svc[name]["command"], name
    flower = svc["flower"]
    assert "--persistent=true" in flower["command"]
    db = next(arg.split("=", 1)[1] for arg in flower["command"] if arg.startswith("--db="))
    mounts = {v.split(":")[1]: v.split(":")[0] for v in flower["volumes"]}
    assert any(db.startswith(target + "/") for target in mounts), (db, mounts)
    assert set(mounts.values()) <= set(raw()["volumes"])  # named volumes, kept across restarts
