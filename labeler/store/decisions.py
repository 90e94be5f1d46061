"""Reviewers' decisions in the workspace: every decision committed as it is made, versioned per box.

A box is a proposal row: one the detector made, or one a reviewer added (``propose_key`` is
``HUMAN_KEY``). Each decision is a new row holding the box's whole human state after it (status,
class, box), numbered ``version`` 1, 2, ... per box, so the latest row is the state and the rows
before it are the history. A decision names the version it was made on; when another decision
came first, it raises ``StaleDecision`` carrying the current state and changes nothing, so one
reviewer's stale click never overwrites another's decision. A short claim on a box keeps two
reviewers from being handed the same queue item at once.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

from labeler.core.exceptions import InputError, StaleDecision

__all__ = [
    "DECISION_SCHEMA",
    "HUMAN_KEY",
    "Action",
    "HumanDecisions",
    "HumanState",
    "ReviewBox",
    "ReviewCandidate",
    "latest_decision",
    "record_decision",
]

# The propose_key of boxes reviewers add: they sit beside the detector's proposals.
HUMAN_KEY = "human"

DECISION_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY,
    proposal_id INTEGER NOT NULL REFERENCES proposals(id),
    version INTEGER NOT NULL,
    action TEXT NOT NULL,
    status TEXT,
    class_id INTEGER,
    x1 REAL, y1 REAL, x2 REAL, y2 REAL,
    reviewer TEXT NOT NULL,
    made_at TEXT NOT NULL,
    UNIQUE (proposal_id, version)
)""",
    """CREATE TABLE IF NOT EXISTS claims (
    proposal_id INTEGER PRIMARY KEY REFERENCES proposals(id),
    reviewer TEXT NOT NULL,
    expires_at REAL NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS labels_by_status ON labels (run_id, status)",
    # Blind spot checks of automatic labels (labeler.store.spot_checks): one per box at most.
    # ``version`` counts answers (0: not answered yet); ``decision_version`` is the box's decision
    # version as this check last left it (0 when drawn: only undecided boxes are drawn).
    """CREATE TABLE IF NOT EXISTS spot_checks (
    proposal_id INTEGER PRIMARY KEY REFERENCES proposals(id),
    stratum TEXT NOT NULL CHECK (stratum IN ('accepted', 'rejected')),
    run_id INTEGER NOT NULL REFERENCES runs(id),
    yes_prob REAL,
    seed INTEGER NOT NULL,
    sampled_at TEXT NOT NULL,
    answer TEXT CHECK (answer IN ('correct', 'incorrect')),
    reviewer TEXT,
    answered_at TEXT,
    version INTEGER NOT NULL DEFAULT 0,
    decision_version INTEGER NOT NULL DEFAULT 0
)""",
)


class Action(StrEnum):
    ACCEPT = "accept"
    REJECT = "reject"
    RELABEL = "relabel"  # change the class; the box is then accepted as that class
    EDIT = "edit"  # move or resize the box; it is then accepted
    ADD = "add"  # a box the detector missed
    DELETE = "delete"  # the box is not an object: rejected (an added box is removed)
    UNDO = "undo"  # back to the state before the latest decision not undone yet (an undone add
    # leaves no box)


@dataclass(frozen=True)
class HumanState:
    """A box's state after its latest decision. ``status`` None means the automatic route decides
    again (everything undone); ``class_id`` / ``xyxy`` None mean the proposal's own."""

    proposal_id: int
    version: int
    action: str
    status: str | None
    class_id: int | None
    xyxy: tuple[float, float, float, float] | None
    reviewer: str
    made_at: str


@dataclass(frozen=True)
class ReviewCandidate:
    """A proposal the automatic route sent to review and no reviewer has decided yet."""

    proposal_id: int
    image_sha256: str
    class_id: int
    class_name: str
    xyxy: tuple[float, float, float, float]
    score: float
    yes_prob: float | None
    reason: str
    version: int


