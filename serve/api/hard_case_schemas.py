"""Request and response bodies of the hard-case routes (``serve.api.routes.hard_cases``) and of
``/predict?collect=true``'s answer."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["HardCaseManifest", "HardCasePublic", "HardCasePushed"]

DEVICE_NAME_CHARS = 200


class HardCaseManifest(BaseModel):
    """The ``manifest`` field of a push: what the device knew about the frame. An outbox
    manifest (``serve.runtime.outbox``) is one as it stands; fields this does not name (the
    frame's file name, its path on the device ...) are ignored."""

    model_config = ConfigDict(extra="ignore")

    reasons: list[str] = Field(
        min_length=1, description="Why the frame was kept: the collection policy's reasons."
    )
    predictions: list[dict[str, Any]] = Field(
        default_factory=list, description="The student's detection records on the frame."
    )
    device: str = Field(
        min_length=1, max_length=DEVICE_NAME_CHARS, description="The sending device's name."
    )
    model_version: str | None = Field(
        default=None, max_length=64, description="The model version the device ran, if known."
    )
    sha256: str | None = Field(
        default=None,
        description="The frame's SHA-256 (hex) as the device computed it; checked if given.",
    )
    created_at: float | None = Field(
        default=None, description="When the device kept the frame (UNIX seconds; not used)."
    )


class HardCasePublic(BaseModel):
    id: str
    image_id: str = Field(description="The frame, an image of the project.")
    image_url: str = Field(description="Where to download the frame's bytes.")
    sha256: str
    width: int
    height: int
    reasons: list[str] = Field(description="Every sender's reasons, merged.")
    predictions: list[dict[str, Any]] = Field(
        description="The student's detections on the frame, as the first sender sent them."
    )
    model_version: str | None
    devices: list[str] = Field(description="The devices that sent this frame, sorted.")
    first_seen_at: datetime
    last_seen_at: datetime
    consumed_by_job: str | None = Field(
        description="The labeling job that took this hard case; null: not taken yet."
    )


class HardCasePushed(HardCasePublic):
    created: bool = Field(
        description="A new hard case (201); false: the project had this frame already and "
        "merged this push's device and reasons into it (200)."
    )
