"""Writing files so that a reader, or a retry after a crash, never finds half of one."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["copy_atomically"]


def copy_atomically(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` under a temporary name beside it, then rename: ``target``
    is either absent or complete, even when the copy is cut short (the partial file is removed
    on any error)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, partial_name = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".part"
    )
    os.close(handle)
    partial = Path(partial_name)
    try:
        shutil.copyfile(source, partial)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
