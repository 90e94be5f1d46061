"""Workers: claim a job, keep its lease alive, run it, store the outcome in one fenced write.

Jobs are plain functions (``run_label_job``, ``run_train_job``) of a ``JobContext``. A worker keeps
its models between jobs (``ModelCache``). A job whose worker dies is taken over once its lease
expires and resumes from what the dead worker committed: a labeling job's workspace keeps every
finished proposal and verdict, so the second run redoes only unfinished work and writes the same
labels an uninterrupted run would.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from labeler.core.exceptions import DetectorError, ModelLoadError, PromptlabelError
from labeler.core.files import copy_atomically
from labeler.propose.options import DetectorOptions
from serve.api.schemas import LabelJobCreate, TrainJobCreate
from serve.db import Database, hard_cases, images, job_images, projects
from serve.ingest.store import blob_path
from serve.jobs.queue import (
    ClaimedJob,
    JobKind,
    JobStatus,
    LeaseLost,
    claim_job,
    finish_job,
    release_job,
    renew_lease,
    retry_job,
    save_progress,
)
from serve.jobs.service import dataset_dir, job_dir, public_provenance, without_data_dir
from serve.settings import ResolvedVerifier, ServiceSettings
from serve.telemetry import JOB_SECONDS, JOBS_FINISHED, job_log_context

if TYPE_CHECKING:
    from labeler.pipeline import LabelConfig
    from labeler.propose.detector import Detector
    from labeler.segment import Segmenter
    from labeler.verify import Verifier

__all__ = [
    "JobCancelled",
    "JobContext",
    "ModelCache",
    "Worker",
    "WorkerStopping",
    "job_image_rows",
    "label_job_config",
    "label_job_outcome",
    "materialize_job_images",
    "registry_dir",
    "run_label_job",
    "run_train_job",
]

log = logging.getLogger(__name__)


class JobCancelled(Exception):
    """The job's cancel was requested; raised inside the job to stop it."""


class WorkerStopping(Exception):
    """The worker is shutting down; raised inside the job to stop it and give it back."""


def registry_dir(data_dir: Path, project_id: str) -> Path:
    return data_dir / "projects" / project_id / "registry"


class ModelCache:
    """Models one worker keeps between jobs: detector weights by model id, verifiers and
    segmenters by spec."""

    def __init__(self) -> None:
        self._detectors: dict[tuple[str, str, str], Detector] = {}
        self._verifiers: dict[tuple[Any, ...], Verifier | None] = {}
        self._segmenters: dict[tuple[str, str], Segmenter] = {}
        self._lock = threading.Lock()

    def detector(self, model_id: str, options: DetectorOptions) -> Detector:
        from labeler.propose.detector import load_detector

        key = (model_id, options.device, options.dtype)
        with self._lock:
            if key not in self._detectors:
                self._detectors.clear()  # one detector in memory at a time
                self._detectors[key] = load_detector(model_id, options)
            return self._detectors[key].with_options(options)

    def verifier(self, spec: str, *, settings: ServiceSettings, mode: str) -> Verifier | None:
        """A kept local VLM for ``spec``; None for API backends, which each job opens and closes
        itself (their HTTP connections belong to the job's event loop and cannot outlive it)."""
        from labeler.verify import load_verifier, parse_verifier_spec

        if parse_verifier_spec(spec)[0] != "transformers":
            return None
        key = (spec, mode)
        with self._lock:
            if key not in self._verifiers:
                self._verifiers[key] = load_verifier(
                    spec,
                    concurrency=settings.concurrency,
                    mode=mode,
                    device=settings.service_device,
                )
            return self._verifiers[key]

    def segmenter(self, spec: str, *, device: str) -> Segmenter:
        """The segmenter for ``spec``, loaded at a job's first mask (a job whose masks are all
        stored loads none) and kept for the next jobs, one segmenter in memory at a time."""
        from labeler.segment import LazySegmenter, load_segmenter

        def load() -> Segmenter:
            key = (spec, device)
            with self._lock:
                if key not in self._segmenters:
                    self._segmenters.clear()
                    self._segmenters[key] = load_segmenter(spec, device=device)
                return self._segmenters[key]

        return LazySegmenter(load)


