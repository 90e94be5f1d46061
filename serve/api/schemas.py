"""Request and response bodies of the HTTP API, split by role (``*Create`` in, ``*Public`` out)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal, overload

from pydantic import BaseModel, ConfigDict, Field

from distill.train import DEFAULT_BATCH, DEFAULT_IMGSZ, DEFAULT_PATIENCE
from labeler.export.dataset import DEFAULT_VAL_FRACTION
from labeler.propose.options import DetectorOptions
from labeler.route import RouteThresholds
from labeler.verify.templates import DEFAULT_VERIFY_MODE

__all__ = [
    "DetectionPublic",
    "ErrorBody",
    "HealthPublic",
    "ImagePublic",
    "ImageUploadResult",
    "JobProgressPublic",
    "JobPublic",
    "JobResultItem",
    "JobResultsPage",
    "LabelJobCreate",
    "ModelPublic",
    "OntologyClassIn",
    "OntologyIn",
    "PredictResult",
    "ProjectPublic",
    "PromotionPublic",
    "RejectedUpload",
    "ServiceOptions",
    "StageProgress",
    "TrainJobCreate",
    "UploadedImage",
    "UrlFetchCreate",
    "as_datetime",
    "error_responses",
]


@overload
def as_datetime(seconds: float) -> datetime: ...
@overload
def as_datetime(seconds: None) -> None: ...
@overload
def as_datetime(seconds: float | None) -> datetime | None: ...
def as_datetime(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, tz=UTC)


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a route may answer, all with an ``ErrorBody``."""
    return {code: {"model": ErrorBody} for code in codes}


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(BaseModel):
    detail: str


class OntologyClassIn(_In):
    name: str = Field(min_length=1, max_length=256)
    detect: str | list[str] = Field(description="Detector phrase(s) for this class.")
    verify: str | bool | None = Field(
        default=None,
        description="The verifier's yes/no question; null for the default, false to skip.",
    )


class OntologyIn(_In):
    classes: list[OntologyClassIn] | dict[str, str | list[str]] = Field(
        description="Long form (a list of classes) or short form (class name to phrase)."
    )


class ProjectPublic(BaseModel):
    id: str
    name: str
    ontology: dict[str, Any]
    images: int
    created_at: datetime
    updated_at: datetime


class ImagePublic(BaseModel):
    id: str
    filename: str
    sha256: str
    width: int
    height: int
    size_bytes: int
    source_url: str | None = None
    created_at: datetime


class UploadedImage(ImagePublic):
    already_present: bool = Field(
        description="The project held these bytes already (same sha256): this is that image, "
        "with its first file name, not a second copy."
    )


class RejectedUpload(BaseModel):
    name: str
    reason: str
    detail: str


class ImageUploadResult(BaseModel):
    """Accepted images (an already known image is returned again, not stored twice) and the
    files that were refused, each with why; one bad file never fails the others."""

    accepted: list[UploadedImage]
    rejected: list[RejectedUpload]


class UrlFetchCreate(_In):
    urls: list[str] = Field(min_length=1, description="http(s) URLs of images to fetch.")


# The library's defaults, so that a job submitted over HTTP labels as the CLI does.
_DETECTOR = DetectorOptions()
_ROUTE = RouteThresholds()


class LabelJobCreate(_In):
    image_ids: list[str] | None = Field(
        default=None, description="Images to label; null for every image of the project."
    )
    detector: str = Field(default="default", description="A detector name the server offers.")
    verifier: str = Field(default="none", description="A verifier name the server offers.")
    verify_mode: Literal["crop", "marks"] = DEFAULT_VERIFY_MODE
    box_threshold: float = Field(default=_DETECTOR.box_threshold, ge=0, le=1)
    text_threshold: float = Field(default=_DETECTOR.text_threshold, ge=0, le=1)
    max_det: int = Field(default=_DETECTOR.max_det, ge=1, le=1000)
    nms_iou: float = Field(default=_DETECTOR.nms_iou, ge=0, le=1)
    accept_threshold: float = Field(default=_ROUTE.accept, ge=0, le=1)
    reject_threshold: float = Field(default=_ROUTE.reject, ge=0, le=1)
    review_below_score: float = Field(default=_ROUTE.review_below_score, ge=0, le=1)
    val_fraction: float = Field(default=DEFAULT_VAL_FRACTION, ge=0, lt=1)


class TrainJobCreate(_In):
    label_job_id: str = Field(description="A finished labeling job whose dataset to train on.")
    base: str = Field(default="yolo11n", description="A starting model name the server offers.")
    # Half the CLI's 100 epochs: a service job shares its machine with other projects' jobs.
    epochs: int = Field(default=50, ge=1, le=1000)
    imgsz: int = Field(default=DEFAULT_IMGSZ, ge=32, le=2048, multiple_of=32)
    batch: int = Field(default=DEFAULT_BATCH, ge=1, le=512)
    patience: int = Field(default=DEFAULT_PATIENCE, ge=0, le=1000)
    seed: int = Field(default=0, ge=0)


