"""The FastAPI application: routers, error mapping, limits, metrics, in-process workers."""

from __future__ import annotations

import logging
import math
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from labeler.core.exceptions import InputError, ModelLoadError, PromptlabelError
from serve.api.routes import (
    acceptance,
    datasets,
    hard_cases,
    health,
    images,
    jobs,
    models,
    pages,
    projects,
    review,
    spot_checks,
)
from serve.api.schemas import error_responses
from serve.api.sessions import load_session_secret
from serve.db import LOOKUP_CONNECTIONS, Database
from serve.errors import ConflictError, ForbiddenError, NotFoundError
from serve.ingest.fetch import DNS_LOOKUPS_AT_ONCE
from serve.ingest.uploads import DECODE_SLOT_COUNT
from serve.jobs.worker import ModelCache, Worker
from serve.settings import ServiceSettings
from serve.telemetry import HTTP_REQUESTS, HTTP_SECONDS, job_log_context

__all__ = ["add_error_handlers", "create_app"]

log = logging.getLogger(__name__)

JSON_BODY_LIMIT = 1024 * 1024  # JSON bodies are small; only uploads may be large
# The routes that take files (image uploads and zips, an image to predict on, a pushed hard
# case's frame): only they get the
# upload limit. Chosen by path, not by the client's Content-Type, which the client controls.
UPLOAD_PATHS = re.compile(r"/v1/projects/[^/]+/(images|predict|hard-cases)/?")
# Work that may be slow or come in floods runs in thread pools of its own (``run_in_app_pool``),
# so that a flood of one kind queues in its pool and never holds the thread pool that every sync
# route needs. Predictions: one per CPU at a time. Uploads: they wait for a decode slot (one per
# CPU) and on the disk, so twice that. URL fetches: they wait on other servers, as many as the
# DNS lookups that serve.ingest.fetch runs at once. API key lookups on PostgreSQL: a round trip
# each, as many as the lookup pool's connections (serve.db). Re-exports of reviewed labels: each
# rewrites a whole dataset (one at a time per job), two at once.
APP_POOL_SIZES = {
    "predict": DECODE_SLOT_COUNT,
    "ingest": 2 * DECODE_SLOT_COUNT,
    "fetch": DNS_LOOKUPS_AT_ONCE,
    "lookups": LOOKUP_CONNECTIONS,
    "review": 2,
}
# Request methods the metrics name; any other (clients may send anything) counts as OTHER, so
# that made-up methods cannot grow the metrics without bound.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class BodyLimit:
    """Refuse request bodies over the limit with 413, by Content-Length or while streaming."""

    def __init__(self, app: ASGIApp, *, upload_limit: int, json_limit: int = JSON_BODY_LIMIT):
        self.app = app
        self.upload_limit = upload_limit
        self.json_limit = json_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        uploads = UPLOAD_PATHS.fullmatch(scope["path"]) is not None
        limit = self.upload_limit if uploads else self.json_limit
        refusal = _too_large_message(limit, uploads=uploads)
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _too_large(refusal, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge(refusal)
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _TooLarge:
            await _too_large(refusal, send)


class _TooLarge(HTTPException):
    # An HTTPException, so that FastAPI's body parsing passes it on instead of answering 400.
    def __init__(self, message: str) -> None:
        super().__init__(413, message)


def _too_large_message(limit: int, *, uploads: bool) -> str:
    if uploads:
        return f"request body over the {limit}-byte upload limit (PROMPTLABEL_MAX_UPLOAD_BYTES)"
    return f"request body over the {limit}-byte limit for JSON bodies"


async def _too_large(message: str, send: Send) -> None:
    response = JSONResponse({"detail": message}, status_code=413)
    await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


_STATUS_FOR_ERROR: list[tuple[type[PromptlabelError], int]] = [
    (NotFoundError, 404),
    (ForbiddenError, 403),
    (ConflictError, 409),
    (InputError, 422),
    (ModelLoadError, 503),
    (PromptlabelError, 500),
]


def _error_response(request: Request, error: Exception) -> JSONResponse:
    status = next(code for kind, code in _STATUS_FOR_ERROR if isinstance(error, kind))
    if status >= 500:
        log.error("%s %s failed: %s", request.method, request.url.path, error)
    return JSONResponse({"detail": str(error)}, status_code=status)


def _value_refused(request: Request, error: Exception) -> JSONResponse:
    # The database refused a value of the request for its column type (PostgreSQL: a NUL
    # character in text, a number out of range): the request's fault, not a server error.
    reason = str(getattr(error, "orig", error)).strip().splitlines()[0][:200]
    log.warning("%s %s: the database refused a value: %s", request.method, request.url.path, reason)
    return JSONResponse(
        {"detail": f"a value in the request cannot be stored or looked up: {reason}"},
        status_code=422,
    )


def _json_safe(value: Any) -> Any:
    """``value`` with every float that JSON cannot hold (NaN, infinities) as its text."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


def _is_json(content_type: str) -> bool:
    # As FastAPI decides whether to parse a body as JSON.
    kind = content_type.split(";")[0].strip().lower()
    return kind == "application/json" or (
        kind.startswith("application/") and kind.endswith("+json")
    )


async def _invalid_request(request: Request, error: Exception) -> JSONResponse:
    # FastAPI's own answer, but JSON-safe: Python's JSON reader takes NaN, Infinity and 1e400,
    # the answer quotes the refused input back, and a JSON response cannot hold those floats.
    assert isinstance(error, RequestValidationError)
    errors = error.errors()
    content_type = request.headers.get("content-type", "")
    if not _is_json(content_type) and any(tuple(e["loc"]) == ("body",) for e in errors):
        # FastAPI reads a JSON body only when it is declared so (against cross-site requests
        # without a preflight); its answer ("a valid dictionary") would not say why.
        return JSONResponse(
            {
                "detail": f"Content-Type {content_type or '(none)'!r}: this route takes a JSON "
                "body; send it with 'Content-Type: application/json'"
            },
            status_code=415,
        )
    return JSONResponse({"detail": _json_safe(jsonable_encoder(errors))}, status_code=422)


def add_error_handlers(app: FastAPI) -> None:
    """The product's exceptions as HTTP answers (NotFoundError 404, ConflictError 409,
    InputError 422 ...), and JSON-safe 422s and 415s for invalid requests: the service's app
    and ``promptlabel review``'s answer alike."""
    app.add_exception_handler(PromptlabelError, _error_response)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(sa.exc.DataError, _value_refused)


