"""A project's images: bytes in a content-addressed folder, rows in the ``images`` table."""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import urlsplit

import sqlalchemy as sa

from labeler.core.exceptions import ImageError, InputError
from serve.api.auth import new_id
from serve.db import Database, images
from serve.errors import NotFoundError
from serve.settings import ServiceSettings
from serve.telemetry import IMAGES_INGESTED

if TYPE_CHECKING:
    from serve.ingest.uploads import ImageInfo

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
) -> tuple[StoredImage, bool]:
    """Keep an already validated image, and whether it is new to the project: the same bytes
    stored again return the first record."""
    _write_blob(blob_path(data_dir, info.sha256, info.extension), data)
    select = sa.select(images).where(
        images.c.project_id == project_id, images.c.sha256 == info.sha256
    )
    for _ in range(2):  # the second pass reads what a concurrent upload of the same bytes wrote
        try:
            with db.write() as connection:
                existing = connection.execute(select).first()
                if existing is not None:
                    return _stored(existing), False
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
                return _stored(connection.execute(select).one()), True
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
    # Ids of accepted images that the project held before this request (the same bytes).
    already_present: set[str] = field(default_factory=set)


def _project_image(db: Database, *, project_id: str, sha256: str) -> StoredImage | None:
    with db.read() as connection:
        row = connection.execute(
            sa.select(images).where(images.c.project_id == project_id, images.c.sha256 == sha256)
        ).first()
    return None if row is None else _stored(row)


class _Ingest:
    """The images of one request, judged and kept one by one into ``result``.

    Bytes are hashed before they are decoded: bytes this request has judged already get the
    same verdict, and bytes the project already holds are that image (it was checked when it
    was stored), so a thousand copies of one costly image cost one decode.
    """

    def __init__(self, db: Database, settings: ServiceSettings, *, project_id: str) -> None:
        self.db = db
        self.settings = settings
        self.project_id = project_id
        self.result = IngestResult(accepted=[], rejected=[])
        # sha256 -> the image these bytes are, or why they were refused (reason, detail)
        self._verdicts: dict[str, StoredImage | tuple[str, str]] = {}

    def reject(self, name: str, reason: str, detail: str, *, source: str) -> None:
        self.result.rejected.append((name, reason, detail))
        outcome = "refused" if reason == "refused" else "rejected"
        IMAGES_INGESTED.labels(source=source, outcome=outcome).inc()

    def _known(self, sha256: str, data: bytes) -> StoredImage | tuple[str, str] | None:
        """What this request or the project already found ``data`` to be; None if new."""
        verdict = self._verdicts.get(sha256)
        if verdict is None:
            verdict = _project_image(self.db, project_id=self.project_id, sha256=sha256)
            if verdict is not None:
                # Its file may have been lost from disk: these are its bytes, put them back.
                path = blob_path(self.settings.data_dir, sha256, verdict.extension)
                _write_blob(path, data)
                self._verdicts[sha256] = verdict
                self.result.already_present.add(verdict.id)
        return verdict

    def keep(self, *, name: str, data: bytes, source: str, source_url: str | None = None) -> None:
        from serve.ingest.uploads import check_image_bytes

        settings = self.settings
        # Bytes over the size limit are refused unread: no need to hash them.
        too_large = len(data) > settings.max_image_bytes
        sha256 = None if too_large else hashlib.sha256(data).hexdigest()
        verdict = None if sha256 is None else self._known(sha256, data)
        if verdict is None:
            try:
                info = check_image_bytes(
                    data,
                    filename=name,
                    max_bytes=settings.max_image_bytes,
                    max_pixels=settings.max_image_pixels,
                )
            except ImageError as error:
                verdict = (error.reason, error.detail)
            else:
                verdict, new = store_image(
                    self.db,
                    data_dir=settings.data_dir,
                    project_id=self.project_id,
                    data=data,
                    info=info,
                    filename=name,
                    source_url=source_url,
                )
                if not new:  # stored by another request meanwhile
                    self.result.already_present.add(verdict.id)
            if sha256 is not None:
                self._verdicts[sha256] = verdict
        if isinstance(verdict, StoredImage):
            self.result.accepted.append(verdict)
            IMAGES_INGESTED.labels(source=source, outcome="accepted").inc()
        else:
            self.reject(name, *verdict, source=source)