@dataclass
class _Lease:
    """The heartbeat's view of the job, read by the job between units of work."""

    lost: threading.Event = field(default_factory=threading.Event)
    cancel: threading.Event = field(default_factory=threading.Event)
    stopping: threading.Event = field(default_factory=threading.Event)  # the worker's stop

    def check(self) -> None:
        if self.lost.is_set():
            raise LeaseLost("lease lost")
        if self.cancel.is_set():
            raise JobCancelled()
        if self.stopping.is_set():
            raise WorkerStopping()


@dataclass
class JobContext:
    job: ClaimedJob
    db: Database
    settings: ServiceSettings
    models: ModelCache
    lease: _Lease
    progress: JobProgress


# Shares of a job's fraction done: a labeling job's stages, then a training job's ("export" is in
# both: the dataset, or the ONNX file).
_STAGE_WEIGHTS = {
    "scan": 0.02,
    "propose": 0.45,
    "verify": 0.45,
    "route": 0.03,
    "export": 0.05,
    "train": 0.9,
}


class JobProgress:
    """A ``labeler.pipeline.ProgressSink`` (and training callback) that stores progress in the job.

    Writes are throttled; every call also stops the job when its lease is gone or a cancel was
    requested.
    """

    def __init__(self, db: Database, job: ClaimedJob, lease: _Lease, *, every_s: float = 0.5):
        self._db = db
        self._job = job
        self._lease = lease
        self._every_s = every_s
        self._last_write = 0.0
        self.state: dict[str, Any] = {
            "stage": "starting",
            "done": 0,
            "total": 0,
            "fraction": 0.0,
            "attempt": job.attempt,
            "attempt_started_at": time.time(),
            "stage_started_at": time.time(),
            "stages": {},
        }
        self._completed_weight = 0.0

    def begin(self) -> None:
        """Store the fresh state at once: callers see this attempt ("starting") while models
        load, not what an earlier attempt got to."""
        self._store(force=True)

    def start(self, stage: str, total: int) -> None:
        previous = self.state["stage"]
        self._completed_weight += _STAGE_WEIGHTS.get(previous, 0.0)
        self.state.update(stage=stage, done=0, total=total, stage_started_at=time.time())
        self.state["stages"][stage] = {"done": 0, "total": total}
        self._store(force=True)

    def advance(
        self, stage: str, amount: int = 1, *, checkpoint: bool = False, **values: Any
    ) -> None:
        """Count ``amount`` more done in ``stage`` (and set ``values``, such as the last
        metrics). With ``checkpoint``, store it now and stop the job here if a cancel came in
        meanwhile (before a step that cannot be taken back, such as registering a model)."""
        self.state.update(values)
        self.state["done"] += amount
        self.state["stages"].setdefault(stage, {"done": 0, "total": 0})["done"] += amount
        self._store(force=checkpoint)
        if checkpoint:
            self._lease.check()

    def update(self, **values: Any) -> None:
        self.state.update(values)
        self._store()

    def _store(self, *, force: bool = False) -> None:
        self._lease.check()
        total = self.state["total"]
        stage_fraction = self.state["done"] / total if total else 0.0
        weight = _STAGE_WEIGHTS.get(self.state["stage"], 0.0)
        self.state["fraction"] = round(
            min(1.0, self._completed_weight + weight * stage_fraction), 4
        )
        now = time.monotonic()
        if force or now - self._last_write >= self._every_s:
            self._last_write = now
            if save_progress(self._db, self._job, self.state).cancel_requested:
                self._lease.cancel.set()  # noticed at the next unit of work


# -- jobs ------------------------------------------------------------------------------------------


