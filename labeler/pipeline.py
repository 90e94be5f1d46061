"""The label run: scan -> propose -> verify -> route -> export -> report.

Each stage reads what earlier runs stored in the workspace and does only the work that is missing,
so re-running the same command resumes after a crash or Ctrl-C, and changing only routing thresholds
re-routes from stored scores without loading any model.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from PIL import Image

from labeler.core.detections import Detections, as_records
from labeler.core.exceptions import DetectorError, ImageError, InputError
from labeler.core.images import (
    DEFAULT_MAX_PIXELS,
    LoadedImage,
    iter_image_paths,
    load_image,
    sha256_file,
)
from labeler.core.version import __version__
from labeler.export.dataset import (
    DEFAULT_VAL_FRACTION,
    ExportItem,
    export_dataset,
    unwritable_reasons,
)
from labeler.ontology import Ontology
from labeler.propose.options import DetectorOptions
from labeler.route import RouteThresholds, Status, route, student_disagreement
from labeler.segment import (
    MaskStats,
    MaskThresholds,
    Segmenter,
    from_rle,
    image_masks,
    load_segmenter,
    mask_key,
    mask_problem,
    parse_segmenter_spec,
)
from labeler.store.decisions import HUMAN_KEY, HumanState
from labeler.store.workspace import LabelRow, StoredVerdict, Workspace
from labeler.verify import (
    check_verifier_spec,
    check_verify_mode,
    parse_verifier_spec,
    question_for,
    verdict_cache_key,
)
from labeler.verify.base import DEFAULT_CONCURRENCY, DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT_S
from labeler.verify.identity import VerifierIdentity, verifier_identity
from labeler.verify.templates import DEFAULT_VERIFY_MODE

if TYPE_CHECKING:
    import httpx

    from labeler.propose.detector import Detector
    from labeler.verify import Verdict, Verifier

__all__ = ["LABELS_FILENAME", "LabelConfig", "ProgressSink", "propose_key", "run_label"]

log = logging.getLogger(__name__)

WORKSPACE_DIRNAME = ".promptlabel"
LABELS_FILENAME = "labels.jsonl"  # every proposal of every image, with its status and evidence


class ProgressSink(Protocol):
    """Where a run reports progress; the CLI draws rich bars, the service updates job counters."""

    def start(self, stage: str, total: int) -> None: ...

    def advance(self, stage: str, amount: int = 1) -> None: ...


class _NoProgress:
    def start(self, stage: str, total: int) -> None:
        pass

    def advance(self, stage: str, amount: int = 1) -> None:
        pass


@dataclass(frozen=True)
class LabelConfig:
    images_dir: Path
    ontology: Ontology
    out_dir: Path
    detector: str
    detector_options: DetectorOptions = field(default_factory=DetectorOptions)
    verifier: str = "none"
    verifier_url: str | None = None
    # None: the backend's own variable (OPENAI_API_KEY, MOONDREAM_API_KEY). Never shown or stored.
    verifier_api_key: str | None = field(default=None, repr=False)
    verify_mode: str = DEFAULT_VERIFY_MODE
    concurrency: int = DEFAULT_CONCURRENCY
    request_timeout_s: float = DEFAULT_TIMEOUT_S
    max_retries: int = DEFAULT_MAX_RETRIES
    thresholds: RouteThresholds = field(default_factory=RouteThresholds)
    val_fraction: float = DEFAULT_VAL_FRACTION
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    workspace_dir: Path | None = None
    # ``--masks SPEC``: a mask per accepted box from this segmenter (None: no masks).
    masks: str | None = None
    mask_thresholds: MaskThresholds = field(default_factory=MaskThresholds)
    # What a deployed student predicted on these images (hard cases), by image SHA-256:
    # [{"class": name, "xyxy": [...]}, ...]. Kept in the workspace, so that every later routing
    # (a re-export included) sends the proposals it disagrees on to review.
    student_predictions: Mapping[str, Sequence[Mapping[str, Any]]] | None = None

    @property
    def uses_verifier(self) -> bool:
        return parse_verifier_spec(self.verifier)[0] != "none"

    @property
    def workspace(self) -> Path:
        return self.workspace_dir or self.out_dir / WORKSPACE_DIRNAME

    def verifier_identity(self) -> VerifierIdentity:
        """What names this run's verdicts in the cache: model, templates, an API's URL."""
        return verifier_identity(self.verifier, mode=self.verify_mode, url=self.verifier_url)

    def validate(self) -> None:
        """Check everything that can be checked before any model loads."""
        if not self.images_dir.is_dir():
            raise InputError(f"{self.images_dir}: images folder not found")
        if self.images_dir.resolve().is_relative_to(self.out_dir.resolve()):
            # Everything below the output folder is the dataset's own, never an input.
            raise InputError(
                f"--out {self.out_dir} holds the images folder {self.images_dir}: choose an "
                "output folder outside it (inside the images folder is fine)"
            )
        if not 0.0 <= self.val_fraction < 1.0:
            raise InputError(f"--val-fraction must be within [0, 1), got {self.val_fraction}")
        if self.concurrency < 1:
            raise InputError(f"--concurrency must be at least 1, got {self.concurrency}")
        check_verify_mode(self.verify_mode, name="--verify-mode")
        options = self.detector_options
        for name in ("box_threshold", "text_threshold", "nms_iou"):
            if not 0.0 <= getattr(options, name) <= 1.0:
                option = "--" + name.replace("_", "-")
                raise InputError(f"{option} must be within [0, 1], got {getattr(options, name)}")
        if options.max_det < 1 or options.batch_size < 1:
            raise InputError("--max-det and --batch-size must be at least 1")
        check_verifier_spec(self.verifier)
        if self.masks is not None:
            parse_segmenter_spec(self.masks)


def propose_key(config: LabelConfig) -> str:
    """Identifies a proposal set: the detector, each option that changes its output, the phrases."""
    options = config.detector_options
    payload = {
        "detector": config.detector,
        "box_threshold": options.box_threshold,
        "text_threshold": options.text_threshold,
        "max_det": options.max_det,
        "nms_iou": options.nms_iou,
        "phrases": [list(c.detect) for c in config.ontology.classes],
    }
    ontology = config.ontology
    if len(ontology.distinct_phrases) < len(ontology.phrases):
        # Classes share a phrase. Proposals saved before each such class got the shared boxes
        # hold them for one class only; a key of its own makes those be proposed again.
        payload["shared_phrases"] = "every-class"
    if options.tile_px is not None:
        # Only when tiling, so untiled runs keep the keys of the proposals they stored before.
        payload["tile_px"] = options.tile_px
        payload["tile_overlap"] = options.tile_overlap
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def changed_since_run(config: LabelConfig, provenance: dict[str, Any]) -> list[str]:
    """What of ``config`` differs from a run's recorded ``provenance`` in a way that a route-only
    rerun would not find that run's stored proposals or verdicts: the proposal key, the
    verifier, its endpoint, its prompt template. Empty: the rerun finds them all."""
    identity = config.verifier_identity() if config.uses_verifier else None
    now = {
        "propose_key": propose_key(config),
        "verifier": identity.model_id if identity else "none",
        "verifier_endpoint": identity.endpoint if identity else None,
        "template_hash": identity.template_hash if identity else None,
    }
    return [name for name, value in now.items() if provenance.get(name) != value]


@dataclass
class _Scan:
    """Files found this run; ``first_path`` maps each decodable content hash to one file."""

    paths: list[Path]
    sha_by_path: dict[Path, str]
    failed: dict[Path, str]
    first_path: dict[str, Path]

    def fail(self, sha256: str, error: ImageError) -> None:
        for path, sha in self.sha_by_path.items():
            if sha == sha256:
                self.failed[path] = f"{error.reason}" + (
                    f": {error.detail}" if error.detail else ""
                )
        self.first_path.pop(sha256, None)


def _scan(config: LabelConfig, workspace: Workspace, progress: ProgressSink) -> _Scan:
    # The dataset may be written inside the images folder; its copies are not new inputs.
    excluded = [config.out_dir.resolve(), config.workspace.resolve()]
    paths = [
        path
        for path in iter_image_paths(config.images_dir)
        if not any(path.resolve().is_relative_to(folder) for folder in excluded)
    ]
    progress.start("scan", len(paths))
    scan = _Scan(paths=paths, sha_by_path={}, failed={}, first_path={})
    for path in paths:
        key = str(path.resolve())
        try:
            stat = path.stat()
            record = workspace.known_file(key, size_bytes=stat.st_size, mtime_ns=stat.st_mtime_ns)
            if record is None:
                sha = sha256_file(path)
                workspace.record_file(
                    key, sha256=sha, size_bytes=stat.st_size, mtime_ns=stat.st_mtime_ns
                )
                error_reason, error_detail = None, None
            else:
                sha, error_reason, error_detail = (
                    record.sha256,
                    record.error_reason,
                    record.error_detail,
                )
        except OSError as exc:
            scan.failed[path] = f"unreadable: {exc.strerror or exc}"
            progress.advance("scan")
            continue
        scan.sha_by_path[path] = sha
        if error_reason is not None:
            scan.failed[path] = error_reason + (f": {error_detail}" if error_detail else "")
        else:
            scan.first_path.setdefault(sha, path)
        progress.advance("scan")
    return scan


def _decode(sha256: str, scan: _Scan, config: LabelConfig) -> LoadedImage | ImageError:
    """Decode one image; safe to call off the main thread (touches no database)."""
    try:
        return load_image(scan.first_path[sha256], max_pixels=config.max_image_pixels)
    except ImageError as error:
        return error


def _record_decoded(
    sha256: str, decoded: LoadedImage | ImageError, scan: _Scan, workspace: Workspace
) -> LoadedImage | None:
    if isinstance(decoded, LoadedImage):
        workspace.record_image(sha256, decoded.image_wh)
        return decoded
    log.warning("skipping image %s", decoded)
    if decoded.reason in _FAILURES_OF_THE_BYTES:
        for path, sha in scan.sha_by_path.items():
            if sha == sha256:
                workspace.record_file_error(
                    str(path.resolve()), reason=decoded.reason, detail=decoded.detail
                )
    scan.fail(sha256, decoded)
    return None


# Decode failures that only the file's bytes decide, remembered until the file changes. Others
# are checked again on the next run: too_many_pixels depends on the limit of the run,
# missing and unreadable on the machine.
_FAILURES_OF_THE_BYTES = frozenset({"zero_bytes", "not_an_image", "truncated", "corrupt"})


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _propose(
    config: LabelConfig,
    scan: _Scan,
    workspace: Workspace,
    key: str,
    progress: ProgressSink,
    detector: Detector | None,
) -> dict[str, object] | None:
    """Propose for the images without a stored proposal set; the detector's fingerprint when it
    ran, None when every image had one already (the detector is then not even loaded)."""
    done = workspace.proposed_images(key)
    pending = [sha for sha in scan.first_path if sha not in done]
    progress.start("propose", len(pending))
    if not pending:
        return None
    if detector is None:
        from labeler.propose.detector import load_detector

        detector = load_detector(config.detector, config.detector_options)
    batches = list(_chunks(pending, config.detector_options.batch_size))

    def decode(batch: Sequence[str]) -> list[LoadedImage | ImageError]:
        return [_decode(sha, scan, config) for sha in batch]

    failures = _DetectorFailures()
    # Decoding the next batch overlaps the detector's forward pass (torch releases the GIL).
    with ThreadPoolExecutor(max_workers=1) as pool:
        upcoming: Future[list[LoadedImage | ImageError]] = pool.submit(decode, batches[0])
        for index, batch in enumerate(batches):
            decoded = upcoming.result()
            if index + 1 < len(batches):
                upcoming = pool.submit(decode, batches[index + 1])
            loaded = [
                (sha, image)
                for sha, result in zip(batch, decoded, strict=True)
                if (image := _record_decoded(sha, result, scan, workspace)) is not None
            ]
            for sha, detections in _propose_batch(detector, loaded, config, scan, failures):
                workspace.save_proposals(sha, key, detections, config.ontology.names)
            progress.advance("propose", len(decoded))
    failures.check_any_succeeded()
    return detector.fingerprint()


class _DetectorFailures:
    """Images the detector failed on, one at a time. A few are the images' fault (Grounding DINO
    cannot resize a 3000x1 strip); many in a row, or all of them, are the detector's, and stop
    the run."""

    in_a_row_limit = 8

    def __init__(self) -> None:
        self.in_a_row = 0
        self.succeeded_any = False
        self.last: Exception | None = None

    def succeeded(self) -> None:
        self.in_a_row = 0
        self.succeeded_any = True

    def failed(self, error: Exception) -> None:
        self.in_a_row += 1
        self.last = error
        if self.in_a_row >= self.in_a_row_limit:
            raise DetectorError(
                f"the detector failed on {self.in_a_row} images in a row", error
            ) from error

    def check_any_succeeded(self) -> None:
        if self.last is not None and not self.succeeded_any:
            raise DetectorError(
                f"the detector failed on all {self.in_a_row} images", self.last
            ) from self.last


def _propose_batch(
    detector: Detector,
    loaded: list[tuple[str, LoadedImage]],
    config: LabelConfig,
    scan: _Scan,
    failures: _DetectorFailures,
) -> list[tuple[str, Detections]]:
    """The batch's proposals; when the batch fails, each image alone, so that one image the
    detector cannot take fails by itself (for this run: it is tried again on the next)."""
    if not loaded:
        return []
    try:
        results = detector.propose([image.image for _, image in loaded], config.ontology)
    except Exception as error:
        if len(loaded) == 1:
            sha, image = loaded[0]
            log.warning("detector failed on %s: %s: %s", image.path, type(error).__name__, error)
            scan.fail(sha, ImageError(str(image.path), "detector_failed", f"{error}"))
            failures.failed(error)
            return []
        return [
            found
            for one in loaded
            for found in _propose_batch(detector, [one], config, scan, failures)
        ]
    failures.succeeded()
    return [(sha, detections) for (sha, _), detections in zip(loaded, results, strict=True)]


def _fail_unproposed(scan: _Scan, workspace: Workspace, key: str) -> None:
    """Route-only runs: the images without stored proposals fail, as no detector may run."""
    done = workspace.proposed_images(key)
    for sha in [sha for sha in scan.first_path if sha not in done]:
        path = str(scan.first_path[sha])
        scan.fail(sha, ImageError(path, "not_proposed", "no stored proposals; not run again"))


@dataclass
class _BoxWork:
    """Boxes of one image that still need a verdict."""

    sha256: str
    xyxy: np.ndarray
    questions: list[str]
    cache_keys: list[str]


def _questions(config: LabelConfig) -> list[str | None]:
    if not config.uses_verifier:
        return [None] * len(config.ontology.classes)
    return [question_for(c) for c in config.ontology.classes]


def _unwritable(proposals: Detections, image_wh: tuple[int, int] | None) -> list[str | None]:
    """Per proposal, why the dataset could not hold it (None: it can), by the exporter's rule."""
    if image_wh is None:  # never decoded, so never exported either
        return [None] * len(proposals)
    return unwritable_reasons(proposals.xyxy, image_wh)


