"""The Docker files agree with the code they run (no Docker engine runs here to build them).

Each container command must be a real ``promptlabel`` command with real options, each
``PROMPTLABEL_*`` variable a real setting, each image must install through the script CI tests
with, and the compose health checks must ask ports something listens on.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from serve.cli.main import app
from serve.settings import ServiceSettings

DOCKER = Path(__file__).resolve().parents[1] / "docker"
DOCKERFILES = sorted(DOCKER.glob("Dockerfile.*"))
COMPOSE_FILES = sorted(DOCKER.glob("compose*.yaml"))


def _compose(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


def _check_cli(argv: list[str], where: str) -> None:
    """``argv`` (``promptlabel ...``) names a command of ours and only options it takes."""
    assert argv[0] == "promptlabel", f"{where}: runs {argv[0]!r}, not promptlabel"
    # Typer may vendor its own click, so groups are told apart by having subcommands.
    command: Any = typer.main.get_command(app)
    words = argv[1:]
    while getattr(command, "commands", None) is not None:
        assert words, f"{where}: {shlex.join(argv)} names no subcommand"
        name, words = words[0], words[1:]
        found = command.commands.get(name)
        assert found is not None, f"{where}: no command {name!r} in {shlex.join(argv)}"
        command = found
    options = {opt for param in command.params for opt in param.opts}
    for word in words:
        if word.startswith("--"):
            assert word.split("=")[0] in options, f"{where}: {command.name} has no {word}"


def _settings_fields() -> set[str]:
    return {f"PROMPTLABEL_{name.upper()}" for name in ServiceSettings.model_fields}


def _service_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    return {str(k): str(v) for k, v in env.items() if k != "<<"}


def test_the_docker_files_exist() -> None:
    assert [p.name for p in DOCKERFILES] == ["Dockerfile.cpu", "Dockerfile.cuda"]
    assert [p.name for p in COMPOSE_FILES] == ["compose.gpu.yaml", "compose.yaml"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_install_through_the_ci_script_and_run_real_commands(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    installs = re.findall(r"bash scripts/install\.sh (\w+)", text)
    assert installs and set(installs) == {"serve"}, installs
    assert "COPY scripts/install.sh scripts/install.sh" in text
    commands = re.findall(r"^CMD (\[.*\])$", text, flags=re.M)
    assert len(commands) == 1
    _check_cli(json.loads(commands[0]), dockerfile.name)
    for variable in re.findall(r"\b(PROMPTLABEL_[A-Z_]+)=", text):
        assert variable in _settings_fields(), f"{dockerfile.name}: {variable} is no setting"


def test_the_install_script_takes_the_serve_extra() -> None:
    pyproject = (DOCKER.parent / "pyproject.toml").read_text()
    assert re.search(r"^serve = \[", pyproject, flags=re.M)


def test_compose_commands_settings_and_health_checks_match_the_code() -> None:
    services = _compose(DOCKER / "compose.yaml")["services"]
    assert {"postgres", "api", "worker"} <= set(services)
    for name in ("api", "worker"):
        service = services[name]
        _check_cli(service["command"], f"compose.yaml {name}")
        env = _service_env(service)
        for variable in env:
            if variable.startswith("PROMPTLABEL_"):
                assert variable in _settings_fields(), f"compose {name}: {variable} is no setting"
        assert env["PROMPTLABEL_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert env["PROMPTLABEL_DATABASE_URL"].endswith("@postgres:5432/promptlabel")
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert "data:/data" in service["volumes"]
    # The worker has no HTTP API: its health check must ask the metrics port it serves.
    worker = services["worker"]
    port = worker["command"][worker["command"].index("--metrics-port") + 1]
    assert _service_env(worker)["HEALTHCHECK_URL"] == f"http://127.0.0.1:{port}/metrics"
    api = services["api"]
    api_port = api["command"][api["command"].index("--port") + 1]
    assert any(mapping.endswith(f":{api_port}") for mapping in api["ports"])


def test_the_gpu_overlay_switches_both_services_to_the_cuda_image() -> None:
    services = _compose(DOCKER / "compose.gpu.yaml")["services"]
    assert set(services) == {"api", "worker"}
    for service in services.values():
        assert service["build"]["dockerfile"] == "docker/Dockerfile.cuda"
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]
