"""Labeling jobs end to end over HTTP: upload, submit (idempotent), run, progress, results, export,
cancel; on SQLite and PostgreSQL."""

from __future__ import annotations

import importlib.metadata
import io
import json
import zipfile
from pathlib import Path

import pytest

from tests.serve.conftest import Service, png_bytes


def upload(service: Service, *blobs: tuple[str, bytes]) -> list[str]:
    response = service.client.post(
        service.url("/images"),
        headers=service.headers,
        files=[("files", (name, data, "application/octet-stream")) for name, data in blobs],
    )
    assert response.status_code == 201, response.text
    return [image["id"] for image in response.json()["accepted"]]


def submit(service: Service, body: dict | None = None, key: str | None = None):  # type: ignore[no-untyped-def]
    headers = dict(service.headers)
    if key is not None:
        headers["Idempotency-Key"] = key
    return service.client.post(
        service.url("/label-jobs"),
        headers=headers,
        json={"box_threshold": 0, "text_threshold": 0, "max_det": 3, **(body or {})},
    )


def test_label_job_end_to_end(service: Service) -> None:
    ids = upload(service, *((f"img{i}.png", png_bytes(i)) for i in range(4)))
    assert len(ids) == 4
    response = submit(service, {"verifier": "fake"})
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["status"] == "queued" and job["params"]["image_count"] == 4

    assert service.run_jobs() == 1
    done = service.client.get(service.url(f"/jobs/{job['id']}"), headers=service.headers).json()
    assert done["status"] == "succeeded", done
    assert done["progress"]["fraction"] == 1.0
    assert done["progress"]["stages"]["verify"] == {"done": 12, "total": 12}
    assert not {"attempt_started_at", "stage_started_at"} & done["progress"].keys()
    labels = done["result"]["labels"]
    assert sum(labels.values()) == 4 * 3  # max_det 3 proposals per image, every one routed
    assert labels["accepted"] > 0 and labels["rejected"] > 0

    page = service.client.get(
        service.url(f"/jobs/{job['id']}/results"), headers=service.headers
    ).json()
    assert [item["image_id"] for item in page["items"]] == ids
    for item in page["items"]:
        assert item["status"] == "labeled"
        assert len(item["labels"]) == 3
        for label in item["labels"]:
            assert label["status"] in {"accepted", "rejected"}
            assert label["answer"] in {"Yes", "No"}
            assert label["reason"].startswith("verifier said")
    accepted_only = service.client.get(
        service.url(f"/jobs/{job['id']}/results"),
        headers=service.headers,
        params={"label_status": "accepted", "limit": 1},
    ).json()
    assert len(accepted_only["items"]) == 1
    assert accepted_only["items"][0]["counts"]["accepted"] > 0

    def all_pages(**params: object) -> list[str]:
        found: list[str] = []
        offset: int | None = 0
        while offset is not None:
            page = service.client.get(
                service.url(f"/jobs/{job['id']}/results"),
                headers=service.headers,
                params={**params, "offset": offset},
            ).json()
            found += [item["image_id"] for item in page["items"]]
            offset = page["next_offset"]
        return found

    # Pages (filtered in the database) add up to the whole, in submission order.
    assert all_pages(limit=3) == ids
    for status in ("accepted", "rejected", "needs_review"):
        having = [item["image_id"] for item in page["items"] if item["counts"].get(status, 0) > 0]
        assert all_pages(label_status=status, limit=1) == having

    contents = {}
    for format, member in (("yolo", "data.yaml"), ("coco", "annotations/instances_train.json")):
        export = service.client.get(
            service.url(f"/jobs/{job['id']}/export"),
            headers=service.headers,
            params={"format": format},
        )
        assert export.status_code == 200
        assert export.headers["content-type"] == "application/zip"
        names = zipfile.ZipFile(io.BytesIO(export.content)).namelist()
        assert member in names
        assert sum(1 for n in names if n.startswith("images/")) == 4
        contents[format] = _zip_files(export.content)
    yolo_boxes = sum(
        len(data.splitlines()) for n, data in contents["yolo"].items() if n.startswith("labels/")
    )
    assert yolo_boxes == labels["accepted"]
    assert not any(n.startswith("labels/") for n in contents["coco"])


def test_a_job_labels_with_the_ontology_it_was_submitted_with(service: Service) -> None:
    upload(service, ("a.png", png_bytes(1)))
    job = submit(service).json()
    assert [c["name"] for c in job["params"]["ontology"]["classes"]] == ["shape"]
    changed = service.client.put(
        service.url("/ontology"),
        headers=service.headers,
        json={"classes": {"blob": "a blob"}},
    )
    assert changed.status_code == 200, changed.text

    service.run_jobs()

    page = service.client.get(
        service.url(f"/jobs/{job['id']}/results"), headers=service.headers
    ).json()
    classes = {label["class"] for item in page["items"] for label in item["labels"]}
    assert classes == {"shape"}


