"""The Label Studio round trip: our proposals out as Label Studio tasks, its annotations back in as
reviewers' decisions.

Out: ``label_studio_tasks`` turns a run's ``labels.jsonl`` into one task per image, with the
image's boxes as a prediction (``rectanglelabels`` results in percent of the image), and
``label_studio_config`` writes the matching labeling config. A label with a ``mask`` (COCO RLE)
also gets one ``polygonlabels`` result per piece of the mask (``points`` in percent, id
``pl-<proposal_id>-mask-<k>``, control ``MASK_FROM_NAME``): Label Studio imports and exports
polygons as plain points, where its brush masks use its own RLE, which only its converter writes.
Polygons are shown for review; the import reads boxes only, so an edited polygon is not taken
back. Each box result's ``id`` is ``pl-<proposal_id>``, and the task's ``data.promptlabel`` lists
the boxes as they were shown (``proposal_id``, decision ``version``, class and pixel box), because
Label Studio's JSON export gives predictions back as ids only.

Back: ``import_label_studio`` reads a Label Studio JSON export (``exportType=JSON``) and turns the
latest non-cancelled annotation of each task into decisions in the workspace, by diffing it
against the boxes the task showed:

- a result matching a shown box (by its ``pl-`` id, else by class-agnostic IoU) accepts it; a
  changed class is a relabel, a box moved by more than ``MOVE_TOLERANCE_PX`` an edit;
- a shown box no result matches is rejected (the annotator deleted it);
- a result matching no shown box is added (``Workspace.add_box``).

Each decision is made on the version the box had when the task was written, so a decision taken
in promptlabel's own review after the export is never overwritten: it is reported as stale. A box
already in the state the annotation asks for is left alone (``unchanged``), so importing the same
export twice changes nothing. The whole export is checked before the first decision is made: a
malformed one raises InputError naming the task and the field, and changes nothing.
"""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from labeler.core.detections import box_iou
from labeler.core.exceptions import InputError, StaleDecision
from labeler.store.decisions import HUMAN_KEY, Action, HumanState
from labeler.store.workspace import Workspace

__all__ = [
    "DEFAULT_STATUSES",
    "FROM_NAME",
    "MASK_FROM_NAME",
    "MOVE_TOLERANCE_PX",
    "RESULT_ID_PREFIX",
    "TO_NAME",
    "LabelStudioImport",
    "dataset_class_names",
    "import_label_studio",
    "label_studio_config",
    "label_studio_tasks",
    "local_files_url",
    "local_files_url_for",
    "percent_to_xyxy",
    "xyxy_to_percent",
]

FROM_NAME = "label"  # the RectangleLabels control of the config
MASK_FROM_NAME = "mask"  # the PolygonLabels control of the config, when masks are shown
TO_NAME = "image"  # the Image object of the config, and the task's data key holding its URL
RESULT_ID_PREFIX = "pl-"  # result ids are "pl-<proposal_id>"
DEFAULT_STATUSES = ("accepted", "needs_review")
MOVE_TOLERANCE_PX = 1.0  # a box whose corners all moved at most this much is not an edit
LABELS_FILENAME = "labels.jsonl"

_RESULT_ID = re.compile(rf"^{re.escape(RESULT_ID_PREFIX)}(\d+)$")
# Characters XML 1.0 cannot hold at all, even escaped.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")

Box = tuple[float, float, float, float]


# -- coordinates -----------------------------------------------------------------------------------


def xyxy_to_percent(xyxy: Sequence[float], image_wh: Sequence[float]) -> dict[str, float]:
    """A pixel box as Label Studio's rectangle value: ``x``, ``y`` (top-left), ``width`` and
    ``height``, each in percent of the image's width or height."""
    width, height = float(image_wh[0]), float(image_wh[1])
    x1, y1, x2, y2 = (float(v) for v in xyxy)
    return {
        "x": x1 / width * 100.0,
        "y": y1 / height * 100.0,
        "width": (x2 - x1) / width * 100.0,
        "height": (y2 - y1) / height * 100.0,
    }


