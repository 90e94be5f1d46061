"""The project's model registry and predictions with its production model."""

from __future__ import annotations

import threading
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, File, Query, Response, UploadFile
from fastapi.responses import FileResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from labeler.exceptions import ConflictError, InputError, NotFoundError
from serve.deps import Db, ProjectId, ServiceSettings
from serve.runtime import OnnxDetector, load_runtime, read_image_bytes
from serve.schemas import ModelPublic, PredictResult, PromotionPublic, error_responses
from serve.worker import registry_dir

if TYPE_CHECKING:
    from distill.registry import ModelVersion, PromotionDecision, Registry

router = APIRouter(prefix="/v1/projects/{project_id}", tags=["models"])
_ERRORS = error_responses(404, 409, 422)


def _registry(data_dir: Path, project_id: str) -> Registry:
    from distill.registry import Registry

    return Registry(registry_dir(data_dir, project_id))


def _model_public(version: ModelVersion) -> ModelPublic:
    return ModelPublic(
        version=version.version,
        stage=version.stage,
        source=version.source,
        created_at=version.created_at,
        metrics={k: v for k, v in version.metrics.items() if k != "data"},
        artifacts=sorted(version.artifacts),
        parent=version.parent,
    )


def _promotion_public(decision: PromotionDecision) -> PromotionPublic:
    return PromotionPublic(
        candidate=decision.version,
        production_before=decision.previous_production,
        promoted=decision.promoted,
        forced=decision.forced,
        reason=decision.reason,
        created_at=decision.created_at,
    )


def _get_version(registry: Registry, version: str) -> ModelVersion:
    try:
        return registry.get(version)
    except InputError:
        raise NotFoundError(f"no model {version!r} in this project") from None


@router.get("/models", summary="Registered models, oldest first")
def list_models(db: Db, settings: ServiceSettings, project_id: ProjectId) -> list[ModelPublic]:
    with _registry(settings.data_dir, project_id) as registry:
        return [_model_public(v) for v in registry.list()]


@router.get("/models/{version}", summary="One model: metrics and artifacts", responses=_ERRORS)
def get_model(settings: ServiceSettings, project_id: ProjectId, version: str) -> ModelPublic:
    with _registry(settings.data_dir, project_id) as registry:
        return _model_public(_get_version(registry, version))


class PromoteRequest(BaseModel):
    force: bool = False


@router.post(
    "/models/{version}/promote",
    summary="Make a model production if it scores no worse than the current one",
    responses=_ERRORS,
)
def promote_model(
    request: PromoteRequest,
    settings: ServiceSettings,
    project_id: ProjectId,
    version: str,
) -> PromotionPublic:
    from distill.registry import evaluation_metrics

    with _registry(settings.data_dir, project_id) as registry:
        _get_version(registry, version)
        decision = registry.promote(
            version,
            evaluate=partial(evaluation_metrics, device=settings.service_device),
            tolerance=settings.promote_tolerance,
            force=request.force,
        )
    PREDICTORS.forget(project_id)
    return _promotion_public(decision)


@router.get(
    "/models/{version}/onnx",
    summary="Download the model's ONNX export",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}}, **_ERRORS},
)
def download_onnx(settings: ServiceSettings, project_id: ProjectId, version: str) -> FileResponse:
    with _registry(settings.data_dir, project_id) as registry:
        found = _get_version(registry, version)
    artifact = found.artifacts.get("onnx")
    if artifact is None:
        raise NotFoundError(f"model {found.version} has no ONNX export")
    return FileResponse(
        artifact.path, media_type="application/octet-stream", filename=f"{found.version}.onnx"
    )


class _Predictors:
    """Loaded production models per project; rechecked every few seconds, dropped on promote.

    Each project has its own lock, so loading one project's model never delays another's
    predictions.
    """

    def __init__(self, ttl_s: float = 5.0) -> None:
        self._ttl_s = ttl_s
        self._loaded: dict[str, tuple[float, str, OnnxDetector]] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()

    def forget(self, project_id: str) -> None:
        self._loaded.pop(project_id, None)

    def get(self, data_dir: Path, project_id: str) -> tuple[str, OnnxDetector]:
        cached = self._loaded.get(project_id)
        if cached is not None and time.monotonic() - cached[0] < self._ttl_s:
            return cached[1], cached[2]
        with self._locks_lock:
            lock = self._locks.setdefault(project_id, threading.Lock())
        with lock:
            cached = self._loaded.get(project_id)
            if cached is not None and time.monotonic() - cached[0] < self._ttl_s:
                return cached[1], cached[2]
            with _registry(data_dir, project_id) as registry:
                production = registry.production()
            if production is None:
                raise ConflictError("no production model yet: train one and promote it")
            artifact = production.artifacts.get("onnx")
            if artifact is None:
                raise ConflictError(
                    f"production model {production.version} has no ONNX export; export it first"
                )
            if cached is not None and cached[1] == production.version:
                detector = cached[2]
            else:
                detector = load_runtime(artifact.path, conf=0.1)
            self._loaded[project_id] = (time.monotonic(), production.version, detector)
            return production.version, detector


PREDICTORS = _Predictors()


@router.post(
    "/predict",
    summary="Detect objects in one image with the production model (device runtime)",
    responses=_ERRORS,
)
async def predict(
    settings: ServiceSettings,
    project_id: ProjectId,
    file: Annotated[UploadFile, File(description="One image.")],
    response: Response,
    conf: Annotated[float, Query(ge=0.1, le=1, description="Score threshold.")] = 0.25,
) -> PredictResult:
    """The response's ``Server-Timing`` header gives ``runtime`` (decoding and running the
    model) and ``app`` (all of the request inside the service) in milliseconds."""
    data = await file.read(settings.max_image_bytes + 1)
    if len(data) > settings.max_image_bytes:
        raise InputError(f"file: over the {settings.max_image_bytes}-byte image limit")
    name = file.filename or "image"

    def run() -> PredictResult:
        version, detector = PREDICTORS.get(settings.data_dir, project_id)
        started = time.perf_counter()
        image = read_image_bytes(data, name=name, max_pixels=settings.max_image_pixels)
        detections = detector.predict([image])[0]
        runtime_ms = (time.perf_counter() - started) * 1e3
        response.headers["Server-Timing"] = f"runtime;dur={runtime_ms:.2f}"
        keep = detections.confidence >= conf
        names = detector.names
        return PredictResult(
            model_version=version,
            image_wh=image.size,
            detections=[
                {
                    "class": names[int(class_id)],
                    "class_id": int(class_id),
                    "xyxy": [round(float(v), 2) for v in xyxy],
                    "score": round(float(score), 4),
                }
                for xyxy, class_id, score in zip(
                    detections.xyxy[keep],
                    detections.class_id[keep],
                    detections.confidence[keep],
                    strict=True,
                )
            ],
        )

    return await run_in_threadpool(run)
