"""``promptlabel push`` against the real service on loopback: the outbox empties, a dropped
connection resumes without sending anything twice, two devices' copies of one frame make one
hard case, a refused entry stays while the others go, a bad key stops at once in one line; and
the command runs on the base install."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from serve.cli.main import app as cli
from serve.db import Database, hard_cases
from serve.runtime.outbox import Outbox
from serve.settings import ServiceSettings
from tests.fakes.dropping_proxy import DroppingProxy
from tests.fakes.live_app import LiveApp
from tests.serve.conftest import SHAPES, png_bytes

runner = CliRunner()


class CountingUploads:
    """The app, counting the pushes (POST .../hard-cases) that reach it, by frame SHA-256."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.uploads: Counter[str] = Counter()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"].endswith("/hard-cases")
        ):
            headers = dict(scope["headers"])
            self.uploads[headers.get(b"x-content-sha256", b"").decode()] += 1
        await self.app(scope, receive, send)


@dataclass
class LiveService:
    base_url: str
    port: int
    project_id: str
    token: str
    db: Database
    counter: CountingUploads

    @property
    def project_url(self) -> str:
        return f"{self.base_url}/v1/projects/{self.project_id}"

    def devices_by_sha(self) -> dict[str, list[str]]:
        with self.db.read() as connection:
            rows = connection.execute(
                sa.text(
                    "SELECT images.sha256, hard_cases.devices FROM hard_cases "
                    "JOIN images ON images.id = hard_cases.image_id"
                )
            ).all()
        return {
            sha: devices if isinstance(devices, list) else json.loads(devices)
            for sha, devices in rows
        }


@pytest.fixture
def live(tmp_path: Path, database_url: str | None) -> Iterator[LiveService]:
    from serve.api.app import create_app
    from serve.api.auth import create_api_key, create_project

    settings = ServiceSettings(data_dir=tmp_path / "server", database_url=database_url)
    app = create_app(settings)
    counter = CountingUploads(app)
    with LiveApp(counter) as running:
        db: Database = app.state.db
        project_id = create_project(db, name="shapes", ontology=SHAPES)
        key = create_api_key(db, project_id=project_id, name="device")
        assert running.port is not None
        yield LiveService(running.url(), running.port, project_id, key.token, db, counter)


def fill_outbox(root: Path, device: str, seeds: list[int]) -> list[str]:
    """An outbox as `predict --collect` leaves it, one frame per seed; their SHA-256s."""
    outbox = Outbox(root)
    shas = []
    for seed in seeds:
        entry = outbox.add(
            png_bytes(seed),
            suffix=".png",
            manifest={
                "reasons": ["too_few_detections"],
                "predictions": [],
                "image_wh": [96, 72],
                "device": device,
                "source_path": f"/frames/{seed}.png",
            },
        )
        assert entry is not None
        shas.append(entry.sha256)
    return shas


def left_in(root: Path) -> int:
    return len(list(Outbox(root).entries()))


def push(live: LiveService, outbox: Path, *args: str, token: str | None = None) -> Any:
    return runner.invoke(
        cli,
        ["push", str(outbox), *args],
        env={"PROMPTLABEL_API_KEY": live.token if token is None else token},
    )


def summary(result: Any) -> dict[str, Any]:
    assert result.stdout.strip(), result.stderr
    found: dict[str, Any] = json.loads(result.stdout)
    return found


def test_push_sends_every_entry_once_and_empties_the_outbox(
    live: LiveService, tmp_path: Path
) -> None:
    outbox = tmp_path / "outbox"
    shas = fill_outbox(outbox, "cam-1", [1, 2, 3])
    result = push(live, outbox, "--url", live.project_url, "--json")
    assert result.exit_code == 0, result.stderr
    sent = summary(result)
    assert (sent["created"], sent["merged"], sent["already_on_server"]) == (3, 0, 0)
    assert sent["left"] == 0 and left_in(outbox) == 0
    assert live.devices_by_sha() == {sha: ["cam-1"] for sha in shas}
    assert live.counter.uploads == Counter(dict.fromkeys(shas, 1))
    # Nothing left: a second push sends nothing.
    again = push(live, outbox, "--url", live.base_url, "--project", live.project_id)
    assert again.exit_code == 0, again.stderr
    assert "0 new, 0 merged, 0 already on the server, 0 refused; 0 left" in again.stdout
    assert sum(live.counter.uploads.values()) == 3


@pytest.mark.parametrize("mode", ["request", "response"])
def test_a_push_cut_off_by_a_dropped_connection_resumes_sending_nothing_twice(
    live: LiveService, tmp_path: Path, mode: str
) -> None:
    outbox = tmp_path / "outbox"
    shas = fill_outbox(outbox, "cam-1", [4, 5])
    with DroppingProxy(live.port, drop_first=1, mode=mode) as proxy:  # type: ignore[arg-type]
        cut = push(
            live,
            outbox,
            "--url", f"{proxy.url}/v1/projects/{live.project_id}",
            "--retries", "0", "--json",
        )  # fmt: skip
        assert proxy.dropped == 1
    assert cut.exit_code == 1
    assert "run push again" in cut.stderr and len(cut.stderr.strip().splitlines()) == 1
    assert summary(cut)["left"] == 2 and left_in(outbox) == 2

    resumed = push(live, outbox, "--url", live.project_url, "--json")
    assert resumed.exit_code == 0, resumed.stderr
    sent = summary(resumed)
    # The server kept the frame whose answer was lost: it is removed, not sent again.
    already = 1 if mode == "response" else 0
    assert (sent["created"], sent["already_on_server"]) == (2 - already, already)
    assert left_in(outbox) == 0
    assert live.counter.uploads == Counter(dict.fromkeys(shas, 1))
    assert live.devices_by_sha() == {sha: ["cam-1"] for sha in shas}