def ingest_files(
    db: Database, settings: ServiceSettings, *, project_id: str, files: list[tuple[str, BinaryIO]]
) -> IngestResult:
    """Validate and keep uploaded files (images, or zip archives of images).

    Every file (and every archive member) is judged on its own: a bad one is listed in
    ``rejected`` with its reason and the rest are kept. The archives of one request share one
    budget of ``max_zip_members`` entries and ``max_zip_total_bytes`` decompressed bytes; an
    archive that would pass it is refused with reason ``upload_limit``.
    """
    from serve.ingest.uploads import (
        RejectedMember,
        UploadBudget,
        UploadLimitReached,
        is_zip,
        iter_zip_members,
        shown_name,
    )

    ingest = _Ingest(db, settings, project_id=project_id)
    budget = UploadBudget(
        max_entries=settings.max_zip_members, max_bytes=settings.max_zip_total_bytes
    )
    for raw_name, handle in files:
        name = shown_name(raw_name)
        head = handle.read(4)
        handle.seek(0)
        if not is_zip(head):
            data = handle.read(settings.max_image_bytes + 1)
            ingest.keep(name=name, data=data, source="upload")
            continue
        try:
            for member in iter_zip_members(
                handle, max_member_bytes=settings.max_image_bytes, budget=budget
            ):
                member_name = shown_name(f"{name}/{member.name}")
                if isinstance(member, RejectedMember):
                    ingest.reject(member_name, member.reason, member.detail, source="zip")
                    continue
                ingest.keep(name=member_name, data=member.data, source="zip")
        except UploadLimitReached as error:
            ingest.reject(name, "upload_limit", str(error), source="zip")
        except InputError as error:
            ingest.reject(name, "bad_archive", str(error), source="zip")
    return ingest.result


def ingest_urls(
    db: Database, settings: ServiceSettings, *, project_id: str, urls: list[str]
) -> IngestResult:
    """Fetch each URL (SSRF-guarded, see ``serve.ingest.fetch``) and keep the images among them.

    The URLs are fetched one after another within ``fetch_request_timeout_s`` in all (each
    within ``fetch_timeout_s``): those not fetched in time are rejected with reason
    ``deadline`` and the images fetched before are kept.
    """
    from serve.ingest.fetch import UrlPolicy, UrlRefused, fetch_url
    from serve.ingest.uploads import shown_name

    if len(urls) > settings.max_urls_per_request:
        raise InputError(
            f"urls: {len(urls)} URLs in one request; the limit is {settings.max_urls_per_request}"
        )
    policy = UrlPolicy.from_strings(settings.url_allowlist)
    ingest = _Ingest(db, settings, project_id=project_id)
    request_s = settings.fetch_request_timeout_s
    deadline = time.monotonic() + request_s
    ran_out = (
        f"this request's {request_s:g} s for fetching its URLs "
        "(PROMPTLABEL_FETCH_REQUEST_TIMEOUT_S) ran out"
    )
    for index, url in enumerate(urls):
        left_s = deadline - time.monotonic()
        if left_s <= 0:
            for late in urls[index:]:
                detail = f"not fetched: {ran_out} before this URL; send it in another request"
                ingest.reject(shown_name(late), "deadline", detail, source="url")
            break
        timeout_s = min(settings.fetch_timeout_s, left_s)
        try:
            fetched = fetch_url(
                url,
                policy=policy,
                max_bytes=settings.max_image_bytes,
                timeout_s=timeout_s,
                max_redirects=settings.max_redirects,
            )
        except UrlRefused as error:
            ingest.reject(shown_name(url), "refused", str(error), source="url")
            continue
        except InputError as error:
            if timeout_s < settings.fetch_timeout_s and time.monotonic() >= deadline:
                # Its own time was cut short by the request's: say so, not "the server is slow".
                ingest.reject(shown_name(url), "deadline", f"{error} ({ran_out})", source="url")
            else:
                ingest.reject(shown_name(url), "fetch_failed", str(error), source="url")
            continue
        name = Path(urlsplit(fetched.final_url).path).name or "image"
        ingest.keep(name=shown_name(name), data=fetched.content, source="url", source_url=url)
    return ingest.result