def materialize_job_images(rows: list[Any], data_dir: Path, images_dir: Path) -> dict[str, str]:
    """Link each image into the job's folder (those there already are kept); returns file stem
    -> image id. ``rows`` as ``job_image_rows`` gives them."""
    images_dir.mkdir(parents=True, exist_ok=True)
    by_stem: dict[str, str] = {}
    for row in rows:
        stem = f"{row.position:06d}-{row.image_id}"
        by_stem[stem] = row.image_id
        target = images_dir / f"{stem}{row.extension}"
        if target.exists():
            continue
        source = blob_path(data_dir, row.sha256, row.extension)
        try:
            os.link(source, target)
        except OSError:  # another filesystem, or links not allowed: copy
            # Atomically: the retry keeps any target that exists, so it must never be half a copy.
            copy_atomically(source, target)
    return by_stem


def label_job_config(
    db: Database,
    settings: ServiceSettings,
    *,
    job_id: str,
    project_id: str,
    params: dict[str, Any],
    with_api_key: bool = True,
) -> LabelConfig:
    """The ``LabelConfig`` a labeling job runs with: its stored params, the models its names
    stand for in ``settings``, and its folder. Without ``with_api_key`` the verifier's key is not
    looked up (a run that asks no verifier: the service's re-export of reviewed labels)."""
    from labeler.ontology import ontology_from_data
    from labeler.pipeline import LabelConfig
    from labeler.route import RouteThresholds

    request = LabelJobCreate.model_validate(
        {k: v for k, v in params.items() if k not in ("image_count", "ontology")}
    )
    ontology_json = params.get("ontology")
    if ontology_json is None:  # queued before jobs kept the ontology they were submitted with
        with db.read() as connection:
            ontology_json = connection.execute(
                sa.select(projects.c.ontology).where(projects.c.id == project_id)
            ).scalar_one()
    ontology = ontology_from_data(ontology_json, source=f"job {job_id} ontology")
    folder = job_dir(settings.data_dir, job_id)
    options = DetectorOptions(
        box_threshold=request.box_threshold,
        text_threshold=request.text_threshold,
        max_det=request.max_det,
        nms_iou=request.nms_iou,
        device=settings.service_device,
        batch_size=settings.batch_size,
        tile_px=request.tile,
        tile_overlap=request.tile_overlap,
    )
    if with_api_key:
        chosen = settings.resolve_verifier(request.verifier)  # its own server and key
    else:
        entry = settings.service_verifiers[request.verifier]
        chosen = ResolvedVerifier(spec=entry.spec, url=entry.url or settings.service_verifier_url)
    return LabelConfig(
        images_dir=folder / "images",
        ontology=ontology,
        out_dir=dataset_dir(settings.data_dir, job_id),
        detector=settings.service_detectors[request.detector],
        detector_options=options,
        verifier=chosen.spec,
        verifier_url=chosen.url,
        verifier_api_key=chosen.api_key,
        verify_mode=request.verify_mode,
        concurrency=settings.concurrency,
        request_timeout_s=settings.request_timeout_s,
        max_retries=settings.max_retries,
        thresholds=RouteThresholds(
            accept=request.accept_threshold,
            reject=request.reject_threshold,
            review_below_score=request.review_below_score,
        ),
        val_fraction=request.val_fraction,
        max_image_pixels=settings.max_image_pixels,
        workspace_dir=folder / "workspace",
        masks=settings.service_segmenters[request.masks] if request.masks else None,
        student_predictions=student_predictions(db, job_id) if request.hard_cases else None,
    )


def student_predictions(db: Database, job_id: str) -> dict[str, list[dict[str, Any]]]:
    """What the devices' student predicted on the hard cases job ``job_id`` took, by image
    SHA-256 (the first sender's predictions)."""
    with db.read() as connection:
        rows = connection.execute(
            sa.select(images.c.sha256, hard_cases.c.predictions)
            .join(hard_cases, hard_cases.c.image_id == images.c.id)
            .where(hard_cases.c.consumed_by_job == job_id)
        ).all()
    return {
        sha: [{"class": p["class"], "xyxy": p["xyxy"]} for p in predictions or []]
        for sha, predictions in rows
    }


