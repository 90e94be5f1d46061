"""API key roles: stored with each key, given by `promptlabel keys create --role`, listed, and
added to a database made before roles existed (its keys become labeler keys and keep working)."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from labeler.core.exceptions import InputError
from serve.api.app import create_app
from serve.api.auth import Principal, Role, authenticate, create_api_key, list_api_keys
from serve.db import SCHEMA_VERSION, Database, metadata, schema_info
from serve.settings import ServiceSettings
from tests.serve.cli.test_service import run_cli
from tests.serve.conftest import png_bytes


def projects_before_acceptance(old: sa.MetaData) -> sa.Table:
    """The ``projects`` table as schemas 1 and 2 had it: no acceptance settings."""
    return sa.Table(
        "projects",
        old,
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("ontology", sa.JSON, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )


def _version_1_database(db: Database) -> str:
    """Make ``db`` as promptlabel wrote it at schema 1 (api_keys without a role), with a
    project and a key; returns the key's token."""
    old = sa.MetaData()
    for table in metadata.sorted_tables:
        # Tables and columns of later schemas: projects' acceptance settings (schema 3) too.
        if table.name not in ("api_keys", "projects", "dataset_acceptances"):
            table.to_metadata(old)
    projects_before_acceptance(old)
    sa.Table(
        "api_keys",
        old,
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("project_id", sa.ForeignKey("projects.id"), nullable=False, index=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("secret_sha256", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("revoked_at", sa.Float),
    )
    now = time.time()
    with db.write() as connection:
        old.create_all(connection)
        connection.execute(old.tables["schema_info"].insert().values(version=1, created_at=now))
        connection.execute(
            old.tables["projects"]
            .insert()
            .values(
                id="prj_old",
                name="old",
                ontology={"classes": [{"name": "shape", "detect": ["circle"]}]},
                created_at=now,
                updated_at=now,
            )
        )
        connection.execute(
            old.tables["api_keys"]
            .insert()
            .values(
                id="abc123",
                project_id="prj_old",
                name="from before roles",
                secret_sha256=hashlib.sha256(b"secret").hexdigest(),
                created_at=now,
            )
        )
    return "pl_abc123.secret"


def test_a_database_from_before_roles_is_migrated_and_its_keys_are_labeler_keys(
    tmp_path: Path, database_url: str | None, service_settings: ServiceSettings
) -> None:
    db = Database(database_url, data_dir=tmp_path / "data")
    try:
        token = _version_1_database(db)
        db.create_schema()
        db.create_schema()  # once migrated, a no-op
        with db.read() as connection:
            versions = connection.execute(sa.select(schema_info.c.version)).scalars().all()
        assert sorted(versions) == list(range(1, SCHEMA_VERSION + 1)) and SCHEMA_VERSION >= 2
        assert authenticate(db, token) == Principal("abc123", "prj_old", Role.LABELER)
        [key] = list_api_keys(db)
        assert (key.key_id, key.role) == ("abc123", Role.LABELER)
        reviewer = create_api_key(db, project_id="prj_old", role="reviewer")
        assert authenticate(db, reviewer.token) == Principal(
            reviewer.key_id, "prj_old", Role.REVIEWER
        )
        with pytest.raises(InputError, match="role must be one of admin, labeler, reviewer"):
            create_api_key(db, project_id="prj_old", role="owner")

        # The old key does what it did: upload, submit.
        app = create_app(service_settings, db=db)
        with TestClient(app) as client:
            headers = {"Authorization": f"Bearer {token}"}
            uploaded = client.post(
                "/v1/projects/prj_old/images",
                headers=headers,
                files=[("files", ("a.png", png_bytes(1), "image/png"))],
            )
            assert uploaded.status_code == 201, uploaded.text
            submitted = client.post("/v1/projects/prj_old/label-jobs", headers=headers, json={})
            assert submitted.status_code == 201, submitted.text
            refused = client.post(
                "/v1/projects/prj_old/label-jobs",
                headers={"Authorization": f"Bearer {reviewer.token}"},
                json={},
            )
            assert refused.status_code == 403
    finally:
        db.dispose()


def test_keys_are_created_with_a_role_and_listed_with_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ontology = tmp_path / "ontology.yaml"
    ontology.write_text("classes:\n  cat: a cat\n")
    assert (
        run_cli("projects", "create", "pets", "--ontology", ontology, "--data-dir", data).returncode
        == 0
    )
    default = run_cli("keys", "create", "--project", "pets", "--data-dir", data)
    assert default.returncode == 0 and "labeler key" in default.stderr
    reviewer = run_cli(
        "keys", "create", "--project", "pets", "--role", "reviewer", "--data-dir", data
    )
    assert reviewer.returncode == 0, reviewer.stderr
    assert "reviewer key" in reviewer.stderr and reviewer.stdout.startswith("pl_")
    bad = run_cli("keys", "create", "--project", "pets", "--role", "owner", "--data-dir", data)
    assert bad.returncode == 2 and "owner" in bad.stderr

    listed = run_cli("keys", "list", "--json", "--data-dir", data)
    assert listed.returncode == 0, listed.stderr
    roles = {key["key_id"]: key["role"] for key in json.loads(listed.stdout)}
    reviewer_id = reviewer.stdout.strip()[3:].split(".")[0]
    default_id = default.stdout.strip()[3:].split(".")[0]
    assert roles == {default_id: "labeler", reviewer_id: "reviewer"}
    table = run_cli("keys", "list", "--data-dir", data)
    assert "reviewer" in table.stdout and "labeler" in table.stdout
