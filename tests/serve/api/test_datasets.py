"""Dataset versions over HTTP: built from labeling jobs on the latest version, val only grows,
the project's hard cases held out, lineage by job; roles, errors; SQLite and PostgreSQL."""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa

from distill.dataset import list_split_images
from serve.db import hard_cases
from serve.jobs.dataset_versions import get_version
from tests.fakes.vlm_server import FakeVLMServer
from tests.serve.api.test_acceptance import settings_of
from tests.serve.api.test_jobs import submit, upload
from tests.serve.api.test_review import key_headers
from tests.serve.api.test_spot_checks import _sure_answers
from tests.serve.conftest import Service, png_bytes


def labeled_job(service: Service, vlm_server: FakeVLMServer, *seeds: int) -> str:
    """A succeeded labeling job over the project's images, after uploading ``seeds``' PNGs."""
    vlm_server.script = _sure_answers
    if seeds:
        upload(service, *((f"img{seed}.png", png_bytes(seed)) for seed in seeds))
    job = submit(service, {"verifier": "fake", "max_det": 6}).json()
    assert service.run_jobs() == 1
    done = service.client.get(service.url(f"/jobs/{job['id']}"), headers=service.headers).json()
    assert done["status"] == "succeeded", done
    return str(job["id"])


def _build(service: Service, *job_ids: str, **body: Any) -> Any:
    return service.client.post(
        service.url("/datasets"),
        headers=service.headers,
        json={"label_job_ids": list(job_ids), **body},
    )


def _mark_all_hard(service: Service) -> int:
    """Every image of the project a hard case (as `promptlabel push` would make them)."""
    with service.db.read() as connection:
        image_ids = connection.execute(
            sa.text("SELECT id FROM images WHERE project_id = :p"), {"p": service.project_id}
        ).scalars().all()  # fmt: skip
    now = time.time()
    with service.db.write() as connection:
        for i, image_id in enumerate(image_ids):
            connection.execute(
                hard_cases.insert().values(
                    id=f"hc{i}",
                    project_id=service.project_id,
                    image_id=image_id,
                    reasons=["uncertain:circle"],
                    predictions=[],
                    devices=["cam-1"],
                    first_seen_at=now,
                    last_seen_at=now,
                )
            )
    return len(image_ids)


def test_versions_grow_from_labeling_jobs(service: Service, vlm_server: FakeVLMServer) -> None:
    first_job = labeled_job(service, vlm_server, 0, 1, 2, 3)
    built = _build(service, first_job)
    assert built.status_code == 201, built.text
    d1 = built.json()
    assert d1["version"] == "d1" and d1["parent"] is None
    assert sum(d1["splits"].values()) == 4 and d1["added"] == d1["splits"]
    [source] = d1["sources"]
    assert source["job_id"] == first_job and source["accepted"] is False
    assert set(source["labels_by_decider"]) >= {"auto"}
    assert "dataset_dir" not in source  # the server's folders are its own business
    again = _build(service, first_job)
    assert again.status_code == 200 and again.json()["version"] == "d1"

    # A second round over more images: d2 on d1, val kept.
    _mark_all_hard(service)  # the first four images, now hard cases
    second_job = labeled_job(service, vlm_server, 100, 101, 102)
    d2 = _build(service, second_job).json()
    assert d2["version"] == "d2" and d2["parent"] == "d1"
    assert sum(d2["added"].values()) == 3 and sum(d2["splits"][s] for s in ("train", "val")) == 7
    data_dir = service.settings.data_dir
    val = {
        version: {p.name for p in list_split_images(get_version(data_dir, service.project_id,
                                                                version).data_yaml, "val")}
        for version in ("d1", "d2")
    }  # fmt: skip
    assert val["d1"] <= val["d2"]
    # The old images in val are the hard cases held out (they are hard cases now).
    d1_val_images = len(val["d1"]) if d1["splits"].get("val") else 0
    assert d2["splits"].get("hard_cases", 0) == d1_val_images

    listed = service.client.get(service.url("/datasets"), headers=service.headers).json()
    assert [v["version"] for v in listed] == ["d1", "d2"]
    latest = service.client.get(service.url("/datasets/latest"), headers=service.headers)
    assert latest.json() == d2


def test_roles_and_errors(service: Service, vlm_server: FakeVLMServer) -> None:
    job_id = labeled_job(service, vlm_server, 0, 1)
    _, reviewer = key_headers(service, "reviewer")
    _, admin = key_headers(service, "admin")
    refused = service.client.post(
        service.url("/datasets"), headers=reviewer, json={"label_job_ids": [job_id]}
    )
    assert refused.status_code == 403
    assert service.client.get(service.url("/datasets"), headers=reviewer).json() == []

    missing = _build(service, "job_nope")
    assert missing.status_code == 404 and "job_nope" in missing.json()["detail"]
    no_parent = _build(service, job_id, parent="d7")
    assert no_parent.status_code == 404
    assert str(service.settings.data_dir) not in no_parent.json()["detail"]
    empty = _build(service)
    assert empty.status_code == 422
    unknown = service.client.get(service.url("/datasets/d3"), headers=reviewer)
    assert unknown.status_code == 404 and str(service.settings.data_dir) not in unknown.text

    assert settings_of(service, admin, require_accepted_datasets=True).status_code == 200
    unaccepted = _build(service, job_id)
    assert unaccepted.status_code == 409
    assert unaccepted.json()["detail"].startswith(f"label_job_ids: job {job_id}")
    assert service.client.get(service.url("/datasets"), headers=reviewer).json() == []