def label_job_outcome(
    *,
    job_id: str,
    params: dict[str, Any],
    rows: list[Any],
    by_stem: dict[str, str],
    out_dir: Path,
    report: dict[str, Any],
) -> tuple[dict[str, Any], Callable[[Connection], None]]:
    """A label run's summary for the job's ``result``, and a writer of its per-image results
    (``job_images``) from the run's ``labels.jsonl``; ``rows`` are the job's images
    (``job_image_rows``), ``by_stem`` their files' stems (``materialize_job_images``)."""
    from labeler.pipeline import LABELS_FILENAME

    results: dict[str, dict[str, Any]] = {}
    for line in (out_dir / LABELS_FILENAME).read_text().splitlines():
        record = json.loads(line)
        labels = record["labels"]
        counts = {s: sum(1 for label in labels if label["status"] == s) for s in _LABEL_STATUSES}
        results[by_stem[Path(record["path"]).stem]] = {
            "status": "labeled",
            "error": None,
            "labels": labels,
            "counts": counts,
        }
    for failed in report["images"]["failed"]:
        image_id = by_stem[Path(failed["path"]).stem]
        results[image_id] = {"status": "failed", "error": failed["error"], "labels": None}
    summary = {
        "images": {k: v for k, v in report["images"].items() if k != "failed"}
        | {"failed": len(report["images"]["failed"])},
        "labels": report["labels"],
        "per_class": report["per_class"],
        "verifier": report["verifier"],
        "timings_s": report["timings_s"],
        "dataset": {k: v for k, v in report["dataset"].items() if k != "path"},
        "provenance": public_provenance(report["provenance"], params),
    }

    def write_results(connection: Connection) -> None:
        for row in rows:
            result = results.get(row.image_id)
            if result is None:  # same bytes as an earlier image of the job: labeled once
                continue
            connection.execute(
                sa.update(job_images)
                .where(job_images.c.job_id == job_id, job_images.c.position == row.position)
                .values(**result)
            )

    return summary, write_results


def job_image_rows(db: Database, job_id: str) -> list[Any]:
    """The job's images in submission order: position, image_id, sha256, extension."""
    with db.read() as connection:
        return list(
            connection.execute(
                sa.select(
                    job_images.c.position,
                    job_images.c.image_id,
                    images.c.sha256,
                    images.c.extension,
                )
                .join(images, images.c.id == job_images.c.image_id)
                .where(job_images.c.job_id == job_id)
                .order_by(job_images.c.position)
            ).all()
        )


# The name the worker's file tests know it by.
_materialize = materialize_job_images


def run_label_job(ctx: JobContext) -> tuple[dict[str, Any], Callable[[Connection], None]]:
    """Label the job's images with ``labeler.run_label``; returns the summary and a writer of the
    per-image results (run in the same transaction that marks the job succeeded)."""
    from labeler.pipeline import run_label

    settings = ctx.settings
    config = label_job_config(
        ctx.db, settings, job_id=ctx.job.id, project_id=ctx.job.project_id, params=ctx.job.params
    )
    rows = job_image_rows(ctx.db, ctx.job.id)
    by_stem = materialize_job_images(rows, settings.data_dir, config.images_dir)
    detector = ctx.models.detector(config.detector, config.detector_options)
    verifier = ctx.models.verifier(config.verifier, settings=settings, mode=config.verify_mode)
    segmenter = (
        ctx.models.segmenter(config.masks, device=settings.service_device) if config.masks else None
    )
    report = run_label(
        config, progress=ctx.progress, detector=detector, verifier=verifier, segmenter=segmenter
    )
    return label_job_outcome(
        job_id=ctx.job.id,
        params=ctx.job.params,
        rows=rows,
        by_stem=by_stem,
        out_dir=config.out_dir,
        report=report,
    )


_LABEL_STATUSES = ("accepted", "rejected", "needs_review")


