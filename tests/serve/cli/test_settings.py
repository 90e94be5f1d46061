"""Settings are read when a command runs, never when the CLI is imported: a bad PROMPTLABEL_*
variable leaves ``--help`` working and stops only the commands that read it, with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from distill.settings import get_train_settings
from labeler.settings import get_label_settings
from serve.settings import get_service_settings

BAD = {"PROMPTLABEL_CONCURRENCY": "lots", "PROMPTLABEL_PROMOTE_TOLERANCE": "-1"}


@pytest.fixture
def bad_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    getters = (get_label_settings, get_train_settings, get_service_settings)
    for variable, value in BAD.items():
        monkeypatch.setenv(variable, value)
    for getter in getters:
        getter.cache_clear()
    yield
    for getter in getters:
        getter.cache_clear()


def test_importing_the_cli_reads_no_settings() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import serve.cli.main"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **BAD},
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_help_works_and_shows_where_defaults_come_from(bad_settings: None) -> None:
    from serve.cli.main import app

    runner = CliRunner()
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["label", "--help"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    # The class's own defaults, not what the environment says.
    assert "$PROMPTLABEL_CONCURRENCY or 16" in result.output
    assert "$PROMPTLABEL_DETECTOR or IDEA-Research/grounding-dino-tiny" in result.output
    result = runner.invoke(app, ["models", "promote", "--help"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "$PROMPTLABEL_PROMOTE_TOLERANCE or 0.005" in result.output


@pytest.mark.parametrize(
    ("args", "variable"),
    [
        (["label", "IMAGES", "--ontology", "o.yaml", "--out", "out"], "PROMPTLABEL_CONCURRENCY"),
        (["demo", "--out", "demo-out"], "PROMPTLABEL_CONCURRENCY"),
        (["models", "list"], "PROMPTLABEL_PROMOTE_TOLERANCE"),
        (["models", "promote", "v1", "--workspace", "ws"], "PROMPTLABEL_PROMOTE_TOLERANCE"),
        (["keys", "list"], "PROMPTLABEL_CONCURRENCY"),
    ],
)
def test_a_command_that_reads_bad_settings_exits_2_with_one_line(
    bad_settings: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    variable: str,
) -> None:
    from serve.cli.main import app

    monkeypatch.chdir(tmp_path)  # nothing is written, but if it were, not here

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and variable in lines[0], lines
    assert result.stdout == ""


def test_a_worker_without_a_verifiers_key_stops_with_one_line(tmp_path: Path) -> None:
    verifiers = {"hosted": {"spec": "openai:gpt-4o-mini", "api_key_env": "PL_TEST_MISSING_KEY"}}
    env = {k: v for k, v in os.environ.items() if k != "PL_TEST_MISSING_KEY"}
    result = subprocess.run(
        [sys.executable, "-c", "from serve.cli.main import main; main()", "worker"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env | {"COLUMNS": "200", "PROMPTLABEL_SERVICE_VERIFIERS": json.dumps(verifiers)},
    )
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        "error: verifier 'hosted': its key variable PL_TEST_MISSING_KEY is not set "
        "(PROMPTLABEL_SERVICE_VERIFIERS)"
    ], result.stderr
    assert "Traceback" not in result.stderr
