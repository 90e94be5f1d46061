"""The labeling stage's settings: the defaults of ``promptlabel label``, overridable with
``PROMPTLABEL_*`` variables. Each default is the one the library names (``DetectorOptions``,
``RouteThresholds``, ``DEFAULT_CONCURRENCY`` ...), so the CLI, the settings and a caller of the
library without settings agree."""

from __future__ import annotations

from functools import lru_cache

from labeler.core.images import DEFAULT_MAX_PIXELS
from labeler.core.settings import PromptlabelSettings
from labeler.export.dataset import DEFAULT_VAL_FRACTION
from labeler.propose.options import DEFAULT_DETECTOR, DetectorOptions
from labeler.route import RouteThresholds
from labeler.verify.base import DEFAULT_CONCURRENCY, DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT_S
from labeler.verify.templates import DEFAULT_VERIFY_MODE

__all__ = ["LabelSettings", "get_label_settings"]

_DETECTOR = DetectorOptions()
_ROUTE = RouteThresholds()


class LabelSettings(PromptlabelSettings):
    """Detector, verifier, routing and input limits of a label run."""

    detector: str = DEFAULT_DETECTOR
    verifier: str = "none"
    verifier_url: str | None = None
    verify_mode: str = DEFAULT_VERIFY_MODE
    concurrency: int = DEFAULT_CONCURRENCY
    device: str = _DETECTOR.device
    batch_size: int = _DETECTOR.batch_size
    box_threshold: float = _DETECTOR.box_threshold
    text_threshold: float = _DETECTOR.text_threshold
    max_det: int = _DETECTOR.max_det
    nms_iou: float = _DETECTOR.nms_iou
    accept_threshold: float = _ROUTE.accept
    reject_threshold: float = _ROUTE.reject
    review_below_score: float = _ROUTE.review_below_score
    val_fraction: float = DEFAULT_VAL_FRACTION
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    request_timeout_s: float = DEFAULT_TIMEOUT_S
    max_retries: int = DEFAULT_MAX_RETRIES
    demo_verifier: str = "transformers:HuggingFaceTB/SmolVLM-256M-Instruct"


@lru_cache(maxsize=1)
def get_label_settings() -> LabelSettings:
    """The process's label settings, read once; ``get_label_settings.cache_clear()`` after
    changing the environment."""
    return LabelSettings()
