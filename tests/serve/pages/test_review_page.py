"""The review page in a real browser (Debian's Chromium, driven by Playwright): sign in with a
key, pick the job, review the queue by keyboard, edit a box by dragging its handle, add a box by
dragging on the image, undo; then the job's boxes, its summary and its re-exported dataset say
what the page did. A VLM answer carrying markup shows as text.

``PROMPTLABEL_SCREENSHOTS=1`` also writes the README's picture of the page
(docs/images/review-page.png): `make screenshots`."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.live_app import LiveApp
from tests.fakes.vlm_server import FakeVLMServer, RecordedRequest, Reply
from tests.serve.api.test_jobs import submit, upload
from tests.serve.api.test_review import finished_job, key_headers
from tests.serve.conftest import Service, png_bytes

HOSTILE = 'Yes <img src=x onerror="window.__xss = 1"> <script>window.__xss = 2</script>'
HOSTILE_CLASS = "<i>square</i>"
# The boxes on the stage (the transformer's handles are rectangles too, inside it).
BOXES_DRAWN = (
    "Konva.stages[0].findOne('.boxes').getChildren((node) => node.getClassName() === 'Rect').length"
)
SCREENSHOT = Path(__file__).parents[3] / "docs" / "images" / "review-page.png"


def _hostile_uncertain(request: RecordedRequest) -> Reply:
    # Every box lands in the routing band (review), its answer carrying markup.
    return Reply(HOSTILE, confidences=[0.55])


def _job_in_review(service: Service, vlm_server: FakeVLMServer) -> str:
    vlm_server.script = _hostile_uncertain
    classes = {"circle": ["circle"], HOSTILE_CLASS: ["square"]}
    answer = service.client.put(
        service.url("/ontology"), headers=service.headers, json={"classes": classes}
    )
    assert answer.status_code == 200, answer.text
    upload(service, *((f"img{i}.png", png_bytes(i, size=(320, 240))) for i in range(4)))
    job = submit(service, {"verifier": "fake", "max_det": 3}).json()
    # In a thread of its own: Playwright's sync API keeps an event loop running in this one,
    # and the worker runs its own.
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(service.run_jobs).result() == 1
    done = service.client.get(service.url(f"/jobs/{job['id']}"), headers=service.headers).json()
    assert done["status"] == "succeeded", done
    assert done["result"]["labels"]["needs_review"] >= 5, done["result"]["labels"]
    return str(job["id"])


class Boxes:
    """What the API says of the job's boxes, asked with a labeler key."""

    def __init__(self, service: Service, job_id: str) -> None:
        self.service = service
        self.base = service.url(f"/jobs/{job_id}/review")

    def of_image(self, image_sha256: str) -> dict[int, dict[str, Any]]:
        answer = self.service.client.get(
            f"{self.base}/images/{image_sha256}/boxes", headers=self.service.headers
        )
        assert answer.status_code == 200, answer.text
        return {box["proposal_id"]: box for box in answer.json()["boxes"]}

    def summary(self) -> dict[str, Any]:
        answer = self.service.client.get(f"{self.base}/summary", headers=self.service.headers)
        assert answer.status_code == 200, answer.text
        return dict(answer.json())


def _shown_item(page: Any) -> dict[str, Any]:
    """The item on screen: its proposal, image, box (image pixels) and the box's place on the
    page (CSS pixels), read from the page and from Konva's own nodes."""
    found: dict[str, Any] = page.evaluate(
        """() => {
          const stage = Konva.stages[0];
          const rect = stage.findOne('.current').getClientRect({ skipStroke: true });
          const at = stage.container().getBoundingClientRect();
          return {
            proposal_id: Number(document.body.dataset.item),
            image_sha256: document.body.dataset.image,
            on_page: [at.left + rect.x, at.top + rect.y, at.left + rect.x + rect.width,
                      at.top + rect.y + rect.height],
          };
        }"""
    )
    return found


def _wait_for_next(page: Any, previous: int) -> dict[str, Any]:
    page.wait_for_function(
        "previous => document.body.dataset.item && Number(document.body.dataset.item) !== previous",
        arg=previous,
    )
    return _shown_item(page)


def _wait_for_notice(page: Any, starts_with: str) -> None:
    try:
        page.wait_for_function(
            "text => document.getElementById('notice').textContent.startsWith(text)",
            arg=starts_with,
            timeout=10_000,
        )
    except Exception:
        shown = page.locator("#notice").text_content()
        raise AssertionError(f"the page says {shown!r}, not {starts_with!r}...") from None


