"""Spot checks of a reviewed target's automatic labels: draw a blind sample, answer it, report.

Thin over ``labeler.review.spot_checks`` (over the target's workspace), beside the review routes
under the same prefix, and like them it knows only the ``ReviewTarget`` and the caller: the
same routes serve a CLI workspace. Reviewer, labeler and admin keys may use every route here;
the reviewer recorded with each answer is the API key's id.

Blind: what a check shows is its image, box and class. Its verdict, P(yes), stratum and any
answer are never in a check; the report gives only aggregates. (The review routes still show an
image's boxes as they stand: a page that shows spot checks does not show those beside them.)
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, status
from fastapi.responses import JSONResponse

from labeler.core.exceptions import InputError, StaleDecision
from labeler.review import spot_checks
from labeler.store.spot_checks import SpotCheckAnswer
from serve.api.deps import CurrentPrincipal, CurrentSettings
from serve.api.review_target import CurrentReviewTarget
from serve.api.routes.review import image_url
from serve.api.schemas import error_responses
from serve.api.spot_check_schemas import (
    SpotCheckAnswerConflict,
    SpotCheckAnswerIn,
    SpotCheckAnswerPublic,
    SpotCheckDrawIn,
    SpotCheckDrawPublic,
    SpotCheckItemPublic,
    SpotCheckQueuePublic,
    SpotCheckReportPublic,
)
from serve.errors import ConflictError, NotFoundError
from serve.jobs.acceptance import checks_to_half_width

router = APIRouter(prefix="/v1/projects/{project_id}/jobs/{job_id}/review", tags=["review"])

_ERRORS = error_responses(403, 404, 409, 422)
ProposalId = Annotated[int, Path(ge=0, le=2**63 - 1, description="The checked box's id.")]


@router.post(
    "/spot-checks",
    summary="Draw a seeded blind sample of the automatic labels, stratified by class",
    responses=_ERRORS,
)
def draw_spot_checks(
    target: CurrentReviewTarget,
    body: SpotCheckDrawIn,
) -> SpotCheckDrawPublic:
    """Draws until each class of each stratum asked for (auto-accepted, auto-rejected labels
    of the latest run) has ``per_class`` checks. The same seed draws the same boxes; a larger
    ``per_class`` keeps the earlier picks and adds the next ones, so a repeat adds nothing.
    Boxes a reviewer decided are not drawn."""
    with target.workspace() as workspace:
        before = len(workspace.spot_checks())
        pending = spot_checks.draw_spot_checks(
            workspace, per_class=body.per_class, seed=body.seed, strata=body.strata
        )
        drawn = len(workspace.spot_checks())
    return SpotCheckDrawPublic(added=drawn - before, drawn=drawn, pending=len(pending))


@router.get(
    "/spot-checks",
    summary="Unanswered spot checks for this key, blind, each claimed for it",
    responses=_ERRORS,
)
def spot_check_queue(
    request: Request,
    settings: CurrentSettings,
    principal: CurrentPrincipal,
    target: CurrentReviewTarget,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
) -> SpotCheckQueuePublic:
    """Each item is the box and its class on its image; answer whether the box is right for
    its class. Items are claimed for this key for ``PROMPTLABEL_REVIEW_CLAIM_S`` seconds, as
    the review queue's are: colleagues skip them meanwhile."""
    reviewer = principal.key_id
    with target.workspace() as workspace:
        available = spot_checks.pending_spot_checks(workspace, reviewer=reviewer, limit=2**31)
        # A colleague may claim one between the read and the claim: it is skipped.
        picked = [
            check
            for check in available[:limit]
            if workspace.claim(check.proposal_id, reviewer=reviewer, ttl_s=settings.review_claim_s)
        ]
        sizes = workspace.image_sizes({check.image_sha256 for check in picked})
    class_ids = {name: class_id for class_id, name in enumerate(target.class_names)}
    items = [
        SpotCheckItemPublic.model_validate(
            {
                "proposal_id": check.proposal_id,
                "version": check.version,
                "image_sha256": check.image_sha256,
                "image_url": image_url(request, check.image_sha256),
                "image_wh": sizes.get(check.image_sha256),
                "class_id": class_ids.get(check.class_name),
                "class": check.class_name,
                "xyxy": check.xyxy,
            }
        )
        for check in picked
    ]
    return SpotCheckQueuePublic(items=items, left=len(available), claim_s=settings.review_claim_s)


