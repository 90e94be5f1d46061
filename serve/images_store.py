"""A project's images: bytes in a content-addressed folder, rows in the ``images`` table."""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import urlsplit

import sqlalchemy as sa

from labeler.exceptions import ImageError, InputError, NotFoundError
from labeler.settings import Settings
from serve.auth import new_id
from serve.db import Database, images
from serve.telemetry import IMAGES_INGESTED

if TYPE_CHECKING:
    from serve.ingest import ImageInfo

__all__ = [
    "IngestResult",
    "StoredImage",
    "blob_path",
    "get_images",
    "ingest_files",
    "ingest_urls",
    "list_images",
    "store_image",
]


@dataclass(frozen=True)
class StoredImage:
    id: str
    filename: str
    sha256: str
    extension: str
    width: int
    height: int
    size_bytes: int
    source_url: str | None
    created_at: float


def _stored(row: sa.Row[tuple[object, ...]]) -> StoredImage:
    m = row._mapping
    return StoredImage(
        id=str(m["id"]),
        filename=str(m["filename"]),
        sha256=str(m["sha256"]),
        extension=str(m["extension"]),
        width=int(m["width"]),
        height=int(m["height"]),
        size_bytes=int(m["size_bytes"]),
        source_url=m["source_url"] and str(m["source_url"]),
        created_at=float(m["created_at"]),
    )


def blob_path(data_dir: Path, sha256: str, extension: str) -> Path:
    return data_dir / "blobs" / sha256[:2] / f"{sha256}{extension}"


def _write_blob(path: Path, data: bytes) -> None:
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written beside its final name, then renamed: a reader never sees half a file.
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def store_image(
    db: Database,
    *,
    data_dir: Path,
    project_id: str,
    data: bytes,
    info: ImageInfo,
    filename: str,
    source_url: str | None = None,
) -> StoredImage:
    """Keep an already validated image; the same bytes stored again return the first record."""
    _write_blob(blob_path(data_dir, info.sha256, info.extension), data)
    select = sa.select(images).where(
        images.c.project_id == project_id, images.c.sha256 == info.sha256
    )
    for _ in range(2):  # the second pass reads what a concurrent upload of the same bytes wrote
        try:
            with db.write() as connection:
                existing = connection.execute(select).first()
                if existing is not None:
                    return _stored(existing)
                connection.execute(
                    images.insert().values(
                        id=new_id("img"),
                        project_id=project_id,
                        sha256=info.sha256,
                        filename=Path(filename).name[:255] or "image",
                        extension=info.extension,
                        size_bytes=info.size_bytes,
                        width=info.width,
                        height=info.height,
                        source_url=source_url,
                        created_at=time.time(),
                    )
                )
                return _stored(connection.execute(select).one())
        except sa.exc.IntegrityError:
            continue
    raise RuntimeError(f"could not store image {info.sha256}")  # pragma: no cover


def list_images(
    db: Database, *, project_id: str, offset: int = 0, limit: int = 100
) -> list[StoredImage]:
    with db.read() as connection:
        rows = connection.execute(
            sa.select(images)
            .where(images.c.project_id == project_id)
            .order_by(images.c.created_at, images.c.id)
            .offset(offset)
            .limit(limit)
        ).all()
    return [_stored(row) for row in rows]


def get_images(db: Database, *, project_id: str, image_ids: list[str]) -> list[StoredImage]:
    """The named images in the order given; NotFoundError lists ids that are not the project's."""
    found: dict[str, StoredImage] = {}
    with db.read() as connection:
        for start in range(0, len(image_ids), 500):
            chunk = image_ids[start : start + 500]
            rows = connection.execute(
                sa.select(images).where(images.c.project_id == project_id, images.c.id.in_(chunk))
            ).all()
            found.update((str(row.id), _stored(row)) for row in rows)
    missing = [i for i in image_ids if i not in found]
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        raise NotFoundError(f"image_ids: no such images in this project: {shown}")
    return [found[i] for i in image_ids]


