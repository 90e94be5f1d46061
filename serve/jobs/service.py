"""Submitting, reading and cancelling jobs; reading their results and exports.

Submitting writes the job row (and, for labeling, one ``job_images`` row per image) in one
transaction; workers pick it up from the same table (``serve.jobs.queue``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel

from labeler.core.exceptions import InputError
from labeler.propose.options import DetectorOptions
from serve.api.auth import new_id
from serve.api.schemas import LabelJobCreate, TrainJobCreate
from serve.db import Database, hard_cases, images, job_images, jobs, projects
from serve.errors import ConflictError, NotFoundError
from serve.ingest.store import get_images
from serve.jobs.acceptance import require_accepted_for_training
from serve.jobs.queue import JobKind, JobStatus
from serve.settings import ServiceSettings

__all__ = [
    "INTERNAL_PROGRESS_KEYS",
    "JobRecord",
    "cancel_job",
    "dataset_dir",
    "export_archive",
    "get_job",
    "job_dir",
    "job_results",
    "list_jobs",
    "public_provenance",
    "submit_label_job",
    "submit_train_job",
    "without_data_dir",
]

ExportFormat = Literal["yolo", "coco"]


def job_dir(data_dir: Path, job_id: str) -> Path:
    return data_dir / "jobs" / job_id


def dataset_dir(data_dir: Path, job_id: str) -> Path:
    """Where a labeling job writes its YOLO + COCO dataset (``labeler.run_label``'s out_dir)."""
    return job_dir(data_dir, job_id) / "dataset"


@dataclass(frozen=True)
class JobRecord:
    id: str
    project_id: str
    kind: str
    status: str
    params: dict[str, Any]
    attempts: int
    cancel_requested: bool
    progress: dict[str, Any] | None
    result: dict[str, Any] | None
    error: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    updated_at: float

    @property
    def eta_s(self) -> float | None:
        """Seconds to go. In the stage that takes the time (verifying, training: what follows
        it is short), from that stage's own pace; before it, from the share of the job done
        since this attempt started, by fixed stage weights (a rough guess: how slow the
        verifier is shows only once it runs)."""
        if self.status != JobStatus.RUNNING or not self.progress or self.started_at is None:
            return None
        now = time.time()
        done, total = int(self.progress.get("done") or 0), int(self.progress.get("total") or 0)
        stage_elapsed = now - float(self.progress.get("stage_started_at") or now)
        if self.progress.get("stage") in _PACED_STAGES and 0 < done <= total:
            return round(stage_elapsed * (total - done) / done, 1)
        fraction = float(self.progress.get("fraction") or 0.0)
        elapsed = max(0.0, now - float(self.progress.get("attempt_started_at") or 0))
        if fraction <= 0.01 or elapsed <= 0:
            return None
        return round(elapsed * (1 - fraction) / fraction, 1)


_PACED_STAGES = frozenset({"verify", "train"})
# Progress keys the worker stores for the ETA; callers get the ETA instead (serve.api.routes.jobs).
INTERNAL_PROGRESS_KEYS = frozenset({"attempt_started_at", "stage_started_at"})


def _record(row: sa.Row[Any]) -> JobRecord:
    m = row._mapping
    return JobRecord(**{name: m[name] for name in JobRecord.__dataclass_fields__})


def _request_sha256(kind: JobKind, request: BaseModel) -> str:
    payload = {"kind": kind.value, **request.model_dump(mode="json")}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _choose(name: str, offered: Mapping[str, object], field: str) -> None:
    if name not in offered:
        choices = ", ".join(sorted(offered)) or "none configured"
        raise InputError(f"{field}: {name!r} is not offered by this server (choose from {choices})")


def _existing(db: Database, project_id: str, idempotency_key: str) -> sa.Row[Any] | None:
    with db.read() as connection:
        return connection.execute(
            sa.select(jobs).where(
                jobs.c.project_id == project_id, jobs.c.idempotency_key == idempotency_key
            )
        ).first()


def _replay(row: sa.Row[Any], request_sha256: str) -> JobRecord:
    if row.request_sha256 != request_sha256:
        raise ConflictError(
            "Idempotency-Key was already used for a different request "
            f"(job {row.id}); use a new key for a new job"
        )
    return _record(row)


def _insert_job(
    db: Database,
    *,
    settings: ServiceSettings,
    project_id: str,
    kind: JobKind,
    request: BaseModel,
    params: dict[str, Any],
    idempotency_key: str | None,
    image_ids: list[str] = [],  # noqa: B006 - read only
    take_hard_cases: bool = False,
) -> tuple[JobRecord, bool]:
    """Insert a queued job; with an idempotency key, a repeat returns the first job instead.
    ``take_hard_cases``: mark the project's untaken hard cases among ``image_ids`` as the job's."""
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= 200:
        raise InputError("Idempotency-Key must be 1 to 200 characters")
    request_sha256 = _request_sha256(kind, request)
    if idempotency_key is not None and (found := _existing(db, project_id, idempotency_key)):
        return _replay(found, request_sha256), False
    now = time.time()
    values: dict[str, Any] = {
        "id": new_id("job"),
        "project_id": project_id,
        "kind": kind.value,
        "status": JobStatus.QUEUED.value,
        "params": params,
        "idempotency_key": idempotency_key,
        "request_sha256": request_sha256,
        "attempts": 0,
        "max_attempts": settings.max_attempts,
        "run_after": now,
        "cancel_requested": False,
        "created_at": now,
        "updated_at": now,
    }
    try:
        with db.write() as connection:
            connection.execute(jobs.insert().values(**values))
            if take_hard_cases:
                # In the job's own transaction: the hard cases are taken exactly when it exists.
                connection.execute(
                    hard_cases.update()
                    .where(
                        hard_cases.c.project_id == project_id,
                        hard_cases.c.consumed_by_job.is_(None),
                        hard_cases.c.image_id.in_(image_ids or []),
                    )
                    .values(consumed_by_job=values["id"])
                )
            if image_ids:
                connection.execute(
                    job_images.insert(),
                    [
                        {
                            "job_id": values["id"],
                            "position": i,
                            "image_id": image_id,
                            "status": "pending",
                        }
                        for i, image_id in enumerate(image_ids)
                    ],
                )
    except sa.exc.IntegrityError:
        # A concurrent submit with the same key won the race: answer with its job.
        if idempotency_key is not None and (found := _existing(db, project_id, idempotency_key)):
            return _replay(found, request_sha256), False
        raise
    # Answered from what was written (progress, result, start and finish are still empty).
    fields: dict[str, Any] = {name: values.get(name) for name in JobRecord.__dataclass_fields__}
    return JobRecord(**fields), True


def submit_label_job(
    db: Database,
    *,
    settings: ServiceSettings,
    project_id: str,
    request: LabelJobCreate,
    idempotency_key: str | None = None,
) -> tuple[JobRecord, bool]:
    """Queue a labeling job; returns the job and whether it was created (False: a replay)."""
    if idempotency_key is not None and (found := _existing(db, project_id, idempotency_key)):
        # Before the images are chosen: a replay of a job that took the inbox finds it empty.
        return _replay(found, _request_sha256(JobKind.LABEL, request)), False
    _choose(request.detector, settings.service_detectors, "detector")
    _choose(request.verifier, settings.service_verifiers, "verifier")
    if request.masks is not None:
        _choose(request.masks, settings.service_segmenters, "masks")
    if request.reject_threshold > request.accept_threshold:
        raise InputError(
            f"reject_threshold ({request.reject_threshold}) must not be above "
            f"accept_threshold ({request.accept_threshold})"
        )
    DetectorOptions(
        box_threshold=request.box_threshold,
        text_threshold=request.text_threshold,
        max_det=request.max_det,
        nms_iou=request.nms_iou,
    )
    with db.read() as connection:
        ontology = connection.execute(
            sa.select(projects.c.ontology).where(projects.c.id == project_id)
        ).scalar_one()
        if request.hard_cases:
            if request.image_ids is not None:
                raise InputError("image_ids: not with hard_cases (the inbox names the images)")
            image_ids = list(
                connection.execute(
                    sa.select(hard_cases.c.image_id)
                    .where(
                        hard_cases.c.project_id == project_id,
                        hard_cases.c.consumed_by_job.is_(None),
                    )
                    .order_by(hard_cases.c.first_seen_at, hard_cases.c.id)
                ).scalars()
            )
            if not image_ids:
                raise ConflictError(
                    "hard_cases: the inbox holds no hard case that no labeling job has taken"
                )
        elif request.image_ids is None:
            image_ids = list(
                connection.execute(
                    sa.select(images.c.id)
                    .where(images.c.project_id == project_id)
                    .order_by(images.c.created_at, images.c.id)
                ).scalars()
            )
        else:
            image_ids = list(dict.fromkeys(request.image_ids))
    if not ontology.get("classes"):
        raise InputError("the project has no ontology yet: PUT one before labeling")
    if not image_ids:
        raise InputError(
            "image_ids: an empty list; leave it out to label every image of the project"
            if request.image_ids is not None
            else "the project has no images to label; upload some first"
        )
    if request.image_ids is not None:
        get_images(db, project_id=project_id, image_ids=image_ids)
    # The ontology as it is now: a later PUT /ontology must not change a queued job, nor a job
    # that a worker resumes after another died.
    params = request.model_dump(mode="json") | {"image_count": len(image_ids), "ontology": ontology}
    params.pop("image_ids")
    return _insert_job(
        db,
        settings=settings,
        project_id=project_id,
        kind=JobKind.LABEL,
        request=request,
        params=params,
        idempotency_key=idempotency_key,
        image_ids=image_ids,
        take_hard_cases=request.hard_cases,
    )


def submit_train_job(
    db: Database,
    *,
    settings: ServiceSettings,
    project_id: str,
    request: TrainJobCreate,
    idempotency_key: str | None = None,
) -> tuple[JobRecord, bool]:
    """Queue a training job on a finished labeling job's dataset or on a dataset version, from
    a base the server offers or from the production model (``base: production``)."""
    from distill.runs import PRODUCTION_BASE

    replay = idempotency_key is not None and _existing(db, project_id, idempotency_key) is not None
    if request.base == PRODUCTION_BASE:
        if not replay:
            _require_production_checkpoint(settings, project_id)
    else:
        _choose(request.base, settings.service_train_bases, "base")
    if request.dataset_version is not None:
        from serve.jobs.dataset_versions import get_version

        # Its jobs were checked (succeeded, accepted where required) when it was built.
        get_version(settings.data_dir, project_id, request.dataset_version)
    else:
        assert request.label_job_id is not None  # the schema requires one of the two
        source = get_job(db, project_id=project_id, job_id=request.label_job_id)
        if source.kind != JobKind.LABEL:
            raise InputError(
                f"label_job_id: {source.id} is a {source.kind} job, not a labeling job"
            )
        if source.status != JobStatus.SUCCEEDED:
            raise ConflictError(f"label_job_id: job {source.id} is {source.status}, not succeeded")
        # A replay of an earlier submit answers with its job, whatever became of the acceptance.
        if not replay:
            require_accepted_for_training(db, source=source)
    return _insert_job(
        db,
        settings=settings,
        project_id=project_id,
        kind=JobKind.TRAIN,
        request=request,
        params=request.model_dump(mode="json"),
        idempotency_key=idempotency_key,
    )


def _require_production_checkpoint(settings: ServiceSettings, project_id: str) -> None:
    """ConflictError (409) unless the project has a production checkpoint to fine-tune from."""
    from distill.runs import production_checkpoint
    from serve.jobs.worker import registry_dir

    try:
        production_checkpoint(registry_dir(settings.data_dir, project_id))
    except InputError as error:
        raise ConflictError(f"base: production, but {error}") from None


def get_job(db: Database, *, project_id: str, job_id: str) -> JobRecord:
    """The job, if it is this project's; NotFoundError otherwise (whoever else owns it)."""
    with db.read() as connection:
        row = connection.execute(
            sa.select(jobs).where(jobs.c.id == job_id, jobs.c.project_id == project_id)
        ).first()
    if row is None:
        raise NotFoundError(f"no job {job_id!r} in this project")
    return _record(row)


def list_jobs(
    db: Database,
    *,
    project_id: str,
    status: str | None = None,
    offset: int = 0,
    limit: int = 50,
) -> list[JobRecord]:
    query = sa.select(jobs).where(jobs.c.project_id == project_id)
    if status is not None:
        query = query.where(jobs.c.status == status)
    with db.read() as connection:
        rows = connection.execute(
            query.order_by(jobs.c.created_at.desc(), jobs.c.id).offset(offset).limit(limit)
        ).all()
    return [_record(row) for row in rows]


def cancel_job(db: Database, *, project_id: str, job_id: str) -> JobRecord:
    """Cancel a queued job at once, or ask the worker running it to stop (within a heartbeat).

    Cancelling a cancelled job is a no-op; a job that already succeeded or failed is a conflict.
    """
    now = time.time()
    with db.write() as connection:
        # Locked (PostgreSQL; SQLite's write transaction is exclusive anyway), so that no worker
        # claims or finishes the job between this read and the update below.
        row = connection.execute(
            sa.select(jobs.c.status)
            .where(jobs.c.id == job_id, jobs.c.project_id == project_id)
            .with_for_update()
        ).first()
        if row is None:
            raise NotFoundError(f"no job {job_id!r} in this project")
        if row.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
            raise ConflictError(f"job {job_id} already {row.status}; nothing to cancel")
        if row.status == JobStatus.QUEUED:
            connection.execute(
                sa.update(jobs)
                .where(jobs.c.id == job_id, jobs.c.status == JobStatus.QUEUED.value)
                .values(
                    status=JobStatus.CANCELLED.value,
                    cancel_requested=True,
                    error="cancelled on request",  # as a running job's cancel says
                    finished_at=now,
                    updated_at=now,
                )
            )
        elif row.status == JobStatus.RUNNING:
            connection.execute(
                sa.update(jobs)
                .where(jobs.c.id == job_id, jobs.c.status == JobStatus.RUNNING.value)
                .values(cancel_requested=True, updated_at=now)
            )
    return get_job(db, project_id=project_id, job_id=job_id)


def job_results(
    db: Database,
    *,
    project_id: str,
    job_id: str,
    label_status: str | None = None,
    offset: int = 0,
    limit: int = 100,
) -> tuple[list[dict[str, Any]], int | None]:
    """Per-image results in submission order, and the next offset (None at the end).

    ``label_status`` keeps only images with at least one label of that status.
    """
    job = get_job(db, project_id=project_id, job_id=job_id)
    if job.kind != JobKind.LABEL:
        raise InputError(f"job {job_id} is a {job.kind} job; only labeling jobs have results")
    query = (
        sa.select(
            job_images.c.image_id,
            images.c.filename,
            job_images.c.status,
            job_images.c.error,
            job_images.c.counts,
            job_images.c.labels,
        )
        .join(images, images.c.id == job_images.c.image_id)
        .where(job_images.c.job_id == job_id)
        .order_by(job_images.c.position)
        # The page, and one row more to tell whether another page follows: a job of thousands of
        # images with all their labels is never read to answer for a few.
        .offset(offset)
        .limit(limit + 1)
    )
    if label_status is not None:
        query = query.where(job_images.c.counts[label_status].as_integer() > 0)
    with db.read() as connection:
        rows = connection.execute(query).all()
    page = [dict(row._mapping) for row in rows[:limit]]
    return page, offset + limit if len(rows) > limit else None


def without_data_dir(text: str, data_dir: Path) -> str:
    """``text`` with the server's data folder taken out of every path in it, however the folder
    is spelt (as configured, relative by default; absolute; through a link, resolved)."""
    spellings = {str(data_dir), str(data_dir.absolute()), str(data_dir.resolve())}
    for folder in sorted(spellings, key=len, reverse=True):  # "data" is inside "/srv/data"
        text = text.replace(f"{folder}{os.sep}", "")
    return text


def public_provenance(provenance: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """A label run's provenance as API callers see it: the names the server offers for its
    detector and verifier, not the paths and URLs the operator configured behind them."""
    shown = {k: v for k, v in provenance.items() if k not in _PRIVATE_PROVENANCE}
    detector = params.get("detector")
    fingerprint = shown.get("detector_fingerprint")
    if isinstance(fingerprint, dict):  # model revision, versions, device: kept; the path: not
        shown["detector_fingerprint"] = fingerprint | {"model_id": detector}
    return shown | {"detector": detector, "verifier": params.get("verifier")}


_PRIVATE_PROVENANCE = frozenset({"workspace", "run_id", "verifier_endpoint"})
# The label run's own files, rewritten on the way into an export: they name server paths.
_RUN_FILES = frozenset({"report.json", "review.json", "labels.jsonl"})


def _run_file_for_callers(file: Path, job_id: str, params: dict[str, Any]) -> str:
    # Image paths become paths inside the job's folder ("images/000001-img_….png"), however the
    # worker that wrote them spelled the data folder: relative (the default), through a link,
    # from another working directory. The job's id makes the folder unmistakable.
    in_job_folder = re.compile(
        rf'(?:[^"\n]*{re.escape(os.sep)})?jobs{re.escape(os.sep + job_id + os.sep)}'
    )
    text = in_job_folder.sub("", file.read_text(encoding="utf-8"))
    if file.name != "report.json":
        return text
    report = json.loads(text)
    report.get("dataset", {}).pop("path", None)
    report["provenance"] = public_provenance(report.get("provenance", {}), params)
    return json.dumps(report, indent=2) + "\n"


# Part of the archive's name, raised whenever what an export holds changes, so that archives
# built before (kept beside the job) are built again. 2: run files without server paths
# whatever the data folder's spelling.
_EXPORT_LAYOUT = 2

_FORMAT_MEMBERS: dict[str, tuple[str, ...]] = {
    "yolo": ("data.yaml", "images", "labels", "report.json", "review.json", "labels.jsonl"),
    "coco": ("annotations", "images", "report.json", "review.json", "labels.jsonl"),
}


def export_archive(
    db: Database, *, data_dir: Path, project_id: str, job_id: str, format: ExportFormat
) -> Path:
    """A zip of the job's dataset in ``format``, built once and kept beside the job."""
    if format not in _FORMAT_MEMBERS:
        raise InputError(f"format must be one of {', '.join(_FORMAT_MEMBERS)}, got {format!r}")
    job = get_job(db, project_id=project_id, job_id=job_id)
    if job.kind != JobKind.LABEL:
        raise InputError(f"job {job_id} is a {job.kind} job; only labeling jobs export datasets")
    if job.status != JobStatus.SUCCEEDED:
        raise ConflictError(f"job {job_id} is {job.status}; its dataset exists once it succeeded")
    archive = job_dir(data_dir, job_id) / "exports" / f"{job_id}-{format}-{_EXPORT_LAYOUT}.zip"
    if archive.exists():
        return archive
    source = dataset_dir(data_dir, job_id)
    archive.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=archive.parent, prefix=".zip-")
    os.close(handle)
    try:
        # Images are already compressed; storing them saves CPU and barely any bytes.
        with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_DEFLATED) as out:
            for member in _FORMAT_MEMBERS[format]:
                path = source / member
                files = (
                    sorted(
                        p
                        for p in path.rglob("*")
                        if p.is_file() and not p.name.startswith(".")  # exporter bookkeeping
                    )
                    if path.is_dir()
                    else []
                )
                for file in [path] if path.is_file() else files:
                    name = file.relative_to(source).as_posix()
                    if name in _RUN_FILES:
                        out.writestr(name, _run_file_for_callers(file, job_id, job.params))
                        continue
                    is_image = file.parent.name in {"train", "val"} and "images" in file.parts
                    out.write(
                        file,
                        name,
                        compress_type=zipfile.ZIP_STORED if is_image else zipfile.ZIP_DEFLATED,
                    )
        os.replace(temporary, archive)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return archive
