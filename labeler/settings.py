"""Settings in one place: defaults for every option, overridable with PROMPTLABEL_* variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "get_settings"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PROMPTLABEL_", extra="ignore")

    detector: str = "IDEA-Research/grounding-dino-tiny"
    verifier: str = "none"
    verifier_url: str | None = None
    verify_mode: str = "crop"
    concurrency: int = 16
    device: str = "auto"
    batch_size: int = 4
    box_threshold: float = 0.35
    text_threshold: float = 0.25
    max_det: int = 100
    nms_iou: float = 0.5
    accept_threshold: float = 0.7
    reject_threshold: float = 0.3
    review_below_score: float = 0.0
    val_fraction: float = 0.2
    max_image_pixels: int = 89_478_485
    request_timeout_s: float = 60.0
    max_retries: int = 5
    workspace: Path | None = None  # where `models` and `export` find the registry
    promote_tolerance: float = 0.005
    cache_dir: Path = Path.home() / ".cache" / "promptlabel"
    demo_verifier: str = "transformers:HuggingFaceTB/SmolVLM-256M-Instruct"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once; call ``get_settings.cache_clear()`` after changing env."""
    return Settings()
