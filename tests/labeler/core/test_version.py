"""The product's version: the installed distribution's, the same under every name."""

from __future__ import annotations

import importlib.metadata

import pytest

import labeler
from labeler.core import version


def test_the_version_is_the_installed_distributions() -> None:
    installed = importlib.metadata.version("promptlabel")
    assert labeler.__version__ == version.__version__ == installed
    assert "__version__" in labeler.__all__


def test_a_tree_that_was_never_installed_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(version, "version", not_installed)
    assert version._installed_version() == version.UNKNOWN_VERSION == "0+unknown"
