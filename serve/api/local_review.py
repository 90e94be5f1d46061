"""``promptlabel review DATASET_DIR``: the review page and API over a dataset on this machine.

A dataset folder that ``promptlabel label --out`` wrote holds everything review needs: its
``report.json`` names the run (``provenance.run_id``), the workspace beside it recorded that run's
configuration (ontology, detector and options, verifier, thresholds, images folder) and the file
of each image it read. ``LocalReviewTarget`` is a ``serve.api.review_target.ReviewTarget`` over
them, so the service's own review routes and page serve it unchanged; decisions go into the same
workspace, one committed as it is made, recorded under the local user's name.

The app binds 127.0.0.1 only, and since any web page the user opens may send requests to
localhost, it answers only requests addressed to ``127.0.0.1:PORT`` or ``localhost:PORT`` (a
foreign Host header is DNS rebinding) and refuses every state change without the per-process
CSRF token that ``GET /review/session`` gives the page (which other sites cannot read).
"""

from __future__ import annotations

import fcntl
import hmac
import json
import re
import secrets
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote

from fastapi import FastAPI, Response
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from labeler.core.exceptions import InputError
from labeler.ontology import ontology_from_data
from labeler.pipeline import (
    LABELS_FILENAME,
    WORKSPACE_DIRNAME,
    LabelConfig,
    changed_since_run,
    run_label,
)
from labeler.propose.options import DetectorOptions
from labeler.route import RouteThresholds
from labeler.store.workspace import DB_NAME, Workspace
from serve.api import deps
from serve.api.app import JSON_BODY_LIMIT, BodyLimit, add_error_handlers
from serve.api.auth import Principal, Role
from serve.api.review_target import ReviewTarget, review_target
from serve.api.routes import pages, review, spot_checks
from serve.api.sessions import CSRF_HEADER
from serve.errors import ConflictError, NotFoundError
from serve.ingest.uploads import MEDIA_TYPES
from serve.settings import ServiceSettings, get_service_settings

if TYPE_CHECKING:
    from labeler.ontology import Ontology

__all__ = [
    "LOCAL_PROJECT_ID",
    "LocalReviewTarget",
    "create_local_review_app",
]

LOCAL_PROJECT_ID = "local"  # the one "project" of the local app, in the API's paths
REPORT_FILENAME = "report.json"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# The extensions a label run reads (labeler.core.images), by the media type they are served as.
_IMAGE_MEDIA_TYPES = {**MEDIA_TYPES, ".jpeg": MEDIA_TYPES[".jpg"], ".tiff": MEDIA_TYPES[".tif"]}
_EXPORT_LOCK_NAME = ".review-export.lock"


def _not_a_dataset(dataset_dir: Path, missing: Path) -> InputError:
    return InputError(
        f"{dataset_dir} is not a promptlabel dataset: {missing} is missing (the folder "
        "`promptlabel label IMAGES_DIR --out DATASET_DIR` writes)"
    )


def _read_report(dataset_dir: Path) -> tuple[dict[str, Any], int]:
    """The folder's ``report.json`` provenance and the id of the run that wrote it."""
    path = dataset_dir / REPORT_FILENAME
    if not path.is_file():
        raise _not_a_dataset(dataset_dir, path)
    try:
        provenance = json.loads(path.read_text(encoding="utf-8"))["provenance"]
        run_id = provenance["run_id"]
    except OSError as error:
        raise InputError(f"{path}: cannot read ({error.strerror or error})") from None
    except ValueError as error:
        raise InputError(f"{path}: not JSON ({error})") from None
    except (KeyError, TypeError):
        raise InputError(
            f"{path}: provenance.run_id is missing: not a report `promptlabel label` wrote"
        ) from None
    if not isinstance(run_id, int) or not isinstance(provenance, dict):
        raise InputError(f"{path}: provenance.run_id must be a run's number")
    return provenance, run_id