@dataclass
class IngestResult:
    accepted: list[StoredImage]
    rejected: list[tuple[str, str, str]]  # (name, reason, detail)


def _keep(
    db: Database,
    settings: Settings,
    *,
    project_id: str,
    name: str,
    data: bytes,
    result: IngestResult,
    source: str,
    source_url: str | None = None,
) -> None:
    from serve.ingest import check_image_bytes

    try:
        info = check_image_bytes(
            data,
            filename=name,
            max_bytes=settings.max_image_bytes,
            max_pixels=settings.max_image_pixels,
        )
    except ImageError as error:
        result.rejected.append((name, error.reason, error.detail))
        IMAGES_INGESTED.labels(source=source, outcome="rejected").inc()
        return
    result.accepted.append(
        store_image(
            db,
            data_dir=settings.data_dir,
            project_id=project_id,
            data=data,
            info=info,
            filename=name,
            source_url=source_url,
        )
    )
    IMAGES_INGESTED.labels(source=source, outcome="accepted").inc()


def ingest_files(
    db: Database, settings: Settings, *, project_id: str, files: list[tuple[str, BinaryIO]]
) -> IngestResult:
    """Validate and keep uploaded files (images, or zip archives of images).

    Every file (and every archive member) is judged on its own: a bad one is listed in
    ``rejected`` with its reason and the rest are kept.
    """
    from serve.ingest import RejectedMember, is_zip, iter_zip_members

    result = IngestResult(accepted=[], rejected=[])
    for name, handle in files:
        head = handle.read(4)
        handle.seek(0)
        if not is_zip(head):
            data = handle.read(settings.max_image_bytes + 1)
            _keep(
                db,
                settings,
                project_id=project_id,
                name=name,
                data=data,
                result=result,
                source="upload",
            )
            continue
        try:
            for member in iter_zip_members(
                handle,
                max_members=settings.max_zip_members,
                max_member_bytes=settings.max_image_bytes,
                max_total_bytes=settings.max_zip_total_bytes,
            ):
                member_name = f"{name}/{member.name}"
                if isinstance(member, RejectedMember):
                    result.rejected.append((member_name, member.reason, member.detail))
                    continue
                _keep(
                    db,
                    settings,
                    project_id=project_id,
                    name=member_name,
                    data=member.data,
                    result=result,
                    source="zip",
                )
        except InputError as error:
            result.rejected.append((name, "bad_archive", str(error)))
    return result


def ingest_urls(
    db: Database, settings: Settings, *, project_id: str, urls: list[str]
) -> IngestResult:
    """Fetch each URL (SSRF-guarded, see ``serve.fetch``) and keep the images among them."""
    from serve.fetch import UrlPolicy, UrlRefused, fetch_url

    if len(urls) > settings.max_urls_per_request:
        raise InputError(
            f"urls: {len(urls)} URLs in one request; the limit is {settings.max_urls_per_request}"
        )
    policy = UrlPolicy.from_strings(settings.url_allowlist)
    result = IngestResult(accepted=[], rejected=[])
    for url in urls:
        try:
            fetched = fetch_url(
                url,
                policy=policy,
                max_bytes=settings.max_image_bytes,
                timeout_s=settings.fetch_timeout_s,
                max_redirects=settings.max_redirects,
            )
        except UrlRefused as error:
            result.rejected.append((url, "refused", str(error)))
            IMAGES_INGESTED.labels(source="url", outcome="refused").inc()
            continue
        except InputError as error:
            result.rejected.append((url, "fetch_failed", str(error)))
            IMAGES_INGESTED.labels(source="url", outcome="rejected").inc()
            continue
        name = Path(urlsplit(fetched.final_url).path).name or "image"
        _keep(
            db,
            settings,
            project_id=project_id,
            name=name,
            data=fetched.content,
            result=result,
            source="url",
            source_url=url,
        )
    return result
