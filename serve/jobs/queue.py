"""The job queue is the ``jobs`` table: a claim takes a lease, work renews it, the end is fenced.

A worker claims the oldest runnable job (queued and due, or running with an expired lease) in one
write transaction: ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, the database-wide write lock on
SQLite. The claim sets a fresh ``lease_token``; every later write by that worker (progress,
heartbeat, the final result) matches on the token, so a worker that lost its lease (it stalled
past ``lease_expires_at`` and another worker took the job over) can no longer change the job.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from serve.db import Database, jobs

__all__ = [
    "ClaimedJob",
    "JobKind",
    "JobStatus",
    "LeaseLost",
    "claim_job",
    "finish_job",
    "release_job",
    "renew_lease",
    "retry_job",
    "save_progress",
]

log = logging.getLogger(__name__)


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}


class JobKind(StrEnum):
    LABEL = "label"
    TRAIN = "train"


class LeaseLost(Exception):
    """This worker's lease on the job ended: another worker owns it now, or it was finished."""


@dataclass(frozen=True)
class ClaimedJob:
    id: str
    project_id: str
    kind: JobKind
    params: dict[str, Any]
    attempt: int  # 1 for the first run, 2 after one take-over, ...
    owner: str
    token: str


@dataclass(frozen=True)
class LeaseState:
    cancel_requested: bool


def claim_job(
    db: Database,
    *,
    owner: str,
    lease_s: float,
    kinds: Sequence[JobKind] = tuple(JobKind),
    now: float | None = None,
) -> ClaimedJob | None:
    """Take the oldest runnable job, or return None when there is none.

    A running job whose lease expired is taken over; one that has already used up its
    ``max_attempts`` (its workers keep dying) is failed instead of run again.
    """
    while True:
        now = time.time() if now is None else now
        with db.write() as connection:
            runnable = sa.or_(
                sa.and_(jobs.c.status == JobStatus.QUEUED.value, jobs.c.run_after <= now),
                sa.and_(jobs.c.status == JobStatus.RUNNING.value, jobs.c.lease_expires_at < now),
            )
            query = (
                sa.select(
                    jobs.c.id,
                    jobs.c.project_id,
                    jobs.c.kind,
                    jobs.c.params,
                    jobs.c.status,
                    jobs.c.attempts,
                    jobs.c.max_attempts,
                    jobs.c.cancel_requested,
                )
                .where(runnable, jobs.c.kind.in_([k.value for k in kinds]))
                .order_by(jobs.c.created_at, jobs.c.id)
                .limit(1)
            )
            if db.is_postgres:
                query = query.with_for_update(skip_locked=True)
            row = connection.execute(query).first()
            if row is None:
                return None
            if row.cancel_requested:
                _set_final(connection, row.id, JobStatus.CANCELLED, now, error=None)
                continue
            if row.attempts >= row.max_attempts:
                _set_final(
                    connection,
                    row.id,
                    JobStatus.FAILED,
                    now,
                    error=f"gave up after {row.attempts} attempts: the worker running it "
                    "stopped without finishing each time (crashed or was killed)",
                )
                log.error("job %s failed: its workers died %d times", row.id, row.attempts)
                continue
            token = uuid.uuid4().hex
            connection.execute(
                sa.update(jobs)
                .where(jobs.c.id == row.id)
                .values(
                    status=JobStatus.RUNNING.value,
                    attempts=row.attempts + 1,
                    lease_owner=owner,
                    lease_token=token,
                    lease_expires_at=now + lease_s,
                    started_at=sa.func.coalesce(jobs.c.started_at, now),
                    updated_at=now,
                )
            )
        if row.status == JobStatus.RUNNING.value:
            log.warning("job %s: lease expired, taken over by %s", row.id, owner)
        return ClaimedJob(
            id=row.id,
            project_id=row.project_id,
            kind=JobKind(row.kind),
            params=dict(row.params),
            attempt=row.attempts + 1,
            owner=owner,
            token=token,
        )


def _set_final(
    connection: Connection, job_id: str, status: JobStatus, now: float, *, error: str | None
) -> None:
    connection.execute(
        sa.update(jobs)
        .where(jobs.c.id == job_id)
        .values(
            status=status.value,
            error=error,
            finished_at=now,
            updated_at=now,
            lease_owner=None,
            lease_token=None,
            lease_expires_at=None,
        )
    )