def _find_workspace(
    dataset_dir: Path, provenance: dict[str, Any], workspace_dir: Path | None
) -> Path:
    """The workspace given, else the dataset's own, else the one the run recorded."""
    if workspace_dir is not None:
        if not (workspace_dir / DB_NAME).is_file():
            raise InputError(f"{workspace_dir}: no workspace here ({DB_NAME} is missing)")
        return workspace_dir
    own = dataset_dir / WORKSPACE_DIRNAME
    if (own / DB_NAME).is_file():
        return own
    recorded = provenance.get("workspace")
    if isinstance(recorded, str) and recorded and (Path(recorded) / DB_NAME).is_file():
        return Path(recorded)
    hint = f" (the run recorded its workspace as {recorded})" if recorded else ""
    raise InputError(
        f"{own / DB_NAME} is missing{hint}: pass --workspace, the folder `promptlabel label "
        "--workspace` was given"
    )


def _config_of_run(
    *,
    dataset_dir: Path,
    workspace_dir: Path,
    run_id: int,
    provenance: dict[str, Any],
) -> LabelConfig:
    """The label run's configuration as its workspace recorded it, writing to ``dataset_dir``:
    what a route-only run needs to find the run's proposals and verdicts again."""
    with Workspace(workspace_dir) as workspace:
        recorded = workspace.run_config(run_id)
    where = f"{workspace_dir / DB_NAME}, run {run_id}"
    if recorded is None:
        raise InputError(
            f"{workspace_dir / DB_NAME} holds no run {run_id}, the run "
            f"{dataset_dir / REPORT_FILENAME} names: pass --workspace, the workspace that run used"
        )
    try:
        ontology: Ontology = ontology_from_data({"classes": recorded["ontology"]}, source=where)
        known = {option.name for option in fields(DetectorOptions)}
        options = DetectorOptions(
            **{k: v for k, v in recorded["detector_options"].items() if k in known}
        )
        return LabelConfig(
            images_dir=Path(recorded["images_dir"]),
            ontology=ontology,
            out_dir=dataset_dir,
            detector=str(recorded["detector"]),
            detector_options=options,
            verifier=str(recorded["verifier"]),
            # The server the verdicts came from, as the run named it (credentials never stored):
            # the same URL finds the same cached verdicts.
            verifier_url=provenance.get("verifier_endpoint"),
            verify_mode=str(recorded["verify_mode"]),
            thresholds=RouteThresholds(**recorded["thresholds"]),
            val_fraction=float(recorded["val_fraction"]),
            workspace_dir=workspace_dir,
        )
    except (KeyError, TypeError, ValueError) as error:
        raise InputError(
            f"{where}: its recorded configuration is incomplete ({error!r}); run "
            "`promptlabel label` again with the same options, then review"
        ) from None


def _reexport_problem(config: LabelConfig, provenance: dict[str, Any]) -> str | None:
    """Why a route-only run of ``config`` would not find what the run stored (None: it
    would): a prompt template changed since (an upgrade), or the proposal key's recipe."""
    changed = changed_since_run(config, provenance)
    if not changed:
        return None
    return (
        f"{config.out_dir}: cannot re-export here: {', '.join(changed)} differ from what "
        f"{REPORT_FILENAME} recorded (this promptlabel's templates or proposal keys are not "
        "the ones that labeled it), so the stored proposals and verdicts would not be found; "
        "your decisions are kept in the workspace: run `promptlabel label` again with the "
        "options of the first run, which applies them"
    )


@dataclass
class _ImageList:
    """The dataset's images by content hash, from its ``labels.jsonl`` (read again when the
    file changes: a re-export rewrites it)."""

    path: Path
    stamp: tuple[int, int] | None = None
    sha256s: list[str] = field(default_factory=list)
    members: frozenset[str] = frozenset()
    lock: threading.Lock = field(default_factory=threading.Lock)

    def current(self) -> tuple[list[str], frozenset[str]]:
        with self.lock:
            try:
                stat = self.path.stat()
            except OSError:
                raise NotFoundError(f"{self.path} is missing: no images to review") from None
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp != self.stamp:
                self.sha256s = _read_image_sha256s(self.path)
                self.members = frozenset(self.sha256s)
                self.stamp = stamp
            return self.sha256s, self.members


def _read_image_sha256s(path: Path) -> list[str]:
    found: dict[str, None] = {}
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                sha = json.loads(line)["image_sha256"]
            except (ValueError, KeyError, TypeError):
                raise InputError(f"{path}:{number}: not a line `promptlabel label` wrote") from None
            if isinstance(sha, str):
                found[sha] = None
    return list(found)