def _box_keys(
    sha256: str,
    proposals: Detections,
    questions: list[str | None],
    identity: Any,
    mode: str,
    unwritable: Sequence[str | None],
) -> list[str | None]:
    """Each proposal's verdict cache key; None where no verdict is wanted (the class is not
    verified, or the box is rejected anyway because the dataset cannot hold it)."""
    keys: list[str | None] = []
    for (xyxy, class_id, _), problem in zip(proposals, unwritable, strict=True):
        question = questions[class_id]
        keys.append(
            None
            if question is None or identity is None or problem is not None
            else verdict_cache_key(
                image_sha256=sha256,
                xyxy=xyxy.tolist(),
                question=question,
                model_id=identity.model_id,
                template_hash=identity.template_hash,
                mode=mode,
                endpoint=identity.endpoint,
            )
        )
    return keys


@dataclass
class _VerifyStats:
    calls: int = 0
    cache_hits: int = 0
    errors: int = 0


def _verify(
    config: LabelConfig,
    scan: _Scan,
    workspace: Workspace,
    key: str,
    progress: ProgressSink,
    verifier: Verifier | None,
    http_client: httpx.AsyncClient | None,
) -> _VerifyStats:
    stats = _VerifyStats()
    questions = _questions(config)
    if all(q is None for q in questions):
        progress.start("verify", 0)
        return stats
    identity = config.verifier_identity()
    work: list[_BoxWork] = []
    sizes = workspace.image_sizes(scan.first_path)
    for sha in scan.first_path:
        proposals = workspace.load_proposals(sha, key)
        unwritable = _unwritable(proposals, sizes.get(sha))
        keys = _box_keys(sha, proposals, questions, identity, config.verify_mode, unwritable)
        stored = workspace.get_verdicts(k for k in keys if k is not None)
        # Verdicts that ended in an error (no answer came) are asked again; answers, even
        # unclear ones, are kept.
        missing = [
            i for i, k in enumerate(keys) if k is not None and (k not in stored or stored[k].error)
        ]
        stats.cache_hits += sum(
            1 for k in keys if k is not None and k in stored and not stored[k].error
        )
        if missing:
            work.append(
                _BoxWork(
                    sha256=sha,
                    xyxy=proposals.xyxy[missing],
                    questions=[questions[int(proposals.class_id[i])] or "" for i in missing],
                    cache_keys=[keys[i] or "" for i in missing],
                )
            )
    progress.start("verify", sum(len(w.cache_keys) for w in work))
    if not work:
        return stats

    async def verify_all() -> None:
        nonlocal verifier
        owned = verifier is None
        if verifier is None:
            from labeler.verify import load_verifier

            verifier = load_verifier(
                config.verifier,
                url=config.verifier_url,
                api_key=config.verifier_api_key,
                concurrency=config.concurrency,
                mode=config.verify_mode,
                timeout_s=config.request_timeout_s,
                max_retries=config.max_retries,
                http_client=http_client,
                device=config.detector_options.device,
            )
        assert verifier is not None
        calls_before, errors_before = verifier.stats.calls, verifier.stats.errors
        # Bounding images in flight keeps memory flat on large folders while still giving the
        # verifier's own limit enough boxes to stay saturated.
        image_slots = asyncio.Semaphore(max(2, config.concurrency))

        async def verify_image(item: _BoxWork) -> None:
            async with image_slots:
                if item.sha256 not in scan.first_path:
                    return
                decoded = await asyncio.to_thread(_decode, item.sha256, scan, config)
                loaded = _record_decoded(item.sha256, decoded, scan, workspace)
                if loaded is None:
                    return

                def save(index: int, verdict: Verdict) -> None:
                    # Each answer is committed as it arrives: an interrupted run keeps every
                    # request already answered (and paid for).
                    workspace.save_verdicts(
                        [
                            {
                                "cache_key": item.cache_keys[index],
                                "answer": verdict.answer,
                                "yes_prob": verdict.yes_prob,
                                "raw": verdict.raw,
                                "error": verdict.error,
                                "model_id": verifier.model_id,
                                "template_id": verifier.template_id,
                                "template_hash": verifier.template_hash,
                                "mode": verifier.mode,
                                "question": item.questions[index],
                            }
                        ]
                    )
                    progress.advance("verify")

                await verifier.verify_boxes(loaded.image, item.xyxy, item.questions, save)

        try:
            # A task group, not gather: when one image's task raises (a stop, a cancel), the
            # others are cancelled and waited for before the verifier closes under them.
            async with asyncio.TaskGroup() as group:
                for item in work:
                    group.create_task(verify_image(item))
        except BaseExceptionGroup as failed:
            # Callers catch the stop or the error itself (JobCancelled, KeyboardInterrupt, ...).
            raise failed.exceptions[0] from None
        finally:
            stats.calls += verifier.stats.calls - calls_before
            stats.errors += verifier.stats.errors - errors_before
            if owned:
                await verifier.aclose()

    asyncio.run(verify_all())
    return stats