@dataclass(frozen=True)
class ReviewBox:
    """A box of a run as the detector (or the reviewer who added it) made it, with the route's
    evidence; reviewers' decisions are not applied (see ``human_states``).

    ``added``: a reviewer added it (no route, no verdict). ``auto_status``/``reason``: the run's
    automatic route (None for added boxes). ``answer``: the verifier's raw answer text and
    ``question`` the question it was asked (None when the box was not verified).
    """

    proposal_id: int
    image_sha256: str
    added: bool
    class_id: int
    class_name: str
    xyxy: tuple[float, float, float, float]
    score: float
    auto_status: str | None
    reason: str | None
    yes_prob: float | None
    answer: str | None
    question: str | None


class _Store(Protocol):
    _db: sqlite3.Connection

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]: ...


_STATE_COLUMNS = "proposal_id, version, action, status, class_id, x1, y1, x2, y2, reviewer, made_at"


def _state(row: Sequence[Any]) -> HumanState:
    pid, version, action, status, class_id, x1, y1, x2, y2, reviewer, made_at = row
    box = None if x1 is None else (float(x1), float(y1), float(x2), float(y2))
    return HumanState(
        proposal_id=int(pid),
        version=int(version),
        action=str(action),
        status=None if status is None else str(status),
        class_id=None if class_id is None else int(class_id),
        xyxy=box,
        reviewer=str(reviewer),
        made_at=str(made_at),
    )


def _check_box(xyxy: Sequence[float]) -> tuple[float, float, float, float]:
    values = [float(v) for v in xyxy]
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise InputError(f"xyxy must be 4 finite numbers (x1, y1, x2, y2), got {list(xyxy)}")
    x1, y1, x2, y2 = values
    if x2 <= x1 or y2 <= y1:
        raise InputError(f"xyxy must have x2 > x1 and y2 > y1, got {values}")
    return x1, y1, x2, y2


def _chunks(ids: Sequence[int], size: int = 500) -> Iterator[Sequence[int]]:
    # SQLite limits bound parameters per statement; 500 stays well below every build's limit.
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


