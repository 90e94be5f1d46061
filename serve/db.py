"""The service database: one schema for SQLite and PostgreSQL, and how to open it.

Everything the service knows about projects, keys, images and jobs lives here; the job table is
also the job queue (see ``serve.jobs.queue``), so job state has exactly one source of truth.
Times are UNIX seconds (float) taken from the clock of the process that writes them.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from labeler.core.exceptions import InputError, StoreError

__all__ = [
    "LOOKUP_CONNECTIONS",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Database",
    "api_keys",
    "dataset_acceptances",
    "hard_cases",
    "images",
    "job_images",
    "jobs",
    "metadata",
    "normalize_database_url",
    "projects",
    "schema_info",
    "sqlite_path",
]

log = logging.getLogger(__name__)

# 2: api_keys.role (keys made before are "labeler" keys: what every key could do then).
# 3: projects.min_precision and projects.require_accepted_datasets (older projects: neither),
#    and the dataset_acceptances table.
# 4: projects.collection_policy (older projects: none) and the hard_cases table.
SCHEMA_VERSION = 4

metadata = sa.MetaData()

schema_info = sa.Table(
    "schema_info",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("created_at", sa.Float, nullable=False),
)

projects = sa.Table(
    "projects",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    sa.Column("ontology", sa.JSON, nullable=False),  # {"classes": [...]}, an Ontology's dump
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    # Acceptance of labeling jobs' datasets (serve.jobs.acceptance): the lowest precision an
    # acceptance allows (the Wilson lower bound of the spot checks'; null: no minimum), and
    # whether training jobs take only accepted datasets. Database defaults, so that the columns
    # added to an older database fill its rows too.
    sa.Column("min_precision", sa.Float),
    sa.Column(
        "require_accepted_datasets",
        sa.Boolean,
        nullable=False,
        default=False,
        server_default=sa.false(),
    ),
    # The collection policy /predict?collect=true applies (serve.runtime.collect's fields, as
    # JSON); null: none set, so the server collects nothing.
    sa.Column("collection_policy", sa.JSON),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("project_id", sa.ForeignKey("projects.id"), nullable=False, index=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("secret_sha256", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float),
    # admin, labeler or reviewer (serve.api.auth.Role); a database default, so that the column
    # added to an older database fills its rows too.
    sa.Column("role", sa.String(16), nullable=False, server_default="labeler"),
)

images = sa.Table(
    "images",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("project_id", sa.ForeignKey("projects.id"), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("filename", sa.String(255), nullable=False),
    sa.Column("extension", sa.String(8), nullable=False),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("width", sa.Integer, nullable=False),
    sa.Column("height", sa.Integer, nullable=False),
    sa.Column("source_url", sa.Text),
    sa.Column("created_at", sa.Float, nullable=False),
    # The same bytes uploaded twice are one image: uploads are idempotent.
    sa.UniqueConstraint("project_id", "sha256", name="uq_images_project_sha256"),
    sa.Index("ix_images_project_created", "project_id", "created_at"),
)

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("project_id", sa.ForeignKey("projects.id"), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # JobKind
    sa.Column("status", sa.String(16), nullable=False),  # JobStatus
    sa.Column("params", sa.JSON, nullable=False),
    sa.Column("idempotency_key", sa.String(200)),
    sa.Column("request_sha256", sa.String(64)),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("max_attempts", sa.Integer, nullable=False),
    sa.Column("run_after", sa.Float, nullable=False),
    sa.Column("lease_owner", sa.String(200)),
    sa.Column("lease_token", sa.String(40)),
    sa.Column("lease_expires_at", sa.Float),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, default=False),
    sa.Column("progress", sa.JSON),
    sa.Column("result", sa.JSON),
    sa.Column("error", sa.Text),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float),
    sa.Column("finished_at", sa.Float),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.UniqueConstraint("project_id", "idempotency_key", name="uq_jobs_project_idempotency"),
    sa.Index("ix_jobs_claim", "status", "run_after"),
    sa.Index("ix_jobs_project_created", "project_id", "created_at"),
)

job_images = sa.Table(
    "job_images",
    metadata,
    sa.Column("job_id", sa.ForeignKey("jobs.id"), primary_key=True),
    sa.Column("position", sa.Integer, primary_key=True),
    sa.Column("image_id", sa.ForeignKey("images.id"), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # pending, labeled, failed
    sa.Column("error", sa.Text),
    sa.Column("labels", sa.JSON),
    sa.Column("counts", sa.JSON),  # {"accepted": n, "rejected": n, "needs_review": n}
)


# An admin's acceptance of a labeling job's dataset, with the spot-check numbers it was given on.
# Withdrawn ones stay (withdrawn_at set): the history of who accepted what. At most one current
# acceptance per job.
dataset_acceptances = sa.Table(
    "dataset_acceptances",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("project_id", sa.ForeignKey("projects.id"), nullable=False),
    sa.Column("job_id", sa.ForeignKey("jobs.id"), nullable=False),
    sa.Column("accepted_by", sa.String(40), nullable=False),  # the admin key's id
    sa.Column("accepted_at", sa.Float, nullable=False),
    # When the dataset accepted was written (the job's finish or its latest re-export): a later
    # re-export makes the acceptance lapse.
    sa.Column("dataset_written_at", sa.Float, nullable=False),
    sa.Column("min_precision", sa.Float),  # the project's minimum when accepted
    sa.Column("report", sa.JSON, nullable=False),  # the numbers it was given on
    sa.Column("withdrawn_by", sa.String(40)),
    sa.Column("withdrawn_at", sa.Float),
    sa.Column("withdrawn_reason", sa.String(200)),
    sa.Index("ix_dataset_acceptances_job", "job_id", "accepted_at"),
    sa.Index(
        "uq_dataset_acceptances_current",
        "job_id",
        unique=True,
        sqlite_where=sa.text("withdrawn_at IS NULL"),
        postgresql_where=sa.text("withdrawn_at IS NULL"),
    ),
)


# Frames the student found hard, sent back by devices (`promptlabel push`) or kept by
# /predict?collect=true. The frame itself is an image of the project (so a labeling job can
# take it); the same frame from several devices is one hard case that names them all.
hard_cases = sa.Table(
    "hard_cases",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("project_id", sa.ForeignKey("projects.id"), nullable=False),
    sa.Column("image_id", sa.ForeignKey("images.id"), nullable=False),
    sa.Column("reasons", sa.JSON, nullable=False),  # ["uncertain:person", ...], every sender's
    sa.Column("predictions", sa.JSON, nullable=False),  # the first sender's detection records
    sa.Column("model_version", sa.String(64)),  # the model the first sender ran, if it said
    sa.Column("devices", sa.JSON, nullable=False),  # the senders' names, sorted
    sa.Column("first_seen_at", sa.Float, nullable=False),
    sa.Column("last_seen_at", sa.Float, nullable=False),
    # The labeling job that took it ("everything new since the last round"); null: not yet.
    sa.Column("consumed_by_job", sa.ForeignKey("jobs.id")),
    sa.UniqueConstraint("project_id", "image_id", name="uq_hard_cases_project_image"),
    sa.Index("ix_hard_cases_project_seen", "project_id", "last_seen_at"),
)


def _add_column(table: sa.Table, name: str) -> Callable[[Connection], None]:
    """A migration step adding ``table.c[name]`` as this module declares it (type, default,
    NOT NULL), on either database."""

    def step(connection: Connection) -> None:
        column = sa.schema.CreateColumn(table.c[name]).compile(dialect=connection.dialect)
        connection.execute(sa.text(f"ALTER TABLE {table.name} ADD COLUMN {column}"))

    return step


# MIGRATIONS[n] brings a database of schema n to n + 1; create_schema applies them in order.
MIGRATIONS: dict[int, tuple[Callable[[Connection], None], ...]] = {
    1: (_add_column(api_keys, "role"),),
    # dataset_acceptances is a new table: create_all, which runs first, makes it.
    2: (
        _add_column(projects, "min_precision"),
        _add_column(projects, "require_accepted_datasets"),
    ),
    # hard_cases is a new table: create_all makes it.
    3: (_add_column(projects, "collection_policy"),),
}


def normalize_database_url(url: str) -> str:
    """Accept ``postgresql://`` and ``postgres://`` as well as SQLAlchemy's ``+psycopg`` form."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers run beside the one writer; busy_timeout makes writers wait, not fail.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_begin(connection: Connection) -> None:
    # A write transaction takes the write lock up front: a deferred one that later upgrades can
    # fail with "database is locked" without waiting when another writer got there first.
    mode = "IMMEDIATE" if connection.get_execution_options().get("write") else "DEFERRED"
    connection.exec_driver_sql(f"BEGIN {mode}")