@dataclass
class _Routed:
    rows: list[LabelRow]
    items: list[ExportItem]
    review: list[dict[str, Any]]
    images: list[dict[str, Any]]  # one record per image: every proposal with status and evidence

    def counts(
        self, names: Sequence[str], exported: set[str]
    ) -> tuple[dict[str, Counter[str]], dict[str, Counter[str]]]:
        """Effective statuses per class, and per decider ("auto", "human"), over the images in
        ``exported`` (sha256s), so that the report counts exactly what the dataset holds: an image
        the exporter had to leave out counts as failed."""
        per_class: dict[str, Counter[str]] = {name: Counter() for name in names}
        by_decider: dict[str, Counter[str]] = {"auto": Counter(), "human": Counter()}
        for image in self.images:
            if image["image_sha256"] in exported:
                for label in image["labels"]:
                    per_class[label["class"]][label["status"]] += 1
                    by_decider[label["decided_by"]][label["status"]] += 1
        return per_class, by_decider


def _with_human_changes(proposals: Detections, states: Sequence[HumanState | None]) -> Detections:
    """The proposals with each reviewer's class and box in place of the detector's."""
    xyxy = proposals.xyxy.copy()
    class_id = proposals.class_id.copy()
    for i, state in enumerate(states):
        if state is not None and state.status is not None:
            if state.class_id is not None:
                class_id[i] = state.class_id
            if state.xyxy is not None:
                xyxy[i] = state.xyxy
    return Detections(xyxy, class_id, proposals.confidence, dict(proposals.data))


