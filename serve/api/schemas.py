"""Request and response bodies of the HTTP API, split by role (``*Create`` in, ``*Public`` out)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal, overload

from pydantic import BaseModel, ConfigDict, Field, model_validator

from distill.train import DEFAULT_BATCH, DEFAULT_IMGSZ, DEFAULT_PATIENCE
from labeler.export.dataset import DEFAULT_VAL_FRACTION
from labeler.propose.options import DetectorOptions
from labeler.route import RouteThresholds
from labeler.verify.templates import DEFAULT_VERIFY_MODE

__all__ = [
    "CollectionOutcome",
    "CompressedMaskRle",
    "DetectionPublic",
    "ErrorBody",
    "GateCheckPublic",
    "HealthPublic",
    "ImagePublic",
    "ImageUploadResult",
    "JobProgressPublic",
    "JobPublic",
    "JobResultItem",
    "JobResultsPage",
    "LabelJobCreate",
    "MaskRle",
    "ModelPublic",
    "OntologyClassIn",
    "OntologyIn",
    "PredictResult",
    "ProjectPublic",
    "PromotionPublic",
    "RejectedUpload",
    "ReviewBoxIn",
    "ReviewBoxPublic",
    "ReviewDecisionIn",
    "ReviewDecisionResult",
    "ReviewDecisionsConflict",
    "ReviewDecisionsIn",
    "ReviewDecisionsPublic",
    "ReviewExportPublic",
    "ReviewImageBoxes",
    "ReviewItemPublic",
    "ReviewQueuePublic",
    "ReviewStatePublic",
    "ReviewSummaryPublic",
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
    hard_cases: bool = Field(
        default=False,
        description="Label the hard-case inbox: every hard case no labeling job has taken yet "
        "(the next round). The students' predictions come along: proposals a student "
        "disagrees on go to review (student_disagrees). Not with image_ids.",
    )
    detector: str = Field(default="default", description="A detector name the server offers.")
    verifier: str = Field(default="none", description="A verifier name the server offers.")
    verify_mode: Literal["crop", "marks"] = DEFAULT_VERIFY_MODE
    box_threshold: float = Field(default=_DETECTOR.box_threshold, ge=0, le=1)
    text_threshold: float = Field(default=_DETECTOR.text_threshold, ge=0, le=1)
    max_det: int = Field(default=_DETECTOR.max_det, ge=1, le=1000)
    nms_iou: float = Field(default=_DETECTOR.nms_iou, ge=0, le=1)
    tile: int | None = Field(
        default=None, ge=32, description="Also detect on overlapping tiles of this many pixels."
    )
    tile_overlap: float = Field(default=_DETECTOR.tile_overlap, ge=0, lt=0.9)
    accept_threshold: float = Field(default=_ROUTE.accept, ge=0, le=1)
    reject_threshold: float = Field(default=_ROUTE.reject, ge=0, le=1)
    review_below_score: float = Field(default=_ROUTE.review_below_score, ge=0, le=1)
    val_fraction: float = Field(default=DEFAULT_VAL_FRACTION, ge=0, lt=1)
    masks: str | None = Field(
        default=None,
        description="A segmenter name the server offers: a mask per accepted box; null: none.",
    )


class TrainJobCreate(_In):
    label_job_id: str | None = Field(
        default=None, description="A finished labeling job whose dataset to train on."
    )
    dataset_version: str | None = Field(
        default=None, description="Or a dataset version to train on (d3, or latest)."
    )
    base: str = Field(
        default="yolo11n",
        description="A starting model name the server offers, or production: fine-tune the "
        "project's production model (the next round of the loop).",
    )
    # Half the CLI's 100 epochs: a service job shares its machine with other projects' jobs.
    epochs: int = Field(default=50, ge=1, le=1000)
    imgsz: int = Field(default=DEFAULT_IMGSZ, ge=32, le=2048, multiple_of=32)
    batch: int = Field(default=DEFAULT_BATCH, ge=1, le=512)
    patience: int = Field(default=DEFAULT_PATIENCE, ge=0, le=1000)
    seed: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _one_dataset(self) -> TrainJobCreate:
        if (self.label_job_id is None) == (self.dataset_version is None):
            raise ValueError("give exactly one of label_job_id and dataset_version")
        return self


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


class GateCheckPublic(BaseModel):
    """One comparison the promotion gate made (``distill.registry.GateCheck``)."""

    data: str = Field(description="The evaluation set's data.yaml (server paths taken out).")
    split: str = Field(description="The split compared on: val, hard_cases, ...")
    class_name: str | None = Field(description="The class compared; null for the overall mAP.")
    candidate_map50_95: float
    production_map50_95: float
    instances: float | None = Field(
        description="Ground-truth boxes of the class in the split; null overall or unknown."
    )
    outcome: Literal["pass", "worse", "too_few_instances"] = Field(
        description="pass: lost at most the tolerance; worse: lost more (refuses the candidate); "
        "too_few_instances: lost more, but too few boxes to judge, so it does not refuse."
    )


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
    checks: list[GateCheckPublic] = Field(
        default_factory=list,
        description="Every comparison behind the decision: overall and per class, on each "
        "evaluation set (empty when nothing was compared).",
    )


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


class MaskRle(BaseModel):
    """COCO RLE: ``size`` is ``[height, width]``, ``counts`` the run lengths over the
    column-major pixels, zeros first (pycocotools' ``frPyObjects`` reads it)."""

    size: tuple[int, int]
    counts: list[int]


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
    mask: MaskRle | None = Field(
        default=None,
        description="Segmentation models only (absent otherwise): the instance mask as COCO "
        "uncompressed RLE in pixels of the image.",
    )


class CollectionOutcome(BaseModel):
    collected: bool
    reasons: list[str] = Field(description="Why the policy wants the frame; [] if it does not.")
    skipped: str | None = Field(
        default=None,
        description="Why a frame was not kept: no_policy (the project has none), no_reason, "
        "duplicate (near a recently kept frame) or rate_limited.",
    )
    hard_case_id: str | None = None


class PredictResult(BaseModel):
    model_version: str
    image_wh: tuple[int, int] = Field(description="Width and height of the image in pixels.")
    detections: list[DetectionPublic] = Field(description="Boxes at or above `conf`.")
    collection: CollectionOutcome | None = Field(
        default=None, description="With collect=true: whether and why the frame was kept."
    )


# -- review (serve.api.routes.review) ---------------------------------------------------------

_XYXY = "Left, top, right, bottom in pixels of the image (EXIF orientation applied)."


class CompressedMaskRle(BaseModel):
    """A mask as COCO's compressed RLE, as pycocotools writes it (``pycocotools.mask.decode``
    reads it); ``MaskRle`` is the uncompressed form devices write without pycocotools."""

    size: tuple[int, int] = Field(description="Height and width of the image, in pixels.")
    counts: str = Field(description="pycocotools' compressed run lengths, column-major.")


_MASK = (
    "The segmenter's mask of this box (labeling with --masks / the job option masks); null: "
    "none (no masks, or a reviewer moved the box since)."
)


class ReviewBoxPublic(BaseModel):
    """A box of an image as it stands now: a reviewer's decision where there is one, else the
    automatic route. Text from outside (class names, reasons) is data, never markup."""

    proposal_id: int
    version: int = Field(description="Its latest decision's version; 0: never decided.")
    class_id: int
    class_name: str = Field(alias="class")
    xyxy: tuple[float, float, float, float] = Field(description=_XYXY)
    status: str = Field(description="accepted, rejected or needs_review.")
    reason: str | None
    decided_by: Literal["auto", "human"]
    reviewer: str | None = Field(description="The API key id of who decided it; null for auto.")
    auto_status: str | None = Field(description="The automatic route's; null for added boxes.")
    added: bool = Field(description="A reviewer added it (the detector did not propose it).")
    score: float | None = Field(description="The detector's score; null for added boxes.")
    yes_prob: float | None = Field(description="The verifier's P(yes); null when none.")
    mask: CompressedMaskRle | None = Field(default=None, description=_MASK)


class ReviewItemPublic(BaseModel):
    """A box the route sent to review, with the evidence to decide it."""

    proposal_id: int
    version: int = Field(description="Send it back as the decision's base_version.")
    image_sha256: str
    image_url: str = Field(description="The image's bytes (GET, same key).")
    image_wh: tuple[int, int] | None = Field(description="Width and height in pixels.")
    class_id: int
    class_name: str = Field(alias="class")
    xyxy: tuple[float, float, float, float] = Field(description=_XYXY)
    score: float = Field(description="The detector's score.")
    yes_prob: float | None = Field(description="The verifier's P(yes); null: no usable answer.")
    question: str | None = Field(description="The question the verifier was asked.")
    answer: str | None = Field(description="The verifier's raw answer text.")
    reason: str | None = Field(description="Why the route sent it to review.")
    mask: CompressedMaskRle | None = Field(default=None, description=_MASK)
    boxes: list[ReviewBoxPublic] = Field(description="Every other box of the image, as it stands.")


class ReviewQueuePublic(BaseModel):
    items: list[ReviewItemPublic] = Field(description="Most uncertain first; empty: none left.")
    claim_s: float = Field(description="How long the items stay claimed for this key.")


class ReviewDecisionIn(_In):
    proposal_id: int = Field(ge=0, le=2**63 - 1)
    action: Literal["accept", "reject", "relabel", "edit", "delete", "undo"]
    base_version: int = Field(
        ge=0, le=2**63 - 1, description="The box's version the decision was made on."
    )
    class_id: int | None = Field(default=None, ge=0, le=2**31 - 1, description="relabel: to.")
    xyxy: tuple[float, float, float, float] | None = Field(default=None, description="edit: to.")


class ReviewDecisionsIn(_In):
    decisions: list[ReviewDecisionIn] = Field(min_length=1, max_length=500)


class ReviewStatePublic(BaseModel):
    """A box's state after its latest decision."""

    proposal_id: int
    version: int
    action: str
    status: str | None = Field(description="null: every decision undone; the route decides.")
    class_id: int | None = Field(description="null: the proposal's own.")
    class_name: str | None = Field(alias="class")
    xyxy: tuple[float, float, float, float] | None = Field(description="null: the proposal's own.")
    reviewer: str = Field(description="The API key id that decided.")
    made_at: str


class ReviewDecisionResult(BaseModel):
    proposal_id: int
    state: ReviewStatePublic | None = Field(default=None, description="Applied: the new state.")
    stale: bool | None = Field(
        default=None,
        description="Refused: true when another decision came first, false when the box's "
        "state does not allow it (an undo with nothing left to undo; see error).",
    )
    error: str | None = Field(default=None, description="Why it was refused, when not stale.")
    current: ReviewStatePublic | None = Field(
        default=None, description="Refused: the box's state now (null: never decided)."
    )


class ReviewDecisionsPublic(BaseModel):
    results: list[ReviewDecisionResult] = Field(description="One per decision, in order.")


class ReviewDecisionsConflict(ReviewDecisionsPublic):
    detail: str


class ReviewBoxIn(_In):
    image_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    class_id: int = Field(ge=0, le=2**31 - 1)
    xyxy: tuple[float, float, float, float] = Field(description=_XYXY)


class ReviewImageBoxes(BaseModel):
    image_sha256: str
    image_wh: tuple[int, int] | None = Field(description="null: the image was never decoded.")
    boxes: list[ReviewBoxPublic]


class ReviewSummaryPublic(BaseModel):
    job_id: str
    run_id: int | None = Field(description="The workspace run whose routing is shown.")
    classes: list[str] = Field(description="Class names by class_id.")
    thresholds: dict[str, float] = Field(description="accept, reject, review_below_score.")
    needs_review_left: int = Field(description="Sent to review, not decided yet.")
    needs_review_decided: int = Field(description="Sent to review and decided by reviewers.")
    decided: int = Field(description="Boxes reviewers decided, whatever the route said.")
    added: int = Field(description="Boxes reviewers added.")
    labels: dict[str, int] = Field(description="Boxes by status as they stand now.")
    per_class: dict[str, dict[str, int]]


class ReviewExportPublic(BaseModel):
    """The re-exported dataset's report: what the job's dataset download now holds."""

    labels: dict[str, int]
    labels_by_decider: dict[str, dict[str, int]] = Field(description="auto and human.")
    per_class: dict[str, dict[str, int]]
    images: dict[str, int]
    dataset: dict[str, Any]
