"""The next round: a labeling job takes the hard-case inbox (everything no job took yet), with
the devices' predictions, so that what the student and the teacher disagree on goes to review."""

from __future__ import annotations

from typing import Any

from tests.fakes.vlm_server import FakeVLMServer
from tests.serve.api.test_hard_cases import manifest_for, push
from tests.serve.api.test_jobs import submit
from tests.serve.api.test_spot_checks import _sure_answers
from tests.serve.conftest import Service, png_bytes


def _results(service: Service, job_id: str) -> list[dict[str, Any]]:
    answer = service.client.get(service.url(f"/jobs/{job_id}/results"), headers=service.headers)
    assert answer.status_code == 200, answer.text
    return [label for item in answer.json()["items"] for label in item["labels"] or []]


def test_a_labeling_job_takes_the_inbox_and_reviews_the_students_misses(
    service: Service, vlm_server: FakeVLMServer
) -> None:
    vlm_server.script = _sure_answers
    frames = [png_bytes(40 + i) for i in range(3)]
    for frame in frames:  # the student found nothing on these frames
        manifest = manifest_for(frame, "gate-cam", predictions=[])
        assert push(service, frame, manifest).status_code == 201

    body = {"verifier": "fake", "max_det": 6, "hard_cases": True}
    created = submit(service, body, key="round-2")
    assert created.status_code == 201, created.text
    job = created.json()
    assert job["params"]["image_count"] == 3 and job["params"]["hard_cases"] is True
    inbox = service.client.get(service.url("/hard-cases?new=true"), headers=service.headers)
    assert inbox.json() == []  # taken by the job
    taken = service.client.get(service.url("/hard-cases"), headers=service.headers).json()
    assert {case["consumed_by_job"] for case in taken} == {job["id"]}
    assert service.run_jobs() == 1

    proposals = _results(service, job["id"])
    reasons = [p["reason"] for p in proposals if p["status"] == "needs_review"]
    # Whatever the verifier said: every box the teacher would have accepted is one the student
    # missed, so none is accepted and those are in review.
    assert not [p for p in proposals if p["status"] == "accepted"]
    assert any(r.startswith("student_disagrees: the student missed") for r in reasons), reasons
    queue = service.client.get(
        service.url(f"/jobs/{job['id']}/review/queue?reason=student_disagrees"),
        headers=service.headers,
    )
    assert queue.status_code == 200 and queue.json()["items"]

    # The inbox is empty now: another round is refused, a replay answers with the job.
    again = submit(service, body)
    assert again.status_code == 409 and "inbox" in again.json()["detail"]
    replay = submit(service, body, key="round-2")
    assert replay.status_code == 200 and replay.json()["id"] == job["id"]
    both = submit(service, {**body, "image_ids": ["img_x"]})
    assert both.status_code == 422 and "image_ids" in both.json()["detail"]
