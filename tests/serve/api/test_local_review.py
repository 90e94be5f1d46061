"""``promptlabel review DATASET_DIR``'s app over a dataset `promptlabel label` wrote: the review
API and page on the dataset's workspace, decisions recorded under the local user's name, images
only from the files the workspace recorded, re-export into the dataset with no model, and the
fences a server on localhost needs (Host header, CSRF token)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from labeler.core.exceptions import InputError
from labeler.demo.synthetic import write_sample_images
from serve.api.local_review import LocalReviewTarget, create_local_review_app
from serve.cli.main import app as cli_app
from serve.errors import ConflictError, NotFoundError
from serve.settings import ServiceSettings
from tests.fakes.vlm_server import FakeVLMServer

PORT = 8765
ORIGIN = f"http://127.0.0.1:{PORT}"
ONTOLOGY = "classes:\n  - {name: circle, detect: circle}\n  - {name: square, detect: square}\n"


def label_dataset(root: Path, detector_dir: Path) -> Path:
    """A dataset written by `promptlabel label` (the CLI, in this process) with the tiny
    detector and a loopback VLM whose every answer is an uncertain yes: all boxes in review."""
    images = root / "images"
    write_sample_images(images, n=3, seed=3)
    ontology = root / "shapes.yaml"
    ontology.write_text(ONTOLOGY)
    out = root / "dataset"
    with FakeVLMServer(script=lambda _: "Yes", confidence=0.55) as vlm:
        args = [
            "label", str(images), "--ontology", str(ontology), "--out", str(out),
            "--detector", str(detector_dir), "--device", "cpu",
            "--box-threshold", "0", "--text-threshold", "0", "--max-det", "4",
            "--verifier", "openai:fake-vlm", "--verifier-url", vlm.base_url,
        ]  # fmt: skip
        result = CliRunner().invoke(
            cli_app, args, env={"OPENAI_API_KEY": "test-key", "COLUMNS": "200"}
        )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["labels"]["needs_review"] >= 4, report["labels"]
    return out


@pytest.fixture(scope="module")
def labeled(tmp_path_factory: pytest.TempPathFactory, tiny_detector_dir: Path) -> Path:
    return label_dataset(tmp_path_factory.mktemp("local-review"), tiny_detector_dir)


def copy_dataset(labeled: Path, into: Path) -> Path:
    """A copy of the labeled dataset and its workspace (the images stay where they were)."""
    shutil.copytree(labeled, into, symlinks=True)
    return into


class LocalReview:
    """The local app through a TestClient addressed as the browser addresses it."""

    def __init__(self, app: FastAPI, client: TestClient) -> None:
        self.app = app
        self.client = client
        session = client.get("/review/session")
        assert session.status_code == 200, session.text
        self.session = session.json()
        self.base = self.session["api_base"]
        self.csrf = {"X-CSRF-Token": self.session["csrf_token"]}

    def get(self, path: str, **params: Any) -> Any:
        return self.client.get(self.base + path, params=params)

    def post(self, path: str, body: Any = None) -> Any:
        return self.client.post(self.base + path, json=body, headers=self.csrf)


@pytest.fixture
def dataset(labeled: Path, tmp_path: Path) -> Path:
    # A name that a URL would have to escape: the API's path needs none.
    return copy_dataset(labeled, tmp_path / "shapes review #1")


@pytest.fixture
def local(dataset: Path) -> Iterator[LocalReview]:
    app = create_local_review_app(dataset, reviewer="ana", settings=ServiceSettings())
    with TestClient(app, base_url=ORIGIN) as client:
        yield LocalReview(app, client)


def _labels(dataset: Path) -> dict[int, dict[str, Any]]:
    lines = (dataset / "labels.jsonl").read_text().splitlines()
    return {
        int(label["proposal_id"]): label for line in lines for label in json.loads(line)["labels"]
    }


def _yolo_rows(dataset: Path) -> list[str]:
    return [
        row
        for path in sorted((dataset / "labels").rglob("*.txt"))
        for row in path.read_text().splitlines()
    ]


def test_review_a_dataset_and_export_it_with_the_decisions(
    local: LocalReview, dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = local.session
    assert (session["key_id"], session["project_id"], session["role"]) == ("ana", "local", "admin")
    assert session["api_base"] == "/v1/projects/local/jobs/shapes_review__1/review"
    page = local.client.get("/review/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for asset in re.findall(r'(?:src|href)="(assets/[^"]+)"', page.text):
        assert local.client.get(f"/review/{asset}").status_code == 200, asset
    assert local.client.get("/review/session").headers["cache-control"] == "no-store"

    summary = local.get("/summary").json()
    assert summary["job_id"] == "shapes review #1"
    assert summary["classes"] == ["circle", "square"]
    assert summary["thresholds"] == {"accept": 0.7, "reject": 0.3, "review_below_score": 0.0}
    left = summary["needs_review_left"]
    assert left >= 4 and summary["decided"] == 0

    answer = local.get("/queue", limit=50)
    assert answer.status_code == 200, answer.text
    items = answer.json()["items"]
    assert len(items) == left
    first = items[0]
    assert first["answer"] == "Yes"
    assert first["question"] in {"Is this a circle?", "Is this a square?"}
    # The image, by the URL the item names: the bytes the run labeled, with their media type.
    picture = local.client.get(first["image_url"])
    assert picture.status_code == 200, picture.text
    assert picture.headers["content-type"] in {"image/jpeg", "image/png"}
    assert hashlib.sha256(picture.content).hexdigest() == first["image_sha256"]

    accept, reject, edit = items[0], items[1], items[2]
    edited_box = [10.0, 12.0, 200.5, 150.0]
    decided = local.post(
        "/decisions",
        {
            "decisions": [
                {"proposal_id": accept["proposal_id"], "action": "accept", "base_version": 0},
                {"proposal_id": reject["proposal_id"], "action": "reject", "base_version": 0},
                {
                    "proposal_id": edit["proposal_id"], "action": "edit", "base_version": 0,
                    "xyxy": edited_box,
                },
            ]
        },
    )  # fmt: skip
    assert decided.status_code == 200, decided.text
    states = [result["state"] for result in decided.json()["results"]]
    assert [s["status"] for s in states] == ["accepted", "rejected", "accepted"]
    assert {s["reviewer"] for s in states} == {"ana"}  # the local user, not a key id
    added = local.post(
        "/boxes", {"image_sha256": accept["image_sha256"], "class_id": 1, "xyxy": [1, 2, 60, 61]}
    )
    assert added.status_code == 201, added.text
    boxes = local.get(f"/images/{accept['image_sha256']}/boxes").json()["boxes"]
    by_id = {box["proposal_id"]: box for box in boxes}
    assert by_id[accept["proposal_id"]]["reviewer"] == "ana"
    assert by_id[added.json()["proposal_id"]]["added"] is True

    # The dataset on disk still holds the run's labels until the export.
    assert _yolo_rows(dataset) == []

    def no_model(*_: object, **__: object) -> None:
        raise AssertionError("a re-export must not load a model")

    monkeypatch.setattr("labeler.propose.detector.load_detector", no_model)
    monkeypatch.setattr("labeler.verify.load_verifier", no_model)
    exported = local.post("/export")
    assert exported.status_code == 200, exported.text
    counts = exported.json()
    assert counts["labels_by_decider"]["human"] == {"accepted": 3, "rejected": 1, "needs_review": 0}
    assert counts["labels"]["needs_review"] == left - 3
    assert counts["images"]["failed"] == 0

    labels = _labels(dataset)
    assert labels[accept["proposal_id"]]["status"] == "accepted"
    assert labels[accept["proposal_id"]]["reason"] == "reviewer ana: accept"
    assert labels[reject["proposal_id"]]["status"] == "rejected"
    assert labels[edit["proposal_id"]]["xyxy"] == edited_box
    assert labels[added.json()["proposal_id"]]["class"] == "square"
    assert len(_yolo_rows(dataset)) == counts["labels"]["accepted"] == 3
    report = json.loads((dataset / "report.json").read_text())
    assert report["labels"] == counts["labels"]
    assert report["dataset"]["path"] == str(dataset.resolve())
    review = json.loads((dataset / "review.json").read_text())
    assert len(review) == left - 3
    # The summary after the export: the same decisions, nothing lost.
    assert local.get("/summary").json()["decided"] == 4


def test_spot_checks_are_served_too(local: LocalReview) -> None:
    # Every box of this dataset went to review: no automatic label to check.
    drawn = local.post("/spot-checks", {"per_class": 2})
    assert drawn.status_code == 200, drawn.text
    assert drawn.json() == {"added": 0, "drawn": 0, "pending": 0}
    assert local.get("/spot-checks").json()["items"] == []
    report = local.get("/spot-checks/report")
    assert report.status_code == 200, report.text


def test_only_the_datasets_images_are_served(local: LocalReview, dataset: Path) -> None:
    first = local.get("/queue").json()["items"][0]
    unknown = hashlib.sha256(b"not an image of this dataset").hexdigest()
    for path in (f"/images/{unknown}", f"/images/{unknown}/boxes"):
        answer = local.get(path)
        assert answer.status_code == 404, answer.text
    assert local.get("/images/..%2F..%2Fetc%2Fpasswd").status_code in (404, 422)
    refused = local.post("/boxes", {"image_sha256": unknown, "class_id": 0, "xyxy": [1, 2, 9, 9]})
    assert refused.status_code == 404
    # A file changed since the run read it is no longer served as those bytes.
    target: LocalReviewTarget = local.app.state.review_target
    source, _ = target.image_file(first["image_sha256"])
    original, stamp = source.read_bytes(), source.stat()
    try:
        source.write_bytes(original + b"\0")
        answer = local.get(f"/images/{first['image_sha256']}")
        assert answer.status_code == 404 and "changed" in answer.json()["detail"]
        with pytest.raises(NotFoundError, match=str(source)):
            target.image_file(first["image_sha256"])
    finally:
        source.write_bytes(original)
        os.utime(source, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert local.get(f"/images/{first['image_sha256']}").status_code == 200


def test_state_changes_need_the_csrf_token(local: LocalReview) -> None:
    item = local.get("/queue").json()["items"][0]
    decision = {"proposal_id": item["proposal_id"], "action": "accept", "base_version": 0}
    body = {"decisions": [decision]}
    for headers in ({}, {"X-CSRF-Token": "guessed"}, {"X-CSRF-Token": ""}):
        for path, payload in (("/decisions", body), ("/export", None)):
            answer = local.client.post(local.base + path, json=payload, headers=headers)
            assert answer.status_code == 403, answer.text
            assert "X-CSRF-Token" in answer.json()["detail"]
    # Nothing was recorded.
    assert local.get("/summary").json()["decided"] == 0
    assert local.post("/decisions", body).status_code == 200


def test_requests_for_another_host_are_refused(local: LocalReview) -> None:
    # DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1.
    for host in ("evil.example:8765", "evil.example", "127.0.0.1:9999", "127.0.0.1", "[::1]:8765"):
        answer = local.client.get("/review/session", headers={"Host": host})
        assert answer.status_code == 400, host
    answer = local.client.get("/review/session", headers={"Host": "localhost:8765"})
    assert answer.status_code == 200


def test_other_jobs_and_projects_are_not_here(local: LocalReview) -> None:
    for base in (
        "/v1/projects/local/jobs/other/review",
        "/v1/projects/p1/jobs/shapes_review__1/review",
    ):
        answer = local.client.get(base + "/summary")
        assert answer.status_code == 404, answer.text


def test_a_folder_that_is_not_a_dataset_says_what_is_missing(labeled: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such folder"):
        create_local_review_app(tmp_path / "nowhere", reviewer="ana")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=r"not a promptlabel dataset: .*report\.json is missing"):
        create_local_review_app(empty, reviewer="ana")
    (empty / "report.json").write_text("{}")
    with pytest.raises(InputError, match=r"report\.json: provenance\.run_id is missing"):
        create_local_review_app(empty, reviewer="ana")
    copy = copy_dataset(labeled, tmp_path / "copy")
    (copy / "labels.jsonl").unlink()
    with pytest.raises(InputError, match=r"labels\.jsonl is missing"):
        create_local_review_app(copy, reviewer="ana")
    # A workspace kept elsewhere (`promptlabel label --workspace`) than the run recorded.
    moved = copy_dataset(labeled, tmp_path / "moved")
    (moved / ".promptlabel").rename(tmp_path / "elsewhere")
    report = json.loads((moved / "report.json").read_text())
    report["provenance"]["workspace"] = str(tmp_path / "gone")
    (moved / "report.json").write_text(json.dumps(report))
    with pytest.raises(InputError, match=r"workspace\.db is missing.*--workspace"):
        create_local_review_app(moved, reviewer="ana")
    app = create_local_review_app(
        moved, reviewer="ana", workspace_dir=tmp_path / "elsewhere", settings=ServiceSettings()
    )
    assert app.state.review_target.workspace_dir == (tmp_path / "elsewhere").resolve()
    with pytest.raises(InputError, match="reviewer"):
        create_local_review_app(labeled, reviewer=" ")


def test_a_reexport_that_would_lose_the_runs_verdicts_is_refused(
    labeled: Path, tmp_path: Path
) -> None:
    # As after an upgrade whose prompt templates differ from the ones that labeled the dataset:
    # the stored verdicts would not be found, so every verified box would fall back to review.
    dataset = copy_dataset(labeled, tmp_path / "upgraded")
    report = json.loads((dataset / "report.json").read_text())
    report["provenance"]["template_hash"] = "0" * 64
    (dataset / "report.json").write_text(json.dumps(report))
    before = (dataset / "labels.jsonl").read_text()
    app = create_local_review_app(dataset, reviewer="ana", settings=ServiceSettings())
    with TestClient(app, base_url=ORIGIN) as client:
        local = LocalReview(app, client)
        item = local.get("/queue").json()["items"][0]
        decision = {"proposal_id": item["proposal_id"], "action": "accept", "base_version": 0}
        assert local.post("/decisions", {"decisions": [decision]}).status_code == 200
        refused = local.post("/export")
        assert refused.status_code == 409, refused.text
        detail = refused.json()["detail"]
        assert "template_hash" in detail and "promptlabel label" in detail
    assert (dataset / "labels.jsonl").read_text() == before

    # The images folder the run read is gone: said so, nothing written.
    target: LocalReviewTarget = LocalReviewTarget.open(labeled)
    gone = replace(target, config=replace(target.config, images_dir=tmp_path / "gone"))
    with pytest.raises(ConflictError, match=f"{tmp_path / 'gone'}, is gone"):
        gone.reexport()