class Observe:
    """Request metrics per route, a request id for logs and the ``X-Request-ID`` header, and
    ``Server-Timing: app;dur=<ms>`` (the time inside the app until the response starts), so a
    client can tell the service's time from the network's.

    Plain ASGI rather than ``@app.middleware("http")``, which costs a task and a stream per request.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        request_id = (
            headers.get(b"x-request-id", b"").decode("latin-1")[:64] or uuid.uuid4().hex[:16]
        )
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                app_ms = (time.perf_counter() - started) * 1e3
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode("latin-1")),
                    (b"server-timing", f"app;dur={app_ms:.2f}".encode("latin-1")),
                ]
            await send(message)

        try:
            with job_log_context(request_id=request_id):
                await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            HTTP_REQUESTS.labels(method, path, str(status)).inc()
            HTTP_SECONDS.labels(method, path).observe(time.perf_counter() - started)


def create_app(
    settings: ServiceSettings, *, db: Database | None = None, workers: int = 0
) -> FastAPI:
    """The service app; ``workers`` in-process workers run jobs while it serves."""
    database = db or Database(settings.database_url, data_dir=settings.data_dir)
    stop = threading.Event()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        database.create_schema()
        app.state.pools = pools = {
            name: ThreadPoolExecutor(size, thread_name_prefix=name)
            for name, size in APP_POOL_SIZES.items()
        }
        models = ModelCache()  # in-process workers share loaded models
        threads = [
            threading.Thread(
                target=Worker(db=database, settings=settings, models=models).run,
                args=(stop,),
                name=f"worker-{i}",
                daemon=True,
            )
            for i in range(workers)
        ]
        for thread in threads:
            thread.start()
        try:
            yield
        finally:
            for pool in pools.values():
                pool.shutdown(wait=False, cancel_futures=True)
            stop.set()  # each worker gives its running job back at its next unit of work
            deadline = time.monotonic() + 30
            for thread in threads:
                thread.join(timeout=max(0.0, deadline - time.monotonic()))
                if thread.is_alive():
                    log.warning(
                        "%s did not stop within 30 s; its job is taken over once its lease expires",
                        thread.name,
                    )
            if db is None:  # the app made the engine, so it closes its pooled connections
                database.dispose()

    # Its docs pages load Swagger UI and ReDoc from the package, not from a CDN: they work on a
    # server without internet access.
    app = FastAPIOffline(
        title="promptlabel",
        version="1",
        summary="Class prompts in, verified labels and a fast on-device model out.",
        lifespan=lifespan,
        # The docs list the tags in this order, whatever order the routes are matched in.
        openapi_tags=[
            {"name": tag}
            for tag in ("service", "projects", "images", "jobs", "review", "models", "hard-cases")
        ],
    )
    app.state.db = database
    app.state.settings = settings
    secret = settings.session_secret
    app.state.session_secret = load_session_secret(
        settings.data_dir, secret.get_secret_value() if secret else None
    )
    # Requests are matched against the routes in order: /predict, the one whose overhead
    # counts, first (27 routes checked before it cost about 0.1 ms a request).
    # Every route of a project may answer 403: a key's role may not allow it (serve.api.deps).
    app.include_router(models.predict_router, responses=error_responses(401, 403))
    app.include_router(health.router)
    # every route of these needs a key
    keyed = (projects, images, jobs, review, spot_checks, acceptance, models, hard_cases, datasets)
    for router in keyed:
        app.include_router(router.router, responses=error_responses(401, 403))
    app.include_router(pages.session_router)
    pages.mount_review_page(app)
    add_error_handlers(app)
    app.add_middleware(BodyLimit, upload_limit=settings.max_upload_bytes)

    app.add_middleware(Observe)

    return app
