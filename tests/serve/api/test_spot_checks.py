"""Spot checks over HTTP under a finished labeling job: a seeded sample stratified by class and
by automatic status, shown blind, answered (stale and duplicate answers refused with the
check's state), and the report (Wilson intervals as SciPy computes them, checks to a
half-width, the threshold curve); claims, roles, other projects; on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any

import pytest
from scipy.stats import binomtest

from labeler.review.stats import checks_needed
from labeler.store.spot_checks import SpotCheckRecord
from labeler.store.workspace import Workspace
from serve.jobs.service import job_dir
from tests.fakes.vlm_server import FakeVLMServer, RecordedRequest, Reply
from tests.serve.api.test_jobs import submit, upload
from tests.serve.api.test_review import Review, key_headers
from tests.serve.conftest import Service, png_bytes

# What a blind check may show: nothing that tells the verdict, P(yes), stratum or an answer.
BLIND_FIELDS = {
    "proposal_id", "version", "image_sha256", "image_url", "image_wh", "class_id", "class", "xyxy",
}  # fmt: skip


def _sure_answers(request: RecordedRequest) -> Reply:
    """Yes or no by the crop, each sure enough to be routed: every box is accepted (P(yes) from
    0.75 to 0.99) or rejected, none goes to review."""
    digest = hashlib.sha256(request.image_urls[0].encode()).hexdigest()
    word = "Yes" if digest[0] in "0123456789ab" else "No"
    return Reply(word, confidences=[(0.75, 0.8, 0.9, 0.95, 0.99)[int(digest[1], 16) % 5]])


def checked_job(
    service: Service,
    vlm_server: FakeVLMServer,
    *,
    classes: dict[str, str] | None = None,
    images: int = 6,
) -> str:
    """A succeeded labeling job whose boxes are all auto-accepted or auto-rejected (six images,
    up to six boxes each), with ``classes`` as the ontology (default: the project's)."""
    vlm_server.script = _sure_answers
    if classes is not None:
        put = service.client.put(
            service.url("/ontology"), headers=service.headers, json={"classes": classes}
        )
        assert put.status_code == 200, put.text
    upload(service, *((f"img{i}.png", png_bytes(i)) for i in range(images)))
    job = submit(service, {"verifier": "fake", "max_det": 6}).json()
    assert service.run_jobs() == 1
    done = service.client.get(service.url(f"/jobs/{job['id']}"), headers=service.headers).json()
    assert done["status"] == "succeeded", done
    labels = done["result"]["labels"]
    assert labels["accepted"] >= 10 and labels["rejected"] >= 3, labels
    return str(job["id"])


def stored_checks(service: Service, job_id: str) -> dict[int, SpotCheckRecord]:
    """The checks as the job's workspace holds them, strata included (what the API hides)."""
    with Workspace(job_dir(service.settings.data_dir, job_id) / "workspace") as workspace:
        return workspace.spot_checks()


def populations(service: Service, job_id: str) -> Counter[tuple[str, str]]:
    """Automatic labels per (status, class) of the job's latest run."""
    with Workspace(job_dir(service.settings.data_dir, job_id) / "workspace") as workspace:
        run_id = workspace.latest_run_id()
        assert run_id is not None
        return Counter((a.status, a.class_name) for a in workspace.automatic_labels(run_id))


def wilson(successes: int, trials: int) -> tuple[float, float]:
    interval = binomtest(successes, trials).proportion_ci(method="wilson")
    return (interval.low, interval.high)


class SpotChecks(Review):
    """The spot-check routes of one job, called with one key."""

    def draw(self, per_class: int, **more: Any) -> dict[str, Any]:
        answer = self.post("/spot-checks", {"per_class": per_class, **more})
        assert answer.status_code == 200, answer.text
        drawn: dict[str, Any] = answer.json()
        return drawn

    def items(self, limit: int = 200) -> list[dict[str, Any]]:
        answer = self.get("/spot-checks", limit=limit)
        assert answer.status_code == 200, answer.text
        items: list[dict[str, Any]] = answer.json()["items"]
        return items

    def answer(self, proposal_id: int, answer: str, base_version: int = 0) -> Any:
        return self.post(
            f"/spot-checks/{proposal_id}/answer", {"answer": answer, "base_version": base_version}
        )

    def report(self, **params: Any) -> dict[str, Any]:
        answer = self.get("/spot-checks/report", **params)
        assert answer.status_code == 200, answer.text
        found: dict[str, Any] = answer.json()
        return found


def test_a_blind_stratified_sample_answered_gives_the_precision_per_class(
    service: Service, vlm_server: FakeVLMServer
) -> None:
    job_id = checked_job(service, vlm_server, classes={"circle": "circle", "square": "square"})
    reviewer_id, headers = key_headers(service, "reviewer", "ana")
    checks = SpotChecks(service, job_id, headers)
    population = populations(service, job_id)

    # Before any draw: nothing checked, no estimate, the population counted.
    empty = checks.report()
    assert empty["checks"] == {
        "drawn": 0, "answered": 0, "pending": 0, "withdrawn": 0, "outdated": 0
    }  # fmt: skip
    assert empty["precision"]["population"] == sum(
        n for (status, _), n in population.items() if status == "accepted"
    )
    assert empty["precision"]["interval"] is None and empty["precision"]["checks_to_target"] is None
    assert empty["thresholds"] == {"accept": 0.7, "reject": 0.3, "review_below_score": 0.0}

    drawn = checks.draw(3, seed=7)
    # Stratified: min(3, labels) of each class of each automatic status.
    wanted = {key: min(3, n) for key, n in population.items()}
    assert drawn == {"added": sum(wanted.values()), "drawn": sum(wanted.values()),
                     "pending": sum(wanted.values())}  # fmt: skip
    stored = stored_checks(service, job_id)
    with Workspace(job_dir(service.settings.data_dir, job_id) / "workspace") as workspace:
        labels = {a.proposal_id: a for a in workspace.automatic_labels(1)}
    assert Counter((c.stratum, labels[pid].class_name) for pid, c in stored.items()) == wanted
    # The same request again adds nothing; a larger sample keeps the earlier picks.
    assert checks.draw(3, seed=7)["added"] == 0
    assert checks.draw(4, seed=7, strata=["accepted"])["added"] == sum(
        1 for (status, _), n in population.items() if status == "accepted" and n > 3
    )
    assert set(stored) <= set(stored_checks(service, job_id))
    stored = stored_checks(service, job_id)

    # Blind: the box, its class and its image; no verdict, P(yes), stratum, score or answer.
    listed = checks.get("/spot-checks", limit=200)
    assert listed.status_code == 200
    items = listed.json()["items"]
    assert listed.json()["left"] == len(items) == len(stored)
    for item in items:
        assert set(item) == BLIND_FIELDS, item
    text = listed.text
    for leak in ("accepted", "rejected", "yes_prob", "stratum", "score", "answer", "reason"):
        assert leak not in text, leak
    assert {item["proposal_id"] for item in items} == set(stored)
    first = items[0]
    assert first["class"] == labels[first["proposal_id"]].class_name
    assert first["class_id"] == ["circle", "square"].index(first["class"])
    assert first["xyxy"] == pytest.approx(list(labels[first["proposal_id"]].xyxy))
    assert first["image_wh"] == [96, 72] and first["version"] == 0
    picture = service.client.get(first["image_url"], headers=headers)
    assert picture.status_code == 200
    assert hashlib.sha256(picture.content).hexdigest() == first["image_sha256"]
    # Strata are mixed in the list: its order does not give them away.
    strata_in_order = [stored[item["proposal_id"]].stratum for item in items]
    assert strata_in_order != sorted(strata_in_order)

    # Answer: the first check of each (stratum, class) incorrect, the rest correct.
    incorrect: set[int] = set()
    seen: set[tuple[str, str]] = set()
    for item in items:
        key = (stored[item["proposal_id"]].stratum, item["class"])
        verdict = "correct" if key in seen else "incorrect"
        seen.add(key)
        if verdict == "incorrect":
            incorrect.add(item["proposal_id"])
        answered = checks.answer(item["proposal_id"], verdict)
        assert answered.status_code == 200, answered.text
        assert answered.json() == {
            "proposal_id": item["proposal_id"],
            "version": 1,
            "answer": verdict,
            "reviewer": reviewer_id,
            "answered_at": answered.json()["answered_at"],
        }
    assert checks.items() == [] and checks.get("/spot-checks").json()["left"] == 0

    report = checks.report()
    assert report["job_id"] == job_id and report["run_id"] == 1
    assert report["checks"]["answered"] == len(stored) and report["checks"]["pending"] == 0
    for class_name, found in report["classes"].items():
        for stratum, prefix in (("accepted", "accepted"), ("rejected", "rejected")):
            mine = [p for p, c in stored.items() if (c.stratum, labels[p].class_name)
                    == (stratum, class_name)]  # fmt: skip
            right = sum(1 for p in mine if p not in incorrect)
            assert found[f"{prefix}_checked"] == len(mine)
            assert found[f"{prefix}_correct"] == right
            assert found[f"{prefix}_count"] == population[(stratum, class_name)]
            interval = "precision_interval" if stratum == "accepted" else "rejected_interval"
            if mine:
                assert found[interval] == pytest.approx(wilson(right, len(mine)), abs=1e-12)
            else:
                assert found[interval] == [0.0, 1.0]
        assert found["checks_to_target"] == min(
            checks_needed(found["accepted_correct"], found["accepted_checked"], 0.05),
            found["accepted_count"] - found["accepted_checked"],
        )
    overall = report["precision"]
    assert overall["checked"] == sum(1 for c in stored.values() if c.stratum == "accepted")
    assert overall["correct"] == overall["checked"] - sum(
        1 for p in incorrect if stored[p].stratum == "accepted"
    )
    # The overall share weighs each class by its accepted labels.
    weights = {name: population[("accepted", name)] for name in ("circle", "square")}
    expected = sum(
        weights[name] * report["classes"][name]["precision"] for name in weights if weights[name]
    ) / sum(weights.values())
    assert overall["share_correct"] == pytest.approx(expected)
    low, high = overall["interval"]
    assert low < overall["share_correct"] < high
    assert isinstance(overall["checks_to_target"], int) and overall["checks_to_target"] > 0
    wider = checks.report(half_width=0.2)
    assert wider["target_half_width"] == 0.2
    assert wider["precision"]["checks_to_target"] <= overall["checks_to_target"]
    assert report["rejected_share_correct"]["checked"] == sum(
        1 for c in stored.values() if c.stratum == "rejected"
    )
    # The curve: per verified class, every threshold, fewer labels as the threshold rises.
    curve = report["threshold_curve"]["circle"]
    assert [point["threshold"] for point in curve] == [round(i / 20, 2) for i in range(21)]
    counts = [point["accepted_count"] for point in curve]
    assert counts == sorted(counts, reverse=True) and counts[-1] == 0
    at_accept = next(point for point in curve if point["threshold"] == 0.7)
    assert at_accept["accepted_count"] == population[("accepted", "circle")]
    assert at_accept["precision"] == pytest.approx(report["classes"]["circle"]["precision"])

    # An "incorrect" answer on an auto-accepted box rejects it (the next export follows).
    wrong = next(p for p in incorrect if stored[p].stratum == "accepted")
    sha = labels[wrong].image_sha256
    boxes = {b["proposal_id"]: b for b in checks.get(f"/images/{sha}/boxes").json()["boxes"]}
    assert boxes[wrong]["status"] == "rejected" and boxes[wrong]["decided_by"] == "human"
    assert boxes[wrong]["auto_status"] == "accepted"

    # Query limits.
    assert checks.get("/spot-checks/report", half_width=0.7).status_code == 422
    assert checks.get("/spot-checks/report", confidence=1).status_code == 422
    assert checks.get("/spot-checks", limit=0).status_code == 422


def test_answers_are_versioned_and_refused_when_stale_or_decided_elsewhere(
    service: Service, vlm_server: FakeVLMServer
) -> None:
    job_id = checked_job(service, vlm_server)
    ana_id, ana_headers = key_headers(service, "reviewer", "ana")
    _, ben_headers = key_headers(service, "labeler", "ben")  # labeler keys check too
    ana, ben = SpotChecks(service, job_id, ana_headers), SpotChecks(service, job_id, ben_headers)
    ana.draw(2, strata=["accepted"])
    first, second = ana.items()
    stored = stored_checks(service, job_id)
    assert {c.stratum for c in stored.values()} == {"accepted"}

    assert ana.answer(first["proposal_id"], "incorrect").status_code == 200
    # Ben answers on what he saw before Ana's answer: refused, with the check as it stands.
    stale = ben.answer(first["proposal_id"], "correct", base_version=0)
    assert stale.status_code == 409, stale.text
    body = stale.json()
    assert body["decided_outside"] is False and body["proposal_id"] == first["proposal_id"]
    assert body["current"]["version"] == 1 and body["current"]["answer"] == "incorrect"
    assert body["current"]["reviewer"] == ana_id and "version 1" in body["detail"]
    # On the current version his answer replaces hers, and her reject decision is undone.
    changed = ben.answer(first["proposal_id"], "correct", base_version=1)
    assert changed.status_code == 200 and changed.json()["version"] == 2
    sha = first["image_sha256"]
    boxes = {b["proposal_id"]: b for b in ana.get(f"/images/{sha}/boxes").json()["boxes"]}
    assert boxes[first["proposal_id"]]["status"] == "accepted"
    report = ana.report()
    assert report["precision"]["checked"] == 1 and report["precision"]["correct"] == 1

    # A box decided in review before its check is answered: the check is withdrawn.
    decided = ana.decide(
        {"proposal_id": second["proposal_id"], "action": "reject", "base_version": 0}
    )
    assert decided.status_code == 200, decided.text
    refused = ana.answer(second["proposal_id"], "correct")
    assert refused.status_code == 409 and refused.json()["decided_outside"] is True
    assert refused.json()["current"]["answer"] is None
    assert "status" not in refused.json()["current"]  # the box's decision is not shown
    assert ana.items() == []
    assert ana.report()["checks"]["withdrawn"] == 1
    # ... and a withdrawn check is replaced by the next draw.
    assert ana.draw(2, strata=["accepted"])["added"] == 1

    # No such check; a box without one; malformed answers.
    assert ana.answer(999_999, "correct").status_code == 404
    unchecked = next(
        p for p in populations_ids(service, job_id) if p not in stored_checks(service, job_id)
    )
    assert ana.answer(unchecked, "correct").status_code == 404
    pid = first["proposal_id"]
    bodies: list[dict[str, Any]] = [
        {"answer": "maybe", "base_version": 2},
        {"answer": "correct"},
        {"answer": "correct", "base_version": -1},
        {"answer": "correct", "base_version": 2, "stratum": "accepted"},
    ]
    for body in bodies:
        assert ana.post(f"/spot-checks/{pid}/answer", body).status_code == 422, body
    draws: list[dict[str, Any]] = [
        {},
        {"per_class": 0},
        {"per_class": 1, "strata": []},
        {"per_class": 1, "strata": ["needs_review"]},
        {"per_class": 1, "seed": -1},
    ]
    for body in draws:
        assert ana.post("/spot-checks", body).status_code == 422, body


def populations_ids(service: Service, job_id: str) -> list[int]:
    with Workspace(job_dir(service.settings.data_dir, job_id) / "workspace") as workspace:
        return [a.proposal_id for a in workspace.automatic_labels(1)]


def test_a_seed_draws_the_same_boxes_and_claims_keep_reviewers_apart(
    service: Service, vlm_server: FakeVLMServer
) -> None:
    job_id = checked_job(service, vlm_server)
    _, ana_headers = key_headers(service, "reviewer", "ana")
    _, ben_headers = key_headers(service, "reviewer", "ben")
    ana, ben = SpotChecks(service, job_id, ana_headers), SpotChecks(service, job_id, ben_headers)
    ana.draw(4, seed=11)
    first_sample = set(stored_checks(service, job_id))

    # The same seed on a second job over the same images draws the same boxes.
    job_2 = checked_job(service, vlm_server)
    SpotChecks(service, job_2, ana_headers).draw(4, seed=11)
    assert set(stored_checks(service, job_2)) == first_sample
    job_3 = checked_job(service, vlm_server)
    SpotChecks(service, job_3, ana_headers).draw(4, seed=12)
    assert set(stored_checks(service, job_3)) != first_sample

    taken = ana.items(limit=3)
    rest = ben.items()
    assert len(taken) == 3 and len(rest) == len(first_sample) - 3
    assert not {i["proposal_id"] for i in taken} & {i["proposal_id"] for i in rest}
    assert ben.get("/spot-checks").json()["left"] == len(rest)
    # Ana's own claims come back to her.
    assert [i["proposal_id"] for i in ana.items(limit=3)] == [i["proposal_id"] for i in taken]


def test_only_the_callers_succeeded_labeling_job_has_spot_checks(
    service: Service, vlm_server: FakeVLMServer
) -> None:
    job_id = one_image_job(service, vlm_server)
    queued = submit(service, {"max_det": 2}).json()["id"]
    train = service.client.post(
        service.url("/train-jobs"), headers=service.headers, json={"label_job_id": job_id}
    )
    assert train.status_code == 201, train.text
    _, intruder = service.new_project("other")
    routes: list[tuple[str, str, Any]] = [
        ("POST", "/spot-checks", {"per_class": 1}),
        ("GET", "/spot-checks", None),
        ("POST", "/spot-checks/1/answer", {"answer": "correct", "base_version": 0}),
        ("GET", "/spot-checks/report", None),
    ]
    for method, path, body in routes:

        def call(job: str, headers: dict[str, str], method: str = method, path: str = path,
                 body: Any = body) -> int:  # fmt: skip
            return service.client.request(
                method, service.url(f"/jobs/{job}/review{path}"), headers=headers, json=body
            ).status_code

        assert call(job_id, intruder) == 404, path
        assert call(train.json()["id"], service.headers) == 404, path
        assert call("job_missing", service.headers) == 404, path
        assert call(queued, service.headers) == 409, path
    # Every role of the project may draw, answer and read the report.
    for role in ("reviewer", "labeler", "admin"):
        _, headers = key_headers(service, role)
        checks = SpotChecks(service, job_id, headers)
        checks.draw(1)
        assert checks.get("/spot-checks").status_code == 200
        assert checks.get("/spot-checks/report").status_code == 200


def one_image_job(service: Service, vlm_server: FakeVLMServer) -> str:
    """A succeeded labeling job of one image."""
    vlm_server.script = _sure_answers
    upload(service, ("one.png", png_bytes(1)))
    job = submit(service, {"verifier": "fake", "max_det": 3}).json()
    assert service.run_jobs() == 1
    return str(job["id"])


def test_the_openapi_document_lists_the_spot_check_routes(service: Service) -> None:
    spec = service.client.get("/openapi.json").json()
    base = "/v1/projects/{project_id}/jobs/{job_id}/review"
    expected = {
        f"{base}/spot-checks": ("get", "post"),
        f"{base}/spot-checks/{{proposal_id}}/answer": ("post",),
        f"{base}/spot-checks/report": ("get",),
    }
    for path, methods in expected.items():
        for method in methods:
            operation = spec["paths"][path][method]
            assert operation["tags"] == ["review"], path
            assert {"401", "403", "404", "422"} <= set(operation["responses"]), path
    answer = spec["paths"][f"{base}/spot-checks/{{proposal_id}}/answer"]["post"]["responses"]
    assert answer["409"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "SpotCheckAnswerConflict"
    )
    item = spec["components"]["schemas"]["SpotCheckItemPublic"]["properties"]
    assert set(item) == BLIND_FIELDS
    report = spec["components"]["schemas"]["SpotCheckReportPublic"]["properties"]
    assert {"precision", "rejected_share_correct", "classes", "threshold_curve"} <= set(report)
