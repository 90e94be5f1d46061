"""Hard cases: frames the student found hard, sent back to the project to be labeled.

A hard case is an image of the project (stored as any upload is, so a labeling job can take it)
plus why it was kept (the collection policy's reasons), what the student predicted on it, the
model version that ran if known, and which devices sent it. Devices push them from their outbox
(``promptlabel push``); ``/predict?collect=true`` keeps them on the server under the project's
collection policy (``ServerCollectors``). The same frame sent again, by the same or another
device, is the same hard case: its devices and reasons are merged, nothing is stored twice.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from PIL import Image

from serve.api.auth import new_id
from serve.db import Database, hard_cases, images, projects
from serve.ingest.store import StoredImage, blob_path, get_images, store_image
from serve.runtime.collect import CollectionPolicy, Collector, policy_from_mapping
from serve.settings import ServiceSettings

__all__ = [
    "HardCase",
    "ServerCollectors",
    "find_hard_case_by_sha256",
    "get_collection_policy",
    "get_hard_case",
    "list_hard_cases",
    "record_hard_case",
    "set_collection_policy",
]


@dataclass(frozen=True)
class HardCase:
    id: str
    project_id: str
    image: StoredImage
    reasons: list[str]
    predictions: list[dict[str, Any]]
    model_version: str | None
    devices: list[str]
    first_seen_at: float
    last_seen_at: float
    consumed_by_job: str | None


_SELECT = sa.select(hard_cases, images).join(images, images.c.id == hard_cases.c.image_id)


def _hard_case(row: sa.Row[Any]) -> HardCase:
    m = row._mapping
    image = StoredImage(
        id=str(m[images.c.id]),
        filename=str(m[images.c.filename]),
        sha256=str(m[images.c.sha256]),
        extension=str(m[images.c.extension]),
        width=int(m[images.c.width]),
        height=int(m[images.c.height]),
        size_bytes=int(m[images.c.size_bytes]),
        source_url=m[images.c.source_url],
        created_at=float(m[images.c.created_at]),
    )
    return HardCase(
        id=str(m[hard_cases.c.id]),
        project_id=str(m[hard_cases.c.project_id]),
        image=image,
        reasons=list(m[hard_cases.c.reasons]),
        predictions=list(m[hard_cases.c.predictions]),
        model_version=m[hard_cases.c.model_version],
        devices=list(m[hard_cases.c.devices]),
        first_seen_at=float(m[hard_cases.c.first_seen_at]),
        last_seen_at=float(m[hard_cases.c.last_seen_at]),
        consumed_by_job=m[hard_cases.c.consumed_by_job],
    )


def _keep_frame(
    db: Database, settings: ServiceSettings, *, project_id: str, data: bytes, filename: str
) -> StoredImage:
    """The project's image with these bytes: the one it holds, or a new one once they are proven
    to be an image (ImageError, a 422, naming ``filename`` otherwise)."""
    from serve.ingest.uploads import check_image_bytes

    sha256 = hashlib.sha256(data).hexdigest()
    with db.read() as connection:
        known = connection.execute(
            sa.select(images.c.id, images.c.extension).where(
                images.c.project_id == project_id, images.c.sha256 == sha256
            )
        ).first()
    if known is not None and blob_path(settings.data_dir, sha256, known.extension).is_file():
        return get_images(db, project_id=project_id, image_ids=[str(known.id)])[0]
    # New bytes, or a row whose file was lost: decode them once, then store (store_image puts a
    # lost file back and returns the row the project already has).
    info = check_image_bytes(
        data,
        filename=filename,
        max_bytes=settings.max_image_bytes,
        max_pixels=settings.max_image_pixels,
    )
    image, _ = store_image(
        db,
        data_dir=settings.data_dir,
        project_id=project_id,
        data=data,
        info=info,
        filename=filename,
    )
    return image


def record_hard_case(
    db: Database,
    settings: ServiceSettings,
    *,
    project_id: str,
    data: bytes,
    filename: str,
    reasons: Sequence[str],
    predictions: Sequence[dict[str, Any]],
    device: str,
    model_version: str | None = None,
    now: float | None = None,
) -> tuple[HardCase, bool]:
    """Keep frame ``data`` as a hard case of the project, and whether it is new: a frame the
    project has as a hard case already gains ``device`` and ``reasons`` (merged, sorted) and a
    later ``last_seen_at``; its first predictions and model version stay."""
    image = _keep_frame(db, settings, project_id=project_id, data=data, filename=filename)
    seen_at = time.time() if now is None else now
    select = _SELECT.where(hard_cases.c.project_id == project_id, hard_cases.c.image_id == image.id)
    for _ in range(2):  # the second pass merges into what a concurrent push of the frame wrote
        try:
            with db.write() as connection:
                # Locked until the merge is written (PostgreSQL; SQLite has one writer anyway):
                # two devices merging at once must not write over each other's name.
                existing = connection.execute(select.with_for_update(of=hard_cases)).first()
                if existing is not None:
                    found = _hard_case(existing)
                    connection.execute(
                        sa.update(hard_cases)
                        .where(hard_cases.c.id == found.id)
                        .values(
                            devices=sorted({*found.devices, device}),
                            reasons=sorted({*found.reasons, *reasons}),
                            model_version=found.model_version or model_version,
                            last_seen_at=max(found.last_seen_at, seen_at),
                        )
                    )
                    return _hard_case(connection.execute(select).one()), False
                connection.execute(
                    hard_cases.insert().values(
                        id=new_id("hc"),
                        project_id=project_id,
                        image_id=image.id,
                        reasons=sorted(set(reasons)),
                        predictions=list(predictions),
                        model_version=model_version,
                        devices=[device],
                        first_seen_at=seen_at,
                        last_seen_at=seen_at,
                    )
                )
                return _hard_case(connection.execute(select).one()), True
        except sa.exc.IntegrityError:
            continue
    raise RuntimeError(f"could not record hard case {image.sha256}")  # pragma: no cover


def find_hard_case_by_sha256(db: Database, *, project_id: str, sha256: str) -> HardCase | None:
    """The project's hard case whose frame has these bytes (lowercase hex SHA-256), or None."""
    with db.read() as connection:
        row = connection.execute(
            _SELECT.where(hard_cases.c.project_id == project_id, images.c.sha256 == sha256)
        ).first()
    return None if row is None else _hard_case(row)


