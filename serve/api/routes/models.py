"""The project's model registry and predictions with its production model."""

from __future__ import annotations

import logging
import re
import threading
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Body, Header, HTTPException, Query, Request, Response, status
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect

from labeler.core.exceptions import ImageError, InputError, ModelLoadError
from serve.api.deps import CurrentSettings, Db, ProjectId, run_in_app_pool
from serve.api.hard_case_schemas import DEVICE_NAME_CHARS
from serve.api.schemas import (
    GateCheckPublic,
    ModelPublic,
    PredictResult,
    PromotionPublic,
    error_responses,
)
from serve.errors import ConflictError, NotFoundError
from serve.ingest.uploads import ACCEPTED_FORMATS, DECODE_SLOTS
from serve.jobs.service import without_data_dir
from serve.jobs.worker import registry_dir
from serve.runtime.defaults import DEFAULT_CONF
from serve.runtime.onnx import OnnxDetector, load_runtime, read_image_bytes
from serve.runtime.segment import records_with_masks
from serve.settings import ServiceSettings

if TYPE_CHECKING:
    from distill.registry import ModelVersion, PromotionDecision, Registry

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/projects/{project_id}", tags=["models"])
# The app matches this one's routes before any other's (see create_app).
predict_router = APIRouter(prefix="/v1/projects/{project_id}", tags=["models"])
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
        promptlabel_version=version.promptlabel_version,
    )


# The gate names the data.yaml it scored on, a file in a labeling job's folder on the server.
_JOB_DATASET = re.compile(r"\S*?\bjobs[/\\](job_[0-9a-f]+)[/\\]dataset[/\\]data\.yaml")


def _promotion_public(decision: PromotionDecision, data_dir: Path) -> PromotionPublic:
    def public_path(text: str) -> str:
        # The folder goes first: a folder name may hold spaces, which the pattern does not cross.
        return _JOB_DATASET.sub(r"the dataset of labeling job \1", without_data_dir(text, data_dir))

    checks = [
        GateCheckPublic(
            data=public_path(str(check.eval_set.data)),
            split=check.eval_set.split,
            class_name=check.class_name,
            candidate_map50_95=check.candidate_map50_95,
            production_map50_95=check.production_map50_95,
            instances=check.instances,
            outcome=check.outcome,
        )
        for check in decision.checks
    ]
    return PromotionPublic(
        candidate=decision.version,
        production_before=decision.previous_production,
        promoted=decision.promoted,
        forced=decision.forced,
        reason=public_path(decision.reason),
        candidate_map50_95=decision.candidate_map50_95,
        production_map50_95=decision.production_map50_95,
        tolerance=decision.tolerance,
        production_reevaluated=decision.production_reevaluated,
        promptlabel_version=decision.promptlabel_version,
        created_at=decision.created_at,
        checks=checks,
    )


def _get_version(registry: Registry, version: str) -> ModelVersion:
    try:
        return registry.get(version)
    except InputError:
        raise NotFoundError(f"no model {version!r} in this project") from None


@router.get("/models", summary="Registered models, oldest first")
def list_models(db: Db, settings: CurrentSettings, project_id: ProjectId) -> list[ModelPublic]:
    with _registry(settings.data_dir, project_id) as registry:
        return [_model_public(v) for v in registry.list()]


@router.get("/models/{version}", summary="One model: metrics and artifacts", responses=_ERRORS)
def get_model(settings: CurrentSettings, project_id: ProjectId, version: str) -> ModelPublic:
    with _registry(settings.data_dir, project_id) as registry:
        return _model_public(_get_version(registry, version))


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    force: bool = Field(
        default=False, description="Promote even when the gate refuses (recorded as forced)."
    )


@router.post(
    "/models/{version}/promote",
    summary="Make a model production if it scores no worse than the current one",
    responses=_ERRORS,
)
def promote_model(
    settings: CurrentSettings,
    project_id: ProjectId,
    version: str,
    request: Annotated[PromoteRequest | None, Body()] = None,
) -> PromotionPublic:
    """No body (or ``{}``) is the gated promotion; ``{"force": true}`` overrides the gate."""
    force = request is not None and request.force
    from distill.registry import evaluation_metrics, hard_case_eval_set

    with _registry(settings.data_dir, project_id) as registry:
        hard_cases = hard_case_eval_set(_get_version(registry, version))
        decision = registry.promote(
            version,
            evaluate=partial(evaluation_metrics, device=settings.service_device),
            tolerance=settings.promote_tolerance,
            force=force,
            # A dataset version's held-out hard cases: did the candidate learn them?
            extra_eval_sets=[hard_cases] if hard_cases is not None else [],
        )
    PREDICTORS.forget(project_id)
    return _promotion_public(decision, settings.data_dir)


