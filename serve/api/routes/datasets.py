"""Dataset versions of a project: build one from labeling jobs, list them, read one.

Thin over ``serve.jobs.dataset_versions``. Labeler and admin keys build; any key of the project
(reviewer keys too) reads.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Response, status

from distill.dataset_versions import DatasetVersion
from serve.api.dataset_schemas import DatasetVersionCreate, DatasetVersionPublic
from serve.api.deps import CurrentSettings, Db, ProjectId, ReviewProjectId
from serve.api.schemas import error_responses
from serve.jobs import dataset_versions as versions

router = APIRouter(prefix="/v1/projects/{project_id}/datasets", tags=["datasets"])

_ERRORS = error_responses(403, 404, 409, 422)


def _public(version: DatasetVersion) -> DatasetVersionPublic:
    record: dict[str, Any] = version.as_dict()
    # Where the server keeps files is its own business: sources are named by job.
    record["sources"] = [
        {k: v for k, v in source.items() if k != "dataset_dir"} for source in version.sources
    ]
    return DatasetVersionPublic.model_validate(record)


@router.post(
    "",
    summary="Build a dataset version from labeling jobs on a parent version",
    status_code=status.HTTP_201_CREATED,
    responses={200: {"model": DatasetVersionPublic, "description": "Nothing changed: the "
                     "existing version holding exactly this content"}, **_ERRORS},
)  # fmt: skip
def create_dataset_version(
    db: Db,
    settings: CurrentSettings,
    project_id: ProjectId,
    body: DatasetVersionCreate,
    response: Response,
) -> DatasetVersionPublic:
    """The parent's images and labels, then each job's dataset as reviewed (later jobs' labels
    win); an image in the parent's val stays in val. 201 with the new version, or 200 with the
    existing one when its content would be the same."""
    version, created = versions.build_version(
        db,
        data_dir=settings.data_dir,
        project_id=project_id,
        label_job_ids=body.label_job_ids,
        parent=body.parent,
        hard_cases=versions.project_hard_cases(db, project_id=project_id)
        if body.hard_cases
        else (),
    )
    if not created:
        response.status_code = status.HTTP_200_OK
    return _public(version)


@router.get("", summary="The project's dataset versions, oldest first", responses=_ERRORS)
def list_dataset_versions(
    settings: CurrentSettings, project_id: ReviewProjectId
) -> list[DatasetVersionPublic]:
    return [
        _public(version)
        for version in versions.dataset_versions(settings.data_dir, project_id).list()
    ]


@router.get("/{version}", summary="One dataset version: lineage and counts", responses=_ERRORS)
def get_dataset_version(
    settings: CurrentSettings,
    project_id: ReviewProjectId,
    version: Annotated[str, "d3, or latest"],
) -> DatasetVersionPublic:
    return _public(versions.get_version(settings.data_dir, project_id, version))
