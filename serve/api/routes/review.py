"""Reviewing a succeeded labeling job: the queue, decisions, added boxes, images, re-export.

Thin over ``labeler.review.queue`` (the review logic, over the job's workspace) and
``serve.jobs.review`` (the job, its images and the re-export). Reviewer, labeler and admin keys
may use every route here; the reviewer recorded with each decision is the API key's id.
"""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, status
from fastapi.responses import FileResponse, JSONResponse

from labeler.review import queue
from serve.api.deps import CurrentPrincipal, CurrentSettings, run_in_app_pool
from serve.api.review_target import CurrentReviewTarget
from serve.api.schemas import (
    ReviewBoxIn,
    ReviewDecisionsConflict,
    ReviewDecisionsIn,
    ReviewDecisionsPublic,
    ReviewExportPublic,
    ReviewImageBoxes,
    ReviewItemPublic,
    ReviewQueuePublic,
    ReviewStatePublic,
    ReviewSummaryPublic,
    error_responses,
)
from serve.ingest.uploads import MEDIA_TYPES

router = APIRouter(prefix="/v1/projects/{project_id}/jobs/{job_id}/review", tags=["review"])

_ERRORS = error_responses(403, 404, 409, 422)
ImageSha256 = Annotated[str, Path(pattern=r"^[0-9a-f]{64}$", description="The image's SHA-256.")]


def image_url(request: Request, image_sha256: str) -> str:
    """Where the review routes serve an image of the job (the spot checks' items link it too)."""
    root = request.scope.get("root_path", "")
    return f"{root}{router.prefix.format(**request.path_params)}/images/{image_sha256}"


@router.get(
    "/queue",
    summary="The next boxes to review, most uncertain first, each claimed for this key",
    responses=_ERRORS,
)
def review_queue(
    request: Request,
    settings: CurrentSettings,
    principal: CurrentPrincipal,
    target: CurrentReviewTarget,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    classes: Annotated[
        list[Annotated[str, Query(max_length=256)]] | None,
        Query(alias="class", description="Only these classes (repeat for several)."),
    ] = None,
    reasons: Annotated[
        list[Annotated[str, Query(max_length=256)]] | None,
        Query(alias="reason", description="Only reasons starting with this (repeatable)."),
    ] = None,
) -> ReviewQueuePublic:
    """Undecided boxes the route sent to review: no usable verifier answer first, then P(yes)
    nearest the middle of the accept/reject band, then the lowest detector score. Each is
    claimed for this key for ``PROMPTLABEL_REVIEW_CLAIM_S`` seconds: colleagues' queues skip it
    meanwhile, this key's own queue hands it out again."""
    with target.workspace() as workspace:
        items = queue.next_items(
            workspace,
            class_names=target.class_names,
            thresholds=target.thresholds,
            reviewer=principal.key_id,
            claim_s=settings.review_claim_s,
            image_url=partial(image_url, request),
            limit=limit,
            classes=classes or (),
            reasons=reasons or (),
        )
    return ReviewQueuePublic(
        items=[ReviewItemPublic.model_validate(item) for item in items],
        claim_s=settings.review_claim_s,
    )


@router.post(
    "/decisions",
    summary="Record decisions on boxes, in order (409 when any was stale: the others apply)",
    response_model=None,
    responses={
        200: {"model": ReviewDecisionsPublic, "description": "Every decision was recorded"},
        409: {
            "model": ReviewDecisionsConflict,
            "description": "Some decisions were refused (each result says which and why, with "
            "the box's current state); the others were recorded. Also: the job is not finished.",
        },
        **error_responses(403, 404, 422),
    },
)
def post_decisions(
    principal: CurrentPrincipal,
    target: CurrentReviewTarget,
    body: ReviewDecisionsIn,
) -> JSONResponse:
    """Each decision names the box's version it was made on (``base_version``, the queue's
    ``version``; 0 for a box never decided). Class ids and boxes are checked first (422 naming
    the decision, nothing recorded); boxes are clipped to the image and must be ones the
    dataset can hold."""
    decisions = [queue.DecisionRequest(**item.model_dump()) for item in body.decisions]
    with target.workspace() as workspace:
        outcome = queue.apply_decisions(
            workspace, decisions, reviewer=principal.key_id, class_names=target.class_names
        )
    if outcome.all_applied:
        return JSONResponse({"results": outcome.results})
    return JSONResponse(
        {
            "detail": f"{outcome.refused} of {len(decisions)} decisions were refused; the "
            "others were recorded",
            "results": outcome.results,
        },
        status_code=status.HTTP_409_CONFLICT,
    )


@router.post(
    "/boxes",
    summary="Add a box the detector missed (accepted as its class)",
    status_code=status.HTTP_201_CREATED,
    responses=_ERRORS,
)
def add_box(
    principal: CurrentPrincipal,
    target: CurrentReviewTarget,
    body: ReviewBoxIn,
) -> ReviewStatePublic:
    # An image of this job (404 otherwise), not just any the workspace holds.
    target.image_file(body.image_sha256)
    with target.workspace() as workspace:
        state = queue.add_box(
            workspace,
            image_sha256=body.image_sha256,
            class_id=body.class_id,
            xyxy=body.xyxy,
            reviewer=principal.key_id,
            class_names=target.class_names,
        )
    return ReviewStatePublic.model_validate(state)


@router.get(
    "/images/{image_sha256}",
    summary="One of the job's images, its bytes as uploaded",
    response_class=FileResponse,
    responses={
        200: {"content": {media_type: {} for media_type in sorted(set(MEDIA_TYPES.values()))}},
        **_ERRORS,
    },
)
def review_image(
    target: CurrentReviewTarget,
    image_sha256: ImageSha256,
) -> FileResponse:
    path, media_type = target.image_file(image_sha256)
    # The bytes never change (content-addressed): clients may keep them.
    return FileResponse(
        path,
        media_type=media_type,
        headers={
            "Cache-Control": "private, max-age=86400, immutable",
            "X-Content-Type-Options": "nosniff",
        },
    )


@router.get(
    "/images/{image_sha256}/boxes",
    summary="Every box of one image as it stands now",
    responses=_ERRORS,
)
def review_image_boxes(
    target: CurrentReviewTarget,
    image_sha256: ImageSha256,
) -> ReviewImageBoxes:
    target.image_file(image_sha256)
    with target.workspace() as workspace:
        found = queue.image_boxes(workspace, image_sha256, class_names=target.class_names)
    return ReviewImageBoxes.model_validate(found)


@router.get("/summary", summary="Classes, thresholds and how far the review is", responses=_ERRORS)
def review_summary(
    target: CurrentReviewTarget,
) -> ReviewSummaryPublic:
    sha256s = target.image_sha256s()
    with target.workspace() as workspace:
        found: dict[str, Any] = queue.review_summary(
            workspace,
            image_sha256s=sha256s,
            class_names=target.class_names,
            thresholds=target.thresholds,
        )
    return ReviewSummaryPublic.model_validate({"job_id": target.name, **found})


@router.post(
    "/export",
    summary="Re-export the job's dataset with the reviewers' decisions (no model runs)",
    responses=_ERRORS,
)
async def review_export(
    request: Request,
    target: CurrentReviewTarget,
) -> ReviewExportPublic:
    """Routes every box again from what the job stored (decisions win), writes the dataset,
    and updates the job's results and label counts: the job's ``/export`` download then holds
    the reviewed labels. Answers the new report's counts."""
    counts = await run_in_app_pool(
        request,
        "review",
        target.reexport,
    )
    return ReviewExportPublic.model_validate(counts)
