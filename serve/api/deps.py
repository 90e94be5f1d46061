"""FastAPI dependencies: the database, settings, the caller, the project it may see, and what
its key's role allows.

Roles are checked where the project is: ``ProjectId`` admits labeler and admin keys (every route
of a project that is not review), ``ReviewProjectId`` reviewer keys too; a route outside a
project states its roles with ``require_role``. So a route added later is closed to reviewer
keys unless it says otherwise.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextvars import copy_context
from functools import partial
from typing import Annotated, TypeVar

from fastapi import Depends, HTTPException, Path, Query, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from serve.api.auth import Principal, Role, authenticate, principal_for_key_id
from serve.api.sessions import CSRF_HEADER, SESSION_COOKIE, is_valid_csrf, key_id_of_session
from serve.db import Database
from serve.errors import ForbiddenError, NotFoundError
from serve.settings import ServiceSettings

__all__ = [
    "CurrentPrincipal",
    "CurrentSettings",
    "Db",
    "LabelerPrincipal",
    "Offset",
    "ProjectId",
    "ReviewProjectId",
    "ReviewerPrincipal",
    "check_role",
    "require_role",
    "run_in_app_pool",
    "session_principal",
    "session_secret",
]

T = TypeVar("T")

# Bounded so that a huge number is a 422, not an integer the database cannot store.
Offset = Annotated[int, Query(ge=0, le=2**31 - 1, description="Items to skip.")]

_bearer = HTTPBearer(auto_error=False, description="An API key: `promptlabel keys create`.")


async def _db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


async def _settings(request: Request) -> ServiceSettings:
    settings: ServiceSettings = request.app.state.settings
    return settings


# Dependencies without I/O are async: FastAPI runs sync ones in the thread pool, a hop each.
Db = Annotated[Database, Depends(_db)]
CurrentSettings = Annotated[ServiceSettings, Depends(_settings)]


async def _principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    principal = None
    # Read from the app, not through ``Db``: every keyed request solves this, and a dependency
    # costs more than the read.
    db: Database = request.app.state.db
    if credentials is not None:
        if db.reads_are_local:
            # A primary-key read of about 0.2 ms, nearly all of it Python holding the GIL, so a
            # worker thread would not free the event loop, only add a hop (0.3 ms at the median,
            # 5 ms at p99 here) per request.
            principal = authenticate(db, credentials.credentials)
        else:
            # A network round trip: that wait belongs in a thread, one of the app's own, so the
            # key check never queues behind slow sync routes.
            principal = await run_in_app_pool(
                request, "lookups", partial(authenticate, db, credentials.credentials)
            )
    elif (cookie := request.cookies.get(SESSION_COOKIE)) is not None:
        principal = session_principal(request, cookie)
        if principal is not None and request.method not in _SAFE_METHODS:
            # The cookie rides along with any request the browser makes; the token only with
            # the page's own (SameSite=Strict is the first fence, this the second).
            if not is_valid_csrf(cookie, request.headers.get(CSRF_HEADER), session_secret(request)):
                raise ForbiddenError(f"missing or wrong {CSRF_HEADER} header for this session")
    if principal is None:
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="missing, unknown or revoked API key: send 'Authorization: Bearer pl_...'"
            " (or sign in on /review/)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return principal


CurrentPrincipal = Annotated[Principal, Depends(_principal)]

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def session_secret(request: Request) -> bytes:
    """The app's key for signing session cookies (``serve.api.sessions``)."""
    secret: bytes = request.app.state.session_secret
    return secret


def session_principal(request: Request, cookie: str) -> Principal | None:
    """The principal of a session cookie while it is valid and its key exists, unrevoked."""
    key_id = key_id_of_session(cookie, session_secret(request))
    if key_id is None:
        return None
    db: Database = request.app.state.db
    return principal_for_key_id(db, key_id)


# Who may do what: admin keys may do everything, so they are in every set.
LABELING_ROLES = frozenset({Role.ADMIN, Role.LABELER})
REVIEW_ROLES = frozenset({Role.ADMIN, Role.LABELER, Role.REVIEWER})


def check_role(principal: Principal, allowed: frozenset[Role]) -> None:
    """ForbiddenError (403) naming the roles needed unless the caller's key has one of them."""
    if principal.role not in allowed:
        needed = " or ".join(sorted(role.value for role in allowed if role is not Role.ADMIN))
        raise ForbiddenError(
            f"this API key's role is {principal.role.value}; this route needs a key with the "
            f"role {needed} (or admin): `promptlabel keys create --role ...`"
        )


def require_role(*roles: Role) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency giving the caller's ``Principal`` when its key has one of ``roles`` (admin
    keys always pass), else 403."""
    allowed = frozenset({Role.ADMIN, *roles})

    async def dependency(principal: CurrentPrincipal) -> Principal:
        check_role(principal, allowed)
        return principal

    return dependency


LabelerPrincipal = Annotated[Principal, Depends(require_role(Role.LABELER))]
ReviewerPrincipal = Annotated[Principal, Depends(require_role(Role.LABELER, Role.REVIEWER))]


async def _project_id(principal: CurrentPrincipal, project_id: Annotated[str, Path()]) -> str:
    # Another project's id gets the same answer as one that does not exist (before the role:
    # a reviewer key learns nothing of other projects either).
    if project_id != principal.project_id:
        raise NotFoundError(f"no project {project_id!r}")
    # Inline rather than a dependency of its own: /predict's overhead counts.
    check_role(principal, LABELING_ROLES)
    return project_id


async def _review_project_id(
    principal: CurrentPrincipal, project_id: Annotated[str, Path()]
) -> str:
    if project_id != principal.project_id:
        raise NotFoundError(f"no project {project_id!r}")
    check_role(principal, REVIEW_ROLES)
    return project_id


# The caller's project, for labeler and admin keys (403 for reviewer keys).
ProjectId = Annotated[str, Depends(_project_id)]
# The caller's project, for review: reviewer keys too.
ReviewProjectId = Annotated[str, Depends(_review_project_id)]


async def run_in_app_pool(request: Request, pool: str, work: Callable[[], T]) -> T:
    """``work()`` in one of the app's own thread pools (``pool``: see ``create_app``), in this
    request's context (its log fields): a flood of one kind of work queues there, and the thread
    pool that every sync route needs stays free."""
    executor: ThreadPoolExecutor = request.app.state.pools[pool]
    return await asyncio.get_running_loop().run_in_executor(executor, copy_context().run, work)
