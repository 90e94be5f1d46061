"""Shared fixtures. Nothing in the test suite touches the network."""

from __future__ import annotations

import os

# Before any import of transformers / ultralytics / huggingface_hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["YOLO_OFFLINE"] = "True"
os.environ["YOLO_AUTOINSTALL"] = "false"
os.environ.pop("OPENAI_API_KEY", None)
os.environ.pop("OPENAI_BASE_URL", None)

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_detector_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Grounding DINO checkpoint saved with save_pretrained, built once."""
    from labeler.demo.tiny_models import build_tiny_grounding_dino

    return build_tiny_grounding_dino(tmp_path_factory.mktemp("tiny-gdino"))
