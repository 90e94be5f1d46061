"""The training stage's settings: where the registry is, and how the promotion gate judges."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field

from distill.registry import DEFAULT_PROMOTE_TOLERANCE
from labeler.core.settings import PromptlabelSettings

__all__ = ["TrainSettings", "get_train_settings"]


class TrainSettings(PromptlabelSettings):
    """``PROMPTLABEL_WORKSPACE``, ``PROMPTLABEL_PROMOTE_TOLERANCE`` (and the shared cache)."""

    workspace: Path | None = None  # where `models` and `export` find the registry
    promote_tolerance: float = Field(default=DEFAULT_PROMOTE_TOLERANCE, ge=0)


@lru_cache(maxsize=1)
def get_train_settings() -> TrainSettings:
    """The process's training settings, read once; ``get_train_settings.cache_clear()`` after
    changing the environment."""
    return TrainSettings()