def percent_to_xyxy(
    value: Mapping[str, float], image_wh: Sequence[float], *, rotation: float = 0.0
) -> Box:
    """Label Studio's rectangle value (percent) as a pixel box. A rotated rectangle (Label Studio
    turns it clockwise about its top-left corner, by ``rotation`` degrees) becomes the
    axis-aligned box around it."""
    width, height = float(image_wh[0]), float(image_wh[1])
    x, y = value["x"] / 100.0 * width, value["y"] / 100.0 * height
    w, h = value["width"] / 100.0 * width, value["height"] / 100.0 * height
    if not rotation % 360.0:
        return x, y, x + w, y + h
    theta = math.radians(rotation)
    cos, sin = math.cos(theta), math.sin(theta)
    xs = [x + dx * cos - dy * sin for dx, dy in ((0, 0), (w, 0), (w, h), (0, h))]
    ys = [y + dx * sin + dy * cos for dx, dy in ((0, 0), (w, 0), (w, h), (0, h))]
    return min(xs), min(ys), max(xs), max(ys)


def _moved(a: Sequence[float], b: Sequence[float]) -> bool:
    return max(abs(p - q) for p, q in zip(a, b, strict=True)) > MOVE_TOLERANCE_PX


def _clip(xyxy: Sequence[float], image_wh: Sequence[float]) -> Box:
    width, height = float(image_wh[0]), float(image_wh[1])
    x1, y1, x2, y2 = xyxy
    return (
        min(max(x1, 0.0), width),
        min(max(y1, 0.0), height),
        min(max(x2, 0.0), width),
        min(max(y2, 0.0), height),
    )


# -- out: config and tasks -------------------------------------------------------------------------


def label_studio_config(class_names: Sequence[str], *, masks: bool = False) -> str:
    """The labeling config for ``label_studio_tasks``' tasks: an ``Image`` named ``image`` and a
    ``RectangleLabels`` named ``label`` with one ``Label`` per class, in class-id order (with
    ``masks``, also a ``PolygonLabels`` named ``mask`` with the same labels). Class names are
    escaped by the XML writer, so any name XML can hold is safe."""
    names = list(class_names)
    if not names:
        raise InputError("the labeling config needs at least one class name")
    for name in names:
        if not name or _NOT_XML.search(name):
            raise InputError(f"class name {name!r} cannot be written in a labeling config")
    if len(set(names)) != len(names):
        raise InputError(f"class names must be distinct for Label Studio, got {names}")
    view = ElementTree.Element("View")
    ElementTree.SubElement(view, "Image", {"name": TO_NAME, "value": f"${TO_NAME}"})
    controls = [("RectangleLabels", FROM_NAME)] + ([("PolygonLabels", MASK_FROM_NAME)] * masks)
    for tag, control_name in controls:
        labels = ElementTree.SubElement(view, tag, {"name": control_name, "toName": TO_NAME})
        for name in names:
            ElementTree.SubElement(labels, "Label", {"value": name})
    return ElementTree.tostring(view, encoding="unicode")


def local_files_url(path: str | Path, *, document_root: str | Path) -> str:
    """The URL Label Studio serves a local file under: ``/data/local-files/?d=<path relative to
    its document root>``. Label Studio needs ``LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true``,
    ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=document_root`` and, in the project, a Local Files
    storage whose path holds the file's folder (it need not be synced)."""
    root = Path(document_root).resolve()
    resolved = Path(path).resolve()
    if not resolved.is_relative_to(root):
        raise InputError(f"{path} is not inside Label Studio's document root {document_root}")
    return "/data/local-files/?d=" + quote(resolved.relative_to(root).as_posix(), safe="/")


def local_files_url_for(
    document_root: str | Path, dataset_dir: str | Path | None = None
) -> Callable[[Mapping[str, Any]], str]:
    """An ``image_url_for`` serving each image through Label Studio's local files: the dataset's
    copy when ``dataset_dir`` is given and the image is in the dataset (it is in the frame the
    boxes are in, EXIF orientation applied), else the source file."""

    def url_for(record: Mapping[str, Any]) -> str:
        image = record.get("dataset_image")
        path = Path(dataset_dir) / image if dataset_dir is not None and image else record["path"]
        return local_files_url(path, document_root=document_root)

    return url_for


