"""FastAPI dependencies: the database, settings, the caller and the project it may see."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextvars import copy_context
from functools import partial
from typing import Annotated, TypeVar

from fastapi import Depends, HTTPException, Path, Query, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from serve.api.auth import Principal, authenticate
from serve.db import Database
from serve.errors import NotFoundError
from serve.settings import ServiceSettings

__all__ = ["CurrentPrincipal", "CurrentSettings", "Db", "Offset", "ProjectId", "run_in_app_pool"]

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
    if principal is None:
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="missing, unknown or revoked API key: send 'Authorization: Bearer pl_...'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return principal


CurrentPrincipal = Annotated[Principal, Depends(_principal)]


async def _project_id(principal: CurrentPrincipal, project_id: Annotated[str, Path()]) -> str:
    # Another project's id gets the same answer as one that does not exist.
    if project_id != principal.project_id:
        raise NotFoundError(f"no project {project_id!r}")
    return project_id


ProjectId = Annotated[str, Depends(_project_id)]


async def run_in_app_pool(request: Request, pool: str, work: Callable[[], T]) -> T:
    """``work()`` in one of the app's own thread pools (``pool``: see ``create_app``), in this
    request's context (its log fields): a flood of one kind of work queues there, and the thread
    pool that every sync route needs stays free."""
    executor: ThreadPoolExecutor = request.app.state.pools[pool]
    return await asyncio.get_running_loop().run_in_executor(executor, copy_context().run, work)
