from __future__ import annotations

from pathlib import Path

import pytest

from tests.labeler.segment.tiny_models import (
    save_tiny_sam,
    save_tiny_sam2,
    save_tiny_sam_checkpoint,
    save_tiny_sam_hq,
)


@pytest.fixture(scope="session")
def tiny_sam_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight SAM with a tiny vision encoder, saved as a checkpoint folder."""
    return save_tiny_sam(tmp_path_factory.mktemp("tiny_sam"))


@pytest.fixture(scope="session")
def tiny_sam_hq_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_sam_hq(tmp_path_factory.mktemp("tiny_sam_hq"))


@pytest.fixture(scope="session")
def tiny_sam2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_sam2(tmp_path_factory.mktemp("tiny_sam2"))


@pytest.fixture(scope="session")
def tiny_sam_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An original-format checkpoint under a name that says nothing of its architecture."""
    return save_tiny_sam_checkpoint(tmp_path_factory.mktemp("tiny_sa") / "renamed.pth")