@router.get(
    "/promotions",
    summary="Every promotion decision, promoted or refused, oldest first",
    responses=_ERRORS,
)
def list_promotions(
    settings: CurrentSettings,
    project_id: ProjectId,
    version: Annotated[str | None, Query(description="Only this model's (v3).")] = None,
) -> list[PromotionPublic]:
    with _registry(settings.data_dir, project_id) as registry:
        if version is not None:
            version = _get_version(registry, version).version
        decisions = registry.promotions(version)
    return [_promotion_public(decision, settings.data_dir) for decision in decisions]


def _etag_matches(if_none_match: str | None, sha256: str) -> bool:
    """Whether an ``If-None-Match`` header names this content (``*`` or a list of tags, compared
    weakly as RFC 9110 asks for this header)."""
    if not if_none_match:
        return False
    tags = (tag.strip() for tag in if_none_match.split(","))
    return any(tag == "*" or tag.removeprefix("W/") == f'"{sha256}"' for tag in tags)


# Registered before "/models/{version}/onnx", which would otherwise take "production" for a
# version name and answer 404.
@router.get(
    "/models/production/onnx",
    summary="Download the production model's ONNX export; 304 when the device has it already",
    response_class=FileResponse,
    responses={
        200: {
            "content": {"application/octet-stream": {}},
            "headers": {
                "ETag": {"description": 'The file\'s SHA-256 in quotes: "<hex>".'},
                "X-Model-Version": {"description": "The production version (v3)."},
                "X-Content-SHA256": {"description": "The file's SHA-256 (hex), to verify."},
            },
        },
        304: {"description": "If-None-Match names the current file: no body."},
        **_ERRORS,
    },
)
def download_production_onnx(
    settings: CurrentSettings,
    project_id: ProjectId,
    if_none_match: Annotated[
        str | None, Header(description='The ETag of the copy the device has ("<sha256>").')
    ] = None,
) -> Response:
    """What devices poll (``promptlabel predict --model-url``). The ETag is the file's SHA-256,
    recorded once when the export was registered (never recomputed per request), so an
    unchanged model costs one registry read and a 304 with no body. 404 when the project has
    no production model, 409 when it has one without an ONNX export."""
    with _registry(settings.data_dir, project_id) as registry:
        production = registry.production()
    if production is None:
        raise NotFoundError("no production model yet: train one and promote it")
    artifact = production.artifacts.get("onnx")
    if artifact is None:
        raise ConflictError(
            f"production model {production.version} has no ONNX export; export it first"
        )
    headers = {
        "ETag": f'"{artifact.sha256}"',
        "X-Model-Version": production.version,
        "X-Content-SHA256": artifact.sha256,
        # Caches may keep the file but must ask first: production changes on a promotion.
        "Cache-Control": "no-cache",
    }
    if _etag_matches(if_none_match, artifact.sha256):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    return FileResponse(
        artifact.path,
        media_type="application/octet-stream",
        filename=f"{production.version}.onnx",
        headers=headers,
    )


@router.get(
    "/models/{version}/onnx",
    summary="Download the model's ONNX export",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}}, **_ERRORS},
)
def download_onnx(settings: CurrentSettings, project_id: ProjectId, version: str) -> FileResponse:
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
                try:
                    detector = load_runtime(artifact.path, conf=0.1)
                except ModelLoadError as error:
                    # The message names the file; callers never see where the server keeps data.
                    log.error("project %s: %s", project_id, error)
                    raise ModelLoadError(
                        f"production model {production.version} could not be loaded; the "
                        "server's log says why"
                    ) from None
            self._loaded[project_id] = (time.monotonic(), production.version, detector)
            return production.version, detector


PREDICTORS = _Predictors()


# A device posts the image itself (``curl --data-binary @frame.jpg -H "Content-Type: image/jpeg"``);
# a browser or the docs page posts a form. The raw body skips multipart parsing, the cheaper path.
_OCTET_STREAM = "application/octet-stream"
_BINARY = {"type": "string", "format": "binary"}
_PREDICT_BODY = {
    "required": True,
    "description": "One image: the raw bytes with an image Content-Type (any `image/*` or "
    "`application/octet-stream`), or a multipart form with the image in its `file` field.",
    "content": {
        "image/jpeg": {"schema": _BINARY},
        "image/png": {"schema": _BINARY},
        "application/octet-stream": {"schema": _BINARY},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"file": {**_BINARY, "description": "One image."}},
                "required": ["file"],
            }
        },
    },
}