def test_retries_carry_one_push_over_a_dropped_connection(
    live: LiveService, tmp_path: Path
) -> None:
    outbox = tmp_path / "outbox"
    shas = fill_outbox(outbox, "cam-1", [6, 7])
    with DroppingProxy(live.port, drop_first=1, mode="response") as proxy:
        result = push(
            live,
            outbox,
            "--url", f"{proxy.url}/v1/projects/{live.project_id}",
            "--retries", "2", "--backoff", "0.01", "--json",
        )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "retrying" in result.stderr
    sent = summary(result)
    assert (sent["created"], sent["already_on_server"], sent["left"]) == (1, 1, 0)
    assert live.counter.uploads == Counter(dict.fromkeys(shas, 1))


def test_two_devices_pushing_the_same_frame_make_one_hard_case_naming_both(
    live: LiveService, tmp_path: Path
) -> None:
    [shared] = fill_outbox(tmp_path / "a", "cam-a", [8])
    [shared_again, own] = fill_outbox(tmp_path / "b", "cam-b", [8, 9])
    assert shared == shared_again
    first = push(live, tmp_path / "a", "--url", live.project_url, "--json")
    second = push(live, tmp_path / "b", "--url", live.project_url, "--json")
    assert first.exit_code == 0 and second.exit_code == 0, second.stderr
    assert (summary(second)["merged"], summary(second)["created"]) == (1, 1)
    assert live.devices_by_sha() == {shared: ["cam-a", "cam-b"], own: ["cam-b"]}
    with live.db.read() as connection:
        rows = connection.execute(sa.select(sa.func.count()).select_from(hard_cases))
        assert rows.scalar_one() == 2


def test_a_refused_entry_stays_in_the_outbox_while_the_others_go(
    live: LiveService, tmp_path: Path
) -> None:
    outbox = tmp_path / "outbox"
    [good] = fill_outbox(outbox, "cam-1", [10])
    bad = Outbox(outbox).add(
        b"not an image at all",
        suffix=".jpg",
        manifest={"reasons": ["random_sample"], "predictions": [], "device": "cam-1"},
    )
    assert bad is not None
    result = push(live, outbox, "--url", live.project_url, "--json")
    assert result.exit_code == 1
    sent = summary(result)
    assert sent["created"] == 1 and sent["left"] == 1
    assert [(r["frame"], r["status"]) for r in sent["refused"]] == [(bad.frame.name, 422)]
    assert [entry.sha256 for entry in Outbox(outbox).entries()] == [bad.sha256]
    assert set(live.devices_by_sha()) == {good}


def test_a_bad_key_stops_the_push_in_one_line_and_keeps_the_outbox(
    live: LiveService, tmp_path: Path
) -> None:
    outbox = tmp_path / "outbox"
    fill_outbox(outbox, "cam-1", [11, 12])
    refused = push(live, outbox, "--url", live.project_url, token="pl_abc.wrong")
    assert refused.exit_code == 1
    [line] = refused.stderr.strip().splitlines()
    assert "401" in line and "API key" in line
    assert left_in(outbox) == 2 and sum(live.counter.uploads.values()) == 0

    missing = runner.invoke(cli, ["push", str(outbox), "--url", live.project_url], env={})
    assert missing.exit_code == 2
    assert missing.stderr.strip() == (
        "error: PROMPTLABEL_API_KEY is not set: export a labeler key of the project"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--url", "http://127.0.0.1:1"], "no project"),
        (["--url", "ftp://host/v1/projects/p"], "--url"),
        (["--url", "http://h/v1/projects/p", "--project", "q"], "--project"),
    ],
)
def test_usage_errors_exit_2_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    monkeypatch.setenv("PROMPTLABEL_API_KEY", "pl_x.y")
    result = runner.invoke(cli, ["push", str(tmp_path), *args])
    assert result.exit_code == 2
    [line] = result.stderr.strip().splitlines()
    assert message in line
    nowhere = runner.invoke(
        cli, ["push", str(tmp_path / "none"), "--url", "http://h/v1/projects/p"]
    )
    assert nowhere.exit_code == 2 and "not a folder" in nowhere.stderr


def test_an_unreachable_server_keeps_the_outbox(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    fill_outbox(outbox, "cam-1", [13])
    result = runner.invoke(
        cli,
        ["push", str(outbox), "--url", "http://127.0.0.1:1/v1/projects/p", "--retries", "1",
         "--backoff", "0.01"],
        env={"PROMPTLABEL_API_KEY": "pl_x.y"},
    )  # fmt: skip
    assert result.exit_code == 1
    assert "could not reach" in result.stderr and left_in(outbox) == 1


def test_push_runs_on_the_base_install(
    base_venv: Path,
    live: LiveService,
    tmp_path: Path,
) -> None:
    outbox = tmp_path / "outbox"
    shas = fill_outbox(outbox, "cam-base", [14, 15])
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMPTLABEL_")}
    result = subprocess.run(
        [str(base_venv / "bin" / "promptlabel"), "push", str(outbox), "--url", live.project_url,
         "--json"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**env, "PROMPTLABEL_API_KEY": live.token},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["created"] == 2
    assert live.devices_by_sha() == {sha: ["cam-base"] for sha in shas}
    assert hashlib.sha256(png_bytes(14)).hexdigest() in shas
