"""Reviewers' decisions in the workspace: every decision committed as it is made, versioned per box.

A box is a proposal row: one the detector made, or one a reviewer added (``propose_key`` is
``HUMAN_KEY``). Each decision is a new row holding the box's whole human state after it (status,
class, box), numbered ``version`` 1, 2, ... per box, so the latest row is the state and the rows
before it are the history. A decision names the version it was made on; when another decision
came first, it raises ``StaleDecision`` carrying the current state and changes nothing, so one
reviewer's stale click never overwrites another's decision. A short claim on a box keeps two
reviewers from being handed the same queue item at once.

The queue itself is a table the database keeps up to date (``review_queue``): the undecided
``needs_review`` boxes of the latest routed run, with the keys the queue orders and filters by,
refilled when a run's labels are saved (``refill_review_queue``) and kept current by triggers on
``decisions`` and ``verdicts``, so the next item is an index read however many boxes there are.
"""

from __future__ import annotations

import heapq
import math
import sqlite3
import time
from collections import Counter
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
    "refill_review_queue",
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


# The review queue, kept by the database: one row per undecided needs_review box of the run named
# by meta's ``review_queue_run`` (the latest run that routed labels), with what the queue orders by
# (P(yes), then the detector's score) and filters by (class, reason). ``refill_review_queue``
# fills it when a run's labels are saved; a decision takes its box out (or, undone to the
# automatic route, puts it back) and a verdict asked again updates P(yes), by the triggers below,
# whatever code writes them. The two indexes give the queue's order from either side of the
# routing band's middle (see ``HumanDecisions.review_candidates``).
REVIEW_QUEUE_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS review_queue (
    proposal_id INTEGER PRIMARY KEY REFERENCES proposals(id),
    yes_prob REAL,
    score REAL NOT NULL,
    class_name TEXT NOT NULL,
    reason TEXT NOT NULL,
    verdict_key TEXT
)""",
    "CREATE INDEX IF NOT EXISTS review_queue_up ON review_queue (yes_prob, score)",
    "CREATE INDEX IF NOT EXISTS review_queue_down ON review_queue (yes_prob DESC, score)",
    "CREATE INDEX IF NOT EXISTS review_queue_by_verdict ON review_queue (verdict_key)",
    """CREATE TRIGGER IF NOT EXISTS review_queue_on_decision AFTER INSERT ON decisions
BEGIN
    DELETE FROM review_queue WHERE proposal_id = NEW.proposal_id;
    INSERT INTO review_queue (proposal_id, yes_prob, score, class_name, reason, verdict_key)
    SELECT p.id, v.yes_prob, p.score, p.class_name, l.reason, l.verdict_key
    FROM labels l JOIN proposals p ON p.id = l.proposal_id
    LEFT JOIN verdicts v ON v.cache_key = l.verdict_key
    WHERE NEW.status IS NULL AND l.proposal_id = NEW.proposal_id
    AND l.status = 'needs_review'
    AND l.run_id = (SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'review_queue_run');
END""",
    """CREATE TRIGGER IF NOT EXISTS review_queue_on_verdict AFTER INSERT ON verdicts
BEGIN
    UPDATE review_queue SET yes_prob = NEW.yes_prob WHERE verdict_key = NEW.cache_key;
END""",
    """CREATE TRIGGER IF NOT EXISTS review_queue_on_verdict_gone AFTER DELETE ON verdicts
BEGIN
    UPDATE review_queue SET yes_prob = NULL WHERE verdict_key = OLD.cache_key;
