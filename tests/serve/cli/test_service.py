"""`promptlabel serve`, `worker`, `projects` and `keys` as an operator meets them."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from serve.telemetry import configure_logging, job_log_context
from tests.serve.conftest import png_bytes


def run_cli(
    *args: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from serve.cli.main import main; main()", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_projects_and_keys_commands(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ontology = tmp_path / "ontology.yaml"
    ontology.write_text("classes:\n  - {name: cat, detect: cat}\n")
    created = run_cli("projects", "create", "pets", "--ontology", ontology, "--data-dir", data)
    assert created.returncode == 0, created.stderr
    project_id = created.stdout.strip()
    assert project_id.startswith("prj_")
    again = run_cli("projects", "create", "pets", "--data-dir", data)
    assert again.returncode == 2 and "already exists" in again.stderr

    key = run_cli("keys", "create", "--project", "pets", "--name", "ci", "--data-dir", data)
    assert key.returncode == 0, key.stderr
    token = key.stdout.strip()
    assert token.startswith("pl_") and "not shown again" in key.stderr
    listed = run_cli("keys", "list", "--data-dir", data)
    key_id = token[3:].split(".")[0]
    assert key_id in listed.stdout and "pets" in listed.stdout
    assert token.split(".")[1] not in listed.stderr + listed.stdout  # never shown again

    missing = run_cli("keys", "create", "--project", "nope", "--data-dir", data)
    assert missing.returncode == 2 and "no project named 'nope'" in missing.stderr

    bigger = tmp_path / "bigger.yaml"
    bigger.write_text("classes:\n  cat: a cat\n  dog: a dog\n")
    changed = run_cli("projects", "set-ontology", "pets", bigger, "--data-dir", data)
    assert changed.returncode == 0, changed.stderr
    assert "project pets: 2 classes (cat, dog)" in changed.stderr
    listed_projects = run_cli("projects", "list", "--data-dir", data)
    [pets_row] = [line for line in listed_projects.stdout.splitlines() if project_id in line]
    assert " 2 " in pets_row, pets_row
    broken = tmp_path / "broken.yaml"
    broken.write_text("classes: [\n")
    for args, message in (
        (("pets", broken), "broken.yaml"),
        (("nope", bigger), "no project named 'nope'"),
    ):
        refused = run_cli("projects", "set-ontology", *args, "--data-dir", data)
        assert refused.returncode == 2 and message in refused.stderr, refused.stderr

    # Run in the wrong folder, they say so and leave no empty database behind.
    elsewhere = tmp_path / "elsewhere"
    for command in (
        ("keys", "list"),
        ("keys", "create", "--project", "pets"),
        ("keys", "revoke", key_id),
        ("projects", "list"),
        ("projects", "set-ontology", "pets", bigger),
    ):
        wrong = run_cli(*command, "--data-dir", elsewhere)
        assert wrong.returncode == 2, (command, wrong.stderr)
        assert f"no service database in {elsewhere}" in wrong.stderr, wrong.stderr
        assert "--data-dir" in wrong.stderr
    assert not elsewhere.exists()
    revoked = run_cli("keys", "revoke", token, "--data-dir", data)  # the whole key, pasted
    assert revoked.returncode == 0, revoked.stderr
    assert f"revoked {key_id}" in revoked.stderr and token.split(".")[1] not in revoked.stderr
    twice = run_cli("keys", "revoke", key_id, "--data-dir", data)
    assert twice.returncode == 2 and "no active API key" in twice.stderr


def test_lists_print_on_stdout_and_json_for_scripts(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ontology = tmp_path / "ontology.yaml"
    ontology.write_text("classes:\n  cat: a cat\n  dog: a dog\n")
    project_id = run_cli(
        "projects", "create", "pets", "--ontology", ontology, "--data-dir", data
    ).stdout.strip()  # fmt: skip
    token = run_cli("keys", "create", "--project", "pets", "--data-dir", data).stdout.strip()
    key_id, secret = token[3:].split(".")

    projects = run_cli("projects", "list", "--data-dir", data)
    assert projects.returncode == 0, projects.stderr
    assert project_id in projects.stdout and projects.stderr == ""
    keys = run_cli("keys", "list", "--data-dir", data)
    assert keys.returncode == 0, keys.stderr
    assert key_id in keys.stdout and keys.stderr == ""

    projects = run_cli("projects", "list", "--data-dir", data, "--json")
    assert projects.returncode == 0 and projects.stderr == "", projects.stderr
    [project] = json.loads(projects.stdout)
    assert (project["id"], project["name"]) == (project_id, "pets")
    assert project["classes"] == ["cat", "dog"]
    assert project["created_at"].endswith("+00:00")

    assert run_cli("keys", "revoke", key_id, "--data-dir", data).returncode == 0
    keys = run_cli("keys", "list", "--data-dir", data, "--json")
    assert keys.returncode == 0 and keys.stderr == "", keys.stderr
    [key] = json.loads(keys.stdout)
    assert key["key_id"] == key_id and key["project"] == "pets" and key["project_id"] == project_id
    assert key["revoked_at"] is not None
    assert secret not in keys.stdout  # the secret is never stored, so never listed


def test_bad_settings_and_options_are_one_line_before_anything_runs(tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path / "data")]
    for variable, value, named in (
        ("PROMPTLABEL_SERVICE_DETECTORS", "{not json", "service_detectors"),
        ("PROMPTLABEL_PROMOTE_TOLERANCE", "-1", "PROMPTLABEL_PROMOTE_TOLERANCE"),
        # A verifier the server offers is checked at start, not when a job first names it.
        (
            "PROMPTLABEL_SERVICE_VERIFIERS",
            '{"vlm": "openia:gpt-4o-mini"}',
            "PROMPTLABEL_SERVICE_VERIFIERS: 'vlm': unknown verifier",
        ),
        (
            "PROMPTLABEL_SERVICE_VERIFIERS",
            '{"vlm": "openai"}',
            "'vlm': verifier 'openai' needs a model name",
        ),
    ):
        result = run_cli("keys", "list", *data, env={variable: value})
        assert result.returncode == 2, result.stderr
        assert named in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) <= 2, result.stderr
    for args in (["serve", "--log-format", "xml"], ["serve", "--workers", "-1"]):
        result = run_cli(*args, *data)
        assert result.returncode == 2 and "Invalid value" in result.stderr, result.stderr
    result = run_cli("worker", "--threads", "0", *data)
    assert result.returncode == 2 and "Invalid value" in result.stderr, result.stderr


@pytest.mark.slow
def test_serve_runs_jobs_in_process_and_logs_json(tmp_path: Path, tiny_detector_dir: Path) -> None:
    data = tmp_path / "data"
    ontology = tmp_path / "ontology.yaml"
    ontology.write_text("classes:\n  - {name: shape, detect: [circle, square]}\n")
    run_cli("projects", "create", "shapes", "--ontology", ontology, "--data-dir", data)
    token = run_cli("keys", "create", "--project", "shapes", "--data-dir", data).stdout.strip()
    port = free_port()
    env = {
        **os.environ,
        "PROMPTLABEL_SERVICE_DETECTORS": json.dumps({"default": str(tiny_detector_dir)}),
        "PROMPTLABEL_SERVICE_DEVICE": "cpu",
        "PROMPTLABEL_POLL_INTERVAL_S": "0.1",
        "PROMPTLABEL_HTTP_KEEP_ALIVE_S": "1",
    }
    log = tmp_path / "serve.log"
    command = [sys.executable, "-c", "from serve.cli.main import main; main()", "serve"]
    with log.open("wb") as stderr:
        server = subprocess.Popen(
            [*command, "--port", str(port), "--workers", "1", "--data-dir", str(data)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        # The docs pages and every script and style they load come from this server (no CDN).
        for page, title in (("/docs", "Swagger UI"), ("/redoc", "ReDoc")):
            html = httpx.get(f"{base}{page}").text
            assert title in html
            assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', html)
            assert assets and all(asset.startswith("/") for asset in assets), assets
            for asset in assets:
                answer = httpx.get(f"{base}{asset}")
                assert answer.status_code == 200 and len(answer.content) > 10_000, asset
        headers = {"Authorization": f"Bearer {token}"}
        project_id = httpx.get(f"{base}/v1/projects", headers=headers).json()[0]["id"]
        upload = httpx.post(
            f"{base}/v1/projects/{project_id}/images",
            headers=headers,
            files=[("files", ("a.png", png_bytes(1), "image/png"))],
        )
        assert upload.status_code == 201, upload.text
        job = httpx.post(
            f"{base}/v1/projects/{project_id}/label-jobs",
            headers=headers,
            json={"box_threshold": 0, "text_threshold": 0, "max_det": 2},
        ).json()
        while (
            status := httpx.get(
                f"{base}/v1/projects/{project_id}/jobs/{job['id']}", headers=headers
            ).json()["status"]
        ) in ("queued", "running"):
            assert time.monotonic() < deadline + 60
            time.sleep(0.2)
        assert status == "succeeded"
        metrics = httpx.get(f"{base}/metrics", headers=headers).text
        assert 'promptlabel_jobs{kind="label",status="succeeded"} 1.0' in metrics
        assert 'promptlabel_jobs_finished_total{kind="label",status="succeeded"} 1.0' in metrics
        assert "promptlabel_http_request_seconds_bucket" in metrics
        assert _seconds_until_idle_connection_closes(port) < 3  # the setting reached uvicorn
    finally:
        server.terminate()
        server.wait(timeout=30)
    # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status tells why.
    assert server.returncode in (0, -15)
    records = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert any(r["message"].endswith(" stopped") for r in records), "workers not stopped cleanly"
    job_lines = [r for r in records if r.get("job_id") == job["id"]]
    assert {"job started", "job succeeded"} <= {r["message"] for r in job_lines}
    assert all(r["job_kind"] == "label" and r["attempt"] == 1 for r in job_lines)
    assert "Loading weights" not in log.read_text()


def _seconds_until_idle_connection_closes(port: int, give_up_s: float = 10) -> float:
    """Send one keep-alive request on a raw socket, then time how long until the server hangs up."""
    with socket.create_connection(("127.0.0.1", port), timeout=give_up_s) as connection:
        connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
        answered = time.monotonic()
        received = b""
        while b"\r\n\r\n" not in received or not received.rstrip().endswith(b"}"):
            received += connection.recv(65536)
        assert received.startswith(b"HTTP/1.1 200"), received
        assert connection.recv(1) == b""  # blocks until the server closes (or times out)
        return time.monotonic() - answered


def test_log_lines_are_json_with_context(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(json_format=True)
    try:
        with job_log_context(job_id="job_1", attempt=2):
            logging.getLogger("promptlabel.test").warning("hello %s", "world")
        logging.getLogger("promptlabel.test").warning("outside")
        # As uvicorn logs: the same message again with terminal colour codes.
        colour = {"color_message": "Started server process [\x1b[36m%d\x1b[0m]"}
        logging.getLogger("promptlabel.test").warning(
            "Started server process [%d]", 7, extra=colour
        )
        logging.getLogger("httpx").info('HTTP Request: POST http://vlm/ "HTTP/1.1 200 OK"')
    finally:
        logging.getLogger().handlers.clear()
    first, second, uvicorn_line = (
        json.loads(line) for line in capsys.readouterr().err.splitlines()
    )
    assert first["message"] == "hello world" and first["job_id"] == "job_1"
    assert first["attempt"] == 2 and first["level"] == "WARNING"
    assert "job_id" not in second
    assert uvicorn_line["message"] == "Started server process [7]"
    assert "color_message" not in uvicorn_line  # and no line for each httpx request
