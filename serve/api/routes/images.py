"""Images: multipart upload (files or zip archives), server-side URL fetch, listing."""

from __future__ import annotations

from functools import partial
from typing import Annotated

from fastapi import APIRouter, File, HTTPException, Query, Request, Response, UploadFile, status
from fastapi.responses import FileResponse

from labeler.core.exceptions import InputError
from serve.api.deps import CurrentSettings, Db, Offset, ProjectId, run_in_app_pool
from serve.api.schemas import (
    ImagePublic,
    ImageUploadResult,
    RejectedUpload,
    UploadedImage,
    UrlFetchCreate,
    as_datetime,
    error_responses,
)
from serve.ingest.store import (
    IngestResult,
    StoredImage,
    blob_path,
    get_images,
    ingest_files,
    ingest_urls,
)
from serve.ingest.store import list_images as list_stored_images
from serve.ingest.uploads import MEDIA_TYPES

router = APIRouter(prefix="/v1/projects/{project_id}/images", tags=["images"])

_ERRORS = error_responses(404, 413, 422)


def image_public(image: StoredImage) -> ImagePublic:
    return ImagePublic(
        id=image.id,
        filename=image.filename,
        sha256=image.sha256,
        width=image.width,
        height=image.height,
        size_bytes=image.size_bytes,
        source_url=image.source_url,
        created_at=as_datetime(image.created_at),
    )


def _answer(result: IngestResult, response: Response) -> ImageUploadResult:
    body = ImageUploadResult(
        accepted=[
            UploadedImage(
                **image_public(image).model_dump(),
                already_present=image.id in result.already_present,
            )
            for image in result.accepted
        ],
        rejected=[
            RejectedUpload(name=name, reason=reason, detail=detail)
            for name, reason, detail in result.rejected
        ],
    )
    if not body.accepted:
        reasons = "; ".join(
            f"{r.name}: {r.reason}" + (f" ({r.detail})" if r.detail else "")
            for r in body.rejected[:10]
        ) or (
            "the upload holds no file (an empty archive, or only folders, hidden files and "
            "__MACOSX/)"
        )
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"no usable image: {reasons}")
    response.status_code = status.HTTP_201_CREATED
    return body


@router.post(
    "",
    summary="Upload images (multipart 'files': images and/or zip archives of images)",
    status_code=status.HTTP_201_CREATED,
    responses=_ERRORS,
)
async def upload_images(
    db: Db,
    settings: CurrentSettings,
    project_id: ProjectId,
    files: Annotated[list[UploadFile], File(description="Images (JPEG, PNG, ...) or zip files.")],
    request: Request,
    response: Response,
) -> ImageUploadResult:
    if len(files) > settings.max_files_per_upload:
        raise InputError(
            f"files: {len(files)} files in one upload; the limit is {settings.max_files_per_upload}"
        )
    named = [(upload.filename or f"file-{i}", upload.file) for i, upload in enumerate(files)]
    result = await run_in_app_pool(
        request, "ingest", partial(ingest_files, db, settings, project_id=project_id, files=named)
    )
    return _answer(result, response)


@router.post(
    "/fetch",
    summary="Fetch images from http(s) URLs (private addresses refused unless allow-listed)",
    status_code=status.HTTP_201_CREATED,
    responses=_ERRORS,
)
async def fetch_images(
    db: Db,
    settings: CurrentSettings,
    project_id: ProjectId,
    body: UrlFetchCreate,
    request: Request,
    response: Response,
) -> ImageUploadResult:
    # Up to PROMPTLABEL_FETCH_REQUEST_TIMEOUT_S of waiting on other servers: in a pool of its own.
    result = await run_in_app_pool(
        request, "fetch", partial(ingest_urls, db, settings, project_id=project_id, urls=body.urls)
    )
    return _answer(result, response)


@router.get("", summary="The project's images, oldest first")
def list_images(
    db: Db,
    project_id: ProjectId,
    offset: Offset = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[ImagePublic]:
    found = list_stored_images(db, project_id=project_id, offset=offset, limit=limit)
    return [image_public(image) for image in found]


@router.get("/{image_id}", responses=error_responses(404))
def get_image(db: Db, project_id: ProjectId, image_id: str) -> ImagePublic:
    return image_public(get_images(db, project_id=project_id, image_ids=[image_id])[0])


@router.get(
    "/{image_id}/file",
    summary="Download the image's bytes, as uploaded",
    response_class=FileResponse,
    responses={
        200: {"content": {media_type: {} for media_type in sorted(set(MEDIA_TYPES.values()))}},
        **error_responses(404),
    },
)
def download_image(
    db: Db, settings: CurrentSettings, project_id: ProjectId, image_id: str
) -> FileResponse:
    [image] = get_images(db, project_id=project_id, image_ids=[image_id])
    path = blob_path(settings.data_dir, image.sha256, image.extension)
    if not path.is_file():
        # Its row is there but its file is not (a lost volume): the server's fault, said plainly.
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"image {image_id}: its file is missing on the server",
        )
    return FileResponse(
        path,
        media_type=MEDIA_TYPES.get(image.extension, "application/octet-stream"),
        filename=image.filename,
    )
