"""What the review routes review: a ``ReviewTarget``, and the dependency that finds it.

The service reviews a project's succeeded labeling job (``serve.jobs.review.ReviewJob``);
``promptlabel review DATASET_DIR`` reviews a CLI workspace with the same routes and the same page,
by overriding ``review_target`` (and the caller) in its own app. The routes know only this
protocol, so the two can never drift apart.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Annotated, Any, Protocol

from fastapi import Depends

from labeler.route import RouteThresholds
from labeler.store.workspace import Workspace
from serve.api.deps import CurrentSettings, Db, ReviewProjectId
from serve.jobs import review as job_review

__all__ = ["CurrentReviewTarget", "ReviewTarget", "review_target"]


class ReviewTarget(Protocol):
    """A workspace with labels to review, its classes and thresholds, its images, its export."""

    @property
    def name(self) -> str:
        """What the page shows: the job's id, or the dataset folder's name."""
        ...

    @property
    def class_names(self) -> tuple[str, ...]: ...

    @property
    def thresholds(self) -> RouteThresholds: ...

    def workspace(self) -> AbstractContextManager[Workspace]:
        """The workspace, open for this thread (one connection, closed after)."""
        ...

    def image_file(self, image_sha256: str) -> tuple[Path, str]:
        """The file of the image with these bytes and its media type; NotFoundError when the
        target holds no such image."""
        ...

    def image_sha256s(self) -> list[str]:
        """The content hashes of the target's images, in order, each once."""
        ...

    def reexport(self) -> dict[str, Any]:
        """Write the dataset again with the reviewers' decisions (no model runs); the new
        report's counts (``labels``, ``labels_by_decider``, ``per_class``, ``images``,
        ``dataset``)."""
        ...


def review_target(
    db: Db, settings: CurrentSettings, project_id: ReviewProjectId, job_id: str
) -> ReviewTarget:
    """The service's: the caller's project's labeling job ``job_id``, once it has succeeded."""
    return job_review.review_job(db, settings=settings, project_id=project_id, job_id=job_id)


CurrentReviewTarget = Annotated[ReviewTarget, Depends(review_target)]