def _zip_files(content: bytes) -> dict[str, bytes]:
    archive = zipfile.ZipFile(io.BytesIO(content))
    return {name: archive.read(name) for name in archive.namelist()}


def test_idempotency_key_returns_the_same_job(service: Service) -> None:
    upload(service, ("a.png", png_bytes(1)))
    first = submit(service, key="retry-1")
    again = submit(service, key="retry-1")
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    other = submit(service, {"max_det": 5}, key="retry-1")
    assert other.status_code == 409
    assert "Idempotency-Key" in other.json()["detail"]
    listed = service.client.get(service.url("/jobs"), headers=service.headers).json()
    assert len(listed) == 1
    # The replay's 200 is part of the API's description, as the 201 is.
    paths = service.client.get("/openapi.json").json()["paths"]
    for submit_path in ("/label-jobs", "/train-jobs"):
        responses = paths[f"/v1/projects/{{project_id}}{submit_path}"]["post"]["responses"]
        assert {"200", "201"} <= set(responses)


def test_submit_checks_its_input(service: Service) -> None:
    assert submit(service).json()["detail"] == (
        "the project has no images to label; upload some first"
    )
    upload(service, ("a.png", png_bytes(1)))
    cases = {
        "detector": ({"detector": "../../etc"}, "not offered"),
        "verifier": ({"verifier": "openai:gpt-4o"}, "not offered"),
        "thresholds": (
            {"accept_threshold": 0.2, "reject_threshold": 0.5},
            "reject_threshold (0.5) must not be above accept_threshold (0.2)",
        ),
        "images": ({"image_ids": ["img_nope"]}, "no such images"),
        "no images": ({"image_ids": []}, "leave it out to label every image of the project"),
    }
    for body, message in cases.values():
        response = submit(service, body)
        assert response.status_code in (404, 422), response.text
        assert message in response.json()["detail"]
    assert submit(service, {"box_threshold": 7}).status_code == 422


def test_cancel_queued_and_running_jobs(service: Service) -> None:
    upload(service, ("a.png", png_bytes(1)))
    job = submit(service).json()
    cancelled = service.client.post(
        service.url(f"/jobs/{job['id']}/cancel"), headers=service.headers
    ).json()
    assert cancelled["status"] == "cancelled" and cancelled["error"] == "cancelled on request"
    assert service.run_jobs() == 0

    done = submit(service, key="second").json()
    service.run_jobs()
    conflict = service.client.post(
        service.url(f"/jobs/{done['id']}/cancel"), headers=service.headers
    )
    assert conflict.status_code == 409


def test_failed_images_are_reported_not_fatal(service: Service) -> None:
    good = upload(service, ("a.png", png_bytes(1)), ("b.png", png_bytes(2)))
    job = submit(service).json()
    # The blob of one image vanishes from disk after upload (a broken volume, say).
    from serve.ingest.store import blob_path, get_images

    stored = get_images(service.db, project_id=service.project_id, image_ids=[good[1]])[0]
    blob_path(service.settings.data_dir, stored.sha256, stored.extension).write_bytes(b"junk")
    service.run_jobs()
    result = service.client.get(service.url(f"/jobs/{job['id']}"), headers=service.headers).json()
    assert result["status"] == "succeeded"
    items = service.client.get(
        service.url(f"/jobs/{job['id']}/results"), headers=service.headers
    ).json()["items"]
    assert [item["status"] for item in items] == ["labeled", "failed"]
    assert items[1]["error"].startswith("not_an_image")
    assert result["result"]["images"]["failed"] == 1


@pytest.mark.parametrize("path", ["/jobs/job_missing", "/jobs/job_missing/results"])
def test_unknown_job_is_404(service: Service, path: str) -> None:
    assert service.client.get(service.url(path), headers=service.headers).status_code == 404


def test_one_worker_runs_job_after_job_with_a_working_verifier(service: Service) -> None:
    """A worker lives across jobs: nothing it keeps may break the next job (an API verifier's
    connections belong to one job's event loop)."""
    from serve.jobs.worker import Worker

    upload(service, ("a.png", png_bytes(1)), ("b.png", png_bytes(2)))
    first = submit(service, {"verifier": "fake"}, key="one").json()
    second = submit(service, {"verifier": "fake", "max_det": 2}, key="two").json()
    worker = Worker(db=service.db, settings=service.settings, name="long-lived")
    assert worker.run_once() and worker.run_once()
    for job in (first, second):
        done = service.client.get(service.url(f"/jobs/{job['id']}"), headers=service.headers)
        result = done.json()["result"]
        assert result["verifier"]["errors"] == 0
        assert result["verifier"]["calls"] == sum(result["labels"].values())