async def _image_from_request(request: Request, max_bytes: int) -> tuple[bytes, str]:
    """The posted image's bytes and a name for messages: the raw body or the form's ``file``."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        return await _read_image(request, content_type, max_bytes)
    except ClientDisconnect:
        # As FastAPI answers a body it cannot read: the client is gone, so no one reads it.
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, "the client disconnected before the image arrived"
        ) from None


def _too_large(field: str, max_bytes: int) -> HTTPException:
    return HTTPException(
        status.HTTP_413_CONTENT_TOO_LARGE,
        f"{field}: over the {max_bytes}-byte image limit (PROMPTLABEL_MAX_IMAGE_BYTES)",
    )


async def _read_image(request: Request, content_type: str, max_bytes: int) -> tuple[bytes, str]:
    if content_type.startswith("image/") or content_type == _OCTET_STREAM:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise _too_large("body", max_bytes)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_bytes:
                raise _too_large("body", max_bytes)
        return bytes(body), "body"
    if content_type == "multipart/form-data":
        async with request.form(max_files=1, max_fields=8) as form:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise InputError(
                    "file: missing (or the form was cut off before its end); send the image "
                    "as the form's 'file' field"
                )
            data = await upload.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise _too_large("file", max_bytes)
            return data, upload.filename or "file"
    raise HTTPException(
        status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
        f"Content-Type {content_type or '(none)'!r}: send the image as the raw body with an "
        "image Content-Type (image/jpeg, image/png, ...) or as multipart/form-data field 'file'",
    )


@predict_router.post(
    "/predict",
    summary="Detect objects in one image with the production model (device runtime)",
    response_model=PredictResult,
    responses=error_responses(400, 404, 409, 413, 415, 422, 503),
    openapi_extra={"requestBody": _PREDICT_BODY},
)
async def predict(
    project_id: ProjectId,
    request: Request,
    conf: Annotated[float, Query(ge=0.1, le=1, description="Score threshold.")] = DEFAULT_CONF,
    collect: Annotated[
        bool,
        Query(
            description="Keep the frame as a hard case when the project's collection policy "
            "says so (PUT .../collection-policy); the answer's `collection` says whether and why."
        ),
    ] = False,
    device_name: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=DEVICE_NAME_CHARS,
            description="With collect: the device the frame came from (default: server).",
        ),
    ] = None,
    device_header: Annotated[
        str | None,
        Header(
            alias="X-Device-Name",
            max_length=DEVICE_NAME_CHARS,
            description="With collect: the device's name, when not given as device_name.",
        ),
    ] = None,
) -> Response:
    """The response's ``Server-Timing`` header gives ``runtime`` (decoding and running the
    model) and ``app`` (all of the request inside the service) in milliseconds.

    With ``collect=true`` the project's collection policy judges the frame; its rate limits and
    its memory of recently kept frames (near-duplicates) live in this server process, per
    project."""
    # From the app rather than ``CurrentSettings``: each dependency costs this route time.
    settings: ServiceSettings = request.app.state.settings
    data, name = await _image_from_request(request, settings.max_image_bytes)

    def run() -> Response:
        # The answer is serialized here too, so the event loop only sends bytes.
        version, detector = PREDICTORS.get(settings.data_dir, project_id)
        started = time.perf_counter()
        with DECODE_SLOTS:  # as for uploads: a 10 KB PNG may hold 81 M pixels
            try:
                image = read_image_bytes(
                    data, name=name, max_pixels=settings.max_image_pixels, formats=ACCEPTED_FORMATS
                )
            except ImageError as error:
                if error.reason not in ("not_an_image", "zero_bytes"):
                    raise
                raise ImageError(
                    name, error.reason, f"send one image in one of: {', '.join(ACCEPTED_FORMATS)}"
                ) from None
        detections = detector.predict([image])[0]
        runtime_ms = (time.perf_counter() - started) * 1e3
        kept = detections[detections.confidence >= conf]
        records = records_with_masks(kept, detector.names)
        result = PredictResult.model_validate(
            {"model_version": version, "image_wh": image.size, "detections": records}
        )
        if collect:
            from serve.api.routes.hard_cases import collect_predicted_frame

            outcome = collect_predicted_frame(
                request.app.state.db,
                settings,
                project_id=project_id,
                data=data,
                name=name,
                image=image,
                records=records,
                model_version=version,
                device=device_name or device_header,
            )
            result.collection = outcome
        return Response(
            # exclude_none: detection models' boxes carry no "mask" key at all.
            result.model_dump_json(by_alias=True, exclude_none=True),
            media_type="application/json",
            headers={"Server-Timing": f"runtime;dur={runtime_ms:.2f}"},
        )

    return await run_in_app_pool(request, "predict", run)
