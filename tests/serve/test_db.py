"""The database's ways in: transactions for reads and writes, and a lone lookup without one."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from serve.api.app import create_app
from serve.db import Database, projects
from serve.settings import ServiceSettings


def test_a_lookup_outside_a_transaction_leaves_later_transactions_intact(db: Database) -> None:
    # On PostgreSQL fetch_one has a pool of its own in autocommit; transactions must stay
    # transactions. On SQLite it hands a pooled connection to the driver and back: the next
    # transaction must still be one.
    name_by_id = sa.select(projects.c.name, projects.c.created_at).where(
        projects.c.id == sa.bindparam("id")
    )
    for _ in range(3):
        assert db.fetch_one(name_by_id, {"id": "prj_x"}) is None
    row = {"id": "prj_x", "name": "x", "ontology": {}, "created_at": 1.5, "updated_at": 0.0}
    with pytest.raises(RuntimeError, match="after the insert"), db.write() as connection:
        connection.execute(projects.insert().values(**row))
        raise RuntimeError("after the insert")

    assert db.fetch_one(name_by_id, {"id": "prj_x"}) is None
    with db.write() as connection:
        connection.execute(projects.insert().values(**row))
    assert tuple(db.fetch_one(name_by_id, {"id": "prj_x"}) or ()) == ("x", 1.5)
    # A change committed on another connection is seen by the very next lookup.
    with db.write() as connection:
        connection.execute(projects.update().values(name="y"))
    assert tuple(db.fetch_one(name_by_id, {"id": "prj_x"}) or ()) == ("y", 1.5)


def test_a_lookup_survives_the_server_dropping_its_connections(db: Database) -> None:
    if not db.is_postgres:
        pytest.skip("PostgreSQL only: SQLite has no server to drop a connection")
    name_by_id = sa.select(projects.c.name).where(projects.c.id == sa.bindparam("id"))
    assert db.fetch_one(name_by_id, {"id": "prj_x"}) is None  # a pooled lookup connection now
    terminate = sa.text(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name = 'promptlabel-lookups' AND pid <> pg_backend_pid()"
    )
    with db.write() as connection:
        assert connection.execute(terminate).scalar_one() >= 1
    # The lookup pool does not ping before each use: the dropped connection fails the lookup,
    # which runs again on a fresh one.
    assert db.fetch_one(name_by_id, {"id": "prj_x"}) is None
    with db.write() as connection:
        connection.execute(
            projects.insert().values(
                id="prj_x", name="x", ontology={}, created_at=0.0, updated_at=0.0
            )
        )
    assert tuple(db.fetch_one(name_by_id, {"id": "prj_x"}) or ()) == ("x",)


def test_a_lookup_refuses_columns_the_driver_would_return_unconverted(db: Database) -> None:
    ontology_by_id = sa.select(projects.c.ontology).where(projects.c.id == sa.bindparam("id"))
    if db.is_postgres:  # goes through SQLAlchemy, which converts
        assert db.fetch_one(ontology_by_id, {"id": "prj_none"}) is None
        return
    with pytest.raises(TypeError, match=r"'ontology'.*read\(\) instead"):
        db.fetch_one(ontology_by_id, {"id": "prj_none"})


def test_the_app_closes_the_connections_of_the_database_it_opened(
    service_settings: ServiceSettings,
) -> None:
    app = create_app(service_settings)
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
        assert app.state.db.engine.pool.checkedin() >= 1  # kept for the next request
    assert app.state.db.engine.pool.checkedin() == 0