def _load_labels(dataset_dir: Path) -> list[dict[str, Any]]:
    path = dataset_dir / LABELS_FILENAME
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise InputError(
            f"{path}: cannot read ({error.strerror or error}); run the label step first"
        ) from None
    records = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise InputError(f"{path}:{number}: not JSON ({error.msg})") from None
    return records


def dataset_class_names(dataset_dir: str | Path) -> list[str]:
    """The class names of a dataset the label step wrote, in class-id order (its ``data.yaml``)."""
    path = Path(dataset_dir) / "data.yaml"
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise InputError(f"{path}: cannot read ({error.strerror or error})") from None
    except yaml.YAMLError as error:
        raise InputError(f"{path}: not YAML ({error})") from None
    names = document.get("names") if isinstance(document, dict) else None
    if isinstance(names, dict) and sorted(names) == list(range(len(names))):
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise InputError(f"{path}: 'names' must list the class names")
    return names


def _report_propose_key(dataset_dir: Path) -> str | None:
    try:
        report = json.loads((dataset_dir / "report.json").read_text(encoding="utf-8"))
        key = report["provenance"]["propose_key"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return key if isinstance(key, str) else None


def label_studio_tasks(
    source: str | Path | Iterable[Mapping[str, Any]],
    *,
    image_url_for: Callable[[Mapping[str, Any]], str],
    model_version: str,
    statuses: Sequence[str] = DEFAULT_STATUSES,
    propose_key: str | None = None,
) -> list[dict[str, Any]]:
    """Label Studio tasks, one per image of a labeled dataset (``source``: its folder, holding
    ``labels.jsonl``, or the ``labels.jsonl`` records themselves); images that could not be
    decoded are left out.

    ``data.image`` is ``image_url_for(record)``, the URL Label Studio's page loads the image from
    (``local_files_url_for`` for Label Studio's local files serving, or any URL the browser can
    fetch). ``data.image_sha256`` and ``meta.image_sha256`` name the image; ``data.promptlabel``
    lists the boxes shown, for ``import_label_studio``. The boxes whose effective status is in
    ``statuses`` (accepted and needs_review by default; add ``"rejected"`` to have annotators
    look at rejected boxes too) form one prediction, of ``model_version``, scored by its least
    confident box (P(yes) where the verifier gave one, else the detector score), so Label
    Studio's "prediction score" ordering shows the most doubtful images first.

    ``propose_key`` (read from the folder's ``report.json`` when not given) names the run's
    proposal set; the import then checks that each box is one of the image's in the workspace.
    """
    if isinstance(source, str | Path):
        records = _load_labels(Path(source))
        propose_key = propose_key or _report_propose_key(Path(source))
    else:
        records = [dict(r) for r in source]
    wanted = set(statuses)
    tasks = []
    for record in records:
        image_wh = record.get("image_wh")
        if not image_wh:
            continue
        shown: list[dict[str, Any]] = []
        results: list[dict[str, Any]] = []
        confidences: list[float] = []
        for label in record.get("labels", []):
            if label.get("status") not in wanted:
                continue
            xyxy = _clip(label["xyxy"], image_wh)
            if xyxy[2] <= xyxy[0] or xyxy[3] <= xyxy[1]:
                continue  # wholly outside the image: nothing to show
            proposal_id = int(label["proposal_id"])
            shown.append(
                {
                    "proposal_id": proposal_id,
                    "version": int(label.get("version", 0)),
                    "class_id": int(label["class_id"]),
                    "class": label["class"],
                    "status": label["status"],
                    "xyxy": list(xyxy),
                }
            )
            confidence = label.get("yes_prob")
            confidence = float(label["score"] if confidence is None else confidence)
            confidences.append(confidence)
            results.append(
                {
                    "id": f"{RESULT_ID_PREFIX}{proposal_id}",
                    "type": "rectanglelabels",
                    "from_name": FROM_NAME,
                    "to_name": TO_NAME,
                    "original_width": int(image_wh[0]),
                    "original_height": int(image_wh[1]),
                    "image_rotation": 0,
                    "value": {
                        **xyxy_to_percent(xyxy, image_wh),
                        "rotation": 0,
                        "rectanglelabels": [label["class"]],
                    },
                    "score": confidence,
                }
            )
            if label.get("mask") is not None:
                results.extend(_mask_results(label, proposal_id, image_wh, confidence))
        sha = record["image_sha256"]
        tasks.append(
            {
                "data": {
                    TO_NAME: image_url_for(record),
                    "image_sha256": sha,
                    "promptlabel": {
                        "propose_key": propose_key,
                        "image_wh": list(image_wh),
                        "proposals": shown,
                    },
                },
                "meta": {"image_sha256": sha},
                "predictions": [
                    {"model_version": model_version, "score": min(confidences), "result": results}
                ]
                if results
                else [],
            }
        )
    return tasks


def _mask_results(
    label: Mapping[str, Any], proposal_id: int, image_wh: Sequence[int], confidence: float
) -> list[dict[str, Any]]:
    """One ``polygonlabels`` result per piece of the label's mask, points in percent."""
    from labeler.export import masks as mask_ops

    try:
        pieces = mask_ops.rle_to_polygons(
            mask_ops.check_rle(label["mask"], (int(image_wh[0]), int(image_wh[1])))
        )
    except mask_ops.MaskError as error:
        raise InputError(f"labels.jsonl: proposal {proposal_id}: mask: {error}") from None
    width, height = image_wh
    return [
        {
            "id": f"{RESULT_ID_PREFIX}{proposal_id}-mask-{k}",
            "type": "polygonlabels",
            "from_name": MASK_FROM_NAME,
            "to_name": TO_NAME,
            "original_width": int(width),
            "original_height": int(height),
            "image_rotation": 0,
            "value": {
                "points": [
                    [round(100.0 * x / width, 4), round(100.0 * y / height, 4)] for x, y in piece
                ],
                "polygonlabels": [label["class"]],
            },
            "score": confidence,
        }
        for k, piece in enumerate(pieces)
    ]


# -- back: an export as decisions ------------------------------------------------------------------


@dataclass
class LabelStudioImport:
    """What ``import_label_studio`` did. ``stale`` lists the proposal ids another decision
    changed after the export (left as they are); ``unmatched_tasks`` the tasks whose image is not
    in this workspace, ``unannotated_tasks`` those without a usable annotation."""

    accepted: int = 0
    relabeled: int = 0
    edited: int = 0
    rejected: int = 0
    added: int = 0
    unchanged: int = 0
    stale: list[int] = field(default_factory=list)
    unmatched_tasks: list[Any] = field(default_factory=list)
    unannotated_tasks: list[Any] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Shown:
    proposal_id: int
    version: int | None  # None: not recorded, decide on the box's current version
    class_id: int
    xyxy: Box


@dataclass(frozen=True)
class _Result:
    result_id: str
    class_id: int
    xyxy: Box


@dataclass(frozen=True)
class _Change:
    """One decision to make: ``action`` on ``proposal_id`` (or an added box when None)."""

    action: Action
    image_sha256: str
    proposal_id: int | None = None
    base_version: int | None = None
    class_id: int | None = None
    xyxy: Box | None = None
    shown: _Shown | None = None


def _fail(task_id: Any, message: str) -> InputError:
    return InputError(f"Label Studio task {task_id}: {message}")


def _number(task_id: Any, where: str, value: Any, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _fail(task_id, f"{where} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise _fail(task_id, f"{where} must be positive, got {value!r}")
    return float(value)


def _read_export(export_json: str | Path | Sequence[Any]) -> list[Any]:
    if isinstance(export_json, str | Path):
        path = Path(export_json)
        try:
            parsed = json.loads(path.read_text(encoding="utf-8"))
        except OSError as error:
            raise InputError(f"{path}: cannot read ({error.strerror or error})") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise InputError(f"{path}: not a JSON file ({error})") from None
        where = str(path)
    else:
        parsed, where = export_json, "the export"
    if not isinstance(parsed, list):
        raise InputError(
            f"{where}: a Label Studio JSON export is a list of tasks, got {type(parsed).__name__}"
            " (export with format JSON, not JSON_MIN or CSV)"
        )
    return parsed


def _latest_annotation(task_id: Any, task: Mapping[str, Any]) -> Mapping[str, Any] | None:
    annotations = task.get("annotations", [])
    if not isinstance(annotations, list):
        raise _fail(task_id, "'annotations' must be a list")
    usable = []
    for index, annotation in enumerate(annotations):
        if not isinstance(annotation, dict):
            raise _fail(task_id, f"annotations[{index}] must be an object")
        if not annotation.get("was_cancelled"):
            stamp = annotation.get("updated_at") or annotation.get("created_at") or ""
            usable.append((str(stamp), index, annotation))
    # The newest by time; ties (or no times) go to the later one in the list.
    return max(usable, key=lambda item: item[:2])[2] if usable else None


def _shown_boxes(task_id: Any, data: Mapping[str, Any]) -> list[_Shown]:
    ours = data.get("promptlabel", {})
    proposals = ours.get("proposals", []) if isinstance(ours, dict) else None
    if not isinstance(proposals, list):
        raise _fail(task_id, "'data.promptlabel.proposals' must be a list")
    shown = []
    for index, item in enumerate(proposals):
        where = f"data.promptlabel.proposals[{index}]"
        if not isinstance(item, dict):
            raise _fail(task_id, f"{where} must be an object")
        pid, version, class_id = (item.get(k) for k in ("proposal_id", "version", "class_id"))
        if not isinstance(pid, int) or not isinstance(class_id, int):
            raise _fail(task_id, f"{where}: proposal_id and class_id must be integers")
        if version is not None and not isinstance(version, int):
            raise _fail(task_id, f"{where}.version must be an integer")
        xyxy = item.get("xyxy")
        if not isinstance(xyxy, list) or len(xyxy) != 4:
            raise _fail(task_id, f"{where}.xyxy must be 4 numbers")
        x1, y1, x2, y2 = (_number(task_id, f"{where}.xyxy", v) for v in xyxy)
        shown.append(_Shown(pid, version, class_id, (x1, y1, x2, y2)))
    return shown


def _check_owned(
    workspace: Workspace,
    task_id: Any,
    sha: str,
    data: Mapping[str, Any],
    shown: Sequence[_Shown],
) -> None:
    """Every shown box must be one of the image's in this workspace (a task exported from
    another workspace would otherwise name other boxes by the same ids)."""
    key = data.get("promptlabel", {}).get("propose_key")
    if not isinstance(key, str) or not shown:
        return
    owned = {
        int(pid)
        for propose_key in (key, HUMAN_KEY)
        for pid in workspace.load_proposals(sha, propose_key).data["proposal_id"]
    }
    for box in shown:
        if box.proposal_id not in owned:
            raise _fail(
                task_id,
                f"proposal {box.proposal_id} is not a box of image {sha[:12]} in this "
                "workspace: import the export into the workspace its tasks came from",
            )


def _results(
    task_id: Any,
    annotation: Mapping[str, Any],
    stored_wh: tuple[int, int],
    class_ids: Mapping[str, int],
) -> list[_Result]:
    items = annotation.get("result", [])
    if not isinstance(items, list):
        raise _fail(task_id, "annotation 'result' must be a list")
    results = []
    for index, item in enumerate(items):
        where = f"result[{index}]"
        if not isinstance(item, dict):
            raise _fail(task_id, f"{where} must be an object")
        if item.get("type") != "rectanglelabels":
            continue  # other controls (choices, text, relations) say nothing about boxes
        value = item.get("value")
        if not isinstance(value, dict):
            raise _fail(task_id, f"{where}.value must be an object")
        percent = {k: _number(task_id, f"{where}.value.{k}", value.get(k)) for k in "xy"}
        for key in ("width", "height"):
            percent[key] = _number(task_id, f"{where}.value.{key}", value.get(key), positive=True)
        rotation = _number(task_id, f"{where}.value.rotation", value.get("rotation", 0))
        labels = value.get("rectanglelabels")
        if not isinstance(labels, list) or len(labels) != 1 or not isinstance(labels[0], str):
            raise _fail(task_id, f"{where}.value.rectanglelabels must be one class name")
        if labels[0] not in class_ids:
            raise _fail(
                task_id,
                f"{where}: unknown class {labels[0]!r}; known: {', '.join(class_ids)}",
            )
        image_wh: tuple[float, float] = stored_wh
        if item.get("original_width") is not None or item.get("original_height") is not None:
            image_wh = (
                _number(
                    task_id, f"{where}.original_width", item.get("original_width"), positive=True
                ),
                _number(
                    task_id, f"{where}.original_height", item.get("original_height"), positive=True
                ),
            )
        xyxy = _clip(percent_to_xyxy(percent, image_wh, rotation=rotation), stored_wh)
        if xyxy[2] <= xyxy[0] or xyxy[3] <= xyxy[1]:
            raise _fail(task_id, f"{where}: the box lies outside the image")
        result_id = item.get("id")
        results.append(
            _Result("" if result_id is None else str(result_id), class_ids[labels[0]], xyxy)
        )
    return results


def _match(
    shown: Sequence[_Shown], results: Sequence[_Result], iou_threshold: float
) -> tuple[list[tuple[_Shown, _Result]], list[_Shown], list[_Result]]:
    """Pairs by our result id first, then by IoU (class-agnostic, highest first)."""
    by_id = {s.proposal_id: s for s in shown}
    pairs: list[tuple[_Shown, _Result]] = []
    left_results: list[_Result] = []
    for result in results:
        found = _RESULT_ID.match(result.result_id)
        box = by_id.pop(int(found.group(1)), None) if found else None
        if box is not None:
            pairs.append((box, result))
        else:
            left_results.append(result)
    candidates = sorted(
        (
            (box_iou(box.xyxy, result.xyxy), i, j)
            for i, box in enumerate(by_id.values())
            for j, result in enumerate(left_results)
        ),
        key=lambda item: -item[0],
    )
    left_shown = list(by_id.values())
    used_shown: set[int] = set()
    used_results: set[int] = set()
    for iou, i, j in candidates:
        if iou < iou_threshold:
            break
        if i not in used_shown and j not in used_results:
            used_shown.add(i)
            used_results.add(j)
            pairs.append((left_shown[i], left_results[j]))
    return (
        pairs,
        [box for i, box in enumerate(left_shown) if i not in used_shown],
        [result for j, result in enumerate(left_results) if j not in used_results],
    )


def _plan_task(
    sha: str,
    shown: Sequence[_Shown],
    results: Sequence[_Result],
    iou_threshold: float,
) -> list[_Change]:
    pairs, deleted, drawn = _match(shown, results, iou_threshold)
    changes = []
    for box, result in pairs:
        moved = _moved(box.xyxy, result.xyxy)
        if result.class_id != box.class_id:
            action = Action.RELABEL
        elif moved:
            action = Action.EDIT
        else:
            action = Action.ACCEPT
        changes.append(
            _Change(
                action,
                sha,
                box.proposal_id,
                box.version,
                class_id=result.class_id if action is Action.RELABEL else None,
                xyxy=result.xyxy if moved else None,
                shown=box,
            )
        )
    changes.extend(
        _Change(Action.REJECT, sha, box.proposal_id, box.version, shown=box) for box in deleted
    )
    changes.extend(
        _Change(Action.ADD, sha, class_id=result.class_id, xyxy=result.xyxy) for result in drawn
    )
    return changes


def _already(state: HumanState | None, change: _Change) -> bool:
    """Whether the box is already in the state ``change`` asks for (an earlier import of the same
    annotation, or a colleague who decided the same)."""
    if state is None or state.status is None or change.shown is None:
        return False
    if change.action is Action.REJECT:
        return state.status == "rejected"
    if state.status != "accepted":
        return False
    want_class = change.class_id if change.class_id is not None else change.shown.class_id
    want_box = change.xyxy if change.xyxy is not None else change.shown.xyxy
    have_class = state.class_id if state.class_id is not None else change.shown.class_id
    have_box = state.xyxy if state.xyxy is not None else change.shown.xyxy
    return have_class == want_class and not _moved(have_box, want_box)


_COUNTERS = {
    Action.ACCEPT: "accepted",
    Action.RELABEL: "relabeled",
    Action.EDIT: "edited",
    Action.REJECT: "rejected",
    Action.ADD: "added",
}


def _added_boxes(
    workspace: Workspace, sha: str, class_names: Sequence[str]
) -> list[tuple[int, Box]]:
    """The accepted boxes reviewers added to an image, as (class_id, xyxy)."""
    added = workspace.load_proposals(sha, HUMAN_KEY)
    states = workspace.human_states(int(pid) for pid in added.data["proposal_id"])
    boxes = []
    for i, pid in enumerate(added.data["proposal_id"]):
        state = states.get(int(pid))
        if state is not None and state.status == "accepted":
            class_id = state.class_id if state.class_id is not None else int(added.class_id[i])
            xyxy = state.xyxy or tuple(float(v) for v in added.xyxy[i])
            boxes.append((class_id, (xyxy[0], xyxy[1], xyxy[2], xyxy[3])))
    return boxes


def import_label_studio(
    workspace: Workspace,
    export_json: str | Path | Sequence[Any],
    *,
    reviewer: str,
    class_names: Sequence[str],
    iou_threshold: float = 0.5,
) -> LabelStudioImport:
    """Turn a Label Studio JSON export (a file, or the parsed list of tasks) of
    ``label_studio_tasks``' tasks into ``reviewer``'s decisions in ``workspace`` (see the module's
    docstring for the rules). ``class_names`` are the dataset's, in class-id order (the labels
    the annotators chose are looked up in it). Percent boxes are converted with each result's
    ``original_width``/``original_height``, else the image size the workspace stored.

    Raises InputError, before any decision is made, for an export that is not a list of tasks
    or a task with a malformed field (the message names the task id and the field)."""
    if not reviewer:
        raise InputError("reviewer must be named")
    if not 0.0 < iou_threshold <= 1.0:
        raise InputError(f"iou_threshold must be within (0, 1], got {iou_threshold}")
    class_ids = {name: index for index, name in enumerate(class_names)}
    tasks = _read_export(export_json)
    summary = LabelStudioImport()

    # Everything is read and checked first, so a malformed export changes nothing.
    planned: list[_Change] = []
    for index, task in enumerate(tasks):
        if not isinstance(task, dict):
            raise InputError(f"Label Studio task #{index} must be an object")
        task_id = task.get("id", f"#{index}")
        data, meta = task.get("data"), task.get("meta") or {}
        if not isinstance(data, dict):
            raise _fail(task_id, "'data' must be an object")
        if not isinstance(meta, dict):
            raise _fail(task_id, "'meta' must be an object")
        sha = data.get("image_sha256") or meta.get("image_sha256")
        stored = workspace.image_sizes([sha]) if isinstance(sha, str) else {}
        if not isinstance(sha, str) or sha not in stored:
            summary.unmatched_tasks.append(task_id)
            continue
        annotation = _latest_annotation(task_id, task)
        if annotation is None:
            summary.unannotated_tasks.append(task_id)
            continue
        shown = _shown_boxes(task_id, data)
        _check_owned(workspace, task_id, sha, data, shown)
        results = _results(task_id, annotation, stored[sha], class_ids)
        planned.extend(_plan_task(sha, shown, results, iou_threshold))

    states = workspace.human_states(c.proposal_id for c in planned if c.proposal_id is not None)
    added_by_image: dict[str, list[tuple[int, Box]]] = {}
    for change in planned:
        if change.action is Action.ADD:
            assert change.class_id is not None and change.xyxy is not None
            added = added_by_image.setdefault(
                change.image_sha256, _added_boxes(workspace, change.image_sha256, class_names)
            )
            if any(c == change.class_id and not _moved(b, change.xyxy) for c, b in added):
                summary.unchanged += 1
                continue
            workspace.add_box(
                change.image_sha256,
                class_id=change.class_id,
                class_name=class_names[change.class_id],
                xyxy=change.xyxy,
                reviewer=reviewer,
            )
            added.append((change.class_id, change.xyxy))
            summary.added += 1
            continue
        assert change.proposal_id is not None
        state = states.get(change.proposal_id)
        if _already(state, change):
            summary.unchanged += 1
            continue
        current = state.version if state is not None else 0
        try:
            workspace.decide(
                change.proposal_id,
                action=change.action,
                base_version=current if change.base_version is None else change.base_version,
                reviewer=reviewer,
                class_id=change.class_id,
                xyxy=change.xyxy,
            )
        except StaleDecision:
            summary.stale.append(change.proposal_id)
            continue
        counter = _COUNTERS[change.action]
        setattr(summary, counter, getattr(summary, counter) + 1)
    return summary
