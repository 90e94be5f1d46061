"""Request and response schemas of dataset versions (``serve.api.routes.datasets``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["DatasetVersionCreate", "DatasetVersionPublic"]


class DatasetVersionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label_job_ids: list[str] = Field(
        min_length=1,
        max_length=100,
        description="Succeeded labeling jobs whose datasets (as reviewed) to add, in order: a "
        "later job's labels win for an image both hold.",
    )
    parent: str | None = Field(
        default="latest",
        description="The version to build on: latest (none yet: none), a version such as d2, "
        "or null for none.",
    )
    hard_cases: bool = Field(
        default=True,
        description="Hold the project's hard cases that fall in val out as the hard_cases "
        "split (the promotion gate scores on it).",
    )


class DatasetVersionPublic(BaseModel):
    version: str = Field(description="d1, d2, ...")
    parent: str | None
    content_hash: str = Field(description="SHA-256 of the class names, splits, images, labels.")
    label_hash: str = Field(description="Of the labels as training reads them (models record it).")
    created_at: str
    names: list[str] = Field(description="Class names by class id.")
    task: str = Field(description="detect (boxes) or segment (polygons).")
    splits: dict[str, int] = Field(description="Images per split: train, val, hard_cases.")
    instances: dict[str, int] = Field(description="Objects per split.")
    added: dict[str, int] = Field(description="Images new in this version, per split.")
    relabeled: int = Field(description="Images of the parent whose labels changed here.")
    sources: list[dict[str, Any]] = Field(
        description="The labeling jobs, in order: job_id, label counts, labels_by_decider "
        "(auto / human), accepted."
    )
