"""Accepting labeling jobs' datasets: the project's settings (admin keys), acceptance refused
while the spot checks' Wilson lower bound is below the minimum precision (saying how many more
checks would do), allowed once enough are answered; withdrawn, superseded, lapsed by a
re-export; training refused without it where the project requires it; roles, other projects,
the schema-3 migration; on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from scipy.stats import binomtest

from serve.api.app import create_app
from serve.api.auth import create_api_key
from serve.db import SCHEMA_VERSION, Database, metadata, projects, schema_info
from serve.jobs.acceptance import checks_to_lower_bound
from serve.settings import ServiceSettings
from tests.fakes.vlm_server import FakeVLMServer
from tests.serve.api.test_jobs import submit
from tests.serve.api.test_review import key_headers
from tests.serve.api.test_roles import projects_before_acceptance
from tests.serve.api.test_spot_checks import (
    SpotChecks,
    checked_job,
    one_image_job,
    stored_checks,
    wilson,
)
from tests.serve.conftest import Service


class Acceptance:
    """The acceptance routes of one job, called with one key."""

    def __init__(self, service: Service, job_id: str, headers: dict[str, str]) -> None:
        self.service, self.job_id, self.headers = service, job_id, headers

    def accept(self) -> Any:
        return self.service.client.post(
            self.service.url(f"/jobs/{self.job_id}/accept"), headers=self.headers
        )

    def withdraw(self) -> Any:
        return self.service.client.delete(
            self.service.url(f"/jobs/{self.job_id}/accept"), headers=self.headers
        )

    def state(self) -> dict[str, Any]:
        answer = self.service.client.get(
            self.service.url(f"/jobs/{self.job_id}/acceptance"), headers=self.headers
        )
        assert answer.status_code == 200, answer.text
        found: dict[str, Any] = answer.json()
        return found

    def train(self, key: str | None = None) -> Any:
        return self.service.client.post(
            self.service.url("/train-jobs"),
            headers={**self.headers, **({"Idempotency-Key": key} if key else {})},
            json={"label_job_id": self.job_id},
        )


def settings_of(service: Service, headers: dict[str, str], **changes: Any) -> Any:
    return service.client.patch(service.url("/settings"), headers=headers, json=changes)


def answer_all(checks: SpotChecks, verdict: str = "correct") -> int:
    items = checks.items()
    for item in items:
        answered = checks.answer(item["proposal_id"], verdict)
        assert answered.status_code == 200, answered.text
    return len(items)


def test_project_settings_are_read_by_any_key_and_changed_by_admin_keys(
    service: Service,
) -> None:
    _, admin = key_headers(service, "admin")
    _, reviewer = key_headers(service, "reviewer")
    for headers in (service.headers, reviewer, admin):
        got = service.client.get(service.url("/settings"), headers=headers)
        assert got.status_code == 200, got.text
        assert got.json() == {
            "project_id": service.project_id,
            "min_precision": None,
            "require_accepted_datasets": False,
        }
    for headers in (service.headers, reviewer):  # a labeler key, a reviewer key
        refused = settings_of(service, headers, min_precision=0.9)
        assert refused.status_code == 403 and "admin" in refused.json()["detail"]

    # Only the fields sent change.
    assert settings_of(service, admin, min_precision=0.9).json()["min_precision"] == 0.9
    both = settings_of(service, admin, require_accepted_datasets=True).json()
    assert both["min_precision"] == 0.9 and both["require_accepted_datasets"] is True
    cleared = settings_of(service, admin, min_precision=None).json()
    assert cleared["min_precision"] is None and cleared["require_accepted_datasets"] is True
    for bad in ({"min_precision": 1.5}, {"min_precision": -0.1}, {"min_precision": "high"},
                {"require_accepted_datasets": "maybe"}, {"surprise": 1}):  # fmt: skip
        assert settings_of(service, admin, **bad).status_code == 422, bad
    # Another project's settings are not there for this key, whatever its role.
    other_id, other_headers = service.new_project("other")
    assert service.client.get(f"/v1/projects/{other_id}/settings", headers=admin).status_code == 404
    assert (
        service.client.patch(
            f"/v1/projects/{other_id}/settings", headers=admin, json={"min_precision": 0.5}
        ).status_code
        == 404
    )
    # ... and this project's settings did not reach it.
    assert (
        service.client.get(f"/v1/projects/{other_id}/settings", headers=other_headers).json()[
            "min_precision"
        ]
        is None
    )


def test_acceptance_is_refused_below_the_minimum_until_enough_checks_say_otherwise(
    service: Service, vlm_server: FakeVLMServer
) -> None:
    job_id = checked_job(service, vlm_server)  # one class: the overall interval is its Wilson
    admin_id, admin = key_headers(service, "admin", "boss")
    _, reviewer = key_headers(service, "reviewer")
    assert settings_of(service, admin, min_precision=0.7).status_code == 200
    checks = SpotChecks(service, job_id, reviewer)
    boss = Acceptance(service, job_id, admin)

    # Only admin keys accept.
    for headers in (service.headers, reviewer):
        refused = Acceptance(service, job_id, headers).accept()
        assert refused.status_code == 403 and "admin" in refused.json()["detail"]
    # No checks yet: the precision cannot be stated.
    first = boss.accept()
    assert first.status_code == 409, first.text
    assert (
        first.json()["checks_needed"] is None and "no answered spot check" in first.json()["detail"]
    )
    assert first.json()["min_precision"] == 0.7 and first.json()["precision"] is None

    # Two checks, both correct: precision 1, but the interval's lower bound is 0.34.
    checks.draw(2, strata=["accepted"])
    assert answer_all(checks) == 2
    refused = boss.accept()
    assert refused.status_code == 409, refused.text
    body = refused.json()
    assert body["precision"] == 1.0 and body["accepted_checked"] == 2
    assert body["precision_interval"] == pytest.approx(wilson(2, 2), abs=1e-12)
    # The smallest all-correct sample whose Wilson lower bound (SciPy's) reaches 0.7.
    enough = next(n for n in range(1, 100) if wilson(n, n)[0] >= 0.7)
    assert body["checks_needed"] == enough - 2
    assert f"about {enough - 2} more" in body["detail"] and "0.7" in body["detail"]
    assert boss.state()["accepted"] is False and boss.state()["history"] == []

    # One check short of it: still refused, now one check needed.
    checks.draw(enough - 1, strata=["accepted"])
    answer_all(checks)
    short = boss.accept()
    assert short.status_code == 409 and short.json()["checks_needed"] == 1
    # Enough: accepted, with who, when and the numbers.
    checks.draw(enough, strata=["accepted"])
    answer_all(checks)
    accepted = boss.accept()
    assert accepted.status_code == 201, accepted.text
    state = accepted.json()
    assert state["accepted"] is True and state["min_precision"] == 0.7
    record = state["acceptance"]
    assert record["status"] == "accepted" and record["accepted_by"] == admin_id
    assert record["min_precision"] == 0.7 and record["withdrawn_at"] is None
    snapshot = record["report"]
    assert snapshot["precision"] == 1.0 and snapshot["accepted_checked"] == enough
    assert snapshot["precision_interval"] == pytest.approx(wilson(enough, enough), abs=1e-12)
    assert snapshot["precision_interval"][0] >= 0.7
    job = service.client.get(service.url(f"/jobs/{job_id}"), headers=service.headers).json()
    assert snapshot["labels"] == job["result"]["labels"]
    assert snapshot["accepted_labels"] == job["result"]["labels"]["accepted"]
    assert snapshot["checks"]["answered"] == enough
    assert state["history"] == [record]
    # Any key of the project reads it.
    assert Acceptance(service, job_id, reviewer).state() == state


def test_incorrect_answers_lower_the_precision_below_what_more_checks_could_lift(
    service: Service, vlm_server: FakeVLMServer
) -> None:
    job_id = checked_job(service, vlm_server)
    _, admin = key_headers(service, "admin")
    assert settings_of(service, admin, min_precision=0.9).status_code == 200
    checks = SpotChecks(service, job_id, admin)  # admin keys check too
    checks.draw(4, strata=["accepted"])
    items = checks.items()
    for number, item in enumerate(items):
        verdict = "incorrect" if number < 2 else "correct"
        assert checks.answer(item["proposal_id"], verdict).status_code == 200
    refused = Acceptance(service, job_id, admin).accept()
    assert refused.status_code == 409
    body = refused.json()
    assert body["precision"] == 0.5 and body["checks_needed"] is None
    assert body["precision_interval"] == pytest.approx(wilson(2, 4), abs=1e-12)
    assert "would not lift it" in body["detail"]
    # Without a minimum, the admin's word is enough.
    assert settings_of(service, admin, min_precision=None).status_code == 200
    accepted = Acceptance(service, job_id, admin).accept()
    assert accepted.status_code == 201
    assert accepted.json()["acceptance"]["report"]["precision"] == 0.5
    assert accepted.json()["acceptance"]["min_precision"] is None


def test_training_takes_only_accepted_datasets_where_the_project_says_so(
    service: Service, vlm_server: FakeVLMServer
) -> None:
    job_id = checked_job(service, vlm_server)
    _, admin = key_headers(service, "admin")
    labeler = Acceptance(service, job_id, service.headers)
    boss = Acceptance(service, job_id, admin)
    # Not required: training on an unaccepted dataset goes ahead.
    assert labeler.train().status_code == 201
    assert settings_of(service, admin, require_accepted_datasets=True).status_code == 200
    refused = labeler.train(key="train-1")
    assert refused.status_code == 409
    assert job_id in refused.json()["detail"] and "not accepted" in refused.json()["detail"]
    assert boss.withdraw().status_code == 404  # nothing to withdraw

    accepted = boss.accept()
    assert accepted.status_code == 201, accepted.text
    trained = labeler.train(key="train-2")
    assert trained.status_code == 201, trained.text

    # Withdrawn: refused again; a replay of the earlier submit still answers with its job.
    withdrawn = boss.withdraw()
    assert withdrawn.status_code == 200 and withdrawn.json()["accepted"] is False
    assert withdrawn.json()["history"][0]["status"] == "withdrawn"
    assert labeler.train().status_code == 409
    replay = labeler.train(key="train-2")
    assert replay.status_code == 200 and replay.json()["id"] == trained.json()["id"]

    # A re-export writes another dataset: the acceptance lapses.
    assert boss.accept().status_code == 201
    SpotChecks(service, job_id, admin).draw(1, strata=["accepted"])
    [item] = SpotChecks(service, job_id, admin).items()
    assert (
        SpotChecks(service, job_id, admin).answer(item["proposal_id"], "incorrect").status_code
        == 200
    )
    # An answer after acceptance leaves it standing (the dataset is the same) ...
    assert boss.state()["accepted"] is True
    exported = service.client.post(
        service.url(f"/jobs/{job_id}/review/export"), headers=service.headers
    )
    assert exported.status_code == 200, exported.text
    # ... a re-export does not.
    state = boss.state()
    assert state["accepted"] is False and state["acceptance"]["status"] == "lapsed"
    lapsed = labeler.train()
    assert lapsed.status_code == 409 and "lapsed" in lapsed.json()["detail"]
    # Accepted again: on the numbers now, the lapsed one superseded.
    again = boss.accept()
    assert again.status_code == 201
    statuses = [record["status"] for record in again.json()["history"]]
    assert statuses == ["withdrawn", "superseded", "accepted"]
    assert again.json()["acceptance"]["report"]["accepted_checked"] == 1
    assert again.json()["acceptance"]["report"]["precision"] == 0.0
    assert labeler.train().status_code == 201
    # Accepting an accepted dataset again supersedes the earlier acceptance.
    assert [r["status"] for r in boss.accept().json()["history"]][-2:] == [
        "superseded", "accepted"
    ]  # fmt: skip


def test_acceptance_routes_answer_only_for_the_callers_labeling_jobs(
    service: Service, vlm_server: FakeVLMServer
) -> None:
    job_id = one_image_job(service, vlm_server)
    _, admin = key_headers(service, "admin")
    queued = submit(service, {"max_det": 2}).json()["id"]
    train = Acceptance(service, job_id, service.headers).train()
    assert train.status_code == 201
    other_id, _ = service.new_project("other")
    _, other_admin = key_headers_for(service, other_id, "admin")

    intruder = Acceptance(service, job_id, other_admin)
    assert intruder.accept().status_code == 404
    assert intruder.withdraw().status_code == 404
    assert (
        service.client.get(
            service.url(f"/jobs/{job_id}/acceptance"), headers=other_admin
        ).status_code
        == 404
    )
    for job, code in ((train.json()["id"], 404), ("job_missing", 404), (queued, 409)):
        assert Acceptance(service, job, admin).accept().status_code == code, job
    assert Acceptance(service, train.json()["id"], admin).withdraw().status_code == 404
    # A job not finished yet is not accepted, and says so.
    assert Acceptance(service, queued, admin).state()["accepted"] is False


def key_headers_for(service: Service, project_id: str, role: str) -> tuple[str, dict[str, str]]:
    key = create_api_key(service.db, project_id=project_id, role=role)
    return key.key_id, {"Authorization": f"Bearer {key.token}"}


@pytest.mark.parametrize(
    ("checked", "population", "minimum"),
    [(2, 500, 0.7), (5, 500, 0.9), (10, 500, 0.95), (1, 20, 0.9), (30, 40, 0.95)],
)
def test_checks_to_the_lower_bound_match_scipys_wilson_for_all_correct_samples(
    checked: int, population: int, minimum: float
) -> None:
    # All correct: the projection is exact, so it must be the first n whose interval reaches
    # the minimum, or a census of the population.
    found = checks_to_lower_bound(
        population=population,
        checked=checked,
        share=1.0,
        effective_checks=float(checked),
        min_precision=minimum,
    )
    reaching = [
        n
        for n in range(checked, population)
        if binomtest(n, n).proportion_ci(method="wilson").low >= minimum
    ]
    assert found == (reaching[0] if reaching else population) - checked
    assert checks_to_lower_bound(
        population=population, checked=checked, share=0.5, effective_checks=float(checked),
        min_precision=0.6,
    ) is None  # fmt: skip


def test_the_openapi_document_lists_the_acceptance_routes(service: Service) -> None:
    spec = service.client.get("/openapi.json").json()
    job = "/v1/projects/{project_id}/jobs/{job_id}"
    expected = {
        (f"{job}/accept", "post"): "review",
        (f"{job}/accept", "delete"): "review",
        (f"{job}/acceptance", "get"): "review",
        ("/v1/projects/{project_id}/settings", "get"): "projects",
        ("/v1/projects/{project_id}/settings", "patch"): "projects",
    }
    for (path, method), tag in expected.items():
        operation = spec["paths"][path][method]
        assert operation["tags"] == [tag], (path, method)
        assert {"401", "403", "404"} <= set(operation["responses"]), (path, method)
    refused = spec["paths"][f"{job}/accept"]["post"]["responses"]["409"]
    assert refused["content"]["application/json"]["schema"]["$ref"].endswith(
        "AcceptanceRefusedBody"
    )


def _version_2_database(db: Database) -> None:
    """``db`` as promptlabel wrote it at schema 2: projects without the acceptance settings,
    no dataset_acceptances; with one project."""
    old = sa.MetaData()
    for table in metadata.sorted_tables:
        if table.name not in ("projects", "dataset_acceptances"):
            table.to_metadata(old)
    projects_before_acceptance(old)
    now = time.time()
    with db.write() as connection:
        old.create_all(connection)
        connection.execute(old.tables["schema_info"].insert().values(version=2, created_at=now))
        connection.execute(
            old.tables["projects"]
            .insert()
            .values(
                id="prj_old", name="old", ontology={"classes": []}, created_at=now, updated_at=now
            )
        )


def test_a_schema_2_database_gains_the_acceptance_settings_and_table(
    tmp_path: Path, database_url: str | None, service_settings: ServiceSettings
) -> None:
    db = Database(database_url, data_dir=tmp_path / "data")
    try:
        _version_2_database(db)
        db.create_schema()
        db.create_schema()  # once migrated, a no-op
        with db.read() as connection:
            versions = connection.execute(sa.select(schema_info.c.version)).scalars().all()
            row = connection.execute(
                sa.select(projects.c.min_precision, projects.c.require_accepted_datasets)
            ).one()
            tables = sa.inspect(connection).get_table_names()
        assert sorted(versions) == list(range(2, SCHEMA_VERSION + 1)) and SCHEMA_VERSION >= 3
        assert (row.min_precision, row.require_accepted_datasets) == (None, False)
        assert "dataset_acceptances" in tables

        key = create_api_key(db, project_id="prj_old", role="admin")
        app = create_app(service_settings, db=db)
        with TestClient(app) as client:
            headers = {"Authorization": f"Bearer {key.token}"}
            changed = client.patch(
                "/v1/projects/prj_old/settings",
                headers=headers,
                json={"min_precision": 0.8, "require_accepted_datasets": True},
            )
            assert changed.status_code == 200, changed.text
            assert changed.json()["require_accepted_datasets"] is True
            assert client.get("/v1/projects/prj_old", headers=headers).status_code == 200
    finally:
        db.dispose()


def test_acceptance_keeps_the_stored_checks_it_was_given_on(
    service: Service, vlm_server: FakeVLMServer
) -> None:
    # The snapshot is the report of the checks as stored when accepted; later answers change
    # the live report, not the record.
    job_id = checked_job(service, vlm_server)
    _, admin = key_headers(service, "admin")
    checks = SpotChecks(service, job_id, admin)
    checks.draw(3, strata=["accepted"])
    answer_all(checks)
    record = Acceptance(service, job_id, admin).accept().json()["acceptance"]
    assert record["report"]["accepted_checked"] == len(stored_checks(service, job_id)) == 3
    checks.draw(5, strata=["accepted"])
    answer_all(checks, "incorrect")
    state = Acceptance(service, job_id, admin).state()
    assert state["accepted"] is True and state["acceptance"]["report"] == record["report"]
    assert checks.report()["precision"]["checked"] == 5
