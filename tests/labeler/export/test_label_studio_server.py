"""The Label Studio round trip against a real Label Studio server: our tasks imported through its
API, annotations made through its API, its JSON export imported back as decisions, and the
dataset re-exported with exactly those changes.

Label Studio lives in a virtual environment of its own (``make install-label-studio``: its pins
clash with ours); ``PROMPTLABEL_LABEL_STUDIO`` names its ``label-studio`` executable. Unset, the
test is skipped; set to a missing file, it fails. Images reach Label Studio through its local
files serving (``/data/local-files/?d=...`` under a document root, with a Local Files storage on
the project that is never synced), which works with no network at all.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from labeler.export.label_studio import (
    import_label_studio,
    label_studio_config,
    label_studio_tasks,
    local_files_url_for,
)
from labeler.pipeline import run_label
from labeler.store.workspace import Workspace
from tests.fakes.vlm_server import FakeVLMServer
from tests.labeler.test_pipeline import Exploding, ScriptedDetector, make_config

pytestmark = [pytest.mark.slow, pytest.mark.label_studio]

EXECUTABLE_ENV = "PROMPTLABEL_LABEL_STUDIO"
START_TIMEOUT_S = 180.0


@dataclass
class LabelStudio:
    client: httpx.Client  # base URL and token set
    document_root: Path  # what /data/local-files/ may serve


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=20)


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudio]:
    """One Label Studio server for the module, on loopback, with its data in a temporary folder;
    its process group is stopped at the end."""
    executable = os.environ.get(EXECUTABLE_ENV)
    if not executable:
        pytest.skip(
            f"set {EXECUTABLE_ENV} to a label-studio executable (make install-label-studio)"
        )
    if not os.access(executable, os.X_OK):
        pytest.fail(f"{EXECUTABLE_ENV}={executable}: no such executable")
    home = tmp_path_factory.mktemp("label-studio")
    # Every test's tmp_path lies below the session's base folder, so Label Studio can serve them.
    document_root = tmp_path_factory.getbasetemp()
    port, token = _free_port(), secrets.token_hex(20)
    env = {
        **os.environ,
        "LABEL_STUDIO_BASE_DATA_DIR": str(home / "data"),
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(document_root),
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        # No calls out: no version check on PyPI, no analytics, no error reports.
        "LATEST_VERSION_CHECK": "false",
        "COLLECT_ANALYTICS": "false",
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
    }
    log_path = home / "label-studio.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                executable, "start", "--no-browser", "--internal-host", "127.0.0.1",
                "--port", str(port), "--username", "tester@example.com",
                "--password", secrets.token_hex(8), "--user-token", token,
            ],
            cwd=home, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{port}",
        headers={"Authorization": f"Token {token}"},
        timeout=30.0,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"label-studio exited ({process.returncode}): {_tail(log_path)}")
            try:
                if client.get("/api/version").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"label-studio not ready in {START_TIMEOUT_S:.0f} s: {_tail(log_path)}")
            time.sleep(1.0)
        yield LabelStudio(client=client, document_root=document_root)
    finally:
        client.close()
        _stop(process)


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:]


def _ok(response: httpx.Response) -> Any:
    assert response.is_success, f"{response.request.url}: {response.status_code} {response.text}"
    return response.json()


def _results(task: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A task's prediction results as Label Studio gives them back, by class name."""
    (prediction,) = task["predictions"]
    return {item["value"]["rectanglelabels"][0]: item for item in prediction["result"]}


def _labels(out: Path) -> dict[int, dict[str, Any]]:
    lines = (out / "labels.jsonl").read_text().splitlines()
    return {
        int(label["proposal_id"]): label for line in lines for label in json.loads(line)["labels"]
    }


def _yolo_rows(out: Path) -> int:
    return sum(
        len(path.read_text().splitlines()) for path in (out / "labels").rglob("*.txt")
    )  # fmt: skip


