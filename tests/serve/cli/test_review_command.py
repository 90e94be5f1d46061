"""`promptlabel review DATASET_DIR` as a user runs it: a real server on 127.0.0.1 that prints its
URL on stdout, serves the page and the dataset's review API, opens a browser when there is one,
and stops on SIGTERM; bad input is one line and exit 2."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from serve.cli.main import app
from serve.settings import get_service_settings
from tests.serve.api.test_local_review import label_dataset
from tests.serve.cli.test_main import assert_one_line_error, run_cli

COMMAND = [sys.executable, "-c", "from serve.cli.main import main; main()", "review"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory, tiny_detector_dir: Path) -> Path:
    return label_dataset(tmp_path_factory.mktemp("review-command"), tiny_detector_dir)


@contextmanager
def review_server(
    *args: str | Path, env: dict[str, str], stderr_path: Path
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """`promptlabel review ARGS` running; its URL, read from its stdout."""
    with stderr_path.open("w") as stderr:
        server = subprocess.Popen(
            [*COMMAND, *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
        )
    try:
        assert server.stdout is not None
        ready, _, _ = select.select([server.stdout], [], [], 60)
        assert ready, f"no URL on stdout within 60 s: {stderr_path.read_text()}"
        url = server.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/review/"), (
            url,
            stderr_path.read_text(),
        )
        yield url, server
    finally:
        server.terminate()
        server.wait(timeout=30)
        if server.stdout is not None:
            server.stdout.close()


def _get(url: str, deadline_s: float = 30) -> httpx.Response:
    """GET once the server answers (it prints its URL just before it starts listening)."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return httpx.get(url)
        except httpx.TransportError:
            assert time.monotonic() < deadline, f"{url} never answered"
            time.sleep(0.1)


@pytest.mark.slow
def test_review_serves_the_page_and_the_datasets_api(dataset: Path, tmp_path: Path) -> None:
    # No --reviewer: the OS user name (getpass reads LOGNAME first).
    env = {**os.environ, "LOGNAME": "carol", "COLUMNS": "200"}
    stderr = tmp_path / "stderr.txt"
    with review_server(dataset, "--port", "0", "--no-browser", env=env, stderr_path=stderr) as (
        url,
        server,
    ):
        page = _get(url)
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        session = httpx.get(url + "session").json()
        assert session["key_id"] == "carol" and session["api_base"].endswith("/dataset/review")
        origin = url.removesuffix("/review/")
        base = origin + session["api_base"]
        items = httpx.get(base + "/queue").json()["items"]
        assert items, "the dataset has boxes in review"
        decision = {"proposal_id": items[0]["proposal_id"], "action": "reject", "base_version": 0}
        refused = httpx.post(base + "/decisions", json={"decisions": [decision]})
        assert refused.status_code == 403
        headers = {"X-CSRF-Token": session["csrf_token"]}
        decided = httpx.post(base + "/decisions", json={"decisions": [decision]}, headers=headers)
        assert decided.status_code == 200, decided.text
        assert decided.json()["results"][0]["state"]["reviewer"] == "carol"
        picture = httpx.get(origin + items[0]["image_url"])
        assert picture.status_code == 200 and picture.headers["content-type"].startswith("image/")
        # Another name for this server's address is refused (DNS rebinding).
        assert httpx.get(url, headers={"Host": "rebound.example"}).status_code == 400
        assert server.poll() is None
    # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status tells why.
    assert server.returncode in (0, -15), stderr.read_text()
    log = stderr.read_text()
    assert f"reviewing {dataset.resolve()} as carol" in log and "Traceback" not in log


@pytest.mark.slow
def test_review_opens_a_browser_when_there_is_one(dataset: Path, tmp_path: Path) -> None:
    opened = tmp_path / "opened.txt"
    browser = tmp_path / "browser.sh"
    browser.write_text(f'#!/bin/sh\necho "$1" > {opened}\n')
    browser.chmod(0o755)
    env = {**os.environ, "BROWSER": str(browser)}
    stderr = tmp_path / "stderr.txt"
    with review_server(
        dataset, "--port", "0", "--reviewer", "dan", env=env, stderr_path=stderr
    ) as (url, _):
        deadline = time.monotonic() + 30
        while not opened.is_file() or not opened.read_text().strip():
            assert time.monotonic() < deadline, stderr.read_text()
            time.sleep(0.1)
        assert opened.read_text().strip() == url
        assert _get(url + "session").json()["key_id"] == "dan"


def test_a_folder_that_is_not_a_dataset_is_one_line(tmp_path: Path) -> None:
    result = run_cli("review", tmp_path, "--no-browser")
    assert_one_line_error(result, f"{tmp_path / 'report.json'} is missing")
    assert result.stdout == ""


def test_a_port_in_use_is_one_line(dataset: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("review", dataset, "--port", str(port), "--no-browser")
    assert_one_line_error(result, f"127.0.0.1:{port}: cannot listen", "--port 0")
    assert result.stdout == ""


def test_bad_settings_are_one_line_before_anything_is_served(
    dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMPTLABEL_REVIEW_CLAIM_S", "a while")
    get_service_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["review", str(dataset), "--no-browser"])
    finally:
        get_service_settings.cache_clear()
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "PROMPTLABEL_REVIEW_CLAIM_S" in lines[0], result.stderr
    assert result.stdout == ""
