"""Labeling and training jobs: submit (idempotent), progress, cancel, results, export."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Response, status
from fastapi.responses import FileResponse

from serve.api.deps import CurrentSettings, Db, Offset, ProjectId, ReviewProjectId
from serve.api.schemas import (
    JobProgressPublic,
    JobPublic,
    JobResultItem,
    JobResultsPage,
    LabelJobCreate,
    TrainJobCreate,
    as_datetime,
    error_responses,
)
from serve.jobs import service as job_service
from serve.telemetry import JOBS_SUBMITTED

router = APIRouter(prefix="/v1/projects/{project_id}", tags=["jobs"])

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=200,
        description="Repeat a submit with the same key and body to get the same job back.",
    ),
]
_ERRORS = error_responses(404, 409, 422)
_SUBMIT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": JobPublic,
        "description": "The job that an earlier submit with this Idempotency-Key created",
    },
    **_ERRORS,
}


def job_public(job: job_service.JobRecord) -> JobPublic:
    return JobPublic(
        id=job.id,
        project_id=job.project_id,
        kind=job.kind,
        status=job.status,
        params=job.params,
        attempts=job.attempts,
        cancel_requested=job.cancel_requested,
        progress=(
            JobProgressPublic.model_validate(
                {
                    k: v
                    for k, v in job.progress.items()
                    if k not in job_service.INTERNAL_PROGRESS_KEYS
                }
            )
            if job.progress is not None
            else None
        ),
        eta_s=job.eta_s,
        result=job.result,
        error=job.error,
        created_at=as_datetime(job.created_at),
        started_at=as_datetime(job.started_at),
        finished_at=as_datetime(job.finished_at),
    )


def _submitted(job: job_service.JobRecord, created: bool, response: Response) -> JobPublic:
    if created:
        JOBS_SUBMITTED.labels(kind=job.kind).inc()
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    return job_public(job)


@router.post(
    "/label-jobs",
    summary="Submit a labeling job (201; 200 when the Idempotency-Key replays an earlier submit)",
    status_code=status.HTTP_201_CREATED,
    responses=_SUBMIT_RESPONSES,
)
def submit_label_job(
    db: Db,
    settings: CurrentSettings,
    project_id: ProjectId,
    body: LabelJobCreate,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> JobPublic:
    job, created = job_service.submit_label_job(
        db, settings=settings, project_id=project_id, request=body, idempotency_key=idempotency_key
    )
    return _submitted(job, created, response)


@router.post(
    "/train-jobs",
    summary="Train a student on a finished labeling job's dataset, register and export it",
    status_code=status.HTTP_201_CREATED,
    responses=_SUBMIT_RESPONSES,
)
def submit_train_job(
    db: Db,
    settings: CurrentSettings,
    project_id: ProjectId,
    body: TrainJobCreate,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> JobPublic:
    job, created = job_service.submit_train_job(
        db, settings=settings, project_id=project_id, request=body, idempotency_key=idempotency_key
    )
    return _submitted(job, created, response)


@router.get("/jobs", summary="The project's jobs, newest first (reviewer keys too: to pick one)")
def list_jobs(
    db: Db,
    project_id: ReviewProjectId,
    status_filter: Annotated[
        Literal["queued", "running", "succeeded", "failed", "cancelled"] | None,
        Query(alias="status"),
    ] = None,
    offset: Offset = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[JobPublic]:
    found = job_service.list_jobs(
        db, project_id=project_id, status=status_filter, offset=offset, limit=limit
    )
    return [job_public(job) for job in found]


@router.get("/jobs/{job_id}", summary="A job: status, progress, ETA", responses=_ERRORS)
def get_job(db: Db, project_id: ReviewProjectId, job_id: str) -> JobPublic:
    return job_public(job_service.get_job(db, project_id=project_id, job_id=job_id))


@router.post("/jobs/{job_id}/cancel", summary="Cancel a queued or running job", responses=_ERRORS)
def cancel_job(db: Db, project_id: ProjectId, job_id: str) -> JobPublic:
    return job_public(job_service.cancel_job(db, project_id=project_id, job_id=job_id))


@router.get(
    "/jobs/{job_id}/results",
    summary="Per-image labels with status and evidence, in submission order",
    responses=_ERRORS,
)
def job_results(
    db: Db,
    project_id: ProjectId,
    job_id: str,
    label_status: Annotated[
        Literal["accepted", "rejected", "needs_review"] | None,
        Query(description="Only images with at least one label of this status."),
    ] = None,
    offset: Offset = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> JobResultsPage:
    items, next_offset = job_service.job_results(
        db,
        project_id=project_id,
        job_id=job_id,
        label_status=label_status,
        offset=offset,
        limit=limit,
    )
    return JobResultsPage(
        items=[JobResultItem.model_validate(item) for item in items], next_offset=next_offset
    )


@router.get(
    "/jobs/{job_id}/export",
    summary="Download the labeled dataset as a zip (YOLO or COCO)",
    response_class=FileResponse,
    responses={200: {"content": {"application/zip": {}}}, **_ERRORS},
)
def export_job(
    db: Db,
    settings: CurrentSettings,
    project_id: ProjectId,
    job_id: str,
    format: Literal["yolo", "coco"] = "yolo",
) -> FileResponse:
    archive = job_service.export_archive(
        db, data_dir=settings.data_dir, project_id=project_id, job_id=job_id, format=format
    )
    return FileResponse(archive, media_type="application/zip", filename=archive.name)