def _human_reason(state: HumanState) -> str:
    return f"reviewer {state.reviewer}: {state.action}"


def _tile_field(
    tiles: dict[int, dict[str, Any]], proposals: Detections, index: int
) -> dict[str, Any]:
    """``{"tile": {"index", "xyxy"}}`` for a proposal of a tiled run (index -1: the whole image),
    nothing for an untiled one, so untiled records keep their keys."""
    tile = tiles.get(int(proposals.data["proposal_id"][index]))
    return {} if tile is None else {"tile": tile}


def _route(config: LabelConfig, scan: _Scan, workspace: Workspace, key: str) -> _Routed:
    """Every proposal's effective status: a reviewer's decision where there is one (re-routing
    never overrides it), else the automatic route from stored scores; boxes reviewers added
    join their image's."""
    questions = _questions(config)
    identity = None if all(q is None for q in questions) else config.verifier_identity()
    names = config.ontology.names
    routed = _Routed(rows=[], items=[], review=[], images=[])
    sizes = workspace.image_sizes(scan.first_path)
    human = workspace.human_states()
    student = workspace.student_boxes()
    for sha in sorted(scan.first_path):
        proposals = workspace.load_proposals(sha, key)
        states = [human.get(int(pid)) for pid in proposals.data["proposal_id"]]
        tiles = workspace.proposal_tiles(proposals.data["proposal_id"])
        effective = _with_human_changes(proposals, states)
        # Re-checked on every routing, from the stored boxes: no threshold ever accepts them.
        unwritable = _unwritable(proposals, sizes.get(sha))
        effective_unwritable = _unwritable(effective, sizes.get(sha))
        keys = _box_keys(sha, proposals, questions, identity, config.verify_mode, unwritable)
        stored = workspace.get_verdicts(k for k in keys if k is not None)
        accepted: list[int] = []
        labels: list[dict[str, Any]] = []
        records = as_records(effective, names)
        for i, cache_key in enumerate(keys):
            verdict: StoredVerdict | None = stored.get(cache_key) if cache_key else None
            decision = route(
                detector_score=float(proposals.confidence[i]),
                verified=cache_key is not None,
                yes_prob=verdict.yes_prob if verdict else None,
                error=(verdict.error if verdict else "no verdict stored") if cache_key else None,
                unwritable=unwritable[i],
                thresholds=config.thresholds,
            )
            if sha in student:
                decision = student_disagreement(
                    class_name=names[int(proposals.class_id[i])],
                    xyxy=[float(v) for v in proposals.xyxy[i]],
                    decision=decision,
                    student=student[sha],
                    unwritable=unwritable[i],
                )
            routed.rows.append(
                LabelRow(
                    proposal_id=int(proposals.data["proposal_id"][i]),
                    status=decision.status.value,
                    reason=decision.reason,
                    verdict_key=cache_key,
                )
            )
            state = states[i]
            status, reason, decided_by = decision.status, decision.reason, "auto"
            if state is not None and state.status is not None:
                status, reason, decided_by = Status(state.status), _human_reason(state), "human"
                if status is Status.ACCEPTED and effective_unwritable[i] is not None:
                    status, reason = Status.REJECTED, effective_unwritable[i] or ""
            labels.append(
                {
                    **records[i],
                    "proposal_id": int(proposals.data["proposal_id"][i]),
                    "status": status.value,
                    "reason": reason,
                    "decided_by": decided_by,
                    "auto_status": decision.status.value,
                    "version": state.version if state else 0,
                    "yes_prob": verdict.yes_prob if verdict else None,
                    "answer": verdict.raw if verdict else None,
                    **_tile_field(tiles, proposals, i),
                }
            )
            if status is Status.ACCEPTED:
                accepted.append(i)
            elif status is Status.NEEDS_REVIEW:
                routed.review.append(
                    {
                        "path": str(scan.first_path[sha]),
                        "image_sha256": sha,
                        **records[i],
                        "proposal_id": int(proposals.data["proposal_id"][i]),
                        "reason": reason,
                        "answer": verdict.raw if verdict else None,
                        **_tile_field(tiles, proposals, i),
                    }
                )
        export = effective[np.asarray(accepted, dtype=np.int64)]
        added = _added_boxes(workspace, sha, human, sizes.get(sha), names, labels)
        routed.images.append(
            {
                "path": str(scan.first_path[sha]),
                "image_sha256": sha,
                "image_wh": list(sizes[sha]) if sha in sizes else None,
                "labels": labels,
            }
        )
        if sha in sizes:
            routed.items.append(
                ExportItem(
                    source_path=scan.first_path[sha],
                    sha256=sha,
                    image_wh=sizes[sha],
                    detections=Detections.merge([export, added]) if len(added) else export,
                )
            )
    return routed


