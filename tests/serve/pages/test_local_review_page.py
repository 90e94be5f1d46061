"""`promptlabel review DATASET_DIR`'s page in a real browser: no sign-in, the dataset's queue,
decisions recorded under the reviewer's name, and the dataset written again from the page."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from serve.api.local_review import create_local_review_app
from serve.settings import ServiceSettings
from tests.fakes.live_app import LiveApp
from tests.serve.api.test_local_review import label_dataset
from tests.serve.pages.test_review_page import _shown_item, _wait_for_next, _wait_for_notice


def _labels(dataset: Path) -> dict[int, dict[str, Any]]:
    lines = (dataset / "labels.jsonl").read_text().splitlines()
    return {
        int(label["proposal_id"]): label for line in lines for label in json.loads(line)["labels"]
    }


@pytest.mark.slow
def test_a_dataset_folder_is_reviewed_in_the_browser_without_signing_in(
    tmp_path: Path, tiny_detector_dir: Path, page: Any
) -> None:
    # In a thread: the label run has an event loop of its own, Playwright one in this thread.
    with ThreadPoolExecutor(1) as pool:
        dataset = pool.submit(label_dataset, tmp_path, tiny_detector_dir).result()
    app = create_local_review_app(dataset, reviewer="ana", settings=ServiceSettings())
    with LiveApp(app) as live:
        page.goto(live.url("/review/"))
        page.wait_for_function("document.body.dataset.item")
        assert page.locator("#signin").is_hidden() and page.locator("#jobs").is_hidden()
        assert page.locator("#where").text_content() == dataset.name
        first = _shown_item(page)
        page.keyboard.press("a")
        second = _wait_for_next(page, first["proposal_id"])
        page.keyboard.press("r")
        _wait_for_next(page, second["proposal_id"])
        page.keyboard.press("w")
        _wait_for_notice(page, "exported")

    labels = _labels(dataset)
    assert labels[first["proposal_id"]]["status"] == "accepted"
    assert labels[second["proposal_id"]]["status"] == "rejected"
    for proposal in (first, second):
        assert labels[proposal["proposal_id"]]["decided_by"] == "human"
    report = json.loads((dataset / "report.json").read_text())
    assert report["labels_by_decider"]["human"]["accepted"] == 1
    assert report["labels_by_decider"]["human"]["rejected"] == 1
