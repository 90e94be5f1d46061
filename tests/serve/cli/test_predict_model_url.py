"""`promptlabel predict --model-url`: the device pulls its model from a server, keeps a verified
copy, and goes on with it while the server is away. Run as a device runs it: a subprocess with
the heavy packages blocked, against a loopback HTTP server; and once on the base install."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from serve.runtime.onnx import load_runtime
from tests.fakes.model_server import ModelServer
from tests.serve.cli.test_predict import CLI_WITH_HEAVY_IMPORTS_BLOCKED
from tests.serve.conftest import Students

REPO_ROOT = Path(__file__).resolve().parents[3]


def run_predict(*args: str, api_key: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMPTLABEL_")}
    if api_key is not None:
        env["PROMPTLABEL_API_KEY"] = api_key
    return subprocess.run(
        [sys.executable, "-c", CLI_WITH_HEAVY_IMPORTS_BLOCKED, "predict", *args],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
        env={**env, "PYTHONPATH": str(REPO_ROOT), "COLUMNS": "200"},
    )  # fmt: skip


@pytest.fixture
def server(students: Students) -> Iterator[ModelServer]:
    running = ModelServer(students.static.read_bytes())
    yield running
    running.stop()


def test_predict_pulls_the_model_then_reuses_the_verified_copy(
    server: ModelServer, students: Students, sample_images: list[Path], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    args = [str(sample_images[0]), "--model-url", server.url, "--model-cache", str(cache)]

    first = run_predict(*args, "--json", "--conf", "0.05", api_key="device-key")
    second = run_predict(*args, "--json", "--conf", "0.05")

    assert first.returncode == 0, first.stderr
    payload = json.loads(first.stdout)
    assert payload["model_pull"]["how"] == "downloaded"
    assert payload["model_pull"]["version"] == "v1"
    assert Path(payload["model"]).read_bytes() == students.static.read_bytes()
    assert "model v1 (sha256 " in first.stderr and "downloaded and verified" in first.stderr
    # The same boxes as the model file itself gives.
    expected = len(load_runtime(students.static, conf=0.05)(sample_images[0]))
    assert len(payload["images"][0]["detections"]) == expected > 0
    assert server.served.requests[0]["Authorization"] == "Bearer device-key"
    # Within --refresh-minutes (10 by default) the second run asks nothing.
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["model_pull"]["how"] == "cached"
    assert len(server.served.requests) == 1


def test_predict_keeps_going_on_the_copy_while_the_server_is_down(
    server: ModelServer, sample_images: list[Path], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    args = [str(sample_images[0]), "--model-url", server.url, "--model-cache", str(cache)]
    assert run_predict(*args).returncode == 0
    server.stop()

    offline = run_predict(*args, "--refresh-minutes", "0")

    assert offline.returncode == 0, offline.stderr
    assert "warning:" in offline.stderr and "cannot reach the server" in offline.stderr
    assert "using the cached copy (v1" in offline.stderr
    assert "1 images" in offline.stderr


def test_predict_without_a_copy_or_a_server_fails_in_one_line_with_code_1(
    sample_images: list[Path], tmp_path: Path
) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{unused.getsockname()[1]}/model.onnx"

    result = run_predict(str(sample_images[0]), "--model-url", url, "--model-cache", str(tmp_path))

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {url}: cannot reach the server")
    assert "no verified copy" in line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["model.onnx", "a.png", "--model-url", "http://127.0.0.1:9/m"], "not both"),
        (["--model-url", "http://127.0.0.1:9/m"], "Missing argument"),
        (["model.onnx", "a.png", "--model-cache", "cache"], "go with --model-url"),
        (["model.onnx", "a.png", "--refresh-minutes", "5"], "go with --model-url"),
        (["model.onnx"], "give MODEL.onnx and at least one image"),
        (["a.png", "--model-url", "ftp://example.org/m.onnx"], "http:// or https://"),
    ],
)
def test_predict_usage_errors_are_one_line_with_code_2(
    args: list[str], message: str, tmp_path: Path
) -> None:
    result = run_predict(*args)

    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert message in result.stderr


# -- the base install -------------------------------------------------------------------------


def test_predict_model_url_runs_on_the_base_install(
    base_venv: Path,
    server: ModelServer,
    students: Students,
    sample_images: list[Path],
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMPTLABEL_")}
    result = subprocess.run(
        [str(base_venv / "bin" / "promptlabel"), "predict", str(sample_images[0]),
         "--model-url", server.url, "--model-cache", str(tmp_path / "cache"), "--json",
         "--conf", "0.05"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**env, "PROMPTLABEL_API_KEY": "device-key"},
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["model_pull"]["how"] == "downloaded"
    assert Path(payload["model"]).read_bytes() == students.static.read_bytes()
    expected = len(load_runtime(students.static, conf=0.05)(sample_images[0]))
    assert len(payload["images"][0]["detections"]) == expected
    assert server.served.requests[0]["Authorization"] == "Bearer device-key"