END""",
    # Each run's labels counted by the detector's class and the route's status, written with
    # them (a run's labels never change after): the review summary starts from these.
    """CREATE TABLE IF NOT EXISTS run_label_counts (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    class_id INTEGER NOT NULL,
    class_name TEXT NOT NULL,
    status TEXT NOT NULL,
    boxes INTEGER NOT NULL,
    PRIMARY KEY (run_id, class_id, class_name, status)
)""",
)

_COUNT_RUN_LABELS = (
    "INSERT INTO run_label_counts (run_id, class_id, class_name, status, boxes) "
    "SELECT l.run_id, p.class_id, p.class_name, l.status, COUNT(*) FROM labels l "
    "JOIN proposals p ON p.id = l.proposal_id WHERE l.run_id = {run} "
    "GROUP BY l.run_id, p.class_id, p.class_name, l.status"
)

# The latest run's undecided needs_review boxes (as ``review_candidates``' query defines them:
# never decided, or every decision undone), for the run meta's ``review_queue_run`` names.
_FILL_REVIEW_QUEUE = (
    "INSERT INTO review_queue (proposal_id, yes_prob, score, class_name, reason, verdict_key) "
    "SELECT p.id, v.yes_prob, p.score, p.class_name, l.reason, l.verdict_key FROM labels l "
    "JOIN proposals p ON p.id = l.proposal_id "
    "LEFT JOIN verdicts v ON v.cache_key = l.verdict_key "
    "WHERE l.run_id = (SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'review_queue_run') "
    "AND l.status = 'needs_review' AND COALESCE((SELECT d.status IS NOT NULL FROM decisions d "
    "WHERE d.proposal_id = l.proposal_id ORDER BY d.version DESC LIMIT 1), 0) = 0"
)

# Statements that bring a workspace of schema v2 (or v1, whose decision tables they make too) to
# v3: the queue table filled for its latest run, and that run's label counts (an older run's
# summary is counted from its labels).
REVIEW_QUEUE_MIGRATION = (
    *DECISION_SCHEMA,
    *REVIEW_QUEUE_SCHEMA,
    "DELETE FROM meta WHERE key = 'review_queue_run'",
    "INSERT INTO meta (key, value) SELECT 'review_queue_run', CAST(MAX(run_id) AS TEXT) "
    "FROM labels HAVING MAX(run_id) IS NOT NULL",
    "DELETE FROM review_queue",
    _FILL_REVIEW_QUEUE,
    "DELETE FROM run_label_counts",
    _COUNT_RUN_LABELS.format(
        run="(SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'review_queue_run')"
    ),
)


def refill_review_queue(db: sqlite3.Connection, saved_run_id: int) -> None:
    """After ``saved_run_id``'s labels were written (``Workspace.save_labels``), inside the
    caller's transaction: count them, and fill the review queue table for the latest run that
    routed labels."""
    db.execute("DELETE FROM run_label_counts WHERE run_id = ?", (saved_run_id,))
    db.execute(_COUNT_RUN_LABELS.format(run="?"), (saved_run_id,))
    row = db.execute("SELECT MAX(run_id) FROM labels").fetchone()
    if row is not None and row[0] is not None and row[0] != saved_run_id:
        if _review_queue_run(db) == row[0]:
            return  # an older run's labels: the latest run's queue stands as it is
    db.execute("DELETE FROM review_queue")
    db.execute("DELETE FROM meta WHERE key = 'review_queue_run'")
    if row is None or row[0] is None:
        return
    db.execute("INSERT INTO meta (key, value) VALUES ('review_queue_run', ?)", (str(row[0]),))
    db.execute(_FILL_REVIEW_QUEUE)


def _review_queue_run(db: sqlite3.Connection) -> int | None:
    row = db.execute("SELECT value FROM meta WHERE key = 'review_queue_run'").fetchone()
    return None if row is None or row[0] is None else int(row[0])


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
        boxes claimed by another reviewer than ``exclude_claimed_for`` are left out.

        The latest run's queue is read from the ``review_queue`` table, a few index reads
        whatever its size; another run's is computed from its labels."""
        filters = _QueueFilters(
            class_names=tuple(class_names),
            reason_prefixes=tuple(reason_prefixes),
            exclude_claimed_for=exclude_claimed_for,
            now=time.time() if now is None else now,
        )
        db = self._db
        # One read transaction: every read below sees the same decisions and claims.
        owned = not db.in_transaction
        if owned:
            db.execute("BEGIN")
        try:
            picked = None
            if limit >= 0 and _review_queue_run(db) == run_id:
                picked = _queue_order(db, filters, middle=middle, limit=limit)
            if picked is None:
                rows = _candidates_by_sql(db, run_id, filters, middle=middle, limit=limit)
            else:
                rows = _candidate_rows(db, picked)
        finally:
            if owned:
                db.execute("COMMIT")
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

    def label_counts(
        self: _Store, run_id: int, image_sha256s: Iterable[str]
    ) -> dict[tuple[int, str, str], int]:
        """How many of ``run_id``'s labels are on the images ``image_sha256s``, by the
        detector's class (``class_id``, ``class_name``) and the route's status (decisions not
        applied). From the run's stored counts, less the images left out, when those are the
        fewer; else counted on the images asked for."""
        wanted = set(image_sha256s)
        db = self._db
        owned = not db.in_transaction
        if owned:
            db.execute("BEGIN")
        try:
            totals = db.execute(
                "SELECT class_id, class_name, status, boxes FROM run_label_counts WHERE run_id = ?",
                (run_id,),
            ).fetchall()
            if totals:
                # Every box is on an image with stored proposals (save_proposals) or a decoded
                # one (add_box): the images left out are those others.
                every = {
                    sha
                    for (sha,) in db.execute(
                        "SELECT image_sha256 FROM proposal_sets UNION SELECT sha256 FROM images"
                    )
                }
                left_out = every - wanted
                if len(left_out) < len(wanted):
                    counts = Counter({(c, name, status): n for c, name, status, n in totals})
                    counts.subtract(_count_labels_on(db, run_id, left_out))
                    return {key: n for key, n in counts.items() if n}
            return dict(_count_labels_on(db, run_id, wanted))
        finally:
            if owned:
                db.execute("COMMIT")

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


