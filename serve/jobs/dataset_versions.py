"""A project's dataset versions on the server: built from its succeeded labeling jobs' datasets
(``distill.dataset_versions``), stored beside its model registry, immutable once made."""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from distill.dataset_versions import DatasetVersion, DatasetVersions, VersionSource
from labeler.core.exceptions import InputError, StoreError
from serve.db import Database, hard_cases, images
from serve.errors import ConflictError, NotFoundError
from serve.jobs.acceptance import job_acceptance, require_accepted_for_training
from serve.jobs.queue import JobKind, JobStatus
from serve.jobs.service import JobRecord, dataset_dir, get_job

__all__ = [
    "build_version",
    "dataset_versions",
    "get_version",
    "project_hard_cases",
    "versions_dir",
]


def versions_dir(data_dir: Path, project_id: str) -> Path:
    return data_dir / "projects" / project_id / "datasets"


def dataset_versions(data_dir: Path, project_id: str) -> DatasetVersions:
    return DatasetVersions(versions_dir(data_dir, project_id))


def get_version(data_dir: Path, project_id: str, version: str) -> DatasetVersion:
    """NotFoundError (404) for a version this project does not have."""
    try:
        return dataset_versions(data_dir, project_id).get(version)
    except InputError as error:
        # The message names the server's folder; callers see the project instead.
        where = str(versions_dir(data_dir, project_id))
        raise NotFoundError(str(error).replace(where, "this project")) from None


def build_version(
    db: Database,
    *,
    data_dir: Path,
    project_id: str,
    label_job_ids: Sequence[str],
    parent: str | None,
    hard_cases: Collection[str] = (),
) -> tuple[DatasetVersion, bool]:
    """A version of ``parent`` plus the jobs' datasets, in the order given (later jobs' labels
    win). Each job must be a succeeded labeling job of the project, and accepted where the project
    trains only on accepted datasets; its lineage records the job, its review decisions and its
    acceptance. Returns the version and whether it is new."""
    sources = []
    for job_id in dict.fromkeys(label_job_ids):
        job = get_job(db, project_id=project_id, job_id=job_id)
        if job.kind != JobKind.LABEL:
            raise InputError(f"label_job_ids: {job_id} is a {job.kind} job, not a labeling job")
        if job.status != JobStatus.SUCCEEDED:
            raise ConflictError(f"label_job_ids: job {job_id} is {job.status}, not succeeded")
        try:
            require_accepted_for_training(db, source=job)
        except ConflictError as error:
            raise ConflictError(
                "label_job_ids: " + str(error).removeprefix("label_job_id: ")
            ) from None
        folder = dataset_dir(data_dir, job_id)
        sources.append(VersionSource(job_id, folder, _lineage(db, job, folder)))
    if parent is not None and parent != "latest":
        get_version(data_dir, project_id, parent)  # 404 before any work
    return dataset_versions(data_dir, project_id).create(
        sources, parent=parent, hard_cases=hard_cases
    )


def project_hard_cases(db: Database, *, project_id: str) -> list[str]:
    """The SHA-256 of every hard-case frame of the project (the exported images carry its
    first 8 characters in their names)."""
    with db.read() as connection:
        return list(
            connection.execute(
                sa.select(images.c.sha256)
                .join(hard_cases, hard_cases.c.image_id == images.c.id)
                .where(hard_cases.c.project_id == project_id)
            ).scalars()
        )


def _lineage(db: Database, job: JobRecord, folder: Path) -> dict[str, Any]:
    """What the version records of a job: its dataset's counts as its report.json says (after
    the latest review export, when there was one) and whether it is accepted."""
    try:
        report = json.loads((folder / "report.json").read_text())
    except (OSError, ValueError):
        raise StoreError(f"job {job.id}: its dataset's report is missing on the server") from None
    acceptance = job_acceptance(db, project_id=job.project_id, job_id=job.id)
    return {
        "job_id": job.id,
        "labels": report.get("labels", {}),
        "labels_by_decider": report.get("labels_by_decider", {}),
        "accepted": acceptance.accepted,
    }