@pytest.mark.timeout(420)
def test_round_trip_through_label_studio(
    label_studio: LabelStudio, images_dir: Path, tmp_path: Path, server: FakeVLMServer
) -> None:
    out = tmp_path / "out"
    config = make_config(images_dir, out, server)
    first = run_label(config, detector=ScriptedDetector())
    assert first["labels"] == {"accepted": 12, "rejected": 6, "needs_review": 0}
    names = config.ontology.names
    before = _labels(out)
    client = label_studio.client

    # Our project, our tasks, images served from the dataset by Label Studio itself.
    project = _ok(
        client.post(
            "/api/projects",
            json={"title": "promptlabel round trip", "label_config": label_studio_config(names)},
        )
    )
    _ok(
        client.post(
            "/api/storages/localfiles",
            json={"project": project["id"], "title": "dataset", "path": str(out / "images")},
        )
    )
    tasks = label_studio_tasks(
        out,
        image_url_for=local_files_url_for(label_studio.document_root, out),
        model_version="scripted",
    )
    imported = _ok(client.post(f"/api/projects/{project['id']}/import", json=tasks))
    assert (imported["task_count"], imported["prediction_count"]) == (6, 6)
    listed = _ok(client.get("/api/tasks", params={"project": project["id"], "page_size": 100}))
    by_sha = {
        task["data"]["image_sha256"]: _ok(client.get(f"/api/tasks/{task['id']}"))
        for task in listed["tasks"]
    }
    first_record = json.loads((out / "labels.jsonl").read_text().splitlines()[0])
    served = client.get(by_sha[first_record["image_sha256"]]["data"]["image"])
    assert served.status_code == 200
    assert served.content == (out / first_record["dataset_image"]).read_bytes()

    # Annotations, as an annotator who opened each prediction would submit them.
    shas = sorted(by_sha)
    kept, moved, redrawn = (by_sha[sha] for sha in shas[:3])
    plan: dict[int, list[dict[str, Any]]] = {}
    circle, triangle = _results(kept)["circle"], _results(kept)["triangle"]
    plan[kept["id"]] = [circle]  # the circle accepted, the triangle deleted
    circle, triangle = _results(moved)["circle"], _results(moved)["triangle"]
    circle["value"]["x"] += 5.0  # moved right by 5% of the width
    added = {
        **triangle,
        "id": "drawn1",
        "value": {
            "x": 70.0, "y": 2.0, "width": 20.0, "height": 10.0, "rotation": 0,
            "rectanglelabels": ["square"],
        },
    }  # fmt: skip
    plan[moved["id"]] = [circle, triangle, added]
    circle, triangle = _results(redrawn)["circle"], _results(redrawn)["triangle"]
    circle["id"], triangle["id"] = "a1b2c3", "d4e5f6"  # region ids another tool made up
    triangle["value"]["rectanglelabels"] = ["square"]
    plan[redrawn["id"]] = [circle, triangle]
    for task_id, result in plan.items():
        _ok(client.post(f"/api/tasks/{task_id}/annotations", json={"result": result}))

    export = client.get(f"/api/projects/{project['id']}/export", params={"exportType": "JSON"})
    export_path = tmp_path / "export.json"
    export_path.write_bytes(export.content)
    assert len(_ok(export)) == 3  # the annotated tasks

    with Workspace(config.workspace) as workspace:
        summary = import_label_studio(
            workspace, export_path, reviewer="label-studio", class_names=names
        )
    assert summary.as_dict() == {
        "accepted": 3, "relabeled": 1, "edited": 1, "rejected": 1, "added": 1, "unchanged": 0,
        "stale": [], "unmatched_tasks": [], "unannotated_tasks": [],
    }  # fmt: skip

    # Re-running exports exactly those changes, with no model.
    again = run_label(config, detector=Exploding())
    assert again["labels_by_decider"]["human"] == {
        "accepted": 6, "rejected": 1, "needs_review": 0,
    }  # fmt: skip
    assert again["per_class"] == {
        "circle": {"accepted": 6, "rejected": 0, "needs_review": 0},
        "square": {"accepted": 2, "rejected": 6, "needs_review": 0},
        "triangle": {"accepted": 4, "rejected": 1, "needs_review": 0},
    }
    assert _yolo_rows(out) == again["labels"]["accepted"] == 12
    after = _labels(out)

    def pid(task: dict[str, Any], name: str) -> int:
        return next(
            p["proposal_id"]
            for p in task["data"]["promptlabel"]["proposals"]
            if p["class"] == name
        )  # fmt: skip

    assert after[pid(kept, "triangle")]["status"] == "rejected"
    assert after[pid(kept, "circle")]["decided_by"] == "human"
    width = moved["data"]["promptlabel"]["image_wh"][0]
    old_box, new_box = before[pid(moved, "circle")]["xyxy"], after[pid(moved, "circle")]["xyxy"]
    assert new_box[0] == pytest.approx(old_box[0] + 0.05 * width, abs=0.01)
    assert after[pid(redrawn, "triangle")]["class"] == "square"
    (drawn,) = [label for p, label in after.items() if p not in before]
    assert (drawn["class"], drawn["status"], drawn["decided_by"]) == ("square", "accepted", "human")
    unchanged = set(before) - {
        pid(t, n) for t in (kept, moved, redrawn) for n in ("circle", "triangle")
    }
    assert all(after[p]["decided_by"] == "auto" for p in unchanged)