def run_train_job(ctx: JobContext) -> tuple[dict[str, Any], Callable[[Connection], None]]:
    """Train a student on a labeling job's dataset, export it to ONNX, then register both: a run
    that fails or is cancelled before the end leaves no version in the registry."""
    from distill.export import export_model
    from distill.runs import PRODUCTION_BASE, train_and_register
    from distill.train import TrainResult

    settings = ctx.settings
    params = TrainJobCreate.model_validate(ctx.job.params)
    folder = job_dir(settings.data_dir, ctx.job.id)
    run_dir = folder / f"run-{ctx.job.attempt}"
    shutil.rmtree(run_dir, ignore_errors=True)  # a run killed halfway cannot be resumed
    ctx.progress.start("train", params.epochs)

    def on_epoch(epoch: int, epochs: int, metrics: dict[str, float]) -> None:
        ctx.progress.advance("train", last_metrics=metrics)

    def export_onnx(result: TrainResult) -> dict[str, Path]:
        ctx.progress.start("export", 1)  # a cancel is noticed here, before anything is registered
        exported = export_model(
            result.best, format="onnx", imgsz=params.imgsz, device=settings.service_device
        )
        # The last chance to stop: next, the version is registered.
        ctx.progress.advance("export", checkpoint=True)
        return {"onnx": exported.path}

    if params.dataset_version is not None:
        from serve.jobs.dataset_versions import get_version

        data = get_version(settings.data_dir, ctx.job.project_id, params.dataset_version).path
    else:
        assert params.label_job_id is not None  # the schema requires one of the two
        data = dataset_dir(settings.data_dir, params.label_job_id)
    run = train_and_register(
        data,
        registry_dir=registry_dir(settings.data_dir, ctx.job.project_id),
        out_dir=run_dir,
        # "production" is resolved against the registry when training starts (distill.runs).
        base=(
            params.base
            if params.base == PRODUCTION_BASE
            else settings.service_train_bases[params.base]
        ),
        epochs=params.epochs,
        imgsz=params.imgsz,
        batch=params.batch,
        device=settings.service_device,
        patience=params.patience,
        seed=params.seed,
        progress=on_epoch,
        # After each batch: a throttled progress write, which learns of a cancel, and the check
        # that stops training there on a cancel, a lost lease or the worker's shutdown.
        stop_check=ctx.progress.update,
        plots=False,
        prepare_artifacts=export_onnx,
        job_id=ctx.job.id,
    )
    if run.version is None:
        raise JobCancelled()
    metrics = {k: v for k, v in run.metrics.items() if k not in {"data"}}
    # As a labeling job's result does (its provenance comes from the run's report.json).
    provenance = {"promptlabel_version": run.version.promptlabel_version}
    result = {"model_version": run.version.version, "metrics": metrics, "provenance": provenance}
    return result, lambda _: None


JOB_FUNCTIONS: dict[JobKind, Callable[[JobContext], tuple[dict[str, Any], Any]]] = {
    JobKind.LABEL: run_label_job,
    JobKind.TRAIN: run_train_job,
}


# -- the worker loop -------------------------------------------------------------------------------


