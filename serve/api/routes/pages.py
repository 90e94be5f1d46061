"""The review page (``/review/``), its assets, and the browser session behind it.

The page is static: HTML, CSS and JavaScript from ``serve/pages`` that talk to the JSON API only.
Signing in exchanges an API key for a session cookie (``serve.api.sessions``); every other route
accepts that cookie as it accepts the key itself, with a CSRF token on each state change.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Cookie, FastAPI, HTTPException, Request, Response, status
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from serve.api.auth import Principal, authenticate
from serve.api.deps import session_principal, session_secret
from serve.api.schemas import error_responses
from serve.api.sessions import (
    CSRF_HEADER,
    SESSION_COOKIE,
    SESSION_TTL_S,
    csrf_token,
    is_valid_csrf,
    new_session,
)
from serve.db import Database

__all__ = [
    "PAGES_DIR",
    "SECURITY_HEADERS",
    "SessionPublic",
    "mount_review_page",
    "session_router",
]

PAGES_DIR = Path(str(resources.files("serve.pages")))

# The page loads nothing from elsewhere and runs no inline script: a VLM answer that smuggles
# markup in is text anyway (the page sets textContent), and this is the second fence.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

page_router = APIRouter(tags=["pages"])
# The service's sign-in; ``promptlabel review`` answers GET /review/session itself.
session_router = APIRouter(tags=["pages"])


def mount_review_page(app: FastAPI) -> None:
    """The page at ``/review/`` and its assets (ours, and the vendored libraries)."""
    app.include_router(page_router)
    app.mount("/review/assets/review", StaticFiles(directory=PAGES_DIR / "review"), "review-assets")
    app.mount("/review/assets/vendor", StaticFiles(directory=PAGES_DIR / "vendor"), "vendor-assets")


class SessionIn(BaseModel):
    api_key: str = Field(min_length=1, max_length=500, description="An API key (pl_…).")


class SessionPublic(BaseModel):
    project_id: str
    key_id: str
    role: str
    csrf_token: str = Field(description=f"Send it as {CSRF_HEADER} with every state change.")
    api_base: str | None = Field(
        default=None,
        description="Set when the page reviews one workspace (``promptlabel review``): the "
        "review API's base path; otherwise the page offers the project's labeling jobs.",
    )


@page_router.get("/review", include_in_schema=False)
async def review_without_slash() -> RedirectResponse:
    # The page's assets are relative to /review/.
    return RedirectResponse("review/", status_code=status.HTTP_308_PERMANENT_REDIRECT)


@page_router.get("/review/", include_in_schema=False)
async def review_page() -> FileResponse:
    return FileResponse(PAGES_DIR / "review" / "index.html", headers=SECURITY_HEADERS)


def _session_answer(request: Request, principal: Principal, cookie: str) -> SessionPublic:
    return SessionPublic(
        project_id=principal.project_id,
        key_id=principal.key_id,
        role=principal.role,
        csrf_token=csrf_token(cookie, session_secret(request)),
    )


@session_router.post(
    "/review/session",
    summary="Sign in: exchange an API key for a session cookie",
    responses=error_responses(401, 422),
)
def sign_in(body: SessionIn, request: Request, response: Response) -> SessionPublic:
    db: Database = request.app.state.db
    principal = authenticate(db, body.api_key.strip())
    if principal is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "unknown or revoked API key")
    cookie = new_session(principal.key_id, session_secret(request))
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=SESSION_TTL_S,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return _session_answer(request, principal, cookie)


@session_router.get(
    "/review/session",
    summary="The signed-in session: its project, role and CSRF token",
    responses=error_responses(401),
)
def current_session(
    request: Request,
    pl_session: Annotated[str | None, Cookie(alias=SESSION_COOKIE)] = None,
) -> SessionPublic:
    principal = session_principal(request, pl_session) if pl_session else None
    if principal is None or pl_session is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "not signed in")
    return _session_answer(request, principal, pl_session)


@session_router.delete(
    "/review/session", summary="Sign out", status_code=status.HTTP_204_NO_CONTENT
)
def sign_out(
    request: Request,
    response: Response,
    pl_session: Annotated[str | None, Cookie(alias=SESSION_COOKIE)] = None,
) -> None:
    if pl_session is not None and not is_valid_csrf(
        pl_session, request.headers.get(CSRF_HEADER), session_secret(request)
    ):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"missing or wrong {CSRF_HEADER}")
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
