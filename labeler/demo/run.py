"""The demo: sample images made on the spot, the full label run on them.

With network the real default models are used. When they cannot be loaded (offline, no cache), the
demo says so and uses tiny random local checkpoints instead: the pipeline runs end to end, but the
labels are meaningless.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from labeler.core.exceptions import ModelLoadError
from labeler.demo.synthetic import write_sample_images
from labeler.ontology import load_ontology
from labeler.pipeline import LabelConfig, ProgressSink, run_label
from labeler.propose.detector import Detector, load_detector
from labeler.propose.options import DetectorOptions
from labeler.settings import get_label_settings

__all__ = ["DEMO_ONTOLOGY", "DemoModels", "demo_label_config", "load_demo_models", "run_demo"]

log = logging.getLogger(__name__)

DEMO_ONTOLOGY = "demo.yaml"


def _demo_ontology_path() -> Path:
    return Path(str(resources.files("prompts") / "ontologies" / DEMO_ONTOLOGY))


def _first_line(error: Exception, limit: int = 160) -> str:
    line = str(error).splitlines()[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _go_offline_if_hub_unreachable(say: Callable[[str], None], timeout_s: float = 3.0) -> None:
    """Without a reachable Hub, switch huggingface_hub to offline mode: cached models still load,
    and nothing waits through the client's retries (minutes per model) before falling back."""
    import huggingface_hub.constants as hub

    if hub.HF_HUB_OFFLINE:
        return
    host = urlparse(hub.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
    except OSError as error:
        say(f"[yellow]Hugging Face Hub ({host}) unreachable ({error}): cached models only.[/]")
        hub.HF_HUB_OFFLINE = True
        os.environ["HF_HUB_OFFLINE"] = "1"


def _load_demo_detector(
    say: Callable[[str], None], options: DetectorOptions
) -> tuple[str, Detector]:
    settings = get_label_settings()
    try:
        return settings.detector, load_detector(settings.detector, options)
    except ModelLoadError as error:
        from labeler.demo.tiny_models import build_tiny_grounding_dino

        tiny = settings.cache_dir / "tiny-models" / "grounding-dino"
        if not (tiny / "config.json").exists():
            build_tiny_grounding_dino(tiny)
        say(
            f"[bold yellow]OFFLINE SMOKE RUN:[/] the detector {settings.detector} could not "
            f"be loaded ({_first_line(error)}).\nUsing a tiny RANDOM detector from {tiny}: "
            "the pipeline runs end to end but its labels are meaningless."
        )
        return str(tiny), load_detector(tiny, options)


def _load_demo_verifier(say: Callable[[str], None]) -> tuple[str, Any]:
    from labeler.verify import load_verifier

    settings = get_label_settings()
    try:
        return settings.demo_verifier, load_verifier(settings.demo_verifier, concurrency=1)
    except ModelLoadError as error:
        from labeler.verify.tiny_vlm import build_tiny_vlm

        tiny = settings.cache_dir / "tiny-models" / "vlm"
        if not (tiny / "config.json").exists():
            build_tiny_vlm(tiny, yes_prob=0.9)
        spec = f"transformers:{tiny}"
        say(
            f"[bold yellow]OFFLINE SMOKE RUN:[/] the verifier {settings.demo_verifier} could "
            f"not be loaded ({_first_line(error)}).\nUsing a tiny RANDOM vision-language model "
            f"from {tiny}: its answers are meaningless."
        )
        return spec, load_verifier(spec, concurrency=1)


@dataclass(frozen=True)
class DemoModels:
    """The demo's detector and verifier, loaded once (the real defaults, or tiny random ones
    offline), and the detector options for the sample images."""

    detector_id: str
    detector: Detector
    verifier_spec: str
    verifier: Any
    options: DetectorOptions


def load_demo_models(say: Callable[[str], None] = log.warning) -> DemoModels:
    # The sample images hold at most a handful of shapes each.
    options = DetectorOptions(box_threshold=0.3, max_det=20)
    _go_offline_if_hub_unreachable(say)
    detector_id, detector = _load_demo_detector(say, options)
    verifier_spec, verifier = _load_demo_verifier(say)
    return DemoModels(detector_id, detector, verifier_spec, verifier, options)


def demo_label_config(
    images_dir: Path, out_dir: Path, models: DemoModels, **changes: Any
) -> LabelConfig:
    """The label run the demo makes over ``images_dir`` into ``out_dir`` (the demo ontology)."""
    return LabelConfig(
        images_dir=images_dir,
        ontology=load_ontology(_demo_ontology_path()),
        out_dir=out_dir,
        detector=models.detector_id,
        detector_options=models.options,
        verifier=models.verifier_spec,
        concurrency=1,
        **changes,
    )


def run_demo(
    out_dir: Path,
    *,
    n_images: int = 8,
    progress: ProgressSink | None = None,
    say: Callable[[str], None] = log.warning,
    models: DemoModels | None = None,
) -> dict[str, Any]:
    """Write sample images under ``out_dir/images`` and label them into ``out_dir/dataset``."""
    images_dir = out_dir / "images"
    write_sample_images(images_dir, n=n_images, seed=0)
    models = models or load_demo_models(say)
    config = demo_label_config(images_dir, out_dir / "dataset", models)
    return run_label(config, progress=progress, detector=models.detector, verifier=models.verifier)