class HumanDecisions:
    """The decision and claim methods of ``Workspace`` (mixed in; it owns the connection)."""

    def human_states(
        self: _Store, proposal_ids: Iterable[int] | None = None
    ) -> dict[int, HumanState]:
        """The latest state of every decided box (or of those in ``proposal_ids``)."""
        latest = (
            f"SELECT {_STATE_COLUMNS} FROM decisions d WHERE version = "
            "(SELECT MAX(version) FROM decisions WHERE proposal_id = d.proposal_id)"
        )
        if proposal_ids is None:
            return {s.proposal_id: s for s in map(_state, self._db.execute(latest))}
        ids = list(dict.fromkeys(int(i) for i in proposal_ids))
        found: dict[int, HumanState] = {}
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            for row in self._db.execute(f"{latest} AND proposal_id IN ({marks})", chunk):
                state = _state(row)
                found[state.proposal_id] = state
        return found

    def decision_history(self: _Store, proposal_id: int) -> list[HumanState]:
        """Every decision on one box, oldest first."""
        rows = self._db.execute(
            f"SELECT {_STATE_COLUMNS} FROM decisions WHERE proposal_id=? ORDER BY version",
            (proposal_id,),
        )
        return [_state(row) for row in rows]

    def decide(
        self: _Store,
        proposal_id: int,
        *,
        action: Action | str,
        base_version: int,
        reviewer: str,
        class_id: int | None = None,
        xyxy: Sequence[float] | None = None,
    ) -> HumanState:
        """Record ``reviewer``'s decision on a box, made on its ``base_version`` (0: no decision
        yet); returns the new state. Raises StaleDecision (with the current state) when the box
        is at another version, InputError for an unknown box or a decision missing its class or
        box. ``ADD`` is ``add_box``'s."""
        with self._transaction() as db:
            return record_decision(
                db,
                proposal_id,
                action=action,
                base_version=base_version,
                reviewer=reviewer,
                class_id=class_id,
                xyxy=xyxy,
            )

    def add_box(
        self: _Store,
        image_sha256: str,
        *,
        class_id: int,
        class_name: str,
        xyxy: Sequence[float],
        reviewer: str,
    ) -> HumanState:
        """A box the detector missed, accepted as ``class_id``: stored as a proposal of its own
        (``HUMAN_KEY``) with its first decision, in one transaction."""
        box = _check_box(xyxy)
        if not reviewer:
            raise InputError("reviewer must be named")
        with self._transaction() as db:
            if (
                db.execute("SELECT 1 FROM images WHERE sha256=?", (image_sha256,)).fetchone()
                is None
            ):
                raise InputError(f"no image {image_sha256} in this workspace")
            (next_idx,) = db.execute(
                "SELECT COALESCE(MAX(idx) + 1, 0) FROM proposals "
                "WHERE image_sha256=? AND propose_key=?",
                (image_sha256, HUMAN_KEY),
            ).fetchone()
            cursor = db.execute(
                "INSERT INTO proposals (image_sha256, propose_key, idx, class_id, class_name, "
                "x1, y1, x2, y2, score, box_score) VALUES (?,?,?,?,?,?,?,?,?,1.0,1.0)",
                (image_sha256, HUMAN_KEY, next_idx, class_id, class_name, *box),
            )
            assert cursor.lastrowid is not None
            return _insert_decision(
                db, cursor.lastrowid, 1, Action.ADD, "accepted", class_id, box, reviewer
            )

    # -- the review queue ------------------------------------------------------------------------

    def latest_run_id(self: _Store) -> int | None:
        """The newest run that routed labels, or None before the first."""
        row = self._db.execute("SELECT MAX(run_id) FROM labels").fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def review_candidates(
        self: _Store,
        *,
        run_id: int,
        middle: float,
        class_names: Sequence[str] = (),
        reason_prefixes: Sequence[str] = (),
        exclude_claimed_for: str | None = None,
        limit: int = 50,
        now: float | None = None,
    ) -> list[ReviewCandidate]:
        """Undecided ``needs_review`` proposals of ``run_id`` (never decided, or every decision
        undone: ``version`` says which), most uncertain first: no P(yes)
        (a verifier error or an unclear answer), then P(yes) nearest ``middle`` (the routing
        band's), then the lowest detector score. Filters by class names and reason prefixes;
        boxes claimed by another reviewer than ``exclude_claimed_for`` are left out."""
        where = ["l.run_id = ?", "l.status = 'needs_review'", "d.status IS NULL"]
        params: list[object] = [run_id]
        if class_names:
            where.append(f"p.class_name IN ({','.join('?' * len(class_names))})")
            params.extend(class_names)
        if reason_prefixes:
            where.append("(" + " OR ".join("l.reason LIKE ? || '%'" for _ in reason_prefixes) + ")")
            params.extend(reason_prefixes)
        if exclude_claimed_for is not None:
            where.append(
                "NOT EXISTS (SELECT 1 FROM claims c WHERE c.proposal_id = p.id "
                "AND c.reviewer != ? AND c.expires_at > ?)"
            )
            params.extend([exclude_claimed_for, time.time() if now is None else now])
        rows = self._db.execute(
            "SELECT p.id, p.image_sha256, p.class_id, p.class_name, p.x1, p.y1, p.x2, p.y2, "
            "p.score, v.yes_prob, l.reason, COALESCE(dv.version, 0) FROM labels l "
            "JOIN proposals p ON p.id = l.proposal_id "
            "LEFT JOIN verdicts v ON v.cache_key = l.verdict_key "
            "LEFT JOIN (SELECT proposal_id, MAX(version) AS version FROM decisions "
            "GROUP BY proposal_id) dv ON dv.proposal_id = p.id "
            "LEFT JOIN decisions d ON d.proposal_id = p.id AND d.version = dv.version "
            f"WHERE {' AND '.join(where)} "
            "ORDER BY v.yes_prob IS NOT NULL, ABS(v.yes_prob - ?), p.score, p.id LIMIT ?",
            [*params, middle, limit],
        ).fetchall()
        return [
            ReviewCandidate(
                proposal_id=int(pid),
                image_sha256=sha,
                class_id=int(class_id),
                class_name=class_name,
                xyxy=(float(x1), float(y1), float(x2), float(y2)),
                score=float(score),
                yes_prob=None if yes_prob is None else float(yes_prob),
                reason=reason,
                version=int(version),
            )
            for (
                pid, sha, class_id, class_name, x1, y1, x2, y2, score, yes_prob, reason, version,
            ) in rows
        ]  # fmt: skip

    def claim(self: _Store, proposal_id: int, *, reviewer: str, ttl_s: float) -> bool:
        """Claim a box for ``reviewer`` for ``ttl_s`` seconds; False when another reviewer holds
        an unexpired claim. Claiming again extends one's own claim."""
        now = time.time()
        with self._transaction() as db:
            row = db.execute(
                "SELECT reviewer, expires_at FROM claims WHERE proposal_id=?", (proposal_id,)
            ).fetchone()
            if row is not None and row[0] != reviewer and row[1] > now:
                return False
            db.execute(
                "INSERT OR REPLACE INTO claims VALUES (?, ?, ?)",
                (proposal_id, reviewer, now + ttl_s),
            )
            return True

    def release_claims(self: _Store, reviewer: str) -> None:
        """Give back every box ``reviewer`` holds (a reviewer who leaves the page)."""
        with self._transaction() as db:
            db.execute("DELETE FROM claims WHERE reviewer=?", (reviewer,))

    def review_boxes(
        self: _Store,
        run_id: int,
        *,
        image_sha256s: Sequence[str] | None = None,
        proposal_ids: Sequence[int] | None = None,
    ) -> list[ReviewBox]:
        """The boxes of ``run_id`` (the proposals it routed, and every box reviewers added) on
        the images ``image_sha256s``, or those of ``proposal_ids``; by image, the detector's in
        its order, then the added ones. An id that is neither is left out."""
        if (image_sha256s is None) == (proposal_ids is None):
            raise ValueError("review_boxes: pass image_sha256s or proposal_ids")
        column, values = (
            ("p.image_sha256", list[object](dict.fromkeys(image_sha256s)))
            if image_sha256s is not None
            else ("p.id", list[object](dict.fromkeys(int(i) for i in proposal_ids or ())))
        )
        found: list[ReviewBox] = []
        for start in range(0, len(values), 500):  # as _chunks: SQLite's limit on parameters
            chunk = values[start : start + 500]
            rows = self._db.execute(
                "SELECT p.id, p.image_sha256, p.propose_key, p.class_id, p.class_name, "
                "p.x1, p.y1, p.x2, p.y2, p.score, l.status, l.reason, v.yes_prob, v.raw, "
                "v.question FROM proposals p "
                "LEFT JOIN labels l ON l.run_id = ? AND l.proposal_id = p.id "
                "LEFT JOIN verdicts v ON v.cache_key = l.verdict_key "
                f"WHERE {column} IN ({','.join('?' * len(chunk))}) "
                "AND (l.proposal_id IS NOT NULL OR p.propose_key = ?)",
                [run_id, *chunk, HUMAN_KEY],
            ).fetchall()
            found.extend(
                ReviewBox(
                    proposal_id=int(pid),
                    image_sha256=str(sha),
                    added=key == HUMAN_KEY,
                    class_id=int(class_id),
                    class_name=str(class_name),
                    xyxy=(float(x1), float(y1), float(x2), float(y2)),
                    score=float(score),
                    auto_status=status,
                    reason=reason,
                    yes_prob=None if yes_prob is None else float(yes_prob),
                    answer=raw,
                    question=question,
                )
                for (
                    pid, sha, key, class_id, class_name, x1, y1, x2, y2, score,
                    status, reason, yes_prob, raw, question,
                ) in rows
            )  # fmt: skip
        return sorted(found, key=lambda box: (box.image_sha256, box.added, box.proposal_id))