class Worker:
    """Runs jobs from the queue one at a time until ``stop`` is set."""

    def __init__(
        self,
        *,
        db: Database,
        settings: ServiceSettings,
        name: str | None = None,
        kinds: tuple[JobKind, ...] = tuple(JobKind),
        models: ModelCache | None = None,
    ) -> None:
        settings.check_verifier_keys()  # refuse to start rather than fail each job that needs one
        self.db = db
        self.settings = settings
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"
        self.kinds = kinds
        self.models = models or ModelCache()

    def run(self, stop: threading.Event) -> None:
        """Run jobs until ``stop`` is set. A job running then stops at its next unit of work (as
        for a cancel) and goes back to the queue without using up an attempt."""
        log.info("worker %s started", self.name)
        while not stop.is_set():
            try:
                ran = self.run_once(stop)
            except Exception:
                log.exception("worker %s: unexpected error; going on", self.name)
                ran = False
            if not ran:
                stop.wait(self.settings.poll_interval_s)
        log.info("worker %s stopped", self.name)

    def run_once(self, stop: threading.Event | None = None) -> bool:
        """Run the next job, if any; returns whether one was run. Setting ``stop`` meanwhile
        gives the job back to the queue (see ``run``)."""
        job = claim_job(self.db, owner=self.name, lease_s=self.settings.lease_s, kinds=self.kinds)
        if job is None:
            return False
        with job_log_context(job_id=job.id, job_kind=job.kind.value, attempt=job.attempt):
            self._execute(job, _Lease(stopping=stop or threading.Event()))
        return True

    def _heartbeat(self, job: ClaimedJob, lease: _Lease, done: threading.Event) -> None:
        interval = self.settings.lease_s / 3
        while not done.wait(interval):
            try:
                state = renew_lease(self.db, job, lease_s=self.settings.lease_s)
            except LeaseLost:
                lease.lost.set()
                return
            except Exception:  # a database hiccup: try again before the lease runs out
                log.warning("lease renewal failed; retrying", exc_info=True)
                continue
            if state.cancel_requested:
                lease.cancel.set()

    def _execute(self, job: ClaimedJob, lease: _Lease) -> None:
        progress = JobProgress(self.db, job, lease)
        ctx = JobContext(job, self.db, self.settings, self.models, lease, progress)
        done = threading.Event()
        heartbeat = threading.Thread(
            target=self._heartbeat, args=(job, lease, done), name=f"lease-{job.id}", daemon=True
        )
        heartbeat.start()
        started = time.perf_counter()
        log.info("job started")
        try:
            progress.begin()
            result, write_results = JOB_FUNCTIONS[job.kind](ctx)
            progress.state.update(stage="done", fraction=1.0)
            self._finish(
                job,
                JobStatus.SUCCEEDED,
                result=result,
                progress=progress.state,
                also=write_results,
            )
        except JobCancelled:
            self._finish(job, JobStatus.CANCELLED, error="cancelled on request")
        except WorkerStopping:
            try:
                release_job(self.db, job)
                log.info("worker stopping: job given back to the queue")
            except LeaseLost:
                log.warning("job lost its lease while being given back; its new owner has it")
        except LeaseLost:
            log.warning("job lost its lease (another worker took it over); dropped")
        except DetectorError as error:
            # The model or the machine, not the caller's images, and it may pass (a GPU out of
            # memory while another job holds it): retried like a crash. What the run proposed
            # is kept, so the next attempt starts where this one stopped.
            log.warning("job's detector failed: %s", error)
            self._retry(job, f"{error.summary} (the server's log has the details)")
        except PromptlabelError as error:
            # The input or configuration is wrong: running it again would fail the same way.
            log.warning("job failed: %s", error)
            self._finish(job, JobStatus.FAILED, error=self._for_callers(error))
        except Exception as error:
            log.exception("job crashed")
            self._retry(job, f"{type(error).__name__} (the server's log has the details)")
        finally:
            done.set()
            JOB_SECONDS.labels(kind=job.kind.value).observe(time.perf_counter() - started)

    def _retry(self, job: ClaimedJob, message: str) -> None:
        """Queue the job again after a backoff (5 s, doubling, at most 5 min), or fail it when
        it is out of attempts; ``message`` is what callers see meanwhile."""
        delay_s = min(300.0, 5.0 * 2 ** (job.attempt - 1))
        try:
            if retry_job(self.db, job, error=message, delay_s=delay_s):
                log.info("job will be retried in %.0f s", delay_s)
            else:
                JOBS_FINISHED.labels(kind=job.kind.value, status="failed").inc()
        except LeaseLost:
            log.warning("job lost its lease while failing")

    def _for_callers(self, error: PromptlabelError) -> str:
        """A job's error as the API caller may read it. The caller's own mistakes are explained;
        a model the operator configured that does not load is the operator's to read (in the
        log), and no message shows where the server keeps its data."""
        if isinstance(error, ModelLoadError):
            return "a model this server is configured with could not be loaded; its log says why"
        return without_data_dir(str(error), self.settings.data_dir)

    def _finish(self, job: ClaimedJob, status: JobStatus, **values: Any) -> None:
        try:
            finish_job(self.db, job, status=status, **values)
        except LeaseLost:
            log.warning("job lost its lease before it could finish; its new owner will")
            return
        JOBS_FINISHED.labels(kind=job.kind.value, status=status.value).inc()
        log.info("job %s", status.value)