@pytest.mark.slow
def test_review_a_job_in_the_browser_by_keyboard_and_mouse(
    service: Service, vlm_server: FakeVLMServer, page: Any
) -> None:
    job_id = _job_in_review(service, vlm_server)
    reviewer_id, headers = key_headers(service, "reviewer", "ana")
    token = headers["Authorization"].removeprefix("Bearer ")
    boxes = Boxes(service, job_id)
    before = boxes.summary()

    with LiveApp(service.client.app) as live:
        # Sign in with the key, then pick the job from the list by keyboard.
        page.goto(live.url("/review/"))
        page.locator("#api-key").fill(token)
        page.keyboard.press("Enter")
        page.locator("#job-list button").first.wait_for()
        assert page.evaluate("document.activeElement.textContent").startswith(job_id)
        page.keyboard.press("Enter")
        page.wait_for_function("document.body.dataset.item")
        first = _shown_item(page)

        # Outside text is text: the VLM's markup is shown, never run or parsed.
        assert page.locator("#item-answer").text_content() == HOSTILE
        assert page.locator("#panel img, #panel script").count() == 0
        assert page.evaluate("window.__xss") is None
        assert page.locator("#item-class").text_content() in ("circle", HOSTILE_CLASS)
        assert page.locator("#classes li").all_text_contents() == ["circle", HOSTILE_CLASS]
        assert page.locator("#classes i").count() == 0

        # A accepts, R rejects, 2 relabels as the second class; each moves on at once.
        page.keyboard.press("a")
        second = _wait_for_next(page, first["proposal_id"])
        page.keyboard.press("r")
        third = _wait_for_next(page, second["proposal_id"])
        page.keyboard.press("2")
        fourth = _wait_for_next(page, third["proposal_id"])
        _wait_for_notice(page, "relabel")
        decided = {
            **boxes.of_image(first["image_sha256"]),
            **boxes.of_image(second["image_sha256"]),
            **boxes.of_image(third["image_sha256"]),
        }
        assert decided[first["proposal_id"]]["status"] == "accepted"
        assert decided[second["proposal_id"]]["status"] == "rejected"
        assert decided[third["proposal_id"]]["status"] == "accepted"
        assert decided[third["proposal_id"]]["class"] == HOSTILE_CLASS
        for proposal_id in (first, second, third):
            box = decided[proposal_id["proposal_id"]]
            assert box["decided_by"] == "human" and box["reviewer"] == reviewer_id

        # U undoes the latest (the relabel) and brings its item back.
        page.keyboard.press("u")
        _wait_for_notice(page, "undone")
        assert _shown_item(page)["proposal_id"] == third["proposal_id"]
        undone = boxes.of_image(third["image_sha256"])[third["proposal_id"]]
        assert undone["decided_by"] == "auto" and undone["status"] == "needs_review"
        page.keyboard.press("j")
        assert _wait_for_next(page, third["proposal_id"])["proposal_id"] == fourth["proposal_id"]

        # E, then drag the box's lower right handle 30 px right and 20 px down, Enter saves.
        original = boxes.of_image(fourth["image_sha256"])[fourth["proposal_id"]]["xyxy"]
        page.keyboard.press("e")
        _, _, x2, y2 = fourth["on_page"]
        page.mouse.move(x2, y2)
        page.mouse.down()
        page.mouse.move(x2 + 15, y2 + 10, steps=4)
        page.mouse.move(x2 + 30, y2 + 20, steps=4)
        page.mouse.up()
        page.keyboard.press("Enter")
        fifth = _wait_for_next(page, fourth["proposal_id"])
        _wait_for_notice(page, "edit")
        edited = boxes.of_image(fourth["image_sha256"])[fourth["proposal_id"]]
        assert edited["status"] == "accepted" and edited["decided_by"] == "human"
        scale = _scale(page)
        # The dragged corner moved by the drag (in image pixels), the opposite one stayed.
        assert edited["xyxy"][:2] == pytest.approx(original[:2], abs=1.0)
        assert edited["xyxy"][2] == pytest.approx(min(320, original[2] + 30 / scale), abs=2.0)
        assert edited["xyxy"][3] == pytest.approx(min(240, original[3] + 20 / scale), abs=2.0)

        # B, then drag on the image: a box the detector missed, of the last chosen class.
        page.keyboard.press("b")
        sx1, sy1, _, _ = fifth["on_page"]
        page.mouse.move(sx1 + 5, sy1 + 5)
        page.mouse.down()
        page.mouse.move(sx1 + 40, sy1 + 35, steps=5)
        page.mouse.up()
        _wait_for_notice(page, "added")
        added = [box for box in boxes.of_image(fifth["image_sha256"]).values() if box["added"]]
        assert len(added) == 1 and added[0]["status"] == "accepted"
        assert added[0]["class"] == HOSTILE_CLASS and added[0]["reviewer"] == reviewer_id

        # The help overlay opens with ? and closes with Escape.
        page.keyboard.press("?")
        assert page.locator("#help").is_visible()
        page.keyboard.press("Escape")
        assert page.locator("#help").is_hidden()

        if os.environ.get("PROMPTLABEL_SCREENSHOTS"):
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT))

        # The summary and the dataset, exported from the page (W), hold what the page did.
        assert boxes.summary() != before
        page.keyboard.press("w")
        _wait_for_notice(page, "exported")
        assert "(3 by reviewers)" in page.locator("#notice").text_content()
        job = service.client.get(service.url(f"/jobs/{job_id}"), headers=service.headers)
        counts = job.json()["result"]["labels_by_decider"]["human"]
        assert counts["accepted"] == 3 and counts["rejected"] == 1  # accept, edit, added; reject

        # The queue filtered by class, chosen from the header's list.
        page.select_option("#class-filter", "circle")
        page.wait_for_url("**class=circle**")
        page.wait_for_function("document.body.dataset.item")
        for _ in range(3):
            assert page.locator("#item-class").text_content() == "circle"
            shown = _shown_item(page)["proposal_id"]
            page.keyboard.press("j")
            if page.evaluate("() => !document.body.dataset.item"):
                break
            _wait_for_next(page, shown)


