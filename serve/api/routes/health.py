"""Health (no key needed) and Prometheus metrics."""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from labeler.core.version import __version__
from serve.api.deps import CurrentPrincipal, CurrentSettings, Db, LabelerPrincipal
from serve.api.schemas import HealthPublic, ServiceOptions, error_responses
from serve.db import jobs
from serve.telemetry import JOBS_IN_QUEUE

router = APIRouter(tags=["service"])


@router.get(
    "/healthz",
    summary="Liveness, database reachability and the server's version (no API key needed)",
)
def healthz(db: Db) -> HealthPublic:
    with db.read() as connection:
        connection.execute(sa.text("SELECT 1"))
    return HealthPublic(status="ok", database=db.dialect, version=__version__)


@router.get(
    "/v1/options",
    summary="What this server offers: detector, verifier and training-base names, and limits",
    responses=error_responses(401),
)
def options(settings: CurrentSettings, _: CurrentPrincipal) -> ServiceOptions:
    # Names only: what each stands for (a model path, a URL) is the operator's.
    return ServiceOptions(
        version=__version__,
        detectors=sorted(settings.service_detectors),
        verifiers=sorted(settings.service_verifiers),
        train_bases=sorted(settings.service_train_bases),
        limits={
            "max_image_bytes": settings.max_image_bytes,
            "max_image_pixels": settings.max_image_pixels,
            "max_upload_bytes": settings.max_upload_bytes,
            "max_zip_members": settings.max_zip_members,
            "max_zip_total_bytes": settings.max_zip_total_bytes,
            "max_urls_per_request": settings.max_urls_per_request,
        },
    )


@router.get(
    "/metrics",
    summary="Prometheus metrics (a labeler or admin API key)",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}, **error_responses(401, 403)},
)
def metrics(db: Db, _: LabelerPrincipal) -> Response:
    with db.read() as connection:
        counts = connection.execute(
            sa.select(jobs.c.kind, jobs.c.status, sa.func.count()).group_by(
                jobs.c.kind, jobs.c.status
            )
        ).all()
    JOBS_IN_QUEUE.clear()
    for kind, status, count in counts:
        JOBS_IN_QUEUE.labels(kind=kind, status=status).set(count)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
