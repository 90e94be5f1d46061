"""Accepting a labeling job's dataset: "only accepted data enters the library".

An admin accepts a succeeded labeling job's dataset; the acceptance records who, when, and the
spot-check numbers it was given on (``labeler.review.spot_checks.spot_check_report`` over the
job's workspace). A project may set a minimum precision: acceptance is then refused while the
95% Wilson interval's lower bound of the auto-accepted labels' precision is below it, with the
number of further checks that would lift it if the precision seen so far holds. A project may
also require accepted datasets for training: a training job on a labeling job without a current
acceptance is refused.

What an acceptance speaks for is the dataset as written when it was given (the job's own run, or
its latest re-export with reviewers' decisions). Answers and decisions made afterwards change
the spot-check report but not that dataset, so they leave the acceptance standing; a re-export
writes a different dataset, so it makes the acceptance lapse: it is kept, marked ``lapsed``, no
longer counts, and an admin accepts again, checked against the numbers then. (The alternative,
re-exports refused while accepted, would stop reviewers from putting their spot-check
corrections into the dataset.) Withdrawn and superseded acceptances stay in the history.

A training job is checked when it is submitted: one already queued runs on what it was given.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import sqlalchemy as sa

from labeler.review.spot_checks import spot_check_report
from labeler.review.stats import wilson_interval
from labeler.store.workspace import Workspace
from serve.api.auth import new_id
from serve.db import Database, dataset_acceptances, jobs, projects
from serve.errors import ConflictError, NotFoundError
from serve.jobs.queue import JobKind

if TYPE_CHECKING:
    from serve.jobs.service import JobRecord

__all__ = [
    "CONFIDENCE",
    "AcceptanceRecord",
    "AcceptanceRefused",
    "JobAcceptance",
    "ProjectAcceptanceSettings",
    "accept_dataset",
    "checks_to_half_width",
    "checks_to_lower_bound",
    "dataset_written_at",
    "job_acceptance",
    "project_acceptance_settings",
    "require_accepted_for_training",
    "update_project_acceptance_settings",
    "withdraw_acceptance",
]

# The interval an acceptance is judged on: 95%, as the issue states it.
CONFIDENCE = 0.95

AcceptanceStatus = Literal["accepted", "lapsed", "withdrawn", "superseded"]


@dataclass(frozen=True)
class ProjectAcceptanceSettings:
    """``min_precision``: the lowest Wilson lower bound an acceptance allows (None: no
    minimum); ``require_accepted_datasets``: training jobs take only accepted datasets."""

    min_precision: float | None
    require_accepted_datasets: bool


@dataclass(frozen=True)
class AcceptanceRecord:
    """One acceptance of a job's dataset and what became of it.

    ``status``: ``accepted`` (current), ``lapsed`` (the dataset was re-exported after it),
    ``withdrawn`` (an admin withdrew it) or ``superseded`` (a later acceptance replaced it).
    """

    id: str
    job_id: str
    accepted_by: str
    accepted_at: float
    dataset_written_at: float
    min_precision: float | None
    report: dict[str, Any]
    withdrawn_by: str | None
    withdrawn_at: float | None
    withdrawn_reason: str | None
    status: AcceptanceStatus


@dataclass(frozen=True)
class JobAcceptance:
    """A labeling job's acceptance now: the latest acceptance not withdrawn (current or
    lapsed; None when there is none) and every acceptance, oldest first."""

    job_id: str
    latest: AcceptanceRecord | None
    history: list[AcceptanceRecord]

    @property
    def accepted(self) -> bool:
        return self.latest is not None and self.latest.status == "accepted"


class AcceptanceRefused(ConflictError):
    """The spot checks do not support the project's minimum precision (the service's 409).

    ``checks_needed``: further answered checks of auto-accepted labels after which the lower
    bound should reach the minimum if the precision seen so far holds; None when no number of
    checks would (the precision seen is below the minimum) or before any check of a class."""

    def __init__(self, message: str, *, checks_needed: int | None, summary: dict[str, Any]):
        super().__init__(message)
        self.checks_needed = checks_needed
        self.summary = summary


class _Reviewable(Protocol):
    """What acceptance needs of a job under review (``serve.jobs.review.ReviewJob``)."""

    @property
    def job(self) -> JobRecord: ...

    @property
    def project_id(self) -> str: ...

    def workspace(self) -> AbstractContextManager[Workspace]: ...


# -- the project's settings ------------------------------------------------------------------


def project_acceptance_settings(db: Database, *, project_id: str) -> ProjectAcceptanceSettings:
    with db.read() as connection:
        row = connection.execute(
            sa.select(projects.c.min_precision, projects.c.require_accepted_datasets).where(
                projects.c.id == project_id
            )
        ).first()
    if row is None:
        raise NotFoundError(f"no project {project_id!r}")
    return ProjectAcceptanceSettings(
        min_precision=row.min_precision,
        require_accepted_datasets=bool(row.require_accepted_datasets),
    )


def update_project_acceptance_settings(
    db: Database, *, project_id: str, changes: dict[str, Any]
) -> ProjectAcceptanceSettings:
    """Set the fields of ``changes`` (``min_precision``, ``require_accepted_datasets``); the
    others keep their values. Acceptances already given stand: the minimum is checked when a
    dataset is accepted."""
    allowed = {"min_precision", "require_accepted_datasets"}
    unknown = set(changes) - allowed
    if unknown:
        raise ValueError(f"not project settings: {', '.join(sorted(unknown))}")
    if changes:
        with db.write() as connection:
            connection.execute(
                sa.update(projects)
                .where(projects.c.id == project_id)
                .values(**changes, updated_at=time.time())
            )
    return project_acceptance_settings(db, project_id=project_id)


# -- judging the spot checks -----------------------------------------------------------------


def _projected_checks(
    *,
    population: int,
    checked: int,
    share: float,
    effective_checks: float,
    confidence: float,
    reached: Callable[[float, float], bool],
) -> int:
    """The fewest further checks after which ``reached(low, high)`` holds for the projected
    interval, at most ``population - checked`` (a census: the share itself, exactly).

    The projection follows ``labeler.review.stats``' stratified estimate: the effective number
    of checks grows in proportion to the checks (further checks spread over the classes as the
    ones so far), and its Wilson interval (SciPy's) is taken at the share seen so far,
    interpolated between whole success counts. At a fixed share both bounds close in as the
    checks grow, so the first total that reaches the goal is found by bisection.
    """
    if checked >= population:
        return 0
    ratio = effective_checks / checked if checked else 1.0

    def interval_at(total: int) -> tuple[float, float]:
        if total >= population:
            return (share, share)
        trials = max(1, math.floor(ratio * total))
        successes = share * trials
        low_k = min(math.floor(successes), trials)
        low, high = wilson_interval(low_k, trials, confidence)
        if successes > low_k:
            next_low, next_high = wilson_interval(low_k + 1, trials, confidence)
            fraction = successes - low_k
            low, high = low + fraction * (next_low - low), high + fraction * (next_high - high)
        return low, high

    if reached(*interval_at(checked)):
        return 0
    below, enough = checked, population
    while enough - below > 1:
        middle = (below + enough) // 2
        if reached(*interval_at(middle)):
            enough = middle
        else:
            below = middle
    return enough - checked


def checks_to_lower_bound(
    *,
    population: int,
    checked: int,
    share: float,
    effective_checks: float,
    min_precision: float,
    confidence: float = CONFIDENCE,
) -> int | None:
    """How many more answered checks until the interval's lower bound reaches
    ``min_precision`` if the share correct seen so far holds (``_projected_checks``); None when
    no number would (``share`` below the minimum: even a census gives the share)."""
    if share < min_precision:
        return None
    return _projected_checks(
        population=population,
        checked=checked,
        share=share,
        effective_checks=effective_checks,
        confidence=confidence,
        reached=lambda low, _high: low >= min_precision,
    )


def checks_to_half_width(
    estimate: dict[str, Any], *, half_width: float, confidence: float = CONFIDENCE
) -> int | None:
    """For a stratified estimate of the spot-check report (``precision``,
    ``rejected_share_correct``): how many more answered checks until its interval's half-width
    is at most ``half_width`` if the share seen so far holds; None while a class has no
    checks (no share to project)."""
    if estimate["interval"] is None:
        return None if estimate["population"] else 0
    return _projected_checks(
        population=int(estimate["population"]),
        checked=int(estimate["checked"]),
        share=float(estimate["share_correct"]),
        effective_checks=float(estimate["effective_checks"]),
        confidence=confidence,
        reached=lambda low, high: (high - low) / 2 <= half_width,
    )


def _judge(report: dict[str, Any], min_precision: float | None) -> None:
    """AcceptanceRefused unless the report's precision supports ``min_precision``."""
    if min_precision is None:
        return
    estimate = report["precision"]
    population, checked = int(estimate["population"]), int(estimate["checked"])
    if population == 0:
        # No automatic accepted label in the dataset (none, or reviewers decided every one):
        # there is no automatic precision to vouch for.
        return
    summary = _precision_summary(report)
    if estimate["interval"] is None:
        classes = ", ".join(estimate["unchecked_strata"])
        raise AcceptanceRefused(
            f"no answered spot check of the auto-accepted labels of {classes}: the precision "
            f"cannot be stated, and the project's min_precision is {min_precision}; draw and "
            "answer spot checks (POST .../review/spot-checks) first",
            checks_needed=None,
            summary=summary,
        )
    share = float(estimate["share_correct"])
    low, high = (float(bound) for bound in estimate["interval"])
    if checked >= population:
        low = high = share  # every label checked: known exactly
    if low >= min_precision:
        return
    stated = (
        f"the spot checks' precision is {share:.3f} (95% interval {low:.3f} to {high:.3f}, "
        f"from {checked} answered checks of {population} auto-accepted labels)"
    )
    needed = checks_to_lower_bound(
        population=population,
        checked=checked,
        share=share,
        effective_checks=float(estimate["effective_checks"]),
        min_precision=min_precision,
    )
    if needed is None:
        raise AcceptanceRefused(
            f"{stated}, below the project's min_precision {min_precision}: more checks would "
            "not lift it if the precision holds; raise the accept threshold (the report's "
            "threshold curve) and re-route, or correct the labels in review",
            checks_needed=None,
            summary=summary,
        )
    raise AcceptanceRefused(
        f"{stated}: its lower bound is below the project's min_precision {min_precision}; "
        f"about {needed} more answered checks of auto-accepted labels are needed if the "
        "precision holds (POST .../review/spot-checks with a larger per_class)",
        checks_needed=needed,
        summary=summary,
    )


def _precision_summary(report: dict[str, Any]) -> dict[str, Any]:
    estimate = report["precision"]
    return {
        "precision": estimate["share_correct"],
        "precision_interval": estimate["interval"],
        "accepted_labels": estimate["population"],
        "accepted_checked": estimate["checked"],
        "accepted_correct": estimate["correct"],
        "effective_checks": estimate["effective_checks"],
        "unchecked_classes": list(estimate["unchecked_strata"]),
    }


def _snapshot(report: dict[str, Any], job: JobRecord) -> dict[str, Any]:
    """What an acceptance keeps of the report it was given on, and the dataset's label counts."""
    rejected = report["rejected_share_correct"]
    return {
        "run_id": report["run_id"],
        "confidence": report["confidence"],
        **_precision_summary(report),
        "rejected_share_correct": rejected["share_correct"],
        "rejected_interval": rejected["interval"],
        "checks": report["checks"],
        "classes": {
            name: {
                "precision": item["precision"],
                "precision_interval": item["precision_interval"],
                "accepted_count": item["accepted_count"],
                "accepted_checked": item["accepted_checked"],
                "accepted_correct": item["accepted_correct"],
            }
            for name, item in report["classes"].items()
        },
        "labels": (job.result or {}).get("labels"),
    }


# -- acceptances -----------------------------------------------------------------------------


def dataset_written_at(job: JobRecord) -> float:
    """When the job's dataset was last written: its latest re-export, else the job's finish."""
    result = job.result or {}
    written = result.get("reexported_at") or job.finished_at
    return float(written if written is not None else job.updated_at)


def _same_dataset(accepted: float, now: float) -> bool:
    # Both are one float stored and read back; a tolerance keeps a JSON round trip harmless.
    return math.isclose(accepted, now, rel_tol=0.0, abs_tol=1e-6)


def _records(db: Database, job: JobRecord) -> list[AcceptanceRecord]:
    with db.read() as connection:
        rows = connection.execute(
            sa.select(dataset_acceptances)
            .where(
                dataset_acceptances.c.job_id == job.id,
                dataset_acceptances.c.project_id == job.project_id,
            )
            .order_by(dataset_acceptances.c.accepted_at, dataset_acceptances.c.id)
        ).all()
    written = dataset_written_at(job)
    records = []
    for row in rows:
        status: AcceptanceStatus
        if row.withdrawn_at is not None:
            status = "superseded" if row.withdrawn_reason == "superseded" else "withdrawn"
        elif _same_dataset(row.dataset_written_at, written):
            status = "accepted"
        else:
            status = "lapsed"
        records.append(
            AcceptanceRecord(
                id=row.id,
                job_id=row.job_id,
                accepted_by=row.accepted_by,
                accepted_at=row.accepted_at,
                dataset_written_at=row.dataset_written_at,
                min_precision=row.min_precision,
                report=row.report,
                withdrawn_by=row.withdrawn_by,
                withdrawn_at=row.withdrawn_at,
                withdrawn_reason=row.withdrawn_reason,
                status=status,
            )
        )
    return records


def _label_job(db: Database, project_id: str, job_id: str) -> JobRecord:
    from serve.jobs.service import get_job  # serve.jobs.service checks acceptances too

    job = get_job(db, project_id=project_id, job_id=job_id)
    if job.kind != JobKind.LABEL:
        raise NotFoundError(f"no labeling job {job_id!r} in this project")
    return job


def _job_acceptance(db: Database, job: JobRecord) -> JobAcceptance:
    history = _records(db, job)
    latest = next((r for r in reversed(history) if r.withdrawn_at is None), None)
    return JobAcceptance(job_id=job.id, latest=latest, history=history)


def job_acceptance(db: Database, *, project_id: str, job_id: str) -> JobAcceptance:
    """The acceptance of ``project_id``'s labeling job ``job_id``; NotFoundError for another
    project's job or one that is not a labeling job."""
    return _job_acceptance(db, _label_job(db, project_id, job_id))


def accept_dataset(db: Database, *, review: _Reviewable, accepted_by: str) -> JobAcceptance:
    """Accept the dataset of the job under ``review`` (a succeeded labeling job) as it stands,
    on the spot checks' numbers now; an earlier acceptance of it is superseded.

    Raises AcceptanceRefused when the project's ``min_precision`` is set and the spot checks do
    not support it (nothing changes then: an earlier acceptance stands), ConflictError when the
    dataset was re-exported while the numbers were read.
    """
    job = review.job
    settings = project_acceptance_settings(db, project_id=review.project_id)
    with review.workspace() as workspace:
        report = spot_check_report(workspace, confidence=CONFIDENCE)
    _judge(report, settings.min_precision)
    written = dataset_written_at(job)
    now = time.time()
    with db.write() as connection:
        # The job's row serializes acceptances of one job (PostgreSQL; SQLite has one writer).
        result = connection.execute(
            sa.select(jobs.c.result).where(jobs.c.id == job.id).with_for_update()
        ).scalar_one()
        current = (result or {}).get("reexported_at") or job.finished_at
        if current is not None and not _same_dataset(float(current), written):
            raise ConflictError(
                f"job {job.id}'s dataset was re-exported while its spot checks were read: "
                "accept it again"
            )
        connection.execute(
            sa.update(dataset_acceptances)
            .where(
                dataset_acceptances.c.job_id == job.id,
                dataset_acceptances.c.withdrawn_at.is_(None),
            )
            .values(withdrawn_at=now, withdrawn_by=accepted_by, withdrawn_reason="superseded")
        )
        connection.execute(
            dataset_acceptances.insert().values(
                id=new_id("acc"),
                project_id=review.project_id,
                job_id=job.id,
                accepted_by=accepted_by,
                accepted_at=now,
                dataset_written_at=written,
                min_precision=settings.min_precision,
                report=_snapshot(report, job),
            )
        )
    return _job_acceptance(db, job)


def withdraw_acceptance(
    db: Database, *, project_id: str, job_id: str, withdrawn_by: str
) -> JobAcceptance:
    """Withdraw the job's acceptance (a lapsed one too); NotFoundError when there is none."""
    job = _label_job(db, project_id, job_id)
    with db.write() as connection:
        withdrawn = connection.execute(
            sa.update(dataset_acceptances)
            .where(
                dataset_acceptances.c.job_id == job.id,
                dataset_acceptances.c.project_id == project_id,
                dataset_acceptances.c.withdrawn_at.is_(None),
            )
            .values(
                withdrawn_at=time.time(), withdrawn_by=withdrawn_by, withdrawn_reason="withdrawn"
            )
        ).rowcount
    if not withdrawn:
        raise NotFoundError(f"job {job_id}'s dataset is not accepted: nothing to withdraw")
    return _job_acceptance(db, job)


def require_accepted_for_training(db: Database, *, source: JobRecord) -> None:
    """ConflictError, naming the job, when ``source``'s project takes only accepted datasets
    for training and ``source`` (a labeling job) has no current acceptance."""
    settings = project_acceptance_settings(db, project_id=source.project_id)
    if not settings.require_accepted_datasets:
        return
    state = _job_acceptance(db, source)
    if state.accepted:
        return
    accept = f"POST /v1/projects/{source.project_id}/jobs/{source.id}/accept"
    if state.latest is not None and state.latest.status == "lapsed":
        raise ConflictError(
            f"label_job_id: job {source.id}'s acceptance lapsed: its dataset was re-exported "
            f"after it was accepted, and this project trains only on accepted datasets; an "
            f"admin accepts it again ({accept})"
        )
    raise ConflictError(
        f"label_job_id: job {source.id}'s dataset is not accepted, and this project trains "
        f"only on accepted datasets; an admin accepts it after its spot checks ({accept})"
    )