@dataclass(frozen=True)
class _QueueFilters:
    """The queue's filters, as SQL conditions on the columns that hold them."""

    class_names: tuple[str, ...]
    reason_prefixes: tuple[str, ...]
    exclude_claimed_for: str | None
    now: float

    def sql(self, *, box: str, class_name: str, reason: str) -> tuple[str, list[object]]:
        """`` AND ...`` conditions (or "") and their parameters."""
        where: list[str] = []
        params: list[object] = []
        if self.class_names:
            where.append(f"{class_name} IN ({','.join('?' * len(self.class_names))})")
            params.extend(self.class_names)
        if self.reason_prefixes:
            where.append(
                "(" + " OR ".join(f"{reason} LIKE ? || '%'" for _ in self.reason_prefixes) + ")"
            )
            params.extend(self.reason_prefixes)
        if self.exclude_claimed_for is not None:
            where.append(
                f"NOT EXISTS (SELECT 1 FROM claims c WHERE c.proposal_id = {box} "
                "AND c.reviewer != ? AND c.expires_at > ?)"
            )
            params.extend([self.exclude_claimed_for, self.now])
        return "".join(f" AND {condition}" for condition in where), params


def _count_labels_on(
    db: sqlite3.Connection, run_id: int, image_sha256s: Iterable[str]
) -> Counter[tuple[int, str, str]]:
    counts: Counter[tuple[int, str, str]] = Counter()
    shas = list(image_sha256s)
    for start in range(0, len(shas), 500):  # as _chunks: SQLite's limit on parameters
        chunk = shas[start : start + 500]
        for class_id, class_name, status, boxes in db.execute(
            "SELECT p.class_id, p.class_name, l.status, COUNT(*) FROM proposals p "
            "JOIN labels l ON l.run_id = ? AND l.proposal_id = p.id "
            f"WHERE p.image_sha256 IN ({','.join('?' * len(chunk))}) "
            "GROUP BY p.class_id, p.class_name, l.status",
            [run_id, *chunk],
        ):
            counts[(int(class_id), str(class_name), str(status))] += int(boxes)
    return counts


_CANDIDATE_COLUMNS = (
    "p.id, p.image_sha256, p.class_id, p.class_name, p.x1, p.y1, p.x2, p.y2, p.score"
)


def _candidates_by_sql(
    db: sqlite3.Connection,
    run_id: int,
    filters: _QueueFilters,
    *,
    middle: float,
    limit: int,
) -> list[tuple[Any, ...]]:
    """The queue's definition as one query over a run's labels, ordered in full: any run, any
    middle, any limit."""
    where, params = filters.sql(box="p.id", class_name="p.class_name", reason="l.reason")
    return db.execute(
        f"SELECT {_CANDIDATE_COLUMNS}, v.yes_prob, l.reason, COALESCE(dv.version, 0) "
        "FROM labels l JOIN proposals p ON p.id = l.proposal_id "
        "LEFT JOIN verdicts v ON v.cache_key = l.verdict_key "
        "LEFT JOIN (SELECT proposal_id, MAX(version) AS version FROM decisions "
        "GROUP BY proposal_id) dv ON dv.proposal_id = p.id "
        "LEFT JOIN decisions d ON d.proposal_id = p.id AND d.version = dv.version "
        f"WHERE l.run_id = ? AND l.status = 'needs_review' AND d.status IS NULL{where} "
        "ORDER BY v.yes_prob IS NOT NULL, ABS(v.yes_prob - ?), p.score, p.id LIMIT ?",
        [run_id, *params, middle, limit],
    ).fetchall()


