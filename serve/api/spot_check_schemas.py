"""Request and response schemas of spot checks (``serve.api.routes.spot_checks``) and of the
acceptance of datasets and its project settings (``serve.api.routes.acceptance``).

A spot check is shown blind: ``SpotCheckItemPublic`` has the box, its class and its image, and
no field that tells the automatic verdict, P(yes), the stratum or an answer.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AcceptancePublic",
    "AcceptanceRefusedBody",
    "AcceptanceSnapshot",
    "ClassSnapshot",
    "JobAcceptancePublic",
    "ProjectSettingsIn",
    "ProjectSettingsPublic",
    "SpotCheckAnswerConflict",
    "SpotCheckAnswerIn",
    "SpotCheckAnswerPublic",
    "SpotCheckClassPublic",
    "SpotCheckDrawIn",
    "SpotCheckDrawPublic",
    "SpotCheckEstimatePublic",
    "SpotCheckItemPublic",
    "SpotCheckQueuePublic",
    "SpotCheckReportPublic",
    "ThresholdPointPublic",
]

Stratum = Literal["accepted", "rejected"]
Interval = tuple[float, float]
_XYXY = "Left, top, right, bottom in pixels of the image (EXIF orientation applied)."


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- spot checks -----------------------------------------------------------------------------


class SpotCheckDrawIn(_In):
    per_class: int = Field(
        ge=1,
        le=10_000,
        description="Checks wanted per class and stratum, counting those drawn before (all of "
        "a class's eligible labels when it has fewer).",
    )
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="The sample's random seed.")
    strata: list[Stratum] = Field(
        default=["accepted", "rejected"],
        min_length=1,
        max_length=2,
        description="Sample the auto-accepted labels, the auto-rejected ones, or both.",
    )


class SpotCheckDrawPublic(BaseModel):
    added: int = Field(description="Checks this request drew (0: the sample was that large).")
    drawn: int = Field(description="Checks drawn so far, whatever became of them.")
    pending: int = Field(description="Checks waiting for an answer.")


class SpotCheckItemPublic(BaseModel):
    """A check, blind: the box and its class, never the verdict, P(yes) or stratum."""

    proposal_id: int
    version: int = Field(description="Send it back as the answer's base_version.")
    image_sha256: str
    image_url: str = Field(description="The image's bytes (GET, same key).")
    image_wh: tuple[int, int] | None = Field(description="Width and height in pixels.")
    class_id: int | None = Field(description="null: a class the ontology no longer has.")
    class_name: str = Field(alias="class")
    xyxy: tuple[float, float, float, float] = Field(description=_XYXY)
    # No mask: masks are made for accepted boxes only, so a mask would tell the stratum.


class SpotCheckQueuePublic(BaseModel):
    items: list[SpotCheckItemPublic] = Field(description="Strata and classes mixed.")
    left: int = Field(description="Unanswered checks this key may take, these included.")
    claim_s: float = Field(description="How long the items stay claimed for this key.")


class SpotCheckAnswerIn(_In):
    answer: Literal["correct", "incorrect"] = Field(
        description="Is the box right for its class (tight enough, the right object)?"
    )
    base_version: int = Field(
        ge=0, le=2**63 - 1, description="The check's version the answer was made on."
    )


class SpotCheckAnswerPublic(BaseModel):
    """A check's answer so far, who gave it and when; ``version`` counts the answers."""

    proposal_id: int
    version: int
    answer: Literal["correct", "incorrect"] | None
    reviewer: str | None = Field(description="The API key id that answered.")
    answered_at: str | None


class SpotCheckAnswerConflict(BaseModel):
    detail: str
    proposal_id: int
    decided_outside: bool = Field(
        description="true: a reviewer decided the box outside the check (an unanswered check "
        "no longer counts, an answered one keeps its answer); false: another answer came first."
    )
    current: SpotCheckAnswerPublic = Field(description="The check as it stands.")


class SpotCheckEstimatePublic(BaseModel):
    """A share correct over a population of labels, the classes weighted by their counts."""

    population: int = Field(description="Labels the estimate speaks for.")
    checked: int
    correct: int
    share_correct: float | None = Field(description="null: a class with labels has no checks.")
    interval: Interval | None = Field(description="Wilson interval at the report's confidence.")
    effective_checks: float | None = Field(description="Kish effective number of checks.")
    unchecked_strata: list[str] = Field(description="Classes with labels and no checks.")
    checks_to_target: int | None = Field(
        description="About how many more answered checks narrow the interval to the target "
        "half-width if the share holds (spread as so far); null while a class has none."
    )