def test_callers_never_see_the_servers_paths_or_model_locations(
    service: Service, tmp_path: Path
) -> None:
    upload(service, ("a.png", png_bytes(1)), ("b.png", png_bytes(2)))
    job = submit(service, {"verifier": "fake"}).json()
    service.run_jobs()
    done = service.client.get(service.url(f"/jobs/{job['id']}"), headers=service.headers).json()
    assert done["status"] == "succeeded", done
    detector_path = service.settings.service_detectors["default"]
    private = [str(service.settings.data_dir.resolve()), detector_path, "127.0.0.1"]
    provenance = done["result"]["provenance"]
    assert (provenance["detector"], provenance["verifier"]) == ("default", "fake")
    assert provenance["promptlabel_version"] == importlib.metadata.version("promptlabel")
    export = service.client.get(
        service.url(f"/jobs/{job['id']}/export"), headers=service.headers, params={"format": "yolo"}
    )
    files = _zip_files(export.content)
    report = json.loads(files["report.json"])
    assert report["provenance"]["detector"] == "default" and "path" not in report["dataset"]
    records = [json.loads(line) for line in files["labels.jsonl"].splitlines()]
    assert all(record["path"].startswith("images/") for record in records), records
    # Each line also names its image as the archive holds it.
    in_archive = [record["dataset_image"] for record in records]
    assert len(in_archive) == 2 and set(in_archive) <= files.keys(), in_archive
    for shown in (json.dumps(done), *(files[n].decode() for n in ("report.json", "review.json"))):
        assert not any(secret in shown for secret in private), shown[:2000]

    # A detector the operator configured that does not load: the caller learns no path.
    service.settings.service_detectors["default"] = str(tmp_path / "no-such-model")
    failed = submit(service, {"max_det": 2}).json()
    service.run_jobs()
    failed = service.client.get(
        service.url(f"/jobs/{failed['id']}"), headers=service.headers
    ).json()
    assert failed["status"] == "failed"
    assert "could not be loaded" in failed["error"] and str(tmp_path) not in failed["error"]