# Connections kept for fetch_one on PostgreSQL: a lookup holds one for about a millisecond.
LOOKUP_CONNECTIONS = 8


def sqlite_path(data_dir: Path) -> Path:
    """The SQLite database in a data folder: the service's database when no URL is set."""
    return data_dir / "promptlabel.db"


class Database:
    """An engine plus the two ways in: ``read()`` and ``write()`` transactions."""

    def __init__(self, url: str | None, *, data_dir: Path, pool_size: int = 20) -> None:
        if url is None:
            data_dir.mkdir(parents=True, exist_ok=True)
            url = f"sqlite:///{sqlite_path(data_dir)}"
        url = normalize_database_url(url)
        self.url = url
        try:
            parsed = sa.make_url(url)
        except sa.exc.ArgumentError:
            raise InputError(
                f"PROMPTLABEL_DATABASE_URL {url!r} is not a database URL "
                "(expected sqlite:///path or postgresql://user:password@host:5432/db)"
            ) from None
        self.dialect = parsed.get_backend_name()
        # SQLite has one writer. Threads of this process queue for it here, where a release wakes
        # the next one at once; waiting in SQLite's busy handler instead means sleeping and
        # polling (up to 100 ms a nap), which gave submits under load a p99 of seconds. Other
        # processes still wait through busy_timeout.
        self._sqlite_writer: threading.RLock | None = None
        if self.dialect == "sqlite":
            self._sqlite_writer = threading.RLock()
            self.engine: Engine = sa.create_engine(
                url,
                connect_args={"check_same_thread": False, "isolation_level": None},
                pool_size=pool_size,
                max_overflow=pool_size,
            )
            # SQL that fetch_one sends straight to the driver, by statement.
            self._driver_sql: dict[int, tuple[sa.Select[Any], str, tuple[str, ...]]] = {}
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
            sa.event.listen(self.engine, "begin", _sqlite_begin)
        elif self.dialect == "postgresql":
            self.engine = sa.create_engine(
                url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True
            )
            # fetch_one's own pool, in autocommit and without the pre-ping, a round trip per
            # checkout (p99 of a lookup 3.7 -> 2.2 ms here): a connection the server dropped
            # fails the lookup itself, which then runs once more on a fresh one.
            self._lookup_engine = sa.create_engine(
                url,
                pool_size=min(pool_size, LOOKUP_CONNECTIONS),
                max_overflow=pool_size,
                isolation_level="AUTOCOMMIT",
                connect_args={"application_name": "promptlabel-lookups"},
            )
        else:
            raise InputError(
                f"PROMPTLABEL_DATABASE_URL: unsupported database {self.dialect!r}; "
                "use sqlite or postgresql"
            )

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    @property
    def reads_are_local(self) -> bool:
        """Whether a short read waits on nothing but this process (SQLite: a file in WAL mode,
        never blocked by writers) rather than on a network round trip (PostgreSQL)."""
        return self.dialect == "sqlite"

    def __repr__(self) -> str:
        return f"Database({self.engine.url.render_as_string(hide_password=True)!r})"

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as connection, connection.begin():
            yield connection

    def fetch_one(
        self, statement: sa.Select[Any], params: Mapping[str, Any]
    ) -> Sequence[Any] | None:
        """The first row of one SELECT, run outside any transaction: one statement sees one
        consistent state by itself. For the lookups that every request makes (the API key).

        On PostgreSQL it runs in autocommit: no BEGIN and COMMIT, two of the four round trips a
        lookup costs (measured 1.36 -> 0.94 ms), and without the pool's pre-ping (see __init__).
        On SQLite it goes straight to the driver, whose connections are in autocommit mode
        already, with the SQL compiled once per statement:
        SQLAlchemy's execution path costs about 0.2 ms around a 0.03 ms read (measured warm;
        about 0.5 ms inside a request). So the row comes back as the driver gives it, which is
        why only columns that SQLAlchemy would pass through unchanged may be selected.
        """
        if self.is_postgres:
            try:
                return self._lookup(statement, params)
            except sa.exc.DBAPIError as error:
                if not error.connection_invalidated:
                    raise
                return self._lookup(statement, params)  # on a fresh connection
        sql, names = self._compiled_for_driver(statement)
        driver_connection = self.engine.raw_connection()
        try:
            cursor = driver_connection.cursor()
            try:
                cursor.execute(sql, tuple(params[name] for name in names))
                row: Sequence[Any] | None = cursor.fetchone()
                return row
            finally:
                cursor.close()
        finally:
            driver_connection.close()  # back to the pool

    def _compiled_for_driver(self, statement: sa.Select[Any]) -> tuple[str, tuple[str, ...]]:
        compiled = self._driver_sql.get(id(statement))
        if compiled is not None and compiled[0] is statement:
            return compiled[1], compiled[2]
        dialect = self.engine.dialect
        for column in statement.selected_columns:
            if column.type.dialect_impl(dialect).result_processor(dialect, None) is not None:
                raise TypeError(
                    f"fetch_one: column {column.name!r} ({column.type}) needs SQLAlchemy's "
                    "result processing; select it with read() instead"
                )
        sql = statement.compile(dialect=dialect)
        names = tuple(sql.positiontup or ())
        self._driver_sql[id(statement)] = (statement, str(sql), names)
        return str(sql), names

    @contextmanager
    def write(self) -> Iterator[Connection]:
        with (
            self._sqlite_writer or contextlib.nullcontext(),
            self.engine.connect().execution_options(write=True) as connection,
            connection.begin(),
        ):
            yield connection

    def create_schema(self) -> None:
        """Create missing tables, bring an older database to this schema (``MIGRATIONS``, in
        the same transaction); refuse a database written by a newer promptlabel."""
        try:
            with self.write() as connection:
                if self.is_postgres:
                    # Several processes may start at once; one creates, the others wait.
                    lock_id = zlib.crc32(b"promptlabel-schema")
                    connection.execute(
                        sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": lock_id}
                    )
                metadata.create_all(connection)
                found = connection.execute(sa.select(sa.func.max(schema_info.c.version))).scalar()
                if found is None:
                    connection.execute(
                        schema_info.insert().values(version=SCHEMA_VERSION, created_at=time.time())
                    )
                elif found > SCHEMA_VERSION:
                    raise StoreError(
                        f"{self!r} was written by a newer promptlabel (schema {found}, this one "
                        f"knows {SCHEMA_VERSION}); upgrade promptlabel"
                    )
                elif found < SCHEMA_VERSION:
                    for version in range(found, SCHEMA_VERSION):
                        for step in MIGRATIONS[version]:
                            step(connection)
                        connection.execute(
                            schema_info.insert().values(version=version + 1, created_at=time.time())
                        )
                    log.info(
                        "service database migrated from schema %d to %d", found, SCHEMA_VERSION
                    )
        except sa.exc.OperationalError as exc:
            raise StoreError(f"cannot open the service database {self!r}: {exc.orig}") from None

    def _lookup(self, statement: sa.Select[Any], params: Mapping[str, Any]) -> Sequence[Any] | None:
        with self._lookup_engine.connect() as connection:
            return connection.execute(statement, dict(params)).first()

    def dispose(self) -> None:
        self.engine.dispose()
        if self.is_postgres:
            self._lookup_engine.dispose()
