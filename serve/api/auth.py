"""Projects and API keys: keys are shown once, stored as SHA-256, and belong to one project.

A key looks like ``pl_<key id>.<secret>``; the id finds the row, the secret's hash is compared in
constant time. The secret is 32 random bytes, so a fast hash is enough (a slow password hash only
helps low-entropy secrets).

Each key has a role (``Role``): ``labeler`` keys do everything the API offers but administration
(keys made before roles existed are labeler keys), ``reviewer`` keys only review (the review routes,
their project and the server's options), ``admin`` keys do everything.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import sqlalchemy as sa

from labeler.core.exceptions import InputError
from labeler.ontology import Ontology
from serve.db import Database, api_keys, projects

__all__ = [
    "ApiKey",
    "CreatedKey",
    "Principal",
    "Role",
    "authenticate",
    "create_api_key",
    "create_project",
    "get_project_by_name",
    "list_api_keys",
    "new_id",
    "principal_for_key_id",
    "revoke_api_key",
    "set_project_ontology",
]

KEY_PREFIX = "pl_"


def new_id(prefix: str) -> str:
    """A random id with a readable prefix (``job_3f9c...``)."""
    return f"{prefix}_{secrets.token_hex(8)}"


class Role(StrEnum):
    """What a key may do. ``admin``: everything; ``labeler``: upload, label, review, train,
    promote, predict; ``reviewer``: review only."""

    ADMIN = "admin"
    LABELER = "labeler"
    REVIEWER = "reviewer"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key, the one project it may see, and its role."""

    key_id: str
    project_id: str
    role: Role = Role.LABELER


@dataclass(frozen=True)
class CreatedKey:
    key_id: str
    project_id: str
    token: str  # shown once; only its hash is stored
    role: Role = Role.LABELER


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    project_id: str
    project_name: str
    name: str
    created_at: float
    revoked_at: float | None
    role: Role


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_project(db: Database, *, name: str, ontology: Ontology | None = None) -> str:
    """Create a project and return its id; raises InputError when the name is taken."""
    if not name.strip() or len(name) > 200:
        raise InputError("project name must be 1 to 200 characters")
    now = time.time()
    project_id = new_id("prj")
    with db.write() as connection:
        taken = connection.execute(sa.select(projects.c.id).where(projects.c.name == name)).first()
        if taken is not None:
            raise InputError(f"a project named {name!r} already exists ({taken.id})")
        connection.execute(
            projects.insert().values(
                id=project_id,
                name=name,
                ontology=_stored_ontology(ontology),
                created_at=now,
                updated_at=now,
            )
        )
    return project_id


def _stored_ontology(ontology: Ontology | None) -> dict[str, Any]:
    classes = [c.model_dump(mode="json") for c in ontology.classes] if ontology else []
    return {"classes": classes}


def set_project_ontology(db: Database, project_id: str, ontology: Ontology) -> None:
    """Replace the project's ontology; jobs already submitted keep the one they were given."""
    with db.write() as connection:
        connection.execute(
            sa.update(projects)
            .where(projects.c.id == project_id)
            .values(ontology=_stored_ontology(ontology), updated_at=time.time())
        )


def get_project_by_name(db: Database, name: str) -> str:
    """The id of the project called ``name``; raises InputError when there is none."""
    with db.read() as connection:
        row = connection.execute(sa.select(projects.c.id).where(projects.c.name == name)).first()
    if row is None:
        raise InputError(f"no project named {name!r}; create it with `promptlabel projects create`")
    return str(row.id)


def _role(value: str) -> Role:
    try:
        return Role(value)
    except ValueError:
        choices = ", ".join(role.value for role in Role)
        raise InputError(f"role must be one of {choices}, got {value!r}") from None


def create_api_key(
    db: Database, *, project_id: str, name: str = "", role: Role | str = Role.LABELER
) -> CreatedKey:
    """Make a key for ``project_id`` with ``role``; the returned token is the only copy of the
    secret."""
    role = _role(role)
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    with db.write() as connection:
        exists = connection.execute(
            sa.select(projects.c.id).where(projects.c.id == project_id)
        ).first()
        if exists is None:
            raise InputError(f"no project {project_id!r}")
        connection.execute(
            api_keys.insert().values(
                id=key_id,
                project_id=project_id,
                name=name,
                secret_sha256=_hash(secret),
                created_at=time.time(),
                role=role.value,
            )
        )
    token = f"{KEY_PREFIX}{key_id}.{secret}"
    return CreatedKey(key_id=key_id, project_id=project_id, token=token, role=role)


def revoke_api_key(db: Database, key_id: str) -> str:
    """Revoke a key at once (the next request with it is refused); its id. ``key_id`` may be
    the whole key. InputError if unknown."""
    key_id = key_id.removeprefix(KEY_PREFIX).split(".", 1)[0]
    with db.write() as connection:
        updated = connection.execute(
            sa.update(api_keys)
            .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
            .values(revoked_at=time.time())
        )
    if updated.rowcount == 0:
        raise InputError(f"no active API key {key_id!r} (see `promptlabel keys list`)")
    return key_id


def list_api_keys(db: Database) -> list[ApiKey]:
    with db.read() as connection:
        rows = connection.execute(
            sa.select(api_keys, projects.c.name.label("project_name"))
            .join(projects, projects.c.id == api_keys.c.project_id)
            .order_by(api_keys.c.created_at)
        ).all()
    return [
        ApiKey(
            key_id=row.id,
            project_id=row.project_id,
            project_name=row.project_name,
            name=row.name,
            created_at=row.created_at,
            revoked_at=row.revoked_at,
            role=_role(row.role),
        )
        for row in rows
    ]


# Built once: this runs on every request, and building the statement costs as much as running it.
_KEY_BY_ID = sa.select(
    api_keys.c.project_id, api_keys.c.secret_sha256, api_keys.c.revoked_at, api_keys.c.role
).where(api_keys.c.id == sa.bindparam("key_id"))
_ROLES = {role.value: role for role in Role}


def authenticate(db: Database, token: str) -> Principal | None:
    """The principal a bearer token stands for, or None (unknown, malformed or revoked)."""
    if not token.startswith(KEY_PREFIX) or "." not in token:
        return None
    key_id, secret = token[len(KEY_PREFIX) :].split(".", 1)
    return _principal(db, key_id, secret)


def principal_for_key_id(db: Database, key_id: str) -> Principal | None:
    """The principal of a key known by its id alone (a signed session names it), or None when
    the key is unknown or revoked: revoking a key ends its sessions at once."""
    return _principal(db, key_id, None)


def _principal(db: Database, key_id: str, secret: str | None) -> Principal | None:
    row = db.fetch_one(_KEY_BY_ID, {"key_id": key_id})
    if row is None:
        return None
    project_id, secret_sha256, revoked_at, role = row
    if revoked_at is not None:
        return None
    if secret is not None and not hmac.compare_digest(secret_sha256, _hash(secret)):
        return None
    # A role this version does not know (written by a newer one) is refused, not guessed.
    if role not in _ROLES:
        return None
    return Principal(key_id=key_id, project_id=project_id, role=_ROLES[role])
