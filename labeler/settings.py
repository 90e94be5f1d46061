"""Settings in one place: defaults for every option, overridable with PROMPTLABEL_* variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
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
    promote_tolerance: float = Field(default=0.005, ge=0)  # mAP50-95 a candidate may lose
    cache_dir: Path = Path.home() / ".cache" / "promptlabel"
    demo_verifier: str = "transformers:HuggingFaceTB/SmolVLM-256M-Instruct"

    # -- the HTTP service (`promptlabel serve` / `promptlabel worker`) -----------------------------
    data_dir: Path = Path("promptlabel-data")  # images, job folders, registries, the SQLite db
    database_url: str | None = None  # None: SQLite in data_dir; or postgresql+psycopg://...
    # How long an idle client connection stays open. Longer than the idle timeout of the proxies
    # and clients in front of us (nginx 75 s, AWS ALB 60 s): when the server closes first, a
    # request sent at that moment is lost without an answer (seen under load with uvicorn's 5 s).
    http_keep_alive_s: int = 90
    # What API callers may choose; names map to model ids or local paths (callers never send paths).
    service_detectors: dict[str, str] = {"default": "IDEA-Research/grounding-dino-tiny"}
    service_verifiers: dict[str, str] = {"none": "none"}
    service_verifier_url: str | None = None
    service_train_bases: dict[str, str] = {"yolo11n": "yolo11n.pt"}
    service_device: str = "auto"
    lease_s: float = 60.0  # a worker that stops renewing its lease for this long loses the job
    poll_interval_s: float = 1.0
    max_attempts: int = 3  # a job whose worker dies this many times fails
    max_upload_bytes: int = 512 * 1024 * 1024
    max_image_bytes: int = 50 * 1024 * 1024
    max_files_per_upload: int = 1000
    max_zip_members: int = 10_000
    max_zip_total_bytes: int = 2 * 1024 * 1024 * 1024
    max_urls_per_request: int = 100
    # CIDRs or host names that URL ingestion may reach although they are private (JSON list).
    url_allowlist: list[str] = []
    fetch_timeout_s: float = 15.0
    # For all the URLs of one /images/fetch request: those not fetched by then are rejected.
    fetch_request_timeout_s: float = 120.0
    max_redirects: int = 3

    @field_validator("service_verifiers")
    @classmethod
    def _verifier_specs_are_valid(cls, verifiers: dict[str, str]) -> dict[str, str]:
        # Checked when the service starts, not when a caller's job first names one.
        from labeler.core.exceptions import InputError
        from labeler.verify.registry import check_verifier_spec

        for name, spec in verifiers.items():
            try:
                check_verifier_spec(spec)
            except InputError as error:
                raise ValueError(f"{name!r}: {error}") from None
        return verifiers


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once; call ``get_settings.cache_clear()`` after changing env."""
    return Settings()