def test_a_detector_failing_on_every_image_is_retried_and_callers_see_no_model_files(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    from labeler.propose.detector import Detector
    from serve.db import jobs

    upload(service, ("a.png", png_bytes(1)), ("b.png", png_bytes(2)))
    job_id = submit(service).json()["id"]
    detector_path = service.settings.service_detectors["default"]

    def out_of_memory(self: Detector, *_: object) -> None:
        raise RuntimeError(f"CUDA out of memory while running {detector_path}/model.safetensors")

    # A GPU another job holds: the run stops (the model, not the images) and is queued again.
    with monkeypatch.context() as patch:
        patch.setattr(Detector, "propose", out_of_memory)
        assert service.run_jobs() == 1
    queued = service.client.get(service.url(f"/jobs/{job_id}"), headers=service.headers).json()
    assert queued["status"] == "queued", queued
    assert queued["error"] == (
        "the detector failed on all 2 images (the server's log has the details)"
    )
    assert service.run_jobs() == 0  # backing off

    with service.db.write() as connection:  # the backoff is over
        connection.execute(jobs.update().where(jobs.c.id == job_id).values(run_after=0.0))
    assert service.run_jobs() == 1
    done = service.client.get(service.url(f"/jobs/{job_id}"), headers=service.headers).json()
    assert done["status"] == "succeeded", done
    assert done["error"] is None and sum(done["result"]["labels"].values()) == 2 * 3


@pytest.mark.parametrize(
    "data_dir",
    [
        "promptlabel-data",  # relative: the default
        "/srv/link-to-data",  # through a link, unresolved
        "/real/data",
        ".",
    ],
)
def test_exported_run_files_hold_paths_inside_the_job_however_the_data_folder_was_spelt(
    tmp_path: Path, data_dir: str
) -> None:
    from serve.jobs.service import _run_file_for_callers

    job_id = "job_0f89618f95f248fb"
    image = f"{data_dir}/jobs/{job_id}/images/000001-img_ab.png".removeprefix("./")
    other_job = f"{data_dir}/jobs/job_other/images/x.png"
    lines = tmp_path / "labels.jsonl"
    lines.write_text(
        json.dumps({"path": image, "labels": []}) + "\n" + json.dumps({"path": other_job}) + "\n"
    )
    rewritten = _run_file_for_callers(lines, job_id, {}).splitlines()
    assert json.loads(rewritten[0])["path"] == "images/000001-img_ab.png"
    assert json.loads(rewritten[1])["path"] == other_job  # not this job's: left alone


def test_an_export_built_by_an_older_version_is_built_again(service: Service) -> None:
    from serve.jobs.service import job_dir

    upload(service, ("a.png", png_bytes(1)))
    job_id = submit(service).json()["id"]
    service.run_jobs()
    exports = job_dir(service.settings.data_dir, job_id) / "exports"
    exports.mkdir(parents=True, exist_ok=True)
    # What an older version kept (its run files held server paths).
    (exports / f"{job_id}-yolo.zip").write_bytes(zip_of_one("labels.jsonl", b'{"path": "/srv"}'))
    export = service.client.get(
        service.url(f"/jobs/{job_id}/export"), headers=service.headers, params={"format": "yolo"}
    )
    assert export.status_code == 200
    files = _zip_files(export.content)
    assert "data.yaml" in files and "/srv" not in files["labels.jsonl"].decode()


def zip_of_one(name: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(name, data)
    return buffer.getvalue()


def test_the_eta_follows_the_slow_stages_own_pace() -> None:
    import time

    from serve.jobs.service import JobRecord

    now = time.time()

    def eta(**progress: object) -> float | None:
        job = JobRecord(
            id="job_1", project_id="prj_1", kind="label", status="running", params={},
            attempts=1, cancel_requested=False, progress=progress, result=None, error=None,
            created_at=now - 100, started_at=now - 100, finished_at=None, updated_at=now,
        )  # fmt: skip
        return job.eta_s

    # 10 of 40 answers in 20 s: 30 more take 60 s, whatever the weights say of the job.
    paced = eta(stage="verify", done=10, total=40, fraction=0.5, stage_started_at=now - 20)
    assert paced is not None and 59 <= paced <= 61
    # Before it, the share of the job done since this attempt started.
    guessed = eta(stage="propose", done=5, total=10, fraction=0.25, attempt_started_at=now - 30)
    assert guessed is not None and 89 <= guessed <= 91
    assert eta(stage="starting", done=0, total=0, fraction=0.0, attempt_started_at=now) is None


def test_progress_is_typed_in_the_spec_and_reads_back_however_it_was_stored(
    service: Service,
) -> None:
    import sqlalchemy as sa

    from serve.db import jobs

    spec = service.client.get("/openapi.json").json()
    progress = spec["components"]["schemas"]["JobProgressPublic"]["properties"]
    assert {"stage", "done", "total", "fraction", "attempt", "stages"} <= progress.keys()

    upload(service, ("a.png", png_bytes(1)))
    job_id = submit(service).json()["id"]
    # As an older version, or a stage with values of its own, may have stored it.
    stored = {"stage": "train", "done": 3, "last_metrics": {"map50": 0.5}, "stage_started_at": 1.0}
    with service.db.write() as connection:
        connection.execute(sa.update(jobs).where(jobs.c.id == job_id).values(progress=stored))
    answer = service.client.get(service.url(f"/jobs/{job_id}"), headers=service.headers)
    assert answer.status_code == 200, answer.text
    assert answer.json()["progress"] == {
        "stage": "train",
        "done": 3,
        "total": 0,
        "fraction": 0.0,
        "attempt": 1,
        "stages": {},
        "last_metrics": {"map50": 0.5},
    }


def test_an_uploaded_image_downloads_as_it_was_uploaded(service: Service) -> None:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(buffer, format="JPEG")
    photo, drawing = buffer.getvalue(), png_bytes(2)
    photo_id, drawing_id = upload(service, ("photo.jpeg", photo), ("drawing.png", drawing))
    for image_id, data, media_type, name in (
        (photo_id, photo, "image/jpeg", "photo.jpeg"),
        (drawing_id, drawing, "image/png", "drawing.png"),
    ):
        answer = service.client.get(
            service.url(f"/images/{image_id}/file"), headers=service.headers
        )
        assert answer.status_code == 200, answer.text
        assert answer.content == data
        assert answer.headers["content-type"] == media_type
        assert name in answer.headers["content-disposition"]
    unknown = service.client.get(service.url("/images/img_nope/file"), headers=service.headers)
    assert unknown.status_code == 404

    # A file lost from the server's disk is said to be so, without the server's paths.
    [blob] = (service.settings.data_dir / "blobs").rglob("*.jpg")  # the one JPEG
    blob.unlink()
    lost = service.client.get(service.url(f"/images/{photo_id}/file"), headers=service.headers)
    assert lost.status_code == 503
    assert lost.json()["detail"] == f"image {photo_id}: its file is missing on the server"
