"""Spot checks in the workspace: blind correct/incorrect answers about sampled automatic labels.

A spot check is one box whose AUTOMATIC label (the status routing gave it, without any reviewer's
decision) was drawn for a reviewer to judge blind: the reviewer sees the image, the class and the
box, never the verdict. Its ``stratum`` is that automatic status ("accepted" or "rejected") in the
run it was drawn from. A box is checked at most once; only boxes no reviewer has decided are drawn.

An answer also shapes the dataset: "incorrect" on an auto-accepted box records a ``reject``
decision on it, "correct" on an auto-rejected box an ``accept`` one, in the same transaction as the
answer (a changed answer undoes that decision again). Answers are versioned like decisions: an
answer names the check's version it was made on, and a stale one raises ``StaleDecision`` and
changes nothing. The service layer over this is ``labeler.review.spot_checks``.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from labeler.core.exceptions import InputError, StaleDecision
from labeler.route import Status
from labeler.store.decisions import Action, latest_decision, record_decision

__all__ = [
    "SPOT_CHECK_STRATA",
    "AutomaticLabel",
    "SpotCheckAnswer",
    "SpotCheckRecord",
    "SpotChecks",
]

# The automatic statuses spot checks are drawn from.
SPOT_CHECK_STRATA: tuple[str, ...] = (Status.ACCEPTED.value, Status.REJECTED.value)


@dataclass(frozen=True)
class AutomaticLabel:
    """One proposal as a run routed it automatically, whatever reviewers decided since.

    ``class_name`` and ``xyxy`` are the detector's; ``status`` and ``reason`` the route's;
    ``yes_prob`` the verifier's stored P(yes) (None when not verified or no usable answer);
    ``decision_version`` the box's latest decision version (0: no reviewer decided it).
    """

    proposal_id: int
    image_sha256: str
    class_name: str
    xyxy: tuple[float, float, float, float]
    status: str
    reason: str
    yes_prob: float | None
    decision_version: int


@dataclass(frozen=True)
class SpotCheckAnswer:
    """What may be said of a check without unblinding it: its answer so far (None: not answered),
    who gave it and when, and its ``version`` (the number of answers given; the next answer names
    it as ``base_version``)."""

    proposal_id: int
    version: int
    answer: str | None
    reviewer: str | None
    answered_at: str | None


@dataclass(frozen=True)
class SpotCheckRecord:
    """A stored spot check, with what it was drawn from (not for a reviewer's eyes).

    ``stratum`` is the automatic status the box had in run ``run_id``; ``yes_prob`` its P(yes)
    then; ``seed`` the sample's seed; ``decision_version`` the box's decision version as this check
    last left it (a box decided outside the check since then no longer matches).
    """

    proposal_id: int
    stratum: str
    run_id: int
    yes_prob: float | None
    seed: int
    sampled_at: str
    answer: str | None
    reviewer: str | None
    answered_at: str | None
    version: int
    decision_version: int

    def public(self) -> SpotCheckAnswer:
        return SpotCheckAnswer(
            self.proposal_id, self.version, self.answer, self.reviewer, self.answered_at
        )


class _Store(Protocol):
    _db: sqlite3.Connection

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]: ...


_CHECK_COLUMNS = (
    "proposal_id, stratum, run_id, yes_prob, seed, sampled_at, answer, reviewer, answered_at, "
    "version, decision_version"
)


def _record(row: Sequence[Any]) -> SpotCheckRecord:
    pid, stratum, run_id, yes_prob, seed, sampled_at, answer, reviewer, answered_at, v, dv = row
    return SpotCheckRecord(
        proposal_id=int(pid),
        stratum=str(stratum),
        run_id=int(run_id),
        yes_prob=None if yes_prob is None else float(yes_prob),
        seed=int(seed),
        sampled_at=str(sampled_at),
        answer=None if answer is None else str(answer),
        reviewer=None if reviewer is None else str(reviewer),
        answered_at=None if answered_at is None else str(answered_at),
        version=int(v),
        decision_version=int(dv),
    )


def _linked_action(stratum: str, answer: str | None) -> Action | None:
    """The decision an answer stands for: the automatic label was wrong, so the box goes the
    other way. None when the answer agrees with the automatic label (or there is none)."""
    if stratum == Status.ACCEPTED and answer == "incorrect":
        return Action.REJECT
    if stratum == Status.REJECTED and answer == "correct":
        return Action.ACCEPT
    return None


class SpotChecks:
    """The spot-check methods of ``Workspace`` (mixed in; it owns the connection)."""

    def automatic_labels(self: _Store, run_id: int) -> list[AutomaticLabel]:
        """Every proposal ``run_id`` routed, with its automatic status, P(yes) and the box's
        latest decision version, by proposal id."""
        rows = self._db.execute(
            "SELECT p.id, p.image_sha256, p.class_name, p.x1, p.y1, p.x2, p.y2, l.status, "
            "l.reason, v.yes_prob, "
            "COALESCE((SELECT MAX(d.version) FROM decisions d WHERE d.proposal_id = p.id), 0) "
            "FROM labels l JOIN proposals p ON p.id = l.proposal_id "
            "LEFT JOIN verdicts v ON v.cache_key = l.verdict_key "
            "WHERE l.run_id = ? ORDER BY p.id",
            (run_id,),
        ).fetchall()
        return [
            AutomaticLabel(
                proposal_id=int(pid),
                image_sha256=str(sha),
                class_name=str(class_name),
                xyxy=(float(x1), float(y1), float(x2), float(y2)),
                status=str(status),
                reason=str(reason),
                yes_prob=None if yes_prob is None else float(yes_prob),
                decision_version=int(version),
            )
            for pid, sha, class_name, x1, y1, x2, y2, status, reason, yes_prob, version in rows
        ]

    def spot_checks(self: _Store) -> dict[int, SpotCheckRecord]:
        """Every stored spot check, by proposal id."""
        rows = self._db.execute(f"SELECT {_CHECK_COLUMNS} FROM spot_checks ORDER BY proposal_id")
        return {record.proposal_id: record for record in map(_record, rows)}

    def add_spot_checks(
        self: _Store,
        picks: Sequence[tuple[int, str, float | None]],
        *,
        run_id: int,
        seed: int,
    ) -> list[int]:
        """Store new checks, each ``(proposal_id, stratum, yes_prob)`` drawn from ``run_id`` with
        ``seed``, in one transaction; returns the ids stored. A box that already has a check, or
        that a reviewer decided meanwhile, is skipped (two draws at once store each box once)."""
        for proposal_id, stratum, _ in picks:
            if stratum not in SPOT_CHECK_STRATA:
                raise InputError(
                    f"spot check stratum must be one of {', '.join(SPOT_CHECK_STRATA)}, "
                    f"got {stratum!r} (proposal {proposal_id})"
                )
        sampled_at = datetime.now(UTC).isoformat(timespec="seconds")
        stored: list[int] = []
        with self._transaction() as db:
            for proposal_id, stratum, yes_prob in picks:
                cursor = db.execute(
                    "INSERT OR IGNORE INTO spot_checks (proposal_id, stratum, run_id, yes_prob, "
                    "seed, sampled_at) SELECT ?, ?, ?, ?, ?, ? WHERE NOT EXISTS "
                    "(SELECT 1 FROM decisions WHERE proposal_id = ?)",
                    (proposal_id, stratum, run_id, yes_prob, seed, sampled_at, proposal_id),
                )
                if cursor.rowcount == 1:
                    stored.append(int(proposal_id))
        return stored

    def answer_spot_check(
        self: _Store,
        proposal_id: int,
        *,
        correct: bool,
        base_version: int,
        reviewer: str,
    ) -> SpotCheckAnswer:
        """Record ``reviewer``'s blind answer on a check, made on its ``base_version`` (0: not
        answered yet), and the decision it stands for, in one transaction; returns the check's
        new public state.

        Raises, changing nothing: InputError for a box without a check, a check the latest run
        outdated (it routed the box otherwise than the check's stratum) or an unnamed reviewer;
        StaleDecision with the check's current ``SpotCheckAnswer`` when another answer came
        first; StaleDecision with the box's current ``HumanState`` when a reviewer decided the
        box outside this check since it was drawn or last answered (their decision stands: an
        unanswered check is then withdrawn, an answered one keeps the answer it has).
        """
        if not isinstance(correct, bool):
            raise InputError(f"correct must be True or False, got {correct!r}")
        if not reviewer:
            raise InputError("reviewer must be named")
        answer = "correct" if correct else "incorrect"
        with self._transaction() as db:
            row = db.execute(
                f"SELECT {_CHECK_COLUMNS} FROM spot_checks WHERE proposal_id=?", (proposal_id,)
            ).fetchone()
            if row is None:
                raise InputError(f"proposal {proposal_id} has no spot check: draw checks first")
            check = _record(row)
            if check.version != base_version:
                raise StaleDecision(
                    f"the spot check of proposal {proposal_id} is at version {check.version}, "
                    f"not {base_version}: {check.reviewer or 'nobody'} answered it meanwhile",
                    current=check.public(),
                )
            routed = db.execute(
                "SELECT status FROM labels WHERE proposal_id=? "
                "AND run_id = (SELECT MAX(run_id) FROM labels)",
                (proposal_id,),
            ).fetchone()
            if routed is None or routed[0] != check.stratum:
                raise InputError(
                    f"the spot check of proposal {proposal_id} is outdated: the latest run "
                    f"routed the box {routed[0] if routed else 'not at all'}, not "
                    f"{check.stratum}; draw checks again"
                )
            decided = latest_decision(db, proposal_id)
            decision_version = decided.version if decided else 0
            if decision_version != check.decision_version:
                assert decided is not None  # a check starts at 0 and only ever moves forward
                consequence = (
                    "its answer stands as given" if check.answer else "the check is withdrawn"
                )
                raise StaleDecision(
                    f"proposal {proposal_id} is at decision version {decision_version}: "
                    f"{decided.reviewer} decided it outside this spot check; {consequence}",
                    current=decided,
                )
            before = _linked_action(check.stratum, check.answer)
            after = _linked_action(check.stratum, answer)
            if before is not after:
                # Inside this transaction: a failure here rolls the answer back with it.
                if before is not None:
                    decision_version = record_decision(
                        db,
                        proposal_id,
                        action=Action.UNDO,
                        base_version=decision_version,
                        reviewer=reviewer,
                    ).version
                if after is not None:
                    decision_version = record_decision(
                        db,
                        proposal_id,
                        action=after,
                        base_version=decision_version,
                        reviewer=reviewer,
                    ).version
            answered_at = datetime.now(UTC).isoformat(timespec="milliseconds")
            db.execute(
                "UPDATE spot_checks SET answer=?, reviewer=?, answered_at=?, version=?, "
                "decision_version=? WHERE proposal_id=?",
                (answer, reviewer, answered_at, check.version + 1, decision_version, proposal_id),
            )
            return SpotCheckAnswer(proposal_id, check.version + 1, answer, reviewer, answered_at)

    def claimed_by_others(self: _Store, reviewer: str, *, now: float | None = None) -> set[int]:
        """The boxes another reviewer than ``reviewer`` holds an unexpired claim on."""
        rows = self._db.execute(
            "SELECT proposal_id FROM claims WHERE reviewer != ? AND expires_at > ?",
            (reviewer, time.time() if now is None else now),
        )
        return {int(row[0]) for row in rows}