def _candidate_rows(db: sqlite3.Connection, ids: Sequence[int]) -> list[tuple[Any, ...]]:
    """``_candidates_by_sql``'s rows for queue table boxes, in the order of ``ids``."""
    by_id: dict[int, tuple[Any, ...]] = {}
    for chunk in _chunks(ids):
        for row in db.execute(
            f"SELECT {_CANDIDATE_COLUMNS}, q.yes_prob, q.reason, "
            "COALESCE((SELECT MAX(version) FROM decisions WHERE proposal_id = p.id), 0) "
            "FROM review_queue q JOIN proposals p ON p.id = q.proposal_id "
            f"WHERE q.proposal_id IN ({','.join('?' * len(chunk))})",
            list(chunk),
        ):
            by_id[row[0]] = row
    return [by_id[i] for i in ids]


def _queue_order(
    db: sqlite3.Connection, filters: _QueueFilters, *, middle: float, limit: int
) -> list[int] | None:
    """The ids of the first ``limit`` boxes of the queue table in the queue's order, read from
    its indexes; None in the (floating-point) case they cannot decide it alone.

    The order is (P(yes) known, |P(yes) - middle|, score, id). Boxes without P(yes) come first,
    by score and id: one index range. The others are the merge of two index scans away from
    ``middle``, upwards (P(yes) >= middle) and downwards: along each, the computed distance
    never decreases, and boxes of equal P(yes) come by score and id, so each side's first
    ``limit`` boxes hold its part of the answer. Unless two different P(yes) on one side round
    to the same distance where that side's first ``limit`` end: then score would have to order
    them, which the index does not, and the caller computes the order in full instead.
    """
    where, params = filters.sql(box="q.proposal_id", class_name="q.class_name", reason="q.reason")
    columns = "SELECT q.proposal_id, q.yes_prob, q.score FROM review_queue q"
    unknown = db.execute(
        f"{columns} WHERE q.yes_prob IS NULL{where} ORDER BY q.score, q.proposal_id LIMIT ?",
        [*params, limit],
    ).fetchall()
    wanted = limit - len(unknown)
    if wanted <= 0:
        return [int(row[0]) for row in unknown]
    sides = (
        (">=", "q.yes_prob, q.score, q.proposal_id"),
        ("<", "q.yes_prob DESC, q.score, q.proposal_id"),
    )
    known: list[tuple[float, float, int]] = []
    for compare, order in sides:
        rows = db.execute(
            f"{columns} WHERE q.yes_prob {compare} ?{where} ORDER BY {order} LIMIT ?",
            [middle, *params, wanted],
        ).fetchall()
        if len(rows) == wanted and _distance_tie_at(
            db, float(rows[-1][1]), middle, compare, where, params
        ):
            return None
        known.extend((abs(float(y) - middle), float(score), int(pid)) for pid, y, score in rows)
    first = heapq.nsmallest(wanted, known)
    return [int(row[0]) for row in unknown] + [pid for _, _, pid in first]


def _distance_tie_at(
    db: sqlite3.Connection,
    yes_prob: float,
    middle: float,
    compare: str,
    where: str,
    params: Sequence[object],
) -> bool:
    """Whether a box on this side of ``middle`` has another P(yes) than ``yes_prob`` at the same
    computed distance from ``middle`` (two values a rounding apart: within a few ulps)."""
    distance = abs(yes_prob - middle)
    near = 4 * math.ulp(max(distance, abs(yes_prob), abs(middle)))
    found = db.execute(
        "SELECT 1 FROM review_queue q WHERE q.yes_prob BETWEEN ? AND ? AND q.yes_prob != ? "
        f"AND q.yes_prob {compare} ? AND ABS(q.yes_prob - ?) = ?{where} LIMIT 1",
        [yes_prob - near, yes_prob + near, yes_prob, middle, middle, distance, *params],
    ).fetchone()
    return found is not None


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