def _scale(page: Any) -> float:
    """CSS pixels per image pixel on the stage (the image is drawn to fit)."""
    scale: float = page.evaluate("Konva.stages[0].findOne('Image').width()") / 320
    return scale


def _open_job(page: Any, live: LiveApp, token: str, job_id: str) -> None:
    page.goto(live.url("/review/"))
    page.locator("#api-key").fill(token)
    page.keyboard.press("Enter")
    page.locator("#job-list button").first.wait_for()
    page.goto(live.url(f"/review/?job={job_id}"))
    page.wait_for_function("document.body.dataset.item")


@pytest.mark.slow
def test_spot_checks_in_the_browser_blind_by_keyboard(
    service: Service, vlm_server: FakeVLMServer, page: Any
) -> None:
    with ThreadPoolExecutor(1) as pool:  # the worker's event loop: see _job_in_review
        job_id = pool.submit(finished_job, service, vlm_server, 4).result()
    _, headers = key_headers(service, "reviewer", "ana")
    boxes = Boxes(service, job_id)

    def report() -> dict[str, Any]:
        answer = service.client.get(f"{boxes.base}/spot-checks/report", headers=headers)
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    with LiveApp(service.client.app) as live:
        _open_job(page, live, headers["Authorization"].removeprefix("Bearer "), job_id)
        page.keyboard.press("s")
        _wait_for_notice(page, "No spot checks waiting")
        page.locator("#draw-per-class").fill("2")
        page.locator("#draw-per-class").press("Enter")
        _wait_for_notice(page, "")
        page.wait_for_function("document.body.dataset.item")
        drawn = report()["checks"]
        assert drawn["pending"] >= 2, drawn

        answered: dict[int, str] = {}
        images: dict[int, str] = {}
        for turn in range(drawn["pending"]):
            shown = _shown_item(page)
            # Blind: the box and its class only; no verdict, answer or score, no other boxes.
            assert page.locator("#evidence").is_hidden()
            assert page.evaluate(BOXES_DRAWN) == 1
            key, word = ("c", "correct") if turn % 2 == 0 else ("x", "incorrect")
            page.keyboard.press(key)
            answered[shown["proposal_id"]] = word
            images[shown["proposal_id"]] = shown["image_sha256"]
            if turn < drawn["pending"] - 1:
                _wait_for_next(page, shown["proposal_id"])
        _wait_for_notice(page, "No spot checks waiting")
        page.wait_for_function(
            "() => document.getElementById('spot-report').textContent.includes('0 checks waiting')"
        )
        assert "Precision of auto-accepted labels" in page.locator("#spot-report").text_content()

        after = report()
        assert after["checks"]["answered"] == len(answered) and after["checks"]["pending"] == 0
        checked = after["precision"]["checked"] + after["rejected_share_correct"]["checked"]
        assert checked == len(answered)
        # An answer that disagrees with the automatic label is a decision too: "incorrect" on
        # an accepted box rejects it, "correct" on a rejected one accepts it; the export follows.
        flipped = {"accepted": 0, "rejected": 0, "needs_review": 0}
        for proposal_id, word in answered.items():
            box = boxes.of_image(images[proposal_id])[proposal_id]
            auto_correct = box["auto_status"] == "accepted"
            if (word == "correct") != auto_correct:
                assert box["decided_by"] == "human"
                flipped["accepted" if word == "correct" else "rejected"] += 1
            else:
                assert box["decided_by"] == "auto" and box["status"] == box["auto_status"]
        exported = service.client.post(f"{boxes.base}/export", headers=service.headers)
        assert exported.status_code == 200, exported.text
        assert exported.json()["labels_by_decider"]["human"] == flipped
        assert sum(flipped.values()) >= 1  # the alternating answers disagreed somewhere
