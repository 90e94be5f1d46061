"""The caller's project and its ontology."""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter

from labeler.ontology import ontology_from_data
from serve.api.auth import set_project_ontology
from serve.api.deps import CurrentPrincipal, Db, ProjectId, ReviewProjectId
from serve.api.schemas import OntologyIn, ProjectPublic, as_datetime, error_responses
from serve.db import Database, images, projects

router = APIRouter(prefix="/v1/projects", tags=["projects"])


def _project(db: Database, project_id: str) -> ProjectPublic:
    with db.read() as connection:
        row = connection.execute(sa.select(projects).where(projects.c.id == project_id)).one()
        count = connection.execute(
            sa.select(sa.func.count()).select_from(images).where(images.c.project_id == project_id)
        ).scalar_one()
    return ProjectPublic(
        id=row.id,
        name=row.name,
        ontology=row.ontology,
        images=count,
        created_at=as_datetime(row.created_at),
        updated_at=as_datetime(row.updated_at),
    )


@router.get("", summary="The projects this key can see (exactly one)")
def list_projects(db: Db, principal: CurrentPrincipal) -> list[ProjectPublic]:
    return [_project(db, principal.project_id)]


@router.get("/{project_id}", responses=error_responses(404))
def get_project(db: Db, project_id: ReviewProjectId) -> ProjectPublic:
    return _project(db, project_id)


@router.put(
    "/{project_id}/ontology",
    summary="Replace the project's ontology (the classes to label)",
    responses=error_responses(404, 422),
)
def put_ontology(db: Db, project_id: ProjectId, body: OntologyIn) -> ProjectPublic:
    ontology = ontology_from_data(body.model_dump(mode="json"), source="ontology")
    set_project_ontology(db, project_id, ontology)
    return _project(db, project_id)
