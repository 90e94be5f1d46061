"""Hard cases on the service: pushed frames stored once as images of the project, idempotent by
SHA-256 with the senders' devices merged, checked hashes, listing with `since` and `new`, roles;
the collection policy and /predict?collect=true; the schema-3 migration. SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from serve.api.app import create_app
from serve.api.auth import create_api_key
from serve.db import SCHEMA_VERSION, Database, hard_cases, jobs, metadata, projects, schema_info
from serve.ingest.hard_cases import record_hard_case
from serve.settings import ServiceSettings
from tests.serve.api.test_review import key_headers
from tests.serve.conftest import Service, Students, png_bytes


def manifest_for(frame: bytes, device: str, **fields: Any) -> dict[str, Any]:
    """An outbox manifest as `predict --collect` writes it."""
    return {
        "reasons": ["uncertain:circle"],
        "predictions": [{"class_id": 0, "class": "circle", "score": 0.4, "xyxy": [1, 2, 30, 40]}],
        "image_wh": [96, 72],
        "device": device,
        "source_path": "/cam/frame.png",
        "sha256": hashlib.sha256(frame).hexdigest(),
        "frame": "00000000000000000001-abcdef.png",
        "created_at": 1.0,
        **fields,
    }


def push(
    service: Service,
    frame: bytes,
    manifest: dict[str, Any] | str,
    *,
    headers: dict[str, str] | None = None,
    sha256_header: str | None = None,
) -> Any:
    sent = dict(headers or service.headers)
    if sha256_header is not None:
        sent["X-Content-SHA256"] = sha256_header
    return service.client.post(
        service.url("/hard-cases"),
        headers=sent,
        files={"file": ("frame.png", frame, "image/png")},
        data={"manifest": manifest if isinstance(manifest, str) else json.dumps(manifest)},
    )


def count_rows(db: Database, table: sa.Table) -> int:
    with db.read() as connection:
        return int(connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def test_a_pushed_frame_becomes_a_hard_case_and_an_image_of_the_project(
    service: Service,
) -> None:
    frame = png_bytes(1)
    sha = hashlib.sha256(frame).hexdigest()
    pushed = push(
        service, frame, manifest_for(frame, "cam-1", model_version="v3"), sha256_header=sha
    )
    assert pushed.status_code == 201, pushed.text
    case = pushed.json()
    assert case["created"] is True
    assert case["sha256"] == sha and (case["width"], case["height"]) == (96, 72)
    assert case["devices"] == ["cam-1"] and case["reasons"] == ["uncertain:circle"]
    assert case["model_version"] == "v3" and case["consumed_by_job"] is None
    assert case["predictions"][0]["class"] == "circle"
    # The frame is an image of the project like any upload, so a labeling job can take it.
    image = service.client.get(service.url(f"/images/{case['image_id']}"), headers=service.headers)
    assert image.status_code == 200 and image.json()["sha256"] == sha
    downloaded = service.client.get(case["image_url"], headers=service.headers)
    assert downloaded.status_code == 200 and downloaded.content == frame
    found = service.client.get(service.url(f"/hard-cases/{case['id']}"), headers=service.headers)
    assert found.status_code == 200 and found.json()["image_id"] == case["image_id"]


def test_the_same_frame_from_two_devices_is_one_hard_case_naming_both(service: Service) -> None:
    frame = png_bytes(2)
    first = push(service, frame, manifest_for(frame, "cam-b"))
    second = push(service, frame, manifest_for(frame, "cam-a", reasons=["too_many_detections"]))
    again = push(service, frame, manifest_for(frame, "cam-b"))
    assert (first.status_code, second.status_code, again.status_code) == (201, 200, 200)
    assert second.json()["created"] is False
    case = again.json()
    assert case["id"] == first.json()["id"]
    assert case["devices"] == ["cam-a", "cam-b"]
    assert case["reasons"] == ["too_many_detections", "uncertain:circle"]
    assert case["last_seen_at"] >= case["first_seen_at"]
    assert count_rows(service.db, hard_cases) == 1
    images = service.client.get(service.url("/images"), headers=service.headers).json()
    assert len(images) == 1


def test_bytes_that_do_not_match_their_sha256_are_refused_naming_the_field(
    service: Service,
) -> None:
    frame = png_bytes(3)
    other = hashlib.sha256(b"other bytes").hexdigest()
    header = push(service, frame, manifest_for(frame, "cam-1"), sha256_header=other)
    assert header.status_code == 400
    assert header.json()["detail"].startswith("X-Content-SHA256: ")
    in_manifest = push(service, frame, manifest_for(frame, "cam-1", sha256=other))
    assert in_manifest.status_code == 400
    assert in_manifest.json()["detail"].startswith("manifest.sha256: ")
    assert count_rows(service.db, hard_cases) == 0


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"manifest": "{not json"}, "manifest"),
        ({"manifest": json.dumps({"device": "cam-1"})}, "manifest.reasons"),
        ({"manifest": json.dumps({"reasons": ["x"], "device": ""})}, "manifest.device"),
        ({"manifest": json.dumps(["a list"])}, "manifest"),
        ({"frame": b"%PDF-1.4 not an image"}, "frame.png"),
    ],
)
def test_a_bad_manifest_or_frame_is_a_422_naming_what_is_wrong(
    service: Service, change: dict[str, Any], field: str
) -> None:
    frame = change.get("frame", png_bytes(4))
    manifest = change.get("manifest", manifest_for(frame, "cam-1"))
    answer = push(service, frame, manifest)
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"].startswith(field), answer.json()
    assert count_rows(service.db, hard_cases) == 0


def _a_job(db: Database, project_id: str) -> str:
    now = time.time()
    with db.write() as connection:
        connection.execute(
            jobs.insert().values(
                id="job_taker",
                project_id=project_id,
                kind="label",
                status="succeeded",
                params={},
                max_attempts=1,
                run_after=now,
                created_at=now,
                updated_at=now,
            )
        )
    return "job_taker"


def test_listing_pages_and_filters_by_time_and_by_not_yet_taken(service: Service) -> None:
    ids = []
    for seed in range(3):
        frame = png_bytes(10 + seed)
        answer = push(service, frame, manifest_for(frame, f"cam-{seed}"))
        assert answer.status_code == 201, answer.text
        ids.append(answer.json()["id"])

    def listed(**params: Any) -> list[str]:
        answer = service.client.get(
            service.url("/hard-cases"), headers=service.headers, params=params
        )
        assert answer.status_code == 200, answer.text
        return [case["id"] for case in answer.json()]

    assert listed() == ids  # first seen first
    assert listed(offset=1, limit=1) == ids[1:2]
    assert listed(since=datetime(2000, 1, 1, tzinfo=UTC).isoformat()) == ids
    assert listed(since=datetime(2100, 1, 1, tzinfo=UTC).isoformat()) == []
    # A labeling job took the first: it is no longer new.
    job_id = _a_job(service.db, service.project_id)
    with service.db.write() as connection:
        connection.execute(
            sa.update(hard_cases).where(hard_cases.c.id == ids[0]).values(consumed_by_job=job_id)
        )
    assert listed(new=True) == ids[1:]
    assert listed() == ids

    frame = png_bytes(11)
    by_sha = service.client.get(
        service.url(f"/hard-cases/by-sha256/{hashlib.sha256(frame).hexdigest().upper()}"),
        headers=service.headers,
    )
    assert by_sha.status_code == 200 and by_sha.json()["id"] == ids[1]
    unknown = service.client.get(
        service.url(f"/hard-cases/by-sha256/{'0' * 64}"), headers=service.headers
    )
    assert unknown.status_code == 404 and unknown.json()["detail"].startswith("no hard case")
    malformed = service.client.get(
        service.url("/hard-cases/by-sha256/xyz"), headers=service.headers
    )
    assert malformed.status_code == 422


def test_reviewer_keys_may_not_push_or_list_and_other_projects_see_nothing(
    service: Service,
) -> None:
    frame = png_bytes(5)
    _, reviewer = key_headers(service, "reviewer")
    assert push(service, frame, manifest_for(frame, "cam-1"), headers=reviewer).status_code == 403
    listed = service.client.get(service.url("/hard-cases"), headers=reviewer)
    assert listed.status_code == 403
    _, admin = key_headers(service, "admin")
    assert push(service, frame, manifest_for(frame, "cam-1"), headers=admin).status_code == 201
    other_id, other = service.new_project("other")
    assert service.client.get(f"/v1/projects/{other_id}/hard-cases", headers=other).json() == []
    assert push(service, frame, manifest_for(frame, "cam-1"), headers=other).status_code == 404


def test_the_collection_policy_is_validated_stored_and_removed(service: Service) -> None:
    url = service.url("/collection-policy")
    assert service.client.get(url, headers=service.headers).status_code == 404
    refused = service.client.put(url, headers=service.headers, json={"sample_rate": 2})
    assert refused.status_code == 422
    assert "sample_rate" in refused.json()["detail"]
    unknown = service.client.put(url, headers=service.headers, json={"confidence": 1})
    assert unknown.status_code == 422 and "confidence" in unknown.json()["detail"]
    policy = {"confidence_band": {"*": [0.3, 0.45]}, "rate_limits": {"per_minute": 6}}
    stored = service.client.put(url, headers=service.headers, json=policy)
    assert stored.status_code == 200, stored.text
    read = service.client.get(url, headers=service.headers).json()
    assert read["confidence_band"] == {"*": [0.3, 0.45]}
    assert read["rate_limits"]["per_minute"] == 6
    assert service.client.delete(url, headers=service.headers).status_code == 204
    assert service.client.get(url, headers=service.headers).status_code == 404


def test_predict_with_collect_keeps_what_the_policy_wants_once(
    service: Service, students: Students
) -> None:
    version = service.promote_onnx(students.static)
    predict = service.url("/predict")

    def predicted(frame: bytes, **params: Any) -> dict[str, Any]:
        headers = {**service.headers, "Content-Type": "image/png"}
        headers |= params.pop("headers", {})
        answer = service.client.post(predict, headers=headers, content=frame, params=params)
        assert answer.status_code == 200, answer.text
        found: dict[str, Any] = answer.json()
        return found

    # Without collect the answer is as before; without a policy nothing is kept.
    assert "collection" not in predicted(png_bytes(20))
    assert predicted(png_bytes(20), collect="true")["collection"] == {
        "collected": False,
        "reasons": [],
        "skipped": "no_policy",
    }
    # Only the count rule (the default confidence band off): every frame has fewer than 1000.
    policy = {"min_detections": 1000, "confidence_band": {}, "rate_limits": {"per_minute": 2}}
    url = service.url("/collection-policy")
    assert service.client.put(url, headers=service.headers, json=policy).status_code == 200
    kept = predicted(png_bytes(20), collect="true", device_name="gate-cam")["collection"]
    assert kept["collected"] is True and kept["reasons"] == ["too_few_detections"]
    again = predicted(png_bytes(20), collect="true")["collection"]
    assert (again["collected"], again["skipped"]) == (False, "duplicate")
    second = predicted(
        png_bytes(21, (160, 120)), collect="true", headers={"X-Device-Name": "door-cam"}
    )
    assert second["collection"]["collected"] is True
    third = predicted(png_bytes(22, (200, 90)), collect="true")["collection"]
    assert (third["collected"], third["skipped"]) == (False, "rate_limited")

    cases = service.client.get(service.url("/hard-cases"), headers=service.headers).json()
    assert [case["devices"] for case in cases] == [["gate-cam"], ["door-cam"]]
    assert cases[0]["id"] == kept["hard_case_id"]
    assert cases[0]["model_version"] == version
    assert cases[0]["reasons"] == ["too_few_detections"]
    frame = service.client.get(cases[0]["image_url"], headers=service.headers)
    assert frame.content == png_bytes(20)

    # A new policy starts a fresh rate limit; a frame the policy does not want is not kept.
    policy = {"max_detections": 1000, "duplicate_distance": -1, "confidence_band": {}}
    assert service.client.put(url, headers=service.headers, json=policy).status_code == 200
    unwanted = predicted(png_bytes(23), collect="true")["collection"]
    assert (unwanted["collected"], unwanted["skipped"]) == (False, "no_reason")


def _version_3_database(db: Database) -> None:
    """``db`` as promptlabel wrote it at schema 3: no hard_cases, projects without a collection
    policy; with one project."""
    old = sa.MetaData()
    sa.Table(
        "projects",
        old,
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("ontology", sa.JSON, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("min_precision", sa.Float),
        sa.Column(
            "require_accepted_datasets", sa.Boolean, nullable=False, server_default=sa.false()
        ),
    )
    for table in metadata.sorted_tables:
        if table.name not in ("projects", "hard_cases"):
            table.to_metadata(old)
    now = time.time()
    with db.write() as connection:
        old.create_all(connection)
        connection.execute(old.tables["schema_info"].insert().values(version=3, created_at=now))
        connection.execute(
            old.tables["projects"]
            .insert()
            .values(
                id="prj_old", name="old", ontology={"classes": []}, created_at=now, updated_at=now
            )
        )


def test_a_schema_3_database_gains_hard_cases_and_collection_policies(
    tmp_path: Path, database_url: str | None, service_settings: ServiceSettings
) -> None:
    db = Database(database_url, data_dir=tmp_path / "data")
    try:
        _version_3_database(db)
        db.create_schema()
        db.create_schema()  # once migrated, a no-op
        with db.read() as connection:
            versions = connection.execute(sa.select(schema_info.c.version)).scalars().all()
            policy = connection.execute(sa.select(projects.c.collection_policy)).scalar_one()
            tables = sa.inspect(connection).get_table_names()
        assert sorted(versions) == [3, 4] and SCHEMA_VERSION == 4
        assert policy is None and "hard_cases" in tables

        key = create_api_key(db, project_id="prj_old")
        app = create_app(service_settings, db=db)
        with TestClient(app) as client:
            headers = {"Authorization": f"Bearer {key.token}"}
            frame = png_bytes(6)
            pushed = client.post(
                "/v1/projects/prj_old/hard-cases",
                headers=headers,
                files={"file": ("f.png", frame, "image/png")},
                data={"manifest": json.dumps(manifest_for(frame, "cam-1"))},
            )
            assert pushed.status_code == 201, pushed.text
            stored = client.put(
                "/v1/projects/prj_old/collection-policy", headers=headers, json={"sample_rate": 1}
            )
            assert stored.status_code == 200, stored.text
    finally:
        db.dispose()


def test_devices_pushing_one_frame_at_once_are_all_recorded(service: Service) -> None:
    # Each merge reads the devices and writes them back: without a lock on the row, two at
    # once write over each other's name (PostgreSQL runs them side by side).
    frame = png_bytes(30)
    devices = [f"cam-{i}" for i in range(8)]

    def record(device: str) -> bool:
        _, created = record_hard_case(
            service.db,
            service.settings,
            project_id=service.project_id,
            data=frame,
            filename="frame.png",
            reasons=[f"reason-{device}"],
            predictions=[],
            device=device,
        )
        return created

    with ThreadPoolExecutor(len(devices)) as pool:
        created = list(pool.map(record, devices))
    assert created.count(True) == 1
    [case] = service.client.get(service.url("/hard-cases"), headers=service.headers).json()
    assert case["devices"] == sorted(devices)
    assert case["reasons"] == sorted(f"reason-{device}" for device in devices)