def _owned(job: ClaimedJob) -> sa.ColumnElement[bool]:
    return sa.and_(
        jobs.c.id == job.id,
        jobs.c.lease_token == job.token,
        jobs.c.status == JobStatus.RUNNING.value,
    )


def renew_lease(db: Database, job: ClaimedJob, *, lease_s: float) -> LeaseState:
    """Extend the lease; raises LeaseLost when the job is no longer this worker's."""
    now = time.time()
    with db.write() as connection:
        updated = connection.execute(
            sa.update(jobs)
            .where(_owned(job))
            .values(lease_expires_at=now + lease_s, updated_at=now)
            .returning(jobs.c.cancel_requested)
        ).first()
    if updated is None:
        raise LeaseLost(job.id)
    return LeaseState(cancel_requested=bool(updated.cancel_requested))


def save_progress(db: Database, job: ClaimedJob, progress: dict[str, Any]) -> LeaseState:
    """Store the job's progress and say whether a cancel was requested.

    Raises LeaseLost when the job is no longer this worker's.
    """
    with db.write() as connection:
        updated = connection.execute(
            sa.update(jobs)
            .where(_owned(job))
            .values(progress=progress, updated_at=time.time())
            .returning(jobs.c.cancel_requested)
        ).first()
    if updated is None:
        raise LeaseLost(job.id)
    return LeaseState(cancel_requested=bool(updated.cancel_requested))


def finish_job(
    db: Database,
    job: ClaimedJob,
    *,
    status: JobStatus,
    result: dict[str, Any] | None = None,
    error: str | None = None,
    progress: dict[str, Any] | None = None,
    also: Callable[[Connection], None] | None = None,
) -> None:
    """End the job with a final ``status``, running ``also`` (result rows) in the same transaction.

    Raises LeaseLost, and writes nothing, when the job is no longer this worker's.
    """
    if not status.is_final:
        raise ValueError(f"finish_job: {status} is not a final status")
    now = time.time()
    values: dict[str, Any] = {
        "status": status.value,
        "result": result,
        "error": error,
        "finished_at": now,
        "updated_at": now,
        "lease_owner": None,
        "lease_token": None,
        "lease_expires_at": None,
    }
    if progress is not None:
        values["progress"] = progress
    with db.write() as connection:
        updated = connection.execute(sa.update(jobs).where(_owned(job)).values(**values))
        if updated.rowcount == 0:
            raise LeaseLost(job.id)
        if also is not None:
            also(connection)


def retry_job(db: Database, job: ClaimedJob, *, error: str, delay_s: float) -> bool:
    """Put the job back in the queue after ``delay_s``, or fail it when out of attempts.

    Returns True when it will run again. Raises LeaseLost when the job is no longer this worker's.
    """
    now = time.time()
    with db.write() as connection:
        row = connection.execute(
            sa.select(jobs.c.attempts, jobs.c.max_attempts).where(_owned(job))
        ).first()
        if row is None:
            raise LeaseLost(job.id)
        if row.attempts >= row.max_attempts:
            _set_final(
                connection,
                job.id,
                JobStatus.FAILED,
                now,
                error=f"gave up after {row.attempts} attempts; last error: {error}",
            )
            return False
        connection.execute(
            sa.update(jobs)
            .where(_owned(job))
            .values(
                status=JobStatus.QUEUED.value,
                error=error,
                run_after=now + delay_s,
                updated_at=now,
                lease_owner=None,
                lease_token=None,
                lease_expires_at=None,
            )
        )
    return True


def release_job(db: Database, job: ClaimedJob) -> None:
    """Give the job back to the queue, runnable at once, without using up an attempt: its worker
    is shutting down (SIGTERM, a deploy), which says nothing about the job. What the run
    committed stays, so the next run resumes as after a take-over.

    Raises LeaseLost when the job is no longer this worker's.
    """
    now = time.time()
    with db.write() as connection:
        updated = connection.execute(
            sa.update(jobs)
            .where(_owned(job))
            .values(
                status=JobStatus.QUEUED.value,
                attempts=jobs.c.attempts - 1,
                run_after=now,
                updated_at=now,
                lease_owner=None,
                lease_token=None,
                lease_expires_at=None,
            )
        )
        if updated.rowcount == 0:
            raise LeaseLost(job.id)
