"""The product's version, as provenance records it and ``promptlabel --version`` prints it.

Read from the installed distribution's metadata (pyproject.toml's ``version``), so there is one
place to change it. A source tree that was never installed has no metadata: it reports
``UNKNOWN_VERSION`` rather than fail, and records made from it say so.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["DISTRIBUTION", "UNKNOWN_VERSION", "__version__"]

DISTRIBUTION = "promptlabel"
# A PEP 440 local version: sorts below every real release and names what is missing.
UNKNOWN_VERSION = "0+unknown"


def _installed_version() -> str:
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return UNKNOWN_VERSION


__version__ = _installed_version()