@dataclass(frozen=True)
class LocalReviewTarget:
    """A dataset folder and its workspace, as the review routes need them (a ``ReviewTarget``).

    Class names and thresholds are the run's (the ontology and thresholds its workspace
    recorded); the images are the dataset's (its ``labels.jsonl``), each served from the file
    the workspace recorded for its bytes, and only while that file's size and modification time
    are still the recorded ones. ``reexport`` is ``run_label(..., route_only=True)`` with the
    run's recorded configuration: no model loads, decisions win.
    """

    dataset_dir: Path
    workspace_dir: Path
    config: LabelConfig
    provenance: dict[str, Any]
    reexport_problem: str | None
    _images: _ImageList

    @classmethod
    def open(
        cls, dataset_dir: str | Path, *, workspace_dir: Path | None = None
    ) -> LocalReviewTarget:
        """The dataset ``promptlabel label --out`` wrote in ``dataset_dir``; InputError naming
        what is missing when it is not one."""
        folder = Path(dataset_dir).resolve()
        if not folder.is_dir():
            raise InputError(f"{dataset_dir}: no such folder (a dataset `promptlabel label` wrote)")
        provenance, run_id = _read_report(folder)
        labels = folder / LABELS_FILENAME
        if not labels.is_file():
            raise _not_a_dataset(folder, labels)
        workspace = _find_workspace(folder, provenance, workspace_dir).resolve()
        config = _config_of_run(
            dataset_dir=folder, workspace_dir=workspace, run_id=run_id, provenance=provenance
        )
        target = cls(
            dataset_dir=folder,
            workspace_dir=workspace,
            config=config,
            provenance=provenance,
            reexport_problem=_reexport_problem(config, provenance),
            _images=_ImageList(labels),
        )
        target.image_sha256s()  # a malformed labels.jsonl says so now, naming its line
        return target

    @property
    def name(self) -> str:
        return self.dataset_dir.name

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.config.ontology.names)

    @property
    def thresholds(self) -> RouteThresholds:
        return self.config.thresholds

    @contextmanager
    def workspace(self) -> Iterator[Workspace]:
        with Workspace(self.workspace_dir) as workspace:
            yield workspace

    def image_sha256s(self) -> list[str]:
        return list(self._images.current()[0])

    def image_file(self, image_sha256: str) -> tuple[Path, str]:
        if image_sha256 not in self._images.current()[1]:
            raise NotFoundError(f"{self.name} has no image {image_sha256}")
        with self.workspace() as workspace:
            paths = workspace.file_paths(image_sha256)
            for recorded in paths:
                path = Path(recorded)
                media_type = _IMAGE_MEDIA_TYPES.get(path.suffix.lower())
                try:
                    stat = path.stat()
                except OSError:
                    continue
                # Unchanged since the run hashed it, so still these bytes (as the scan decides).
                record = workspace.known_file(
                    recorded, size_bytes=stat.st_size, mtime_ns=stat.st_mtime_ns
                )
                if media_type and record is not None and record.sha256 == image_sha256:
                    return path, media_type
        where = f" (was {paths[0]})" if paths else ""
        raise NotFoundError(
            f"image {image_sha256}: its file is gone or changed since it was labeled{where}"
        )

    @contextmanager
    def _export_lock(self) -> Iterator[None]:
        # One re-export at a time, across processes too (two `promptlabel review` of a folder):
        # the exporter replaces the dataset's folders.
        with (self.workspace_dir / _EXPORT_LOCK_NAME).open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def reexport(self) -> dict[str, Any]:
        if self.reexport_problem is not None:
            raise ConflictError(self.reexport_problem)
        images_dir = self.config.images_dir
        if not images_dir.is_dir():
            raise ConflictError(
                f"the images folder the run labeled, {images_dir}, is gone: the re-export reads "
                "the images from there; put it back (your decisions are kept)"
            )
        with self._export_lock():
            try:
                report = run_label(self.config, route_only=True)
            except InputError as error:
                raise ConflictError(f"{self.dataset_dir}: the re-export failed: {error}") from None
        images = report["images"]
        return {
            "labels": report["labels"],
            "labels_by_decider": report["labels_by_decider"],
            "per_class": report["per_class"],
            "images": {k: v for k, v in images.items() if k != "failed"}
            | {"failed": len(images["failed"])},
            "dataset": report["dataset"],
        }


