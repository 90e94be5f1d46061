"""The database's ways in: transactions for reads and writes, and a lone lookup without one."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from labeler.settings import Settings
from serve.app import create_app
from serve.db import Database, projects


def test_a_lookup_outside_a_transaction_leaves_later_transactions_intact(db: Database) -> None:
    # On PostgreSQL read_once switches a pooled connection to autocommit; the pool must switch it
    # back, or the next write's rollback would undo nothing.
    for _ in range(3):
        with db.read_once() as connection:
            assert connection.execute(sa.text("SELECT 1")).scalar() == 1
    row = {"id": "prj_x", "name": "x", "ontology": {}, "created_at": 0.0, "updated_at": 0.0}
    with pytest.raises(RuntimeError, match="after the insert"), db.write() as connection:
        connection.execute(projects.insert().values(**row))
        raise RuntimeError("after the insert")

    with db.read_once() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(projects)).scalar() == 0
    with db.write() as connection:
        connection.execute(projects.insert().values(**row))
    with db.read_once() as connection:
        assert connection.execute(sa.select(projects.c.name)).scalar_one() == "x"


def test_the_app_closes_the_connections_of_the_database_it_opened(
    service_settings: Settings,
) -> None:
    app = create_app(service_settings)
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
        assert app.state.db.engine.pool.checkedin() >= 1  # kept for the next request
    assert app.state.db.engine.pool.checkedin() == 0
