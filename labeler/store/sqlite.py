"""One SQLite file with WAL, a versioned schema and explicit transactions.

The label workspace and the model registry are both such a file; this is the part they share.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Self

from labeler.core.exceptions import StoreError

__all__ = ["SqliteFile"]


class SqliteFile:
    """Opens ``db_path`` (creating its folder), applies ``schema`` and checks ``schema_version``.

    ``what`` names the file in errors ("workspace database"); ``advice`` says what to do when the
    file's schema is of another version. ``migrations[n]`` are the statements that bring a file
    of schema ``n`` to ``n + 1``; a file of an older schema is migrated step by step, in the
    transaction that opens it, before ``schema`` is applied (so ``schema`` may name new
    columns). A newer file, or an older one without a migration, is refused. One instance holds
    one connection for one thread.
    """

    def __init__(
        self,
        db_path: Path,
        *,
        schema: Sequence[str],
        schema_version: int,
        what: str,
        advice: str,
        migrations: Mapping[int, Sequence[str]] | None = None,
    ) -> None:
        self.db_path = db_path
        migrations = migrations or {}
        try:
            db_path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: transactions are opened explicitly (BEGIN IMMEDIATE), one per
            # unit of work, so the write lock is held from the first read of a unit.
            self._db = sqlite3.connect(db_path, isolation_level=None, timeout=30.0)
        except (OSError, sqlite3.DatabaseError) as exc:
            raise StoreError(f"{db_path}: cannot open {what} ({exc})") from None
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            with self._transaction() as db:
                db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
                row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
                found = None if row is None else int(row[0])
                if found is not None and found != schema_version:
                    steps = range(found, schema_version)
                    if found > schema_version or any(step not in migrations for step in steps):
                        raise StoreError(
                            f"{db_path}: {what} schema v{found} is not supported by this "
                            f"version (v{schema_version}); {advice}"
                        )
                    for step in steps:
                        for statement in migrations[step]:
                            db.execute(statement)
                    db.execute(
                        "UPDATE meta SET value=? WHERE key='schema_version'", (str(schema_version),)
                    )
                for statement in schema:
                    db.execute(statement)
                if found is None:
                    db.execute(
                        "INSERT INTO meta VALUES ('schema_version', ?)", (str(schema_version),)
                    )
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise StoreError(f"{db_path}: cannot open {what} ({exc})") from None
        except BaseException:
            self._db.close()
            raise

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