def _url_segment(name: str) -> str:
    """The dataset's name as one path segment that needs no escaping (the review routes build
    image URLs from the decoded segment)."""
    segment = re.sub(r"[^A-Za-z0-9._~-]", "_", name)
    return segment if segment.strip(".") else "dataset"


class LocalOnly:
    """Refuse requests not addressed to this server by its loopback name (DNS rebinding: 400)
    and state changes without the CSRF token (any site may post to localhost: 403)."""

    def __init__(self, app: ASGIApp, *, csrf_token: str) -> None:
        self.app = app
        self.csrf_token = csrf_token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # the lifespan; this app has no websockets
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        server = scope.get("server") or (None, None)
        host = headers.get(b"host", b"").decode("latin-1").lower()
        if not _is_loopback_host(host, server[1]):
            await _refuse(400, "invalid Host header: open this page by its 127.0.0.1 URL", send)
            return
        if scope["method"] not in _SAFE_METHODS:
            given = headers.get(CSRF_HEADER.lower().encode(), b"")
            if not hmac.compare_digest(given, self.csrf_token):
                await _refuse(403, f"missing or wrong {CSRF_HEADER} header", send)
                return
        await self.app(scope, receive, send)


def _is_loopback_host(host: str, port: int | None) -> bool:
    if port is None:
        return False
    allowed = {f"127.0.0.1:{port}", f"localhost:{port}"}
    if port == 80:  # browsers leave the default port out
        allowed |= {"127.0.0.1", "localhost"}
    return host in allowed


async def _refuse(status: int, message: str, send: Send) -> None:
    response = JSONResponse({"detail": message}, status_code=status)
    await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> dict[str, Any]:
    return {"type": "http.disconnect"}


def create_local_review_app(
    dataset_dir: str | Path,
    *,
    reviewer: str,
    workspace_dir: Path | None = None,
    settings: ServiceSettings | None = None,
) -> FastAPI:
    """The review page and API over one dataset folder, for ``reviewer`` alone (recorded with
    every decision); serve it on 127.0.0.1. InputError when ``dataset_dir`` is not a dataset.

    ``app.state.review_target`` is the ``LocalReviewTarget``, ``app.state.api_base`` the review
    API's path and ``app.state.csrf_token`` the token state changes must carry.
    """
    if not reviewer.strip() or not reviewer.isprintable():
        raise InputError(f"reviewer {reviewer!r}: give a name (printable, not empty)")
    target = LocalReviewTarget.open(dataset_dir, workspace_dir=workspace_dir)
    segment = _url_segment(target.name)
    api_base = f"/v1/projects/{LOCAL_PROJECT_ID}/jobs/{quote(segment, safe='')}/review"
    csrf_token = secrets.token_urlsafe(32)
    principal = Principal(key_id=reviewer, project_id=LOCAL_PROJECT_ID, role=Role.ADMIN)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The re-export runs here, off the event loop; one at a time anyway (the export lock).
        app.state.pools = pools = {"review": ThreadPoolExecutor(1, thread_name_prefix="review")}
        try:
            yield
        finally:
            for pool in pools.values():
                pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title=f"promptlabel review: {target.name}",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.settings = settings if settings is not None else get_service_settings()
    app.state.review_target = target
    app.state.api_base = api_base
    app.state.csrf_token = csrf_token

    async def local_principal() -> Principal:
        return principal

    async def local_target(
        project_id: Annotated[str, PathParam()], job_id: Annotated[str, PathParam()]
    ) -> ReviewTarget:
        if project_id != LOCAL_PROJECT_ID or job_id != segment:
            raise NotFoundError(f"this server reviews {api_base} only")
        return target

    app.dependency_overrides[deps._principal] = local_principal
    app.dependency_overrides[review_target] = local_target
    app.include_router(review.router)
    app.include_router(spot_checks.router)

    @app.get("/review/session", include_in_schema=False)
    async def session(response: Response) -> pages.SessionPublic:
        response.headers["Cache-Control"] = "no-store"
        return pages.SessionPublic(
            project_id=LOCAL_PROJECT_ID,
            key_id=reviewer,
            role=Role.ADMIN.value,
            csrf_token=csrf_token,
            api_base=api_base,
        )

    pages.mount_review_page(app)
    add_error_handlers(app)
    app.add_middleware(BodyLimit, upload_limit=JSON_BODY_LIMIT)
    app.add_middleware(LocalOnly, csrf_token=csrf_token)
    return app
