"""The review API under a finished labeling job: the queue and its claims, batched decisions
(stale ones refused with the current state), added boxes, images, the summary, and re-exporting
the dataset with the decisions (no model loads); roles; on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import io
import json
import time
import zipfile
from typing import Any

import pytest

from serve.api.auth import create_api_key
from tests.fakes.vlm_server import FakeVLMServer, Fault, RecordedRequest, Reply
from tests.serve.api.test_jobs import submit, upload
from tests.serve.conftest import Service, png_bytes


def _uncertain_answers(request: RecordedRequest) -> Reply:
    """Yes or no by the crop, with a confidence by the crop too: some boxes land in the
    routing band (0.3, 0.7) and go to review, others are accepted or rejected."""
    digest = hashlib.sha256(request.image_urls[0].encode()).hexdigest()
    word = "Yes" if digest[0] in "01234567" else "No"
    return Reply(word, confidences=[(0.95, 0.6, 0.95, 0.55)[int(digest[1], 16) % 4]])


def finished_job(service: Service, vlm_server: FakeVLMServer, images: int = 3) -> str:
    """A succeeded labeling job with boxes in review: one verifier call fails (its box is in
    review without an answer), the others answer with mixed confidence."""
    vlm_server.script = _uncertain_answers
    vlm_server.faults = [None, Fault.server_error()]
    upload(service, *((f"img{i}.png", png_bytes(i)) for i in range(images)))
    job = submit(service, {"verifier": "fake", "max_det": 4}).json()
    assert service.run_jobs() == 1
    done = service.client.get(service.url(f"/jobs/{job['id']}"), headers=service.headers).json()
    assert done["status"] == "succeeded", done
    assert done["result"]["labels"]["needs_review"] >= 2, done["result"]["labels"]
    return str(job["id"])


def key_headers(service: Service, role: str, name: str = "") -> tuple[str, dict[str, str]]:
    key = create_api_key(service.db, project_id=service.project_id, name=name, role=role)
    return key.key_id, {"Authorization": f"Bearer {key.token}"}


class Review:
    """The review routes of one job, called with one key."""

    def __init__(self, service: Service, job_id: str, headers: dict[str, str]) -> None:
        self.service = service
        self.base = service.url(f"/jobs/{job_id}/review")
        self.headers = headers

    def get(self, path: str, **params: Any) -> Any:
        return self.service.client.get(self.base + path, headers=self.headers, params=params)

    def post(self, path: str, body: Any = None) -> Any:
        return self.service.client.post(self.base + path, headers=self.headers, json=body)

    def queue(self, **params: Any) -> list[dict[str, Any]]:
        answer = self.get("/queue", **params)
        assert answer.status_code == 200, answer.text
        items: list[dict[str, Any]] = answer.json()["items"]
        return items

    def decide(self, *decisions: dict[str, Any]) -> Any:
        return self.post("/decisions", {"decisions": list(decisions)})


def _zip_labels(content: bytes) -> dict[str, str]:
    archive = zipfile.ZipFile(io.BytesIO(content))
    return {
        name: archive.read(name).decode()
        for name in archive.namelist()
        if name.startswith("labels/") and name.endswith(".txt")
    }


def _export(service: Service, job_id: str) -> bytes:
    answer = service.client.get(service.url(f"/jobs/{job_id}/export"), headers=service.headers)
    assert answer.status_code == 200, answer.text
    return answer.content


def test_review_a_job_and_export_its_reviewed_dataset(
    service: Service, vlm_server: FakeVLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = finished_job(service, vlm_server)
    reviewer_id, headers = key_headers(service, "reviewer", "ana")
    review = Review(service, job_id, headers)

    summary = review.get("/summary").json()
    assert summary["job_id"] == job_id and summary["classes"] == ["shape"]
    assert summary["thresholds"] == {"accept": 0.7, "reject": 0.3, "review_below_score": 0.0}
    left = summary["needs_review_left"]
    assert left == summary["labels"]["needs_review"] >= 4 and summary["decided"] == 0

    items = review.queue(limit=50)
    assert len(items) == left
    first = items[0]
    # No usable answer comes first (the failed call), then P(yes) nearest 0.5.
    assert first["yes_prob"] is None and first["reason"].startswith("verifier error")
    distances = [abs(item["yes_prob"] - 0.5) for item in items[1:]]
    assert distances == sorted(distances)
    answered = items[1]
    assert answered["question"] == "Is this a circle?" and answered["answer"] in {"Yes", "No"}
    assert answered["version"] == 0 and answered["class"] == "shape"
    assert answered["image_wh"] == [96, 72]
    # Every other box of the image comes along, with its effective status.
    image = review.get(f"/images/{answered['image_sha256']}/boxes").json()
    assert image["image_wh"] == [96, 72]
    others = [box for box in image["boxes"] if box["proposal_id"] != answered["proposal_id"]]
    assert answered["boxes"] == others
    assert all(box["decided_by"] == "auto" and box["version"] == 0 for box in image["boxes"])
    # The image, by the URL the item names.
    picture = service.client.get(answered["image_url"], headers=headers)
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/png"
    assert hashlib.sha256(picture.content).hexdigest() == answered["image_sha256"]

    before_zip = _export(service, job_id)
    before = service.client.get(service.url(f"/jobs/{job_id}"), headers=service.headers).json()

    # Accept two, reject one, relabel-free edit one; add a box the detector missed.
    accept, reject, edit = items[1], items[2], items[3]
    edited_box = [10.0, 12.0, 40.5, 50.0]
    decided = review.decide(
        {"proposal_id": accept["proposal_id"], "action": "accept", "base_version": 0},
        {"proposal_id": first["proposal_id"], "action": "accept", "base_version": 0},
        {"proposal_id": reject["proposal_id"], "action": "reject", "base_version": 0},
        {
            "proposal_id": edit["proposal_id"],
            "action": "edit",
            "base_version": 0,
            "xyxy": edited_box,
        },
    )
    assert decided.status_code == 200, decided.text
    results = decided.json()["results"]
    assert [r["proposal_id"] for r in results] == [
        accept["proposal_id"], first["proposal_id"], reject["proposal_id"], edit["proposal_id"]
    ]  # fmt: skip
    states = [r["state"] for r in results]
    assert [s["status"] for s in states] == ["accepted", "accepted", "rejected", "accepted"]
    assert {s["reviewer"] for s in states} == {reviewer_id}  # the key's id
    assert states[3]["xyxy"] == edited_box and all(s["version"] == 1 for s in states)
    added = review.post(
        "/boxes",
        {"image_sha256": accept["image_sha256"], "class_id": 0, "xyxy": [1, 2, 30, 31]},
    )
    assert added.status_code == 201, added.text
    assert added.json()["action"] == "add" and added.json()["status"] == "accepted"

    boxes = review.get(f"/images/{accept['image_sha256']}/boxes").json()["boxes"]
    by_id = {box["proposal_id"]: box for box in boxes}
    assert by_id[accept["proposal_id"]]["status"] == "accepted"
    assert by_id[accept["proposal_id"]]["decided_by"] == "human"
    assert by_id[accept["proposal_id"]]["reviewer"] == reviewer_id
    assert by_id[added.json()["proposal_id"]]["added"] is True
    summary = review.get("/summary").json()
    assert summary["needs_review_left"] == left - 4 and summary["needs_review_decided"] == 4
    assert summary["decided"] == 5 and summary["added"] == 1
    # Decided boxes leave the queue.
    assert {i["proposal_id"] for i in review.queue(limit=50)} == {
        i["proposal_id"] for i in items[4:]
    }

    # The re-export loads no model and asks no verifier (the failed call is not retried).
    def no_model(*_: object, **__: object) -> None:
        raise AssertionError("a re-export must not load a model")

    monkeypatch.setattr("labeler.propose.detector.load_detector", no_model)
    monkeypatch.setattr("labeler.verify.load_verifier", no_model)
    calls = len(vlm_server.model_requests)
    exported = review.post("/export")
    assert exported.status_code == 200, exported.text
    assert len(vlm_server.model_requests) == calls
    counts = exported.json()
    human = counts["labels_by_decider"]["human"]
    assert human == {"accepted": 4, "rejected": 1, "needs_review": 0}
    labels = counts["labels"]
    assert labels["needs_review"] == left - 4
    assert labels["accepted"] == before["result"]["labels"]["accepted"] + 4
    assert (
        counts["dataset"]["boxes"]["train"] + counts["dataset"]["boxes"]["val"]
        == (labels["accepted"])
    )

    # The download holds the reviewed labels: the archive was built again.
    after_zip = _export(service, job_id)
    before_rows, after_rows = _zip_labels(before_zip), _zip_labels(after_zip)
    assert before_rows != after_rows
    assert sum(len(t.splitlines()) for t in after_rows.values()) == labels["accepted"]
    assert (
        sum(len(t.splitlines()) for t in before_rows.values())
        == (before["result"]["labels"]["accepted"])
    )
    report = json.loads(zipfile.ZipFile(io.BytesIO(after_zip)).read("report.json"))
    assert report["labels_by_decider"]["human"] == human
    # ... and so do the job's result and per-image results.
    after = service.client.get(service.url(f"/jobs/{job_id}"), headers=service.headers).json()
    assert after["result"]["labels"] == labels
    assert after["result"]["verifier"] == before["result"]["verifier"]  # the run's own record
    page = service.client.get(
        service.url(f"/jobs/{job_id}/results"), headers=service.headers
    ).json()
    statuses = {
        label["proposal_id"]: (label["status"], label["decided_by"])
        for item in page["items"]
        for label in item["labels"]
    }
    assert statuses[accept["proposal_id"]] == ("accepted", "human")
    assert statuses[reject["proposal_id"]] == ("rejected", "human")
    assert statuses[added.json()["proposal_id"]] == ("accepted", "human")


def test_queue_claims_keep_two_reviewers_apart(service: Service, vlm_server: FakeVLMServer) -> None:
    job_id = finished_job(service, vlm_server)
    _, ana_headers = key_headers(service, "reviewer", "ana")
    _, ben_headers = key_headers(service, "reviewer", "ben")
    ana, ben = Review(service, job_id, ana_headers), Review(service, job_id, ben_headers)
    total = ana.get("/summary").json()["needs_review_left"]

    ana_items = ana.queue(limit=2)
    ben_items = ben.queue(limit=50)
    assert len(ana_items) == 2 and len(ben_items) == total - 2
    assert not {i["proposal_id"] for i in ana_items} & {i["proposal_id"] for i in ben_items}
    # Her own claims come back to her (a reload), in the same order.
    assert [i["proposal_id"] for i in ana.queue(limit=2)] == [i["proposal_id"] for i in ana_items]
    # Everything is claimed now: nothing for her beyond her own two.
    assert len(ana.queue(limit=50)) == 2
    # Filters: by class (an unknown one is a 422 naming the classes) and by reason prefix.
    assert ana.get("/queue", **{"class": "nope"}).status_code == 422
    assert "shape" in ana.get("/queue", **{"class": "nope"}).json()["detail"]
    assert len(ben.queue(limit=50, **{"class": "shape"})) == total - 2
    # The failed call's box is the first of all, so it is among Ana's.
    errors = ana.queue(limit=50, reason="verifier error")
    assert [i["proposal_id"] for i in errors] == [
        i["proposal_id"] for i in ana_items if i["reason"].startswith("verifier error")
    ]
    assert errors and ben.queue(limit=50, reason="verifier error") == []


def test_claims_expire_after_the_configured_time(
    service: Service, vlm_server: FakeVLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = finished_job(service, vlm_server)
    _, ana_headers = key_headers(service, "reviewer")
    _, ben_headers = key_headers(service, "reviewer")
    ana, ben = Review(service, job_id, ana_headers), Review(service, job_id, ben_headers)
    monkeypatch.setattr(service.settings, "review_claim_s", 0.01)
    taken = ana.get("/queue", limit=50)
    assert taken.json()["claim_s"] == 0.01
    time.sleep(0.05)
    assert len(ben.queue(limit=50)) == len(taken.json()["items"])


def test_a_batch_with_a_stale_decision_applies_the_others_and_says_what_is_current(
    service: Service, vlm_server: FakeVLMServer
) -> None:
    job_id = finished_job(service, vlm_server)
    ana_id, ana_headers = key_headers(service, "reviewer", "ana")
    _, ben_headers = key_headers(service, "labeler", "ben")  # labeler keys review too
    ana, ben = Review(service, job_id, ana_headers), Review(service, job_id, ben_headers)
    first, second, third = ana.queue(limit=3)

    assert (
        ana.decide(
            {"proposal_id": first["proposal_id"], "action": "reject", "base_version": 0}
        ).status_code
        == 200
    )
    # Ben decides on what he saw before Ana's click: his decision on that box is stale.
    answer = ben.decide(
        {"proposal_id": second["proposal_id"], "action": "accept", "base_version": 0},
        {"proposal_id": first["proposal_id"], "action": "accept", "base_version": 0},
        {"proposal_id": third["proposal_id"], "action": "relabel", "base_version": 0,
         "class_id": 0},
    )  # fmt: skip
    assert answer.status_code == 409, answer.text
    body = answer.json()
    assert "1 of 3" in body["detail"]
    applied, stale, relabeled = body["results"]
    assert applied["state"]["status"] == "accepted" and "stale" not in applied
    assert stale == {
        "proposal_id": first["proposal_id"],
        "stale": True,
        "current": stale["current"],
    }
    assert stale["current"]["status"] == "rejected" and stale["current"]["version"] == 1
    assert stale["current"]["reviewer"] == ana_id
    assert relabeled["state"]["action"] == "relabel" and relabeled["state"]["class"] == "shape"

    # Reconciling: the current version makes the decision go through; undo goes back.
    again = ben.decide({"proposal_id": first["proposal_id"], "action": "accept", "base_version": 1})
    assert again.status_code == 200 and again.json()["results"][0]["state"]["version"] == 2
    undone = ben.decide(
        {"proposal_id": first["proposal_id"], "action": "undo", "base_version": 2},
        {"proposal_id": second["proposal_id"], "action": "undo", "base_version": 1},
    )
    assert undone.status_code == 200, undone.text
    first_state, second_state = (r["state"] for r in undone.json()["results"])
    assert (first_state["status"], first_state["version"]) == ("rejected", 3)
    # Every decision undone: back to the route, and back in the queue.
    assert second_state["status"] is None
    back = {i["proposal_id"]: i for i in ana.queue(limit=50)}
    assert back[second["proposal_id"]]["version"] == 2
    # An undo with nothing left to undo is refused, with the state it was refused on.
    nothing = ben.decide(
        {"proposal_id": second["proposal_id"], "action": "undo", "base_version": 2}
    )
    assert nothing.status_code == 409
    [refused] = nothing.json()["results"]
    assert refused["stale"] is False and "no decision to undo" in refused["error"]
    assert refused["current"]["version"] == 2


def test_relabel_edit_add_delete_and_undo_of_an_added_box(
    service: Service, vlm_server: FakeVLMServer
) -> None:
    job_id = finished_job(service, vlm_server)
    review = Review(service, job_id, service.headers)
    item = review.queue(limit=1)[0]
    sha = item["image_sha256"]

    added = review.post("/boxes", {"image_sha256": sha, "class_id": 0, "xyxy": [5, 5, 20, 25]})
    assert added.status_code == 201
    box_id = added.json()["proposal_id"]
    # A box partly outside the image is clipped to it.
    edited = review.decide(
        {"proposal_id": box_id, "action": "edit", "base_version": 1, "xyxy": [50, 40, 120, 90]}
    )
    assert edited.status_code == 200, edited.text
    assert edited.json()["results"][0]["state"]["xyxy"] == [50.0, 40.0, 96.0, 72.0]
    deleted = review.decide({"proposal_id": box_id, "action": "delete", "base_version": 2})
    assert deleted.json()["results"][0]["state"]["status"] == "rejected"
    boxes = {b["proposal_id"]: b for b in review.get(f"/images/{sha}/boxes").json()["boxes"]}
    assert boxes[box_id]["status"] == "rejected" and boxes[box_id]["xyxy"] == [50, 40, 96, 72]
    # Undoing back past the add leaves no box at all.
    for version in (3, 4, 5):
        answer = review.decide({"proposal_id": box_id, "action": "undo", "base_version": version})
        assert answer.status_code == 200, answer.text
    assert box_id not in {
        b["proposal_id"] for b in review.get(f"/images/{sha}/boxes").json()["boxes"]
    }

    relabel = review.decide(
        {"proposal_id": item["proposal_id"], "action": "relabel", "base_version": 0, "class_id": 0}
    )
    assert relabel.json()["results"][0]["state"]["class_id"] == 0


def test_decisions_and_boxes_are_checked_before_anything_is_recorded(
    service: Service, vlm_server: FakeVLMServer
) -> None:
    job_id = finished_job(service, vlm_server)
    review = Review(service, job_id, service.headers)
    item = review.queue(limit=1)[0]
    pid, sha = item["proposal_id"], item["image_sha256"]
    ok = {"proposal_id": pid, "action": "accept", "base_version": 0}
    cases = [
        ({"proposal_id": pid, "action": "relabel", "base_version": 0, "class_id": 3}, "class_id 3"),
        ({"proposal_id": pid, "action": "relabel", "base_version": 0}, "needs class_id"),
        ({"proposal_id": pid, "action": "edit", "base_version": 0}, "needs xyxy"),
        ({"proposal_id": pid, "action": "edit", "base_version": 0, "xyxy": [200, 200, 300, 300]},
         "too small to export"),
        ({"proposal_id": pid, "action": "edit", "base_version": 0, "xyxy": [10, 10, 5, 20]},
         "x2 > x1"),
        ({"proposal_id": 999_999, "action": "accept", "base_version": 0}, "no such box"),
    ]  # fmt: skip
    for bad, message in cases:
        answer = review.decide(ok, bad)
        assert answer.status_code == 422, (bad, answer.text)
        assert "decisions[1]" in answer.json()["detail"] and message in answer.json()["detail"]
    # Nothing was recorded, not even the good first decision.
    assert review.get(f"/images/{sha}/boxes").json()["boxes"][0]["version"] == 0
    assert all(b["version"] == 0 for b in review.get(f"/images/{sha}/boxes").json()["boxes"])
    schema_errors = [
        {"decisions": []},
        {"decisions": [ok] * 501},
        {"decisions": [{**ok, "action": "add"}]},
        {"decisions": [{**ok, "base_version": -1}]},
        {"decisions": [{**ok, "proposal_id": 2**70}]},
        {"decisions": [{**ok, "surprise": 1}]},
    ]
    for body in schema_errors:
        assert review.post("/decisions", body).status_code == 422, body
    boxes = [
        ({"image_sha256": sha, "class_id": 1, "xyxy": [1, 1, 9, 9]}, 422),
        ({"image_sha256": sha, "class_id": 0, "xyxy": [95.5, 1, 99, 9]}, 422),
        ({"image_sha256": "0" * 64, "class_id": 0, "xyxy": [1, 1, 9, 9]}, 404),
        ({"image_sha256": "nope", "class_id": 0, "xyxy": [1, 1, 9, 9]}, 422),
    ]
    for body, code in boxes:
        assert review.post("/boxes", body).status_code == code, body
    assert review.get(f"/images/{'0' * 64}").status_code == 404
    assert review.get(f"/images/{'0' * 64}/boxes").status_code == 404
    assert review.get("/images/not-a-hash").status_code == 422


def test_only_a_succeeded_labeling_job_of_the_callers_project_is_reviewed(
    service: Service, vlm_server: FakeVLMServer
) -> None:
    job_id = finished_job(service, vlm_server, images=1)
    queued = submit(service, {"max_det": 2}).json()["id"]
    train = service.client.post(
        service.url("/train-jobs"), headers=service.headers, json={"label_job_id": job_id}
    )
    assert train.status_code == 201, train.text
    _, intruder = service.new_project("other")
    routes = [
        ("GET", "/queue"), ("POST", "/decisions"), ("POST", "/boxes"), ("GET", "/summary"),
        ("POST", "/export"), ("GET", f"/images/{'a' * 64}"), ("GET", f"/images/{'a' * 64}/boxes"),
    ]  # fmt: skip
    bodies: dict[str, Any] = {
        "/decisions": {"decisions": [{"proposal_id": 1, "action": "accept", "base_version": 0}]},
        "/boxes": {"image_sha256": "a" * 64, "class_id": 0, "xyxy": [1, 1, 9, 9]},
    }
    for method, path in routes:

        def call(job: str, headers: dict[str, str], method: str = method, path: str = path) -> int:
            return service.client.request(
                method,
                service.url(f"/jobs/{job}/review{path}"),
                headers=headers,
                json=bodies.get(path),
            ).status_code

        assert call(job_id, intruder) == 404, path
        assert call(train.json()["id"], service.headers) == 404, path
        assert call("job_missing", service.headers) == 404, path
        assert call(queued, service.headers) == 409, path


def test_reviewer_keys_review_and_nothing_else(service: Service, vlm_server: FakeVLMServer) -> None:
    job_id = finished_job(service, vlm_server, images=1)
    _, headers = key_headers(service, "reviewer")
    review = Review(service, job_id, headers)
    item = review.queue()[0]
    assert review.get("/summary").status_code == 200
    assert review.get(f"/images/{item['image_sha256']}").status_code == 200
    assert review.get(f"/images/{item['image_sha256']}/boxes").status_code == 200
    assert (
        review.decide(
            {"proposal_id": item["proposal_id"], "action": "accept", "base_version": 0}
        ).status_code
        == 200
    )
    assert (
        review.post(
            "/boxes", {"image_sha256": item["image_sha256"], "class_id": 0, "xyxy": [1, 1, 9, 9]}
        ).status_code
        == 201
    )
    assert review.post("/export").status_code == 200
    client = service.client
    assert client.get(service.url(), headers=headers).status_code == 200
    assert client.get("/v1/projects", headers=headers).status_code == 200
    assert client.get("/v1/options", headers=headers).status_code == 200
    # The jobs to choose from, and each one's state.
    listed = client.get(service.url("/jobs"), headers=headers)
    assert listed.status_code == 200 and job_id in [job["id"] for job in listed.json()]
    assert client.get(service.url(f"/jobs/{job_id}"), headers=headers).status_code == 200

    refused = [
        ("POST", "/images", {"files": [("files", ("a.png", png_bytes(9), "image/png"))]}),
        ("POST", "/label-jobs", {"json": {}}),
        ("POST", "/train-jobs", {"json": {"label_job_id": job_id}}),
        ("POST", "/models/v1/promote", {}),
        ("POST", "/predict", {"content": png_bytes(9), "headers": {"Content-Type": "image/png"}}),
        ("PUT", "/ontology", {"json": {"classes": {"a": "a"}}}),
        ("GET", f"/jobs/{job_id}/export", {}),
        ("POST", f"/jobs/{job_id}/cancel", {}),
        ("GET", "/models", {}),
    ]
    for method, path, extra in refused:
        sent = {**headers, **extra.pop("headers", {})}
        answer = client.request(method, service.url(path), headers=sent, **extra)
        assert answer.status_code == 403, (method, path, answer.text)
        assert (
            "role is reviewer" in answer.json()["detail"] and "labeler" in answer.json()["detail"]
        )
    assert client.get("/metrics", headers=headers).status_code == 403
    # Another project's routes stay 404 for it, as for every key.
    other_id, _ = service.new_project("other")
    assert client.get(f"/v1/projects/{other_id}", headers=headers).status_code == 404
    assert (
        client.post(f"/v1/projects/{other_id}/label-jobs", headers=headers, json={}).status_code
        == 404
    )


def test_an_admin_key_does_everything(service: Service, vlm_server: FakeVLMServer) -> None:
    job_id = finished_job(service, vlm_server, images=1)
    _, headers = key_headers(service, "admin")
    assert Review(service, job_id, headers).get("/summary").status_code == 200
    assert service.client.get(service.url("/jobs"), headers=headers).status_code == 200
    assert service.client.get("/metrics", headers=headers).status_code == 200


def test_the_openapi_document_lists_the_review_routes(service: Service) -> None:
    spec = service.client.get("/openapi.json").json()
    base = "/v1/projects/{project_id}/jobs/{job_id}/review"
    expected = {
        f"{base}/queue": "get",
        f"{base}/decisions": "post",
        f"{base}/boxes": "post",
        f"{base}/images/{{image_sha256}}": "get",
        f"{base}/images/{{image_sha256}}/boxes": "get",
        f"{base}/summary": "get",
        f"{base}/export": "post",
    }
    for path, method in expected.items():
        operation = spec["paths"][path][method]
        assert operation["tags"] == ["review"], path
        assert {"401", "403", "404", "422"} <= set(operation["responses"]), path
    decisions = spec["paths"][f"{base}/decisions"]["post"]["responses"]
    assert decisions["409"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "ReviewDecisionsConflict"
    )
    assert decisions["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "ReviewDecisionsPublic"
    )
    item = spec["components"]["schemas"]["ReviewItemPublic"]["properties"]
    assert {"question", "answer", "yes_prob", "boxes", "image_url", "class"} <= set(item)
    assert "review" in [tag["name"] for tag in spec["tags"]]


def test_a_reexport_is_refused_when_the_jobs_models_now_name_others(
    service: Service, vlm_server: FakeVLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = finished_job(service, vlm_server, images=1)
    review = Review(service, job_id, service.headers)
    before = _export(service, job_id)
    # The operator points the job's detector name at another model: its stored proposals no
    # longer match, and the dataset must not be replaced by one without them.
    monkeypatch.setitem(service.settings.service_detectors, "default", "/models/another")
    refused = review.post("/export")
    assert refused.status_code == 409 and "configuration" in refused.json()["detail"]
    assert "/models/another" not in refused.text
    monkeypatch.setitem(service.settings.service_detectors, "removed", "x")
    monkeypatch.delitem(service.settings.service_detectors, "default")
    assert review.post("/export").status_code == 409
    assert _export(service, job_id) == before
