"""Accepting labeling jobs' datasets, and the project settings that govern it.

Thin over ``serve.jobs.acceptance``. Changing the settings, accepting and withdrawing need an
admin key; any key of the project (reviewer keys too) may read them. The acceptance is recorded
with the admin key's id.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, status
from fastapi.responses import JSONResponse

from serve.api.auth import Principal, Role
from serve.api.deps import CurrentPrincipal, CurrentSettings, Db, ReviewProjectId
from serve.api.schemas import as_datetime, error_responses
from serve.api.spot_check_schemas import (
    AcceptancePublic,
    AcceptanceRefusedBody,
    AcceptanceSnapshot,
    JobAcceptancePublic,
    ProjectSettingsIn,
    ProjectSettingsPublic,
)
from serve.db import Database
from serve.errors import ForbiddenError
from serve.jobs import acceptance
from serve.jobs import review as job_review

router = APIRouter(prefix="/v1/projects/{project_id}")

_ERRORS = error_responses(403, 404, 409, 422)


async def _admin(principal: CurrentPrincipal, project_id: ReviewProjectId) -> Principal:
    # After the project (another project's answers 404 whatever the key's role).
    if principal.role is not Role.ADMIN:
        raise ForbiddenError(
            f"this API key's role is {principal.role.value}; this route needs an admin key: "
            "`promptlabel keys create --role admin`"
        )
    return principal


AdminPrincipal = Annotated[Principal, Depends(_admin)]


def _settings_public(
    project_id: str, found: acceptance.ProjectAcceptanceSettings
) -> ProjectSettingsPublic:
    return ProjectSettingsPublic(
        project_id=project_id,
        min_precision=found.min_precision,
        require_accepted_datasets=found.require_accepted_datasets,
    )


def _record_public(record: acceptance.AcceptanceRecord) -> AcceptancePublic:
    return AcceptancePublic(
        id=record.id,
        job_id=record.job_id,
        status=record.status,
        accepted_by=record.accepted_by,
        accepted_at=as_datetime(record.accepted_at),
        dataset_written_at=as_datetime(record.dataset_written_at),
        min_precision=record.min_precision,
        report=AcceptanceSnapshot.model_validate(record.report),
        withdrawn_by=record.withdrawn_by,
        withdrawn_at=as_datetime(record.withdrawn_at),
    )


def _job_public(
    db: Database, project_id: str, state: acceptance.JobAcceptance
) -> JobAcceptancePublic:
    settings = acceptance.project_acceptance_settings(db, project_id=project_id)
    return JobAcceptancePublic(
        job_id=state.job_id,
        accepted=state.accepted,
        acceptance=None if state.latest is None else _record_public(state.latest),
        history=[_record_public(record) for record in state.history],
        min_precision=settings.min_precision,
        require_accepted_datasets=settings.require_accepted_datasets,
    )


@router.get(
    "/settings",
    tags=["projects"],
    summary="The project's acceptance settings",
    responses=error_responses(404),
)
def get_settings(db: Db, project_id: ReviewProjectId) -> ProjectSettingsPublic:
    return _settings_public(
        project_id, acceptance.project_acceptance_settings(db, project_id=project_id)
    )


@router.patch(
    "/settings",
    tags=["projects"],
    summary="Change the project's acceptance settings (admin keys)",
    responses=error_responses(403, 404, 422),
)
def patch_settings(
    db: Db, principal: AdminPrincipal, body: ProjectSettingsIn
) -> ProjectSettingsPublic:
    """Only the fields sent change. Acceptances already given stand: ``min_precision`` is
    checked when a dataset is accepted, ``require_accepted_datasets`` when a training job is
    submitted."""
    found = acceptance.update_project_acceptance_settings(
        db, project_id=principal.project_id, changes=body.model_dump(exclude_unset=True)
    )
    return _settings_public(principal.project_id, found)


@router.post(
    "/jobs/{job_id}/accept",
    tags=["review"],
    summary="Accept a labeling job's dataset (admin keys; 409 below the minimum precision)",
    status_code=status.HTTP_201_CREATED,
    response_model=None,
    responses={
        201: {"model": JobAcceptancePublic, "description": "Accepted"},
        409: {
            "model": AcceptanceRefusedBody,
            "description": "The spot checks do not support the project's min_precision: the "
            "detail says how many more checks would (also: the job is not finished).",
        },
        **error_responses(403, 404, 422),
    },
)
def accept(
    db: Db,
    settings: CurrentSettings,
    principal: AdminPrincipal,
    job_id: str,
) -> JSONResponse:
    """Accepts the dataset as it is now, recording the admin key, the time and the spot-check
    numbers (precision with its 95% Wilson interval, the checks, the label counts); an earlier
    acceptance of the job is superseded. With the project's ``min_precision`` set, refused
    while the interval's lower bound (over the auto-accepted labels no reviewer decided) is
    below it. A later re-export makes the acceptance lapse."""
    review = job_review.review_job(
        db, settings=settings, project_id=principal.project_id, job_id=job_id
    )
    try:
        state = acceptance.accept_dataset(db, review=review, accepted_by=principal.key_id)
    except acceptance.AcceptanceRefused as refused:
        minimum = acceptance.project_acceptance_settings(db, project_id=principal.project_id)
        body = AcceptanceRefusedBody.model_validate(
            {
                "detail": str(refused),
                "checks_needed": refused.checks_needed,
                "min_precision": minimum.min_precision,
                **refused.summary,
            }
        )
        return JSONResponse(body.model_dump(mode="json"), status_code=status.HTTP_409_CONFLICT)
    public = _job_public(db, principal.project_id, state)
    return JSONResponse(public.model_dump(mode="json"), status_code=status.HTTP_201_CREATED)


@router.delete(
    "/jobs/{job_id}/accept",
    tags=["review"],
    summary="Withdraw a labeling job's acceptance (admin keys)",
    responses=_ERRORS,
)
def withdraw(db: Db, principal: AdminPrincipal, job_id: str) -> JobAcceptancePublic:
    """404 when the job's dataset is not accepted (nor lapsed)."""
    state = acceptance.withdraw_acceptance(
        db, project_id=principal.project_id, job_id=job_id, withdrawn_by=principal.key_id
    )
    return _job_public(db, principal.project_id, state)


@router.get(
    "/jobs/{job_id}/acceptance",
    tags=["review"],
    summary="Whether a labeling job's dataset is accepted, and every acceptance of it",
    responses=_ERRORS,
)
def get_acceptance(db: Db, project_id: ReviewProjectId, job_id: str) -> JobAcceptancePublic:
    state = acceptance.job_acceptance(db, project_id=project_id, job_id=job_id)
    return _job_public(db, project_id, state)