class StageProgress(BaseModel):
    done: int
    total: int


class JobProgressPublic(BaseModel):
    """Where a running job is. Every field has a default, so progress stored by any version
    reads back; stage-specific values (training's ``last_metrics``) come as extra fields."""

    model_config = ConfigDict(extra="allow")

    stage: str = Field(
        default="starting",
        description="starting (models load); labeling: scan, propose, verify, route, export; "
        "training: train, export; done.",
    )
    done: int = Field(default=0, description="Done in this stage: images, verifier calls, epochs.")
    total: int = Field(default=0, description="To do in this stage.")
    fraction: float = Field(default=0.0, description="Of the whole job, 0 to 1, by stage weights.")
    attempt: int = Field(
        default=1, description="Which run of the job: a job taken over from a dead worker is 2, 3."
    )
    stages: dict[str, StageProgress] = Field(
        default_factory=dict, description="done/total of every stage reached so far."
    )


class JobPublic(BaseModel):
    id: str
    project_id: str
    kind: str
    status: str
    params: dict[str, Any]
    attempts: int
    cancel_requested: bool
    progress: JobProgressPublic | None
    eta_s: float | None = Field(description="Seconds to go, from the pace so far; null if unknown.")
    result: dict[str, Any] | None = Field(
        description="Once succeeded. Labeling: labels per status and class, verifier calls and "
        "errors, timings. Training: model_version and metrics. Both: provenance, with the "
        "promptlabel_version that ran the job."
    )
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobResultItem(BaseModel):
    image_id: str
    filename: str
    status: str = Field(description="pending, labeled or failed (the image could not be used).")
    error: str | None
    counts: dict[str, int] | None
    labels: list[dict[str, Any]] | None = Field(
        description="Every proposal: class, xyxy (pixels), score, status, reason, verifier answer."
    )


class JobResultsPage(BaseModel):
    items: list[JobResultItem]
    next_offset: int | None


class PromotionPublic(BaseModel):
    candidate: str
    production_before: str | None
    promoted: bool
    forced: bool
    reason: str
    candidate_map50_95: float | None = Field(
        description="The candidate's mAP50-95 on the evaluation set; null where not measured."
    )
    production_map50_95: float | None = Field(
        description="Production's mAP50-95 on the same set; null when there was no production."
    )
    promptlabel_version: str | None = Field(
        description="The promptlabel version that made the decision; null for older decisions."
    )
    tolerance: float = Field(description="How much mAP50-95 the candidate could lose and pass.")
    production_reevaluated: bool = Field(
        description="Production's score was measured now (true) or read from its stored metrics."
    )
    created_at: str


class ModelPublic(BaseModel):
    version: str
    stage: str
    source: str
    created_at: str
    metrics: dict[str, Any]
    artifacts: list[str]
    parent: str | None
    promptlabel_version: str | None = Field(
        description="The promptlabel version that registered the model; null for older entries."
    )


class HealthPublic(BaseModel):
    status: Literal["ok"]
    database: str = Field(description="The database's dialect: sqlite or postgresql.")
    version: str = Field(description="The server's promptlabel version.")


class ServiceOptions(BaseModel):
    version: str = Field(
        description="The server's promptlabel version, the one its jobs' results record."
    )
    detectors: list[str] = Field(description="Names for a labeling job's `detector`.")
    verifiers: list[str] = Field(description="Names for a labeling job's `verifier`.")
    train_bases: list[str] = Field(description="Names for a training job's `base`.")
    limits: dict[str, int] = Field(
        description="Bytes and counts the server accepts per image, request, archive and fetch."
    )


class DetectionPublic(BaseModel):
    """One box: the record ``labeler.core.detections.as_records`` makes, the same that
    ``promptlabel predict --json`` prints and ``labels.jsonl`` holds. ``class_name`` is read and
    written as ``class``: dump with ``by_alias=True``."""

    class_id: int = Field(description="Index into the model's class names.")
    class_name: str = Field(alias="class", description="The class's name.")
    score: float = Field(description="The model's confidence in [0, 1], to 4 decimals.")
    xyxy: tuple[float, float, float, float] = Field(
        description="Left, top, right, bottom in pixels of the image (EXIF orientation applied), "
        "to 0.01 px."
    )


class PredictResult(BaseModel):
    model_version: str
    image_wh: tuple[int, int] = Field(description="Width and height of the image in pixels.")
    detections: list[DetectionPublic] = Field(description="Boxes at or above `conf`.")