class SpotCheckClassPublic(BaseModel):
    class_name: str
    accepted_count: int
    accepted_checked: int
    accepted_correct: int
    precision: float | None
    precision_interval: Interval
    checks_to_target: int = Field(description="More checks of this class to the half-width.")
    rejected_count: int
    rejected_checked: int
    rejected_correct: int
    rejected_share_correct: float | None
    rejected_interval: Interval


class ThresholdPointPublic(BaseModel):
    threshold: float
    accepted_count: int = Field(description="Labels with P(yes) at least the threshold.")
    checked_count: int
    precision: float | None
    precision_interval: Interval | None
    unchecked_strata: list[str]


class SpotCheckReportPublic(BaseModel):
    job_id: str
    run_id: int | None = Field(description="The workspace run whose automatic labels count.")
    confidence: float
    target_half_width: float
    thresholds: dict[str, float] = Field(
        description="The job's accept, reject, review_below_score."
    )
    checks: dict[str, int] = Field(
        description="drawn; answered (they count), pending, withdrawn (decided outside the "
        "check), outdated (a later run routed the box otherwise)."
    )
    left_out: dict[str, int] = Field(
        description="Automatic labels per stratum that reviewers decided in review."
    )
    precision: SpotCheckEstimatePublic = Field(description="Of the auto-accepted labels.")
    rejected_share_correct: SpotCheckEstimatePublic = Field(
        description="The share of auto-rejected labels that were correct."
    )
    classes: dict[str, SpotCheckClassPublic]
    threshold_curve: dict[str, list[ThresholdPointPublic]] = Field(
        description="Per verified class: what each accept threshold would accept, and its "
        "precision from the checked sample."
    )


# -- acceptance ------------------------------------------------------------------------------


class ProjectSettingsIn(_In):
    """Only the fields sent change."""

    min_precision: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Refuse acceptance while the spot checks' 95% lower bound of precision is "
        "below this; null: no minimum.",
    )
    require_accepted_datasets: bool = Field(
        default=False, description="Training jobs take only accepted labeling jobs' datasets."
    )


class ProjectSettingsPublic(BaseModel):
    project_id: str
    min_precision: float | None
    require_accepted_datasets: bool


class ClassSnapshot(BaseModel):
    precision: float | None
    precision_interval: Interval
    accepted_count: int
    accepted_checked: int
    accepted_correct: int


class AcceptanceSnapshot(BaseModel):
    """The spot-check numbers an acceptance was given on, and the dataset's label counts."""

    run_id: int | None
    confidence: float
    precision: float | None = Field(description="Of the auto-accepted labels.")
    precision_interval: Interval | None
    accepted_labels: int = Field(description="Auto-accepted labels no reviewer decided.")
    accepted_checked: int
    accepted_correct: int
    effective_checks: float | None
    unchecked_classes: list[str]
    rejected_share_correct: float | None
    rejected_interval: Interval | None
    checks: dict[str, int]
    classes: dict[str, ClassSnapshot]
    labels: dict[str, int] | None = Field(description="The dataset's labels by status.")


class AcceptancePublic(BaseModel):
    id: str
    job_id: str
    status: Literal["accepted", "lapsed", "withdrawn", "superseded"] = Field(
        description="accepted: current; lapsed: the dataset was re-exported since; withdrawn; "
        "superseded: accepted again later."
    )
    accepted_by: str = Field(description="The admin key id.")
    accepted_at: datetime
    dataset_written_at: datetime = Field(description="When the dataset accepted was written.")
    min_precision: float | None = Field(description="The project's minimum then.")
    report: AcceptanceSnapshot
    withdrawn_by: str | None
    withdrawn_at: datetime | None


class JobAcceptancePublic(BaseModel):
    job_id: str
    accepted: bool = Field(description="Whether the job's dataset is accepted now.")
    acceptance: AcceptancePublic | None = Field(
        description="The latest acceptance not withdrawn (accepted or lapsed)."
    )
    history: list[AcceptancePublic] = Field(description="Every acceptance, oldest first.")
    min_precision: float | None = Field(description="The project's minimum now.")
    require_accepted_datasets: bool


class AcceptanceRefusedBody(BaseModel):
    detail: str
    checks_needed: int | None = Field(
        description="About how many more answered checks of auto-accepted labels lift the lower "
        "bound to the minimum if the precision holds; null: none would, or no checks yet."
    )
    min_precision: float
    precision: float | None
    precision_interval: Interval | None
    accepted_labels: int
    accepted_checked: int