@router.post(
    "/spot-checks/{proposal_id}/answer",
    summary="Answer a spot check: is the box correct for its class?",
    response_model=None,
    responses={
        200: {"model": SpotCheckAnswerPublic, "description": "The answer was recorded"},
        409: {
            "model": SpotCheckAnswerConflict,
            "description": "Refused, nothing recorded: another answer came first (send its "
            "version to change it), a reviewer decided the box outside the check, or a later "
            "run routed the box otherwise (the check is outdated). Also: the job is not "
            "finished.",
        },
        **error_responses(403, 404, 422),
    },
)
def answer_spot_check(
    principal: CurrentPrincipal,
    target: CurrentReviewTarget,
    proposal_id: ProposalId,
    body: SpotCheckAnswerIn,
) -> JSONResponse:
    """``base_version`` is the check's ``version`` as listed (0 before any answer). An answer
    on an answered check replaces it when made on its current version. "incorrect" on an
    auto-accepted box also rejects it, "correct" on an auto-rejected one accepts it (the next
    re-export follows); the estimates use the answers about the automatic labels."""
    with target.workspace() as workspace:
        check = workspace.spot_checks().get(proposal_id)
        if check is None:
            raise NotFoundError(f"box {proposal_id} has no spot check: draw spot checks first")
        try:
            answered = spot_checks.answer_spot_check(
                workspace,
                proposal_id,
                correct=body.answer == "correct",
                base_version=body.base_version,
                reviewer=principal.key_id,
            )
        except StaleDecision as stale:
            now = workspace.spot_checks()[proposal_id].public()
            conflict = SpotCheckAnswerConflict(
                detail=str(stale),
                proposal_id=proposal_id,
                # Another answer came first (the check's own state), or else a reviewer
                # decided the box outside the check (the box's state, not shown: blind).
                decided_outside=not isinstance(stale.current, SpotCheckAnswer),
                current=SpotCheckAnswerPublic.model_validate(now, from_attributes=True),
            )
            return JSONResponse(conflict.model_dump(mode="json"), status_code=409)
        except InputError as error:
            # The check exists: what the library refuses now is an outdated one.
            raise ConflictError(str(error)) from None
    public = SpotCheckAnswerPublic.model_validate(answered, from_attributes=True)
    return JSONResponse(public.model_dump(mode="json"), status_code=status.HTTP_200_OK)


@router.get(
    "/spot-checks/report",
    summary="Precision per class and overall with Wilson intervals, and the threshold curve",
    responses=_ERRORS,
)
def spot_check_report(
    target: CurrentReviewTarget,
    half_width: Annotated[
        float,
        Query(gt=0, le=0.5, description="The interval half-width to count checks towards."),
    ] = 0.05,
    confidence: Annotated[float, Query(gt=0, lt=1, description="The intervals' level.")] = 0.95,
) -> SpotCheckReportPublic:
    """From the answered checks of the latest run's automatic labels: the precision of the
    auto-accepted labels and the share of auto-rejected labels that were correct, per class
    and overall (classes weighted by their label counts), each with its Wilson interval and
    the checks to the half-width; per verified class, the precision and number of labels
    each accept threshold would give."""
    with target.workspace() as workspace:
        found: dict[str, Any] = spot_checks.spot_check_report(
            workspace, confidence=confidence, target_half_width=half_width
        )
    for estimate in ("precision", "rejected_share_correct"):
        found[estimate]["checks_to_target"] = checks_to_half_width(
            found[estimate], half_width=half_width, confidence=confidence
        )
    thresholds = target.thresholds
    return SpotCheckReportPublic.model_validate(
        {
            **found,
            "job_id": target.name,
            "thresholds": {
                "accept": thresholds.accept,
                "reject": thresholds.reject,
                "review_below_score": thresholds.review_below_score,
            },
        }
    )