def _segment(
    config: LabelConfig,
    scan: _Scan,
    workspace: Workspace,
    routed: _Routed,
    segmenter: Segmenter | None,
    *,
    route_only: bool,
) -> MaskStats:
    """A mask for every accepted box (effective box: a reviewer's edit is what is segmented),
    from the workspace or the segmenter; each label record gains "mask" (COCO RLE). A mask that is
    empty, covers little of its box or spills far outside it sends an automatically accepted box
    to review with its reason (a reviewer's acceptance stands; its record notes the problem)."""
    stats = MaskStats()
    if config.masks is None:
        return stats
    spec = config.masks
    key = mask_key(spec)
    loaded: list[Segmenter] = [segmenter] if segmenter is not None else []

    def get_segmenter() -> Segmenter:
        if not loaded:
            loaded.append(load_segmenter(spec, device=config.detector_options.device))
        return loaded[0]

    rows = {row.proposal_id: i for i, row in enumerate(routed.rows)}
    items = {item.sha256: i for i, item in enumerate(routed.items)}
    for image in routed.images:
        sha = image["image_sha256"]
        accepted = [label for label in image["labels"] if label["status"] == Status.ACCEPTED.value]
        if not accepted or sha not in items:
            continue

        def load_image(sha: str = sha) -> Image.Image | None:
            if route_only:
                return None  # no model in route-only runs: boxes without a stored mask keep none
            decoded = _decode(sha, scan, config)
            return decoded.image if isinstance(decoded, LoadedImage) else None

        rles = image_masks(
            boxes=[label["xyxy"] for label in accepted],
            stored=workspace.get_masks(sha, key),
            load_image=load_image,
            segmenter=get_segmenter,
            save=partial(workspace.save_masks, sha, key),
            stats=stats,
        )
        keep = np.ones(len(accepted), dtype=bool)
        for j, (label, rle) in enumerate(zip(accepted, rles, strict=True)):
            label["mask"] = rle
            if rle is None:
                continue
            problem = mask_problem(from_rle(rle), np.asarray(label["xyxy"]), config.mask_thresholds)
            if problem is None:
                continue
            label["mask_problem"] = problem
            if label["decided_by"] != "auto":
                continue
            stats.sent_to_review += 1
            keep[j] = False
            label["status"], label["reason"] = Status.NEEDS_REVIEW.value, problem
            index = rows[label["proposal_id"]]
            routed.rows[index] = replace(
                routed.rows[index], status=Status.NEEDS_REVIEW.value, reason=problem
            )
            routed.review.append(
                {
                    "path": image["path"],
                    "image_sha256": sha,
                    **{k: label[k] for k in ("class_id", "class", "score", "xyxy")},
                    "proposal_id": label["proposal_id"],
                    "reason": problem,
                    "answer": label["answer"],
                    "mask": rle,
                }
            )
        item = routed.items[items[sha]]
        # The export's detections are the accepted labels in the same order (proposals, then
        # reviewers' additions).
        detections = item.detections[keep]
        masks = np.empty(len(detections), dtype=object)
        masks[:] = [rle for rle, k in zip(rles, keep, strict=True) if k]
        detections.data["mask"] = masks
        routed.items[items[sha]] = replace(item, detections=detections)
    return stats


