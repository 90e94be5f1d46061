"""The job table as a queue: claims, leases, take-over, fencing, retries; SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

from serve.api.auth import create_project
from serve.db import Database, jobs
from serve.jobs.queue import (
    JobKind,
    JobStatus,
    LeaseLost,
    claim_job,
    finish_job,
    release_job,
    renew_lease,
    retry_job,
    save_progress,
)


def add_job(db: Database, job_id: str, *, created_at: float, max_attempts: int = 3) -> None:
    with db.write() as connection:
        if connection.execute(sa.text("SELECT COUNT(*) FROM projects")).scalar() == 0:
            connection.execute(
                sa.text(
                    "INSERT INTO projects (id, name, ontology, created_at, updated_at) "
                    "VALUES ('prj', 'p', '{}', 0, 0)"
                )
            )
        connection.execute(
            jobs.insert().values(
                id=job_id,
                project_id="prj",
                kind=JobKind.LABEL.value,
                status=JobStatus.QUEUED.value,
                params={"n": job_id},
                attempts=0,
                max_attempts=max_attempts,
                run_after=created_at,
                cancel_requested=False,
                created_at=created_at,
                updated_at=created_at,
            )
        )


def status_of(db: Database, job_id: str) -> sa.Row:  # type: ignore[type-arg]
    with db.read() as connection:
        return connection.execute(sa.select(jobs).where(jobs.c.id == job_id)).one()


def test_claims_oldest_first_and_each_job_once(db: Database) -> None:
    add_job(db, "b", created_at=2)
    add_job(db, "a", created_at=1)
    first = claim_job(db, owner="w1", lease_s=30)
    second = claim_job(db, owner="w2", lease_s=30)
    assert first is not None and second is not None
    assert (first.id, second.id) == ("a", "b")
    assert first.attempt == 1 and first.params == {"n": "a"}
    assert claim_job(db, owner="w3", lease_s=30) is None
    assert status_of(db, "a").status == "running"
    assert status_of(db, "a").lease_owner == "w1"


def test_concurrent_claims_never_share_a_job(db: Database) -> None:
    for i in range(20):
        add_job(db, f"j{i:02d}", created_at=i)
    claimed: list[str] = []
    lock = threading.Lock()

    def claim_all(owner: str) -> None:
        while (job := claim_job(db, owner=owner, lease_s=30)) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=claim_all, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == [f"j{i:02d}" for i in range(20)]


def test_expired_lease_is_taken_over_and_fences_the_old_owner(db: Database) -> None:
    add_job(db, "a", created_at=1)
    old = claim_job(db, owner="dead", lease_s=0.2)
    assert old is not None
    assert claim_job(db, owner="w2", lease_s=30) is None  # still leased
    time.sleep(0.3)
    new = claim_job(db, owner="w2", lease_s=30)
    assert new is not None and new.id == "a" and new.attempt == 2
    # The old owner wakes up: every write it tries is refused, and nothing changes.
    with pytest.raises(LeaseLost):
        renew_lease(db, old, lease_s=30)
    with pytest.raises(LeaseLost):
        save_progress(db, old, {"stage": "stale"})
    with pytest.raises(LeaseLost):
        finish_job(db, old, status=JobStatus.SUCCEEDED, result={"by": "dead"})
    finish_job(db, new, status=JobStatus.SUCCEEDED, result={"by": "w2"})
    row = status_of(db, "a")
    assert (row.status, row.result, row.lease_token) == ("succeeded", {"by": "w2"}, None)


def test_renew_reports_cancel_and_keeps_the_lease(db: Database) -> None:
    add_job(db, "a", created_at=1)
    job = claim_job(db, owner="w1", lease_s=0.5)
    assert job is not None
    assert renew_lease(db, job, lease_s=30).cancel_requested is False
    time.sleep(0.6)
    assert claim_job(db, owner="w2", lease_s=30) is None  # the renewal moved the expiry
    with db.write() as connection:
        connection.execute(sa.update(jobs).values(cancel_requested=True))
    assert renew_lease(db, job, lease_s=30).cancel_requested is True


def test_job_whose_workers_keep_dying_fails_after_max_attempts(db: Database) -> None:
    add_job(db, "a", created_at=1, max_attempts=2)
    for _ in range(2):
        assert claim_job(db, owner="dies", lease_s=0.05) is not None
        time.sleep(0.1)
    assert claim_job(db, owner="w", lease_s=30) is None
    row = status_of(db, "a")
    assert row.status == "failed"
    assert "gave up after 2 attempts" in row.error


def test_retry_backs_off_then_gives_up(db: Database) -> None:
    add_job(db, "a", created_at=1, max_attempts=2)
    job = claim_job(db, owner="w", lease_s=30)
    assert job is not None
    assert retry_job(db, job, error="boom", delay_s=60) is True
    assert claim_job(db, owner="w", lease_s=30) is None  # not due yet
    again = claim_job(db, owner="w", lease_s=30, now=time.time() + 61)
    assert again is not None and again.attempt == 2
    assert retry_job(db, again, error="boom again", delay_s=60) is False
    row = status_of(db, "a")
    assert row.status == "failed" and "boom again" in row.error


def test_a_released_job_runs_again_at_once_without_using_an_attempt(db: Database) -> None:
    add_job(db, "a", created_at=1, max_attempts=2)
    for _ in range(3):  # more shutdowns than max_attempts: none of them counts
        job = claim_job(db, owner="stopping", lease_s=30)
        assert job is not None and job.attempt == 1
        save_progress(db, job, {"stage": "verify", "done": 5})
        release_job(db, job)
        row = status_of(db, "a")
        assert (row.status, row.attempts, row.lease_token, row.lease_owner) == (
            "queued",
            0,
            None,
            None,
        )
        assert row.progress == {"stage": "verify", "done": 5}  # kept for the next run to show
        with pytest.raises(LeaseLost):  # the lease is gone: the old run can change nothing
            save_progress(db, job, {"stage": "stale"})
    final = claim_job(db, owner="w", lease_s=30)
    assert final is not None and final.attempt == 1
    finish_job(db, final, status=JobStatus.SUCCEEDED)
    assert status_of(db, "a").status == "succeeded"


def test_a_job_taken_over_cannot_be_released_by_its_old_owner(db: Database) -> None:
    add_job(db, "a", created_at=1)
    old = claim_job(db, owner="stalled", lease_s=0.05)
    assert old is not None
    time.sleep(0.1)
    new = claim_job(db, owner="w2", lease_s=30)
    assert new is not None
    with pytest.raises(LeaseLost):
        release_job(db, old)
    row = status_of(db, "a")
    assert (row.status, row.attempts, row.lease_owner) == ("running", 2, "w2")


def test_a_cancelled_queued_job_is_never_run(db: Database) -> None:
    add_job(db, "a", created_at=1)
    with db.write() as connection:
        connection.execute(
            sa.update(jobs).values(
                status=JobStatus.RUNNING.value, cancel_requested=True, lease_expires_at=0
            )
        )
    assert claim_job(db, owner="w", lease_s=30) is None
    assert status_of(db, "a").status == "cancelled"


def test_schema_from_a_newer_version_is_refused(db: Database) -> None:
    from labeler.core.exceptions import StoreError
    from serve.db import SCHEMA_VERSION, schema_info

    with db.write() as connection:
        connection.execute(schema_info.insert().values(version=SCHEMA_VERSION + 1, created_at=0))
    with pytest.raises(StoreError, match="newer promptlabel"):
        db.create_schema()


def test_project_names_are_unique(db: Database) -> None:
    from labeler.core.exceptions import InputError

    create_project(db, name="one")
    with pytest.raises(InputError, match="already exists"):
        create_project(db, name="one")


def test_a_worker_cannot_claim_a_job_while_cancel_decides(
    db: Database, database_url: str | None
) -> None:
    if database_url is None:
        pytest.skip("SQLite's write transactions already run one at a time")
    from serve.jobs.service import cancel_job

    add_job(db, "j", created_at=1)
    claims: list[object] = []

    def claim_between_read_and_write(conn, cursor, statement, *args) -> None:  # type: ignore[no-untyped-def]
        # Right after cancel_job has read the job's status, a worker on another connection tries.
        if statement.lstrip().startswith("SELECT jobs.status") and not claims:
            worker = threading.Thread(
                target=lambda: claims.append(claim_job(db, owner="w", lease_s=30))
            )
            worker.start()
            worker.join(timeout=30)
            assert not worker.is_alive(), "the claim should skip a locked job, not wait"

    sa.event.listen(db.engine, "after_cursor_execute", claim_between_read_and_write)
    try:
        cancelled = cancel_job(db, project_id="prj", job_id="j")
    finally:
        sa.event.remove(db.engine, "after_cursor_execute", claim_between_read_and_write)

    assert claims == [None]  # the locked job was skipped
    assert cancelled.status == "cancelled"
    row = status_of(db, "j")
    assert (row.status, row.lease_owner, row.attempts) == ("cancelled", None, 0)
