"""Reviewing a finished labeling job: its workspace, its images, and re-exporting its dataset with
the reviewers' decisions.

The review logic itself is ``labeler.review.queue`` over the job's workspace; this module finds
the job (and refuses the wrong one), opens its workspace, serves its images, and re-runs the
job's label run in route-only mode: every proposal and verdict comes from the workspace, so no
model loads, and the dataset, the job's per-image results and its label counts then hold the
reviewed labels.
"""

from __future__ import annotations

import fcntl
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from labeler.core.exceptions import InputError, StoreError
from labeler.ontology import ontology_from_data
from labeler.route import RouteThresholds
from labeler.store.workspace import DB_NAME, Workspace
from serve.db import Database, images, job_images, jobs, projects
from serve.errors import ConflictError, NotFoundError
from serve.ingest.store import blob_path
from serve.ingest.uploads import MEDIA_TYPES
from serve.jobs.queue import JobKind, JobStatus
from serve.jobs.service import JobRecord, get_job, job_dir
from serve.settings import ServiceSettings

if TYPE_CHECKING:
    from labeler.pipeline import LabelConfig

__all__ = ["ReviewJob", "job_image_file", "job_image_sha256s", "reexport", "review_job"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReviewJob:
    """A succeeded labeling job, as review needs it: a ``serve.api.review_target.ReviewTarget``."""

    job: JobRecord
    workspace_dir: Path
    class_names: tuple[str, ...]
    thresholds: RouteThresholds
    db: Database
    settings: ServiceSettings
    project_id: str

    @property
    def name(self) -> str:
        return self.job.id

    @contextmanager
    def workspace(self) -> Iterator[Workspace]:
        """The job's workspace, open for this thread (one connection, closed after)."""
        with Workspace(self.workspace_dir) as workspace:
            yield workspace

    def image_file(self, image_sha256: str) -> tuple[Path, str]:
        return job_image_file(
            self.db, data_dir=self.settings.data_dir, job_id=self.job.id, image_sha256=image_sha256
        )

    def image_sha256s(self) -> list[str]:
        return job_image_sha256s(self.db, job_id=self.job.id)

    def reexport(self) -> dict[str, Any]:
        return reexport(
            self.db, settings=self.settings, project_id=self.project_id, job_id=self.job.id
        )


def review_job(
    db: Database, *, settings: ServiceSettings, project_id: str, job_id: str
) -> ReviewJob:
    """The job ``job_id`` of ``project_id`` to review: NotFoundError when it is not a labeling
    job of that project, ConflictError until it has succeeded."""
    job = get_job(db, project_id=project_id, job_id=job_id)
    if job.kind != JobKind.LABEL:
        # Only labeling jobs have labels to review; a training job's id names nothing here.
        raise NotFoundError(f"no labeling job {job_id!r} in this project")
    if job.status != JobStatus.SUCCEEDED:
        raise ConflictError(
            f"job {job_id} is {job.status}; its labels can be reviewed once it has succeeded"
        )
    workspace_dir = job_dir(settings.data_dir, job_id) / "workspace"
    if not (workspace_dir / DB_NAME).is_file():
        # Never make an empty one: that would review (and export) nothing.
        raise StoreError(f"job {job_id}: its workspace is missing on the server")
    ontology_json = job.params.get("ontology")
    if ontology_json is None:  # queued before jobs kept the ontology they were submitted with
        with db.read() as connection:
            ontology_json = connection.execute(
                sa.select(projects.c.ontology).where(projects.c.id == project_id)
            ).scalar_one()
    ontology = ontology_from_data(ontology_json, source=f"job {job_id} ontology")
    defaults = RouteThresholds()
    thresholds = RouteThresholds(
        accept=float(job.params.get("accept_threshold", defaults.accept)),
        reject=float(job.params.get("reject_threshold", defaults.reject)),
        review_below_score=float(job.params.get("review_below_score", defaults.review_below_score)),
    )
    return ReviewJob(
        job=job,
        workspace_dir=workspace_dir,
        class_names=tuple(ontology.names),
        thresholds=thresholds,
        db=db,
        settings=settings,
        project_id=project_id,
    )


def job_image_sha256s(db: Database, *, job_id: str) -> list[str]:
    """The content hashes of the job's images, in submission order, each once."""
    with db.read() as connection:
        found = connection.execute(
            sa.select(images.c.sha256)
            .join(job_images, job_images.c.image_id == images.c.id)
            .where(job_images.c.job_id == job_id)
            .order_by(job_images.c.position)
        ).scalars()
        return list(dict.fromkeys(found))


def job_image_file(
    db: Database, *, data_dir: Path, job_id: str, image_sha256: str
) -> tuple[Path, str]:
    """The stored file of the job's image with these bytes, and its media type; NotFoundError
    when the job has no such image."""
    with db.read() as connection:
        row = connection.execute(
            sa.select(images.c.extension)
            .join(job_images, job_images.c.image_id == images.c.id)
            .where(job_images.c.job_id == job_id, images.c.sha256 == image_sha256)
            .limit(1)
        ).first()
    if row is None:
        raise NotFoundError(f"job {job_id} has no image {image_sha256}")
    path = blob_path(data_dir, image_sha256, row.extension)
    if not path.is_file():
        raise StoreError(f"image {image_sha256}: its file is missing on the server")
    return path, MEDIA_TYPES.get(row.extension, "application/octet-stream")


@contextmanager
def _export_lock(folder: Path) -> Iterator[None]:
    """One re-export of a job at a time, across the service's processes (an exporter replaces
    the dataset folder and removes what it takes for an earlier export's leftovers)."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".review-export.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _check_same_run(config: LabelConfig, out_dir: Path, job_id: str) -> None:
    """ConflictError unless ``config`` finds the proposals and verdicts the job's run stored: a
    detector or verifier name the operator has pointed elsewhere since would route every box
    as unproposed or unverified, and that must not replace the job's dataset."""
    from labeler.pipeline import changed_since_run

    try:
        provenance = json.loads((out_dir / "report.json").read_text())["provenance"]
    except (OSError, ValueError, KeyError):
        raise StoreError(
            f"job {job_id}: its dataset's report.json is missing or unreadable"
        ) from None
    changed = changed_since_run(config, provenance)
    if changed:
        log.warning("job %s cannot be re-exported: %s changed", job_id, ", ".join(changed))
        raise ConflictError(
            f"job {job_id}: the server's configuration of its detector or verifier has changed "
            "since it ran, so its stored proposals and verdicts no longer match; its labels "
            "cannot be re-exported (the server's log says what changed)"
        )


def reexport(
    db: Database, *, settings: ServiceSettings, project_id: str, job_id: str
) -> dict[str, Any]:
    """Re-export the job's dataset with the reviewers' decisions, without any model; update
    the job's per-image results and label counts to match, drop its built archives; returns
    the new report's counts (``labels``, ``labels_by_decider``, ``per_class``, ``images``,
    ``dataset``)."""
    from labeler.pipeline import run_label
    from serve.jobs.worker import (
        job_image_rows,
        label_job_config,
        label_job_outcome,
        materialize_job_images,
    )

    review = review_job(db, settings=settings, project_id=project_id, job_id=job_id)
    job = review.job
    try:
        config = label_job_config(
            db,
            settings,
            job_id=job_id,
            project_id=project_id,
            params=job.params,
            with_api_key=False,
        )
    except KeyError as missing:
        raise ConflictError(
            f"job {job_id}: the server no longer offers its detector or verifier {missing}; "
            "its labels cannot be re-exported"
        ) from None
    folder = job_dir(settings.data_dir, job_id)
    with _export_lock(folder):
        _check_same_run(config, config.out_dir, job_id)
        rows = job_image_rows(db, job_id)
        by_stem = materialize_job_images(rows, settings.data_dir, config.images_dir)
        try:
            report = run_label(config, route_only=True)
        except InputError as error:
            raise StoreError(f"job {job_id}: re-export failed: {error}") from None
        summary, write_results = label_job_outcome(
            job_id=job_id,
            params=job.params,
            rows=rows,
            by_stem=by_stem,
            out_dir=config.out_dir,
            report=report,
        )
        counts = {
            "labels": report["labels"],
            "labels_by_decider": report["labels_by_decider"],
            "per_class": report["per_class"],
            "images": summary["images"],
            "dataset": summary["dataset"],
        }
        with db.write() as connection:
            result = connection.execute(
                sa.select(jobs.c.result).where(jobs.c.id == job_id).with_for_update()
            ).scalar_one()
            # The run's own record (verifier calls, timings, provenance) stays; its counts are
            # those of the dataset as it is now.
            connection.execute(
                sa.update(jobs)
                .where(jobs.c.id == job_id)
                .values(result={**(result or {}), **counts, "reexported_at": time.time()})
            )
            write_results(connection)
        # Archives built from the dataset before: the next download builds them again.
        for archive in (folder / "exports").glob("*.zip"):
            archive.unlink(missing_ok=True)
    log.info("job %s re-exported with reviewers' decisions: %s", job_id, report["labels"])
    return counts
