"""A bounded outbox of collected frames on disk, safe against power cuts and full disks.

Layout: ``OUTBOX/<stamp>-<sha256[:16]>.<ext>`` (the frame's bytes) and beside it ``….json`` (its
manifest: sha256, reason, predictions, device, time). Every file is written to a temporary name,
fsynced and renamed, and the manifest is written last: an entry exists only when its manifest
does, so a kill -9 mid-write leaves at most a ``.tmp`` file that nothing sends and the next open
removes. ``state.json`` keeps the count of entries dropped to respect the size cap.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Outbox", "OutboxEntry", "atomic_write", "read_entries"]

logger = logging.getLogger(__name__)

TMP_SUFFIX = ".tmp"
STATE_NAME = "state.json"


def atomic_write(path: Path, data: bytes) -> None:
    """``data`` at ``path`` whole or not at all: temp file in the same folder, fsync, rename."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    # The rename itself is durable only once the folder is synced.
    with contextlib.suppress(OSError):
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@dataclass(frozen=True)
class OutboxEntry:
    """One complete entry: the frame file and its manifest."""

    frame: Path
    manifest_path: Path
    manifest: dict[str, Any]

    @property
    def sha256(self) -> str:
        return str(self.manifest["sha256"])

    def remove(self) -> None:
        """Manifest first, so a crash between the two leaves an orphan frame, never a manifest
        pointing at nothing."""
        self.manifest_path.unlink(missing_ok=True)
        self.frame.unlink(missing_ok=True)


def read_entries(root: Path) -> Iterator[OutboxEntry]:
    """The complete entries of the outbox folder ``root``, oldest first, without opening an
    ``Outbox`` (whose constructor removes partial writes: a reader such as ``push`` must not,
    while a ``predict --collect`` beside it may be in the middle of one)."""
    for manifest_path in sorted(root.glob("*.json")):
        if manifest_path.name == STATE_NAME:
            continue
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(manifest, dict) or "sha256" not in manifest:
            continue
        frame = manifest_path.with_name(str(manifest.get("frame", "")))
        if frame.is_file():
            yield OutboxEntry(frame, manifest_path, manifest)


class Outbox:
    """Collected frames waiting for ``promptlabel push``; at most ``max_bytes`` on disk."""

    def __init__(self, root: Path, *, max_bytes: int = 512 * 1024 * 1024) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.disabled_reason: str | None = None
        root.mkdir(parents=True, exist_ok=True)
        self._clean_partial()

    def _clean_partial(self) -> None:
        """Remove leftovers of interrupted writes: temp files and frames without a manifest."""
        for path in self.root.iterdir():
            if path.name.endswith(TMP_SUFFIX):
                path.unlink(missing_ok=True)
            elif path.suffix != ".json" and not path.with_suffix(".json").exists():
                path.unlink(missing_ok=True)

    def state(self) -> dict[str, Any]:
        """``state.json``: ``dropped`` and the collector's memory (``collector``); {} when there
        is none or it is unreadable (a fresh start, never a failure)."""
        try:
            found = json.loads((self.root / STATE_NAME).read_text())
        except (OSError, ValueError):
            return {}
        return found if isinstance(found, dict) else {}

    def save_state(self, **fields: Any) -> None:
        """Merge ``fields`` into ``state.json``, atomically."""
        atomic_write(
            self.root / STATE_NAME, json.dumps(self.state() | fields, sort_keys=True).encode()
        )

    @property
    def dropped(self) -> int:
        """How many entries were dropped (oldest first) to keep within the size cap, ever."""
        try:
            return int(self.state()["dropped"])
        except (KeyError, TypeError, ValueError):
            return 0

    def entries(self) -> Iterator[OutboxEntry]:
        """Complete entries, oldest first."""
        return read_entries(self.root)

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.iterdir() if p.is_file())

    def add(
        self, data: bytes, *, suffix: str, manifest: dict[str, Any], now: float | None = None
    ) -> OutboxEntry | None:
        """Store a frame with its manifest (sha256, frame and time are added); None when the
        outbox is disabled: after the disk filled up once, collection stops (one warning) while
        the caller goes on predicting."""
        if self.disabled_reason is not None:
            return None
        sha = hashlib.sha256(data).hexdigest()
        created = time.time() if now is None else now
        stem = f"{int(created * 1e6):020d}-{sha[:16]}"
        frame = self.root / f"{stem}{suffix}"
        manifest_path = self.root / f"{stem}.json"
        record = {**manifest, "sha256": sha, "frame": frame.name, "created_at": created}
        manifest_bytes = json.dumps(record, indent=2).encode()
        try:
            self._make_room(len(data) + len(manifest_bytes))
            atomic_write(frame, data)
            atomic_write(manifest_path, manifest_bytes)
        except OSError as error:
            frame.unlink(missing_ok=True)
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                self.disabled_reason = f"disk full writing {self.root}: collection stopped"
                logger.warning("%s; prediction goes on", self.disabled_reason)
                return None
            raise
        return OutboxEntry(frame, manifest_path, record)

    def _make_room(self, incoming: int) -> None:
        """Drop the oldest entries until ``incoming`` more bytes fit under the cap."""
        used = self.size_bytes()
        dropped = 0
        for entry in self.entries():
            if used + incoming <= self.max_bytes:
                break
            used -= entry.frame.stat().st_size + entry.manifest_path.stat().st_size
            entry.remove()
            dropped += 1
        if dropped:
            self.save_state(dropped=self.dropped + dropped)
            logger.info("outbox %s full: dropped %d oldest frames", self.root, dropped)