def _added_boxes(
    workspace: Workspace,
    sha: str,
    human: dict[int, HumanState],
    image_wh: tuple[int, int] | None,
    names: Sequence[str],
    labels: list[dict[str, Any]],
) -> Detections:
    """The boxes reviewers added to one image: their labels join ``labels``, and the accepted
    ones are returned for the export."""
    added = workspace.load_proposals(sha, HUMAN_KEY)
    states = [human.get(int(pid)) for pid in added.data["proposal_id"]]
    # An add that was undone leaves no box behind.
    present = np.asarray([s is not None and s.status is not None for s in states], dtype=bool)
    added, states = added[present], [s for s in states if s is not None and s.status is not None]
    effective = _with_human_changes(added, states)
    unwritable = _unwritable(effective, image_wh)
    accepted: list[int] = []
    for i, (record, state) in enumerate(zip(as_records(effective, names), states, strict=True)):
        assert state is not None and state.status is not None
        status, reason = Status(state.status), _human_reason(state)
        if status is Status.ACCEPTED and unwritable[i] is not None:
            status, reason = Status.REJECTED, unwritable[i] or ""
        labels.append(
            {
                **record,
                "proposal_id": int(added.data["proposal_id"][i]),
                "status": status.value,
                "reason": reason,
                "decided_by": "human",
                "auto_status": None,
                "version": state.version,
                "yes_prob": None,
                "answer": None,
            }
        )
        if status is Status.ACCEPTED:
            accepted.append(i)
    return effective[np.asarray(accepted, dtype=np.int64)]


