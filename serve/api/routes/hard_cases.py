"""Hard cases sent back by devices, and the collection policy of ``/predict?collect=true``.

A device pushes one frame per request: ``POST /v1/projects/{id}/hard-cases``, a multipart form
with the frame in ``file`` and its outbox manifest (JSON) in ``manifest``; the optional
``X-Content-SHA256`` header is checked against the bytes received. Pushes are idempotent by the
frame's SHA-256: 201 for a new hard case, 200 when the project has the frame already (the
pusher's device and reasons are merged into it). ``GET .../hard-cases/by-sha256/{sha256}`` lets
a client skip frames the server has from it already. Labeler and admin keys may push (a device's
key is a labeler key); reviewer keys may not.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from functools import partial
from typing import Annotated, Any

from fastapi import (
    APIRouter,
    Body,
    File,
    Form,
    Header,
    HTTPException,
    Query,
    Request,
    Response,
    UploadFile,
    status,
)
from fastapi import Path as PathParam
from PIL import Image
from pydantic import ValidationError

from labeler.core.exceptions import InputError
from serve.api.deps import CurrentSettings, Db, Offset, ProjectId, run_in_app_pool
from serve.api.hard_case_schemas import (
    DEVICE_NAME_CHARS,
    HardCaseManifest,
    HardCasePublic,
    HardCasePushed,
)
from serve.api.schemas import CollectionOutcome, as_datetime, error_responses
from serve.db import Database
from serve.errors import NotFoundError
from serve.ingest.hard_cases import (
    HardCase,
    ServerCollectors,
    find_hard_case_by_sha256,
    get_collection_policy,
    get_hard_case,
    list_hard_cases,
    record_hard_case,
    set_collection_policy,
)
from serve.runtime.collect import CollectionPolicy, policy_from_mapping
from serve.settings import ServiceSettings

__all__ = ["COLLECTORS", "collect_predicted_frame", "router"]

router = APIRouter(prefix="/v1/projects/{project_id}", tags=["hard-cases"])

SHA256_HEADER = "X-Content-SHA256"
DEFAULT_DEVICE = "server"

# /predict?collect=true's rate limits and near-duplicate memory, per project, in this process.
COLLECTORS = ServerCollectors()


def hard_case_public(case: HardCase) -> HardCasePublic:
    return HardCasePublic(
        id=case.id,
        image_id=case.image.id,
        image_url=f"/v1/projects/{case.project_id}/images/{case.image.id}/file",
        sha256=case.image.sha256,
        width=case.image.width,
        height=case.image.height,
        reasons=case.reasons,
        predictions=case.predictions,
        model_version=case.model_version,
        devices=case.devices,
        first_seen_at=as_datetime(case.first_seen_at),
        last_seen_at=as_datetime(case.last_seen_at),
        consumed_by_job=case.consumed_by_job,
    )


def _manifest(text: str) -> HardCaseManifest:
    try:
        return HardCaseManifest.model_validate_json(text)
    except ValidationError as error:
        problems = "; ".join(
            f"manifest.{'.'.join(str(p) for p in item['loc'])}: {item['msg']}"
            if item["loc"]
            else f"manifest: {item['msg']}"
            for item in error.errors()[:5]
        )
        raise InputError(problems) from None


def _check_sha256(field: str, claimed: str | None, actual: str) -> None:
    if claimed is not None and claimed.strip().lower() != actual:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            f"{field}: the frame received hashes to {actual}, not {claimed.strip()[:64]!r} "
            "(the upload was changed or cut short); send it again",
        )


@router.post(
    "/hard-cases",
    summary="Push a hard case: the frame ('file') and its outbox manifest ('manifest', JSON)",
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"model": HardCasePushed, "description": "The project had this frame already."},
        **error_responses(400, 404, 413, 422),
    },
)
async def push_hard_case(
    db: Db,
    settings: CurrentSettings,
    project_id: ProjectId,
    request: Request,
    response: Response,
    file: Annotated[UploadFile, File(description="The frame: one image (JPEG, PNG, ...).")],
    manifest: Annotated[
        str,
        Form(
            description="JSON: reasons (list, required), device (required), predictions, "
            "model_version, sha256 (checked if given); an outbox manifest as it stands."
        ),
    ],
    content_sha256: Annotated[
        str | None,
        Header(alias=SHA256_HEADER, description="The frame's SHA-256 (hex); checked if given."),
    ] = None,
) -> HardCasePushed:
    data = await file.read(settings.max_image_bytes + 1)
    if len(data) > settings.max_image_bytes:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"file: over the {settings.max_image_bytes}-byte image limit "
            "(PROMPTLABEL_MAX_IMAGE_BYTES)",
        )
    actual = hashlib.sha256(data).hexdigest()
    _check_sha256(SHA256_HEADER, content_sha256, actual)
    sent = _manifest(manifest)
    _check_sha256("manifest.sha256", sent.sha256, actual)
    case, created = await run_in_app_pool(
        request,
        "ingest",
        partial(
            record_hard_case,
            db,
            settings,
            project_id=project_id,
            data=data,
            filename=file.filename or f"{actual[:16]}.jpg",
            reasons=sent.reasons,
            predictions=sent.predictions,
            device=sent.device,
            model_version=sent.model_version,
        ),
    )
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    return HardCasePushed(**hard_case_public(case).model_dump(), created=created)


@router.get("/hard-cases", summary="The project's hard cases, first seen first")
def list_project_hard_cases(
    db: Db,
    project_id: ProjectId,
    offset: Offset = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    since: Annotated[
        datetime | None,
        Query(
            description="Only hard cases seen (first or again) at or after this time "
            "(ISO 8601, UTC unless it says otherwise)."
        ),
    ] = None,
    new: Annotated[
        bool, Query(description="Only hard cases no labeling job has taken yet.")
    ] = False,
) -> list[HardCasePublic]:
    since_s = None
    if since is not None:
        since_s = (since if since.tzinfo else since.replace(tzinfo=UTC)).timestamp()
    found = list_hard_cases(
        db, project_id=project_id, offset=offset, limit=limit, since=since_s, only_new=new
    )
    return [hard_case_public(case) for case in found]


@router.get(
    "/hard-cases/by-sha256/{sha256}",
    summary="The hard case whose frame has this SHA-256, if the project has it",
    responses=error_responses(404, 422),
)
def get_hard_case_by_sha256(
    db: Db,
    project_id: ProjectId,
    sha256: Annotated[str, PathParam(pattern="^[0-9a-fA-F]{64}$")],
) -> HardCasePublic:
    case = find_hard_case_by_sha256(db, project_id=project_id, sha256=sha256.lower())
    if case is None:
        raise NotFoundError(f"no hard case with sha256 {sha256.lower()} in this project")
    return hard_case_public(case)


@router.get("/hard-cases/{hard_case_id}", responses=error_responses(404))
def get_project_hard_case(db: Db, project_id: ProjectId, hard_case_id: str) -> HardCasePublic:
    case = get_hard_case(db, project_id=project_id, hard_case_id=hard_case_id)
    if case is None:
        raise NotFoundError(f"no hard case {hard_case_id!r} in this project")
    return hard_case_public(case)


# -- the collection policy -----------------------------------------------------------------------


@router.get(
    "/collection-policy",
    summary="The policy /predict?collect=true applies",
    responses=error_responses(404),
)
def get_project_collection_policy(db: Db, project_id: ProjectId) -> CollectionPolicy:
    policy = get_collection_policy(db, project_id=project_id)
    if policy is None:
        raise NotFoundError(
            f"project {project_id} has no collection policy: PUT one to "
            f"/v1/projects/{project_id}/collection-policy"
        )
    return policy


@router.put(
    "/collection-policy",
    summary="Set the policy /predict?collect=true applies (the fields of a policy YAML file)",
    responses=error_responses(404, 422),
)
def put_project_collection_policy(
    db: Db,
    project_id: ProjectId,
    body: Annotated[
        dict[str, Any],
        Body(
            examples=[
                {
                    "confidence_band": {"*": [0.3, 0.45]},
                    "max_detections": 30,
                    "rate_limits": {"per_minute": 6},
                }
            ]
        ),
    ],
) -> CollectionPolicy:
    """Takes the fields of ``promptlabel predict --policy``'s YAML file. A new policy starts a
    fresh rate limit and near-duplicate memory."""
    policy = policy_from_mapping(body, source="body")
    set_collection_policy(db, project_id=project_id, policy=policy)
    COLLECTORS.forget(project_id)
    return policy


@router.delete(
    "/collection-policy",
    summary="Remove the policy: /predict?collect=true keeps nothing",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(404),
)
def delete_project_collection_policy(db: Db, project_id: ProjectId) -> None:
    set_collection_policy(db, project_id=project_id, policy=None)
    COLLECTORS.forget(project_id)


def collect_predicted_frame(
    db: Database,
    settings: ServiceSettings,
    *,
    project_id: str,
    data: bytes,
    name: str,
    image: Image.Image,
    records: list[dict[str, Any]],
    model_version: str,
    device: str | None,
) -> CollectionOutcome:
    """/predict?collect=true: the project's policy on this frame and its detections ``records``;
    a frame it keeps becomes a hard case sent by ``device`` (``server`` when not named)."""
    policy = get_collection_policy(db, project_id=project_id)
    if policy is None:
        return CollectionOutcome(collected=False, reasons=[], skipped="no_policy")
    reasons, skipped = COLLECTORS.decide(project_id, policy, image, records)
    if not reasons:
        return CollectionOutcome(collected=False, reasons=[], skipped=skipped or "no_reason")
    case, _ = record_hard_case(
        db,
        settings,
        project_id=project_id,
        data=data,
        # A raw body has no file name: "body" would say nothing in the images list.
        filename=name if name not in ("body", "file") else "predicted-frame",
        reasons=reasons,
        predictions=records,
        device=(device or DEFAULT_DEVICE)[:DEVICE_NAME_CHARS],
        model_version=model_version,
    )
    return CollectionOutcome(collected=True, reasons=reasons, hard_case_id=case.id)
