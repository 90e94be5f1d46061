"""The command line as a user meets it: exit codes, one-line errors, no tracebacks."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image


def run_cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from serve.cli.main import main; main()", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "200"},
    )


@pytest.fixture
def images_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (64, 48), (120, 30, 30)).save(folder / "a.png")
    return folder


def assert_one_line_error(result: subprocess.CompletedProcess[str], *parts: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("error: "), result.stderr
    for part in parts:
        assert part in result.stderr


def test_bad_ontology_fails_with_line_and_field(images_dir: Path, tmp_path: Path) -> None:
    ontology = tmp_path / "o.yaml"
    ontology.write_text("classes:\n  - name: a\n    detect: a\n    colour: red\n")
    result = run_cli("label", images_dir, "--ontology", ontology, "--out", tmp_path / "out")
    assert_one_line_error(result, f"{ontology}:4: classes[0].colour: unknown key")
    assert not (tmp_path / "out").exists()


def test_unknown_verifier_fails_before_models_load(images_dir: Path, tmp_path: Path) -> None:
    ontology = tmp_path / "o.yaml"
    ontology.write_text("classes: {dog: dog}\n")
    result = run_cli(
        "label", images_dir, "--ontology", ontology, "--out", tmp_path / "out",
        "--verifier", "gemini:pro",
    )  # fmt: skip
    assert_one_line_error(result, "gemini")


def test_missing_detector_says_which_and_how(images_dir: Path, tmp_path: Path) -> None:
    ontology = tmp_path / "o.yaml"
    ontology.write_text("classes: {dog: dog}\n")
    missing = tmp_path / "no-such-detector"
    result = run_cli(
        "label", images_dir, "--ontology", ontology, "--out", tmp_path / "out",
        "--detector", missing,
    )  # fmt: skip
    assert_one_line_error(result, str(missing))


def test_usage_error_exits_2(tmp_path: Path) -> None:
    result = run_cli("label", tmp_path)
    assert result.returncode == 2
    assert "--ontology" in result.stderr


def test_help_lists_commands() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    assert "label" in result.stdout and "demo" in result.stdout
    assert "on-device model" in result.stdout  # what the product is, not only its first stage


def test_version_prints_the_installed_version_on_stdout() -> None:
    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"promptlabel {importlib.metadata.version('promptlabel')}\n"
    assert result.stderr == ""
    # Eager: it answers before a command's own arguments are looked at.
    assert run_cli("--version", "label").stdout == result.stdout


def test_summary_says_when_files_are_copies_of_each_other(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from serve.cli.label import print_report

    report = {
        "images": {"total": 5, "labeled": 4, "unique": 3, "with_accepted_boxes": 2, "failed": []},
        "per_class": {"cat": {"accepted": 2, "rejected": 0, "needs_review": 1}},
        "labels": {"accepted": 2, "rejected": 0, "needs_review": 1},
        "verifier": {"calls": 3, "cache_hits": 0, "errors": 0},
        "timings_s": {"propose": 1.0},
        "dataset": {"path": "out"},
    }
    print_report(report)
    assert "4 labeled (3 distinct: copies are labeled once)" in capsys.readouterr().err

    report["images"]["unique"] = 4
    print_report(report)
    assert "4 labeled, 0 failed" in capsys.readouterr().err