def run_label(
    config: LabelConfig,
    *,
    progress: ProgressSink | None = None,
    detector: Detector | None = None,
    verifier: Verifier | None = None,
    http_client: httpx.AsyncClient | None = None,
    route_only: bool = False,
    segmenter: Segmenter | None = None,
) -> dict[str, Any]:
    """Run (or resume) a label job and return its report, also written to ``out_dir/report.json``.

    A pre-loaded ``detector`` or ``verifier`` is used instead of loading one (a service worker keeps
    its models between jobs); otherwise models load only when there is work for them.

    ``route_only``: route and export from what the workspace holds, with no model at all (the
    service re-exports reviewed labels this way, in its API process): an image without stored
    proposals is reported failed (``not_proposed``), and verdicts that ended in an error stay
    errors (their boxes stay in review) instead of being asked again.
    """
    config.validate()
    progress = progress or _NoProgress()
    key = propose_key(config)
    timings: dict[str, float] = {}
    config.out_dir.mkdir(parents=True, exist_ok=True)
    with Workspace(config.workspace) as workspace:
        run_config = {
            "images_dir": str(config.images_dir.resolve()),
            "ontology": [c.model_dump() for c in config.ontology.classes],
            "detector": config.detector,
            "detector_options": asdict(config.detector_options),
            "propose_key": key,
            "verifier": config.verifier,
            "verify_mode": config.verify_mode,
            "thresholds": asdict(config.thresholds),
            "val_fraction": config.val_fraction,
            "masks": config.masks,
            "student_predictions": len(config.student_predictions or {}),
        }
        run_id = workspace.start_run(run_config)
        if config.student_predictions:
            workspace.save_student_boxes(config.student_predictions, source="student")

        started = time.perf_counter()
        scan = _scan(config, workspace, progress)
        timings["scan"] = time.perf_counter() - started

        started = time.perf_counter()
        detector_fingerprint = None
        if route_only:
            _fail_unproposed(scan, workspace, key)
        else:
            detector_fingerprint = _propose(config, scan, workspace, key, progress, detector)
        timings["propose"] = time.perf_counter() - started

        started = time.perf_counter()
        verify_stats = (
            _VerifyStats()
            if route_only
            else _verify(config, scan, workspace, key, progress, verifier, http_client)
        )
        timings["verify"] = time.perf_counter() - started

        started = time.perf_counter()
        routed = _route(config, scan, workspace, key)
        timings["route"] = time.perf_counter() - started
        started = time.perf_counter()
        mask_stats = _segment(config, scan, workspace, routed, segmenter, route_only=route_only)
        timings["masks"] = time.perf_counter() - started
        started = time.perf_counter()
        workspace.save_labels(run_id, routed.rows)
        timings["route"] = time.perf_counter() - started

        started = time.perf_counter()
        progress.start("export", len(routed.items))
        summary = export_dataset(
            routed.items, config.ontology.names, config.out_dir, val_fraction=config.val_fraction
        )
        progress.advance("export", len(routed.items))
        timings["export"] = time.perf_counter() - started
        for source, reason in summary.skipped.items():
            scan.failed[Path(source)] = reason
            if reason.startswith("changed"):
                # Same size and mtime, other bytes (cp -p, an archive): hash it again next run.
                workspace.forget_file(str(Path(source).resolve()))

        exported = {
            item.sha256 for item in routed.items if str(item.source_path) not in summary.skipped
        }
        per_class, by_decider = routed.counts(config.ontology.names, exported)
        statuses: Counter[str] = Counter()
        for counts in per_class.values():
            statuses.update(counts)
        identity = config.verifier_identity() if config.uses_verifier else None
        report: dict[str, Any] = {
            "images": {
                "total": len(scan.paths),
                "labeled": len(scan.paths) - len(scan.failed),
                "unique": len(scan.first_path),
                "with_accepted_boxes": sum(
                    1 for item in routed.items if item.sha256 in exported and len(item.detections)
                ),
                "failed": [
                    {"path": str(path), "error": error}
                    for path, error in sorted(scan.failed.items())
                ],
            },
            "labels": {status.value: statuses[status.value] for status in Status},
            # Who decided each: the automatic route, or a reviewer (whose decision re-routing
            # keeps); the two add up to "labels".
            "labels_by_decider": {
                decider: {status.value: counts[status.value] for status in Status}
                for decider, counts in by_decider.items()
            },
            "per_class": {
                name: {status.value: counts[status.value] for status in Status}
                for name, counts in per_class.items()
            },
            "verifier": asdict(verify_stats),
            "masks": asdict(mask_stats) if config.masks else None,
            "timings_s": {stage: round(seconds, 3) for stage, seconds in timings.items()},
            "dataset": {
                "path": str(config.out_dir),
                "images": summary.images,
                "boxes": summary.boxes,
                "background": summary.background,
            },
            "provenance": {
                "promptlabel_version": __version__,
                "run_id": run_id,
                "workspace": str(config.workspace),
                "detector": config.detector,
                "detector_options": asdict(config.detector_options),
                # Model revision, library version, device and dtype of this run's detector; None
                # when every proposal came from the workspace (see an earlier run's report).
                "detector_fingerprint": detector_fingerprint,
                "propose_key": key,
                "verifier": identity.model_id if identity else "none",
                "verifier_endpoint": identity.endpoint if identity else None,
                "verify_mode": config.verify_mode,
                "template_id": identity.template_id if identity else None,
                "template_hash": identity.template_hash if identity else None,
                "thresholds": asdict(config.thresholds),
            },
        }
        (config.out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        (config.out_dir / "review.json").write_text(json.dumps(routed.review, indent=2) + "\n")
        # Each line names its image in the dataset too (null for an image left out of it).
        (config.out_dir / LABELS_FILENAME).write_text(
            "".join(
                json.dumps({**record, "dataset_image": summary.files.get(record["image_sha256"])})
                + "\n"
                for record in routed.images
            )
        )
        workspace.finish_run(run_id, report)
    return report