def get_hard_case(db: Database, *, project_id: str, hard_case_id: str) -> HardCase | None:
    with db.read() as connection:
        row = connection.execute(
            _SELECT.where(hard_cases.c.project_id == project_id, hard_cases.c.id == hard_case_id)
        ).first()
    return None if row is None else _hard_case(row)


def list_hard_cases(
    db: Database,
    *,
    project_id: str,
    offset: int = 0,
    limit: int = 100,
    since: float | None = None,
    only_new: bool = False,
) -> list[HardCase]:
    """The project's hard cases, first seen first; ``since``: only those seen (first or again)
    at or after it; ``only_new``: only those no labeling job has taken yet."""
    query = _SELECT.where(hard_cases.c.project_id == project_id)
    if since is not None:
        query = query.where(hard_cases.c.last_seen_at >= since)
    if only_new:
        query = query.where(hard_cases.c.consumed_by_job.is_(None))
    query = query.order_by(hard_cases.c.first_seen_at, hard_cases.c.id).offset(offset).limit(limit)
    with db.read() as connection:
        return [_hard_case(row) for row in connection.execute(query).all()]


# -- the collection policy of /predict?collect=true ----------------------------------------------


def get_collection_policy(db: Database, *, project_id: str) -> CollectionPolicy | None:
    """The project's collection policy, or None when none was set."""
    with db.read() as connection:
        stored = connection.execute(
            sa.select(projects.c.collection_policy).where(projects.c.id == project_id)
        ).scalar_one_or_none()
    if stored is None:
        return None
    return policy_from_mapping(stored, source=f"of project {project_id}")


def set_collection_policy(
    db: Database, *, project_id: str, policy: CollectionPolicy | None
) -> None:
    """Store the project's collection policy; None removes it (nothing is collected)."""
    # SQL NULL rather than JSON null when removed: "no policy" reads the same in any SQL tool.
    stored = sa.null() if policy is None else policy.model_dump(mode="json")
    with db.write() as connection:
        connection.execute(
            sa.update(projects)
            .where(projects.c.id == project_id)
            .values(collection_policy=stored, updated_at=time.time())
        )


class ServerCollectors:
    """One ``Collector`` per project for ``/predict?collect=true``: its rate limits and its
    memory of recently kept frames (dHash) live in this server process, so each process of a
    service counts on its own and a restart forgets them. A changed policy starts a fresh one.
    """

    def __init__(self) -> None:
        self._collectors: dict[str, tuple[str, Collector, threading.Lock]] = {}
        self._lock = threading.Lock()

    def forget(self, project_id: str) -> None:
        with self._lock:
            self._collectors.pop(project_id, None)

    def decide(
        self,
        project_id: str,
        policy: CollectionPolicy,
        image: Image.Image,
        records: Sequence[dict[str, Any]],
    ) -> tuple[list[str], str | None]:
        """The reasons to keep this frame ([] if none), and when it is not kept though the
        policy found reasons, why not: ``duplicate`` or ``rate_limited``."""
        key = json.dumps(policy.model_dump(mode="json"), sort_keys=True)
        with self._lock:
            current = self._collectors.get(project_id)
            if current is None or current[0] != key:
                current = (key, Collector(policy), threading.Lock())
                self._collectors[project_id] = current
        _, collector, lock = current
        with lock:  # a Collector is not thread-safe; predictions run in a pool
            before = dict(collector.skipped)
            reasons = collector.decide(image, records)
            skipped = next((k for k, n in collector.skipped.items() if n > before[k]), None)
        return reasons, skipped
