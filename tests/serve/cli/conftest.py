"""The base install (what a device runs), for the tests that run commands in it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def base_venv() -> Path:
    """The base-only virtual environment PROMPTLABEL_BASE_VENV names (`make install-base`);
    tests that need it skip without it (`make test` and CI set it)."""
    location = os.environ.get("PROMPTLABEL_BASE_VENV")
    if not location:
        pytest.skip(
            "no base-only environment: run `make install-base` and set PROMPTLABEL_BASE_VENV"
        )
    venv = Path(location)
    if not (venv / "bin" / "promptlabel").exists():
        pytest.fail(f"PROMPTLABEL_BASE_VENV={venv} has no bin/promptlabel: run `make install-base`")
    return venv
