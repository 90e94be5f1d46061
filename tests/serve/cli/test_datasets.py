"""`promptlabel datasets build|list|show`: results on stdout, --json, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from serve.cli.main import app
from tests.distill.test_dataset_versions import BOX, _dataset


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    return result.exit_code, result.stdout, result.stderr


def test_build_list_show(tmp_path: Path) -> None:
    job1 = _dataset(
        tmp_path / "job1",
        ["cat"],
        {"a-00000001": ("train", 1, [f"0 {BOX}"]), "v-abcdef01": ("val", 2, [f"0 {BOX}"])},
    )
    job2 = _dataset(tmp_path / "job2", ["cat"], {"n-00000003": ("train", 3, [f"0 {BOX}"])})
    hard = tmp_path / "hard.txt"
    hard.write_text("abcdef01" + "0" * 56 + "\n")
    workspace = ["--workspace", str(tmp_path / "ws")]
    code, out, err = _run("datasets", "build", str(job1), *workspace, "--hard-cases", str(hard),
                          "--json")  # fmt: skip
    assert code == 0, err
    first = json.loads(out)
    assert first["version"] == "d1" and first["created"] and first["splits"]["hard_cases"] == 1
    code, out, err = _run("datasets", "build", str(job2), *workspace)
    assert code == 0, err
    assert "d2" in out and "built d2" in err and "next: promptlabel train" in err
    code, out, err = _run("datasets", "build", str(job2), *workspace)
    assert code == 0 and "unchanged: the same content is d2" in err

    code, out, _ = _run("datasets", "list", *workspace, "--json")
    listed = json.loads(out)
    assert [v["version"] for v in listed] == ["d1", "d2"] and listed[1]["parent"] == "d1"
    assert listed[1]["splits"] == {"train": 2, "val": 1}
    code, out, _ = _run("datasets", "list", *workspace)
    assert code == 0 and "d1" in out and "job2" in out

    code, out, _ = _run("datasets", "show", "latest", *workspace)
    assert code == 0 and out.startswith("d2 (detect), parent d1") and "source job2" in out


def test_errors_are_one_line_with_exit_2(tmp_path: Path) -> None:
    workspace = ["--workspace", str(tmp_path / "ws")]
    code, out, err = _run("datasets", "show", "d4", *workspace)
    assert code == 2 and out == "" and "no dataset version 'd4'" in err
    assert "Traceback" not in err
    code, _, err = _run("datasets", "build", str(tmp_path / "nowhere"), *workspace)
    assert code == 2 and "nowhere" in err and "Traceback" not in err
    code, _, err = _run("datasets", "build", str(tmp_path), "--hard-cases",
                        str(tmp_path / "none.txt"), *workspace)  # fmt: skip
    assert code == 2 and "--hard-cases" in err