def latest_decision(db: sqlite3.Connection, proposal_id: int) -> HumanState | None:
    """The box's state after its latest decision (None: never decided), read on ``db`` (inside
    the caller's transaction where there is one)."""
    row = db.execute(
        f"SELECT {_STATE_COLUMNS} FROM decisions WHERE proposal_id=? ORDER BY version DESC LIMIT 1",
        (proposal_id,),
    ).fetchone()
    return None if row is None else _state(row)


def record_decision(
    db: sqlite3.Connection,
    proposal_id: int,
    *,
    action: Action | str,
    base_version: int,
    reviewer: str,
    class_id: int | None = None,
    xyxy: Sequence[float] | None = None,
) -> HumanState:
    """``HumanDecisions.decide`` inside the caller's open transaction on ``db`` (so that a
    decision and what it belongs to, e.g. a spot-check answer, commit together or not at all);
    same checks, same errors."""
    action = Action(action)
    if action is Action.ADD:
        raise InputError("add a box with add_box, not decide")
    if not reviewer:
        raise InputError("reviewer must be named")
    box = _check_box(xyxy) if xyxy is not None else None
    if action is Action.RELABEL and class_id is None:
        raise InputError("a relabel decision needs class_id")
    if action is Action.EDIT and box is None:
        raise InputError("an edit decision needs xyxy")
    if db.execute("SELECT 1 FROM proposals WHERE id=?", (proposal_id,)).fetchone() is None:
        raise InputError(f"no proposal {proposal_id} in this workspace")
    history = [
        _state(row)
        for row in db.execute(
            f"SELECT {_STATE_COLUMNS} FROM decisions WHERE proposal_id=? ORDER BY version",
            (proposal_id,),
        )
    ]
    current = history[-1] if history else None
    version = current.version if current else 0
    if version != base_version:
        raise StaleDecision(
            f"proposal {proposal_id} is at version {version}, not {base_version}: "
            f"{current.reviewer if current else 'nobody'} decided it meanwhile",
            current=current,
        )
    status, kept_class, kept_box = (
        (current.status, current.class_id, current.xyxy) if current else (None, None, None)
    )
    if action is Action.UNDO:
        # Replayed as a stack, so that undoing twice goes back two decisions.
        done: list[HumanState] = []
        for past in history:
            if past.action == Action.UNDO.value:
                done.pop()
            else:
                done.append(past)
        if not done:
            raise InputError(f"proposal {proposal_id} has no decision to undo")
        done.pop()
        before = done[-1] if done else None
        status, kept_class, kept_box = (
            (before.status, before.class_id, before.xyxy) if before else (None, None, None)
        )
    elif action in (Action.REJECT, Action.DELETE):
        status = "rejected"
    else:  # accept, relabel, edit
        status = "accepted"
        kept_class = class_id if class_id is not None else kept_class
        kept_box = box if box is not None else kept_box
    return _insert_decision(
        db, proposal_id, version + 1, action, status, kept_class, kept_box, reviewer
    )


def _insert_decision(
    db: sqlite3.Connection,
    proposal_id: int,
    version: int,
    action: Action,
    status: str | None,
    class_id: int | None,
    box: tuple[float, float, float, float] | None,
    reviewer: str,
) -> HumanState:
    made_at = datetime.now(UTC).isoformat(timespec="milliseconds")
    db.execute(
        "INSERT INTO decisions (proposal_id, version, action, status, class_id, x1, y1, x2, y2, "
        "reviewer, made_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        (
            proposal_id,
            version,
            action.value,
            status,
            class_id,
            *(box or (None,) * 4),
            reviewer,
            made_at,
        ),
    )
    # A decided box leaves the queue: its claim has done its work.
    db.execute("DELETE FROM claims WHERE proposal_id=?", (proposal_id,))
    return HumanState(
        proposal_id=proposal_id,
        version=version,
        action=action.value,
        status=status,
        class_id=class_id,
        xyxy=box,
        reviewer=reviewer,
        made_at=made_at,
    )
