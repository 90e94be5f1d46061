"""Score a student on a dataset split with the COCO reference implementation (pycocotools).

Predictions come from Ultralytics (``YOLO(model).predict``, so a ``.pt`` and an exported ``.onnx``
go through the same code) and enter promptlabel through one adapter,
``labeler.core.detections.from_ultralytics``.

Ground truth is built from the split's YOLO label files (a polygon counts as its extent; COCO
``category_id = class_id + 1``): they are what training reads and what the dataset's label hash
covers, so an edited label is scored as edited. A COCO JSON beside them (``annotations/``) is not
read: after such an edit it would be stale. Boxes are scored with ``COCOeval`` ("bbox"),
``maxDets`` raised to ``max_det`` so no prediction is cut.

Segmentation students on a split with polygon labels are also scored on their masks
(``COCOeval`` "segm", the ``mask_*`` fields): each ground-truth polygon is rasterised at the
image's size (``pycocotools.mask.frPyObjects``, then ``merge``; a plain box row in such a split
counts as its rectangle), and predicted masks come at the original image's resolution
(Ultralytics' ``retina_masks=True``) as RLE (``pycocotools.mask.encode``). Mask AP compares
pixels, not extents, so a mask in the right box but the wrong shape scores low there while its
box still scores high.

How this differs from Ultralytics' own validator (``model.val``):

- AP: COCO averages the interpolated precision at 101 recall points (a step function), Ultralytics
  integrates the interpolated curve with the trapezoid rule; on identical predictions the two
  differ by a few thousandths (tests/distill/test_evaluate.py measures it);
- ``model.val`` letterboxes every image onto a canvas padded by half a stride each side (a 64 px
  image is seen at 96 px); ``predict`` pads only up to a multiple of the stride, so the two see
  slightly different pixels.

Area ranges do not matter: only COCO's "all" range is reported.

Per-class ``precision`` and ``recall`` are read at one confidence threshold for all classes: the
one that maximises the mean F1 over classes at IoU 0.5 (Ultralytics reports P and R the same way,
after smoothing the F1 curve; we do not smooth). ``EvalResult.conf_threshold`` says which.
``ms_per_image`` is wall time over the split for decode, preprocess, inference, NMS and conversion,
after one warm-up image, at the given ``batch`` (1: per-image latency).
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from PIL import Image

from distill.dataset import DatasetInfo, check_dataset, label_path_for, read_label_file
from distill.ultralytics_env import load_yolo, quiet_ultralytics, ultralytics_device
from labeler.core.detections import Detections, from_ultralytics
from labeler.core.exceptions import InputError

__all__ = ["EvalResult", "evaluate", "mask_rles", "score_detections"]

IouType = Literal["bbox", "segm"]


_EXIF_ORIENTATION_TAG = 0x0112
_F1_GRID = np.linspace(0.0, 1.0, 1001)


@dataclass(frozen=True)
class EvalResult:
    """mAP over classes with ground truth, per-class metrics, and measured speed.

    ``per_class`` maps each class that has ground truth in the split to ``precision``, ``recall``
    (at ``conf_threshold``), ``map50``, ``map50_95`` and ``instances``. The ``mask_*`` fields are
    the same numbers for masks (``mask_per_class`` has the same keys, its precision and recall at
    ``mask_conf_threshold``); they are None for detection models and for splits without polygon
    labels.
    """

    map50: float
    map50_95: float
    per_class: dict[str, dict[str, float]]
    ms_per_image: float
    n_images: int
    split: str
    precision: float = 0.0
    recall: float = 0.0
    conf_threshold: float = 0.0
    model: str = ""
    imgsz: int | None = None
    n_predictions: int = field(default=0)
    data_yaml: str = ""
    label_hash: str = ""  # of the dataset's labels as scored (distill.dataset's label_hash)
    mask_map50: float | None = None
    mask_map50_95: float | None = None
    mask_precision: float | None = None
    mask_recall: float | None = None
    mask_conf_threshold: float | None = None
    mask_per_class: dict[str, dict[str, float]] | None = None


# --------------------------------------------------------------------------- ground truth


def _oriented_size(path: Path) -> tuple[int, int]:
    """Width and height after EXIF orientation, the frame Ultralytics reads labels in."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = int(image.getexif().get(_EXIF_ORIENTATION_TAG, 1) or 1)
    except Exception as exc:  # any decoder failure: check_dataset should have caught it
        raise InputError(f"{path}: cannot be read as an image ({exc})") from None
    return (height, width) if orientation in {5, 6, 7, 8} else (width, height)


def _silently(function: Any, *args: Any) -> Any:
    # pycocotools prints progress to stdout; the CLI owns stdout.
    with contextlib.redirect_stdout(io.StringIO()):
        return function(*args)


def _coco_from_document(document: dict[str, Any]) -> Any:
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = document
    _silently(coco.createIndex)
    return coco


def _label_polygons(label_path: Path) -> list[list[float] | None]:
    """Per row of a YOLO label file (already checked by ``read_label_file``), its normalized
    ``x1 y1 x2 y2 ...`` polygon, or None for a box row."""
    if not label_path.exists():
        return []
    rows: list[list[float] | None] = []
    for line in label_path.read_text(encoding="utf-8").splitlines():
        values = [float(v) for v in line.split()]
        if values:
            rows.append(values[1:] if len(values) > 5 else None)
    return rows


def _segmentation_rle(
    polygon_norm: list[float] | None, xyxy: Sequence[float], width: int, height: int
) -> dict[str, Any]:
    """One ground-truth row as a compressed COCO RLE at ``width`` x ``height`` pixels."""
    from pycocotools import mask as coco_mask

    if polygon_norm is None:  # a box row in a polygon split: its rectangle
        x1, y1, x2, y2 = (float(v) for v in xyxy)
        polygon = [x1, y1, x2, y1, x2, y2, x1, y2]
    else:
        scale = np.tile(np.array([width, height], np.float64), len(polygon_norm) // 2)
        polygon = (np.asarray(polygon_norm, np.float64) * scale).tolist()
    rle: dict[str, Any] = coco_mask.merge(coco_mask.frPyObjects([polygon], height, width))
    return rle


def _yolo_ground_truth(
    info: DatasetInfo, images: Sequence[Path], *, with_masks: bool = False
) -> tuple[Any, dict[Path, int]]:
    """A COCO ground truth built from the YOLO label files of ``images``.

    ``with_masks`` adds each row's ``segmentation`` (an RLE of its polygon) for "segm" scoring.
    """
    coco_images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    image_ids: dict[Path, int] = {}
    for image_id, image_path in enumerate(images, start=1):
        width, height = _oriented_size(image_path)
        image_ids[image_path] = image_id
        coco_images.append(
            {"id": image_id, "file_name": str(image_path), "width": width, "height": height}
        )
        label_path = label_path_for(image_path)
        rows = read_label_file(label_path, len(info.names))
        polygons = _label_polygons(label_path) if with_masks else [None] * len(rows.class_id)
        scale = np.array([width, height, width, height], np.float64)
        for xyxy, class_id, polygon in zip(
            rows.xyxy_norm * scale, rows.class_id, polygons, strict=True
        ):
            x1, y1, x2, y2 = (float(v) for v in xyxy)
            annotation: dict[str, Any] = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": int(class_id) + 1,
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": (x2 - x1) * (y2 - y1),
                "iscrowd": 0,
            }
            if with_masks:
                annotation["segmentation"] = _segmentation_rle(polygon, xyxy, width, height)
            annotations.append(annotation)
    document = {
        "info": {"description": "built from YOLO labels"},
        "images": coco_images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name} for i, name in enumerate(info.names)],
    }
    return _coco_from_document(document), image_ids


# --------------------------------------------------------------------------- scoring


def _per_class_curves(
    coco_eval: Any, n_classes: int
) -> list[tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_], int]]:
    """Per class: scores and TP flags at IoU 0.5 of every scored prediction, and the GT count."""
    params = coco_eval.params
    n_images = len(params.imgIds)
    n_areas = len(params.areaRng)
    curves = []
    for k in range(n_classes):
        scores: list[float] = []
        true_positive: list[bool] = []
        n_ground_truth = 0
        for i in range(n_images):
            entry = coco_eval.evalImgs[k * n_areas * n_images + i]  # area range 0 is "all"
            if entry is None:
                continue
            keep = ~np.asarray(entry["dtIgnore"][0], bool)
            scores.extend(np.asarray(entry["dtScores"], np.float64)[keep].tolist())
            true_positive.extend((np.asarray(entry["dtMatches"][0])[keep] > 0).tolist())
            n_ground_truth += int((~np.asarray(entry["gtIgnore"], bool)).sum())
        curves.append((np.asarray(scores), np.asarray(true_positive, bool), n_ground_truth))
    return curves


def _precision_recall_at(
    scores: npt.NDArray[np.float64], true_positive: npt.NDArray[np.bool_], n_ground_truth: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Precision and recall of the predictions scoring at least each threshold of ``_F1_GRID``.

    Above the top score nothing passes: precision is 1 there (as in Ultralytics), recall 0.
    """
    order = np.argsort(-scores, kind="stable")
    tp_cumulative = np.concatenate([[0], np.cumsum(true_positive[order])])
    # Scores sorted high to low, negated low to high: the count of scores >= each threshold.
    passing = np.searchsorted(-scores[order], -_F1_GRID, side="right")
    tp = tp_cumulative[passing].astype(np.float64)
    precision = np.where(passing > 0, tp / np.maximum(passing, 1), 1.0)
    recall = tp / max(n_ground_truth, 1)
    return precision, recall


def mask_rles(detections: Detections) -> list[dict[str, Any]]:
    """Each detection's mask as a compressed COCO RLE.

    Reads ``data["mask_rle"]`` (RLEs already) or ``data["mask"]`` (boolean ``(n, h, w)``);
    InputError when the detections carry neither.
    """
    if "mask_rle" in detections.data:
        return list(detections.data["mask_rle"])
    masks = detections.data.get("mask")
    if masks is None:
        raise InputError(
            "mask scoring needs predicted masks: detections carry no data['mask'] or "
            "data['mask_rle'] (is the model a segmentation model?)"
        )
    return _encode_masks(np.asarray(masks, np.bool_))


def _encode_masks(masks: npt.NDArray[np.bool_]) -> list[dict[str, Any]]:
    """``(n, h, w)`` boolean masks as compressed COCO RLEs."""
    from pycocotools import mask as coco_mask

    if len(masks) == 0:
        return []
    # encode wants (h, w, n) uint8 in Fortran order.
    stacked = np.asfortranarray(masks.astype(np.uint8).transpose(1, 2, 0))
    return list(coco_mask.encode(stacked))


def score_detections(
    coco_gt: Any,
    predictions: dict[int, Detections],
    names: Sequence[str],
    *,
    max_det: int = 300,
    iou_type: IouType = "bbox",
) -> dict[str, Any]:
    """Score predictions (by COCO image id; ``class_id`` indexes ``names``) against ``coco_gt``.

    Returns ``map50``, ``map50_95``, ``precision``, ``recall``, ``conf_threshold`` and
    ``per_class`` as described on ``EvalResult``. The ground truth's category ids must be
    ``class_id + 1``. ``iou_type="segm"`` scores masks instead of boxes: the ground truth needs
    ``segmentation`` and each prediction a mask (see ``mask_rles``).
    """
    from pycocotools.cocoeval import COCOeval

    category_ids = [i + 1 for i in range(len(names))]
    instances = {
        k: len(coco_gt.getAnnIds(catIds=[cat], iscrowd=False)) for k, cat in enumerate(category_ids)
    }
    if not any(instances.values()):
        raise InputError("the split has no labeled boxes; there is nothing to score against")
    results: list[dict[str, Any]] = []
    for image_id, detections in predictions.items():
        masks = mask_rles(detections) if iou_type == "segm" else [None] * len(detections)
        for ((x1, y1, x2, y2), class_id, score), mask in zip(detections, masks, strict=True):
            if not 0 <= class_id < len(names):
                continue  # a class the dataset does not have can only be a false positive
            result: dict[str, Any] = {
                "image_id": int(image_id),
                "category_id": int(class_id) + 1,
                "score": float(score),
            }
            if mask is None:
                result["bbox"] = [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]
            else:
                # loadRes derives the area and extent from the mask.
                result["segmentation"] = mask
            results.append(result)
    labeled = [k for k, n in instances.items() if n]
    per_class = {
        names[k]: {
            "precision": 0.0,
            "recall": 0.0,
            "map50": 0.0,
            "map50_95": 0.0,
            "instances": float(instances[k]),
        }
        for k in labeled
    }
    summary: dict[str, Any] = {
        "map50": 0.0,
        "map50_95": 0.0,
        "precision": 0.0,
        "recall": 0.0,
        "conf_threshold": 0.0,
        "per_class": per_class,
    }
    if not results:
        return summary

    coco_dt = _silently(coco_gt.loadRes, results)
    coco_eval = COCOeval(coco_gt, coco_dt, iou_type)
    coco_eval.params.catIds = category_ids
    coco_eval.params.maxDets = [1, 10, max_det]
    _silently(coco_eval.evaluate)
    _silently(coco_eval.accumulate)
    precision = coco_eval.eval["precision"]  # [IoU threshold, recall point, class, area, maxDets]
    for k in labeled:
        at_all_ious = precision[:, :, k, 0, -1]
        at_50 = precision[0, :, k, 0, -1]
        per_class[names[k]]["map50_95"] = float(at_all_ious[at_all_ious > -1].mean())
        per_class[names[k]]["map50"] = float(at_50[at_50 > -1].mean())
    # COCO's AP is the mean over classes with ground truth, as summarize() computes it.
    summary["map50_95"] = float(np.mean([per_class[names[k]]["map50_95"] for k in labeled]))
    summary["map50"] = float(np.mean([per_class[names[k]]["map50"] for k in labeled]))

    curves = _per_class_curves(coco_eval, len(names))
    pr = {k: _precision_recall_at(*curves[k]) for k in labeled}
    precisions = np.stack([pr[k][0] for k in labeled])
    recalls = np.stack([pr[k][1] for k in labeled])
    f1 = 2 * precisions * recalls / np.maximum(precisions + recalls, 1e-16)
    best = int(np.argmax(f1.mean(axis=0)))
    for row, k in enumerate(labeled):
        per_class[names[k]]["precision"] = float(precisions[row, best])
        per_class[names[k]]["recall"] = float(recalls[row, best])
    summary["precision"] = float(precisions[:, best].mean())
    summary["recall"] = float(recalls[:, best].mean())
    summary["conf_threshold"] = float(_F1_GRID[best])
    return summary


# --------------------------------------------------------------------------- evaluate


def _model_names(model: Any) -> list[str]:
    names = model.names
    if isinstance(names, dict):
        return [str(names[i]) for i in sorted(names)]
    return [str(n) for n in names]


def _result_mask_rles(result: Any, count: int) -> npt.NDArray[np.object_]:
    """One Ultralytics result's ``count`` masks (``retina_masks``: original-image pixels) as
    RLEs, in an object array that fits ``Detections.data``."""
    rles = np.empty(count, dtype=object)
    masks = getattr(result, "masks", None)
    if count == 0:
        return rles
    if masks is None:
        raise RuntimeError(f"Ultralytics returned {count} boxes but no masks for {result.path}")
    for index, rle in enumerate(_encode_masks(masks.data.cpu().numpy() > 0.5)):
        rles[index] = rle
    return rles


def evaluate(
    model: str | Path,
    dataset_dir: str | Path,
    *,
    split: str = "val",
    imgsz: int | None = None,
    conf: float = 0.001,
    iou: float = 0.7,
    device: str = "auto",
    batch: int = 1,
    max_det: int = 300,
) -> EvalResult:
    """Predict every image of ``split`` with ``model`` (.pt or .onnx) and score the boxes.

    A segmentation model on a dataset with polygon labels is also scored on its masks (the
    ``mask_*`` fields of the result).

    ``imgsz`` None uses the model's own size (its training size; an ONNX file's export size).
    ``conf`` and ``iou`` are the prediction score threshold and the NMS IoU; keep ``conf`` low
    for mAP (predictions below it cannot count). Raises InputError for a bad dataset or split, or
    when the model's class names differ from the dataset's; ModelLoadError when the model
    cannot be loaded.
    """
    if not 0.0 <= conf < 1.0 or not 0.0 < iou <= 1.0:
        raise InputError(f"conf must be in [0, 1) and iou in (0, 1], got conf={conf}, iou={iou}")
    if batch < 1 or max_det < 1:
        raise InputError(f"batch and max_det must be at least 1, got {batch} and {max_det}")
    info = check_dataset(dataset_dir)
    if split not in info.images:
        raise InputError(
            f"{info.data_yaml} has no {split!r} split; it has {', '.join(sorted(info.images))}"
        )
    images = list(info.images[split])
    device_name = ultralytics_device(device)
    yolo = load_yolo(model)
    with quiet_ultralytics():
        task = yolo.task
        model_names = _model_names(yolo)
    if task not in {"detect", "segment"}:
        raise InputError(f"model {model} is a {task} model; only detect and segment are scored")
    if model_names != list(info.names):
        raise InputError(
            f"model {model} has classes {model_names} but the dataset {info.data_yaml} has "
            f"{list(info.names)}; evaluate a model trained on this dataset's classes"
        )

    # Masks are scored when there are masks on both sides.
    with_masks = task == "segment" and info.task == "segment"
    coco_gt, image_ids = _yolo_ground_truth(info, images, with_masks=with_masks)

    options: dict[str, Any] = {
        "conf": conf,
        "iou": iou,
        "device": device_name,
        "batch": batch,
        "max_det": max_det,
        "verbose": False,
    }
    if imgsz is not None:
        options["imgsz"] = imgsz
    if with_masks:
        # Masks at the original image's resolution, where the ground truth is rasterised.
        options["retina_masks"] = True
    predictions: dict[int, Detections] = {}
    with quiet_ultralytics():
        # One untimed image first: model setup and the first inference are not per-image costs.
        list(yolo.predict(source=str(images[0]), **options))
        start = time.perf_counter()
        for path, result in zip(
            images,
            yolo.predict(source=[str(p) for p in images], stream=True, **options),
            strict=True,
        ):
            detections = from_ultralytics(result)
            if with_masks:
                detections.data["mask_rle"] = _result_mask_rles(result, len(detections))
            if Path(detections.metadata["path"]).resolve() != path.resolve():
                raise RuntimeError(f"Ultralytics returned {result.path} where {path} was expected")
            predictions[image_ids[path]] = detections
        elapsed_s = time.perf_counter() - start
    used_imgsz = getattr(getattr(yolo, "predictor", None), "imgsz", None)

    scores = score_detections(coco_gt, predictions, info.names, max_det=max_det)
    mask_fields: dict[str, Any] = {}
    if with_masks:
        mask_scores = score_detections(
            coco_gt, predictions, info.names, max_det=max_det, iou_type="segm"
        )
        mask_fields = {
            "mask_map50": mask_scores["map50"],
            "mask_map50_95": mask_scores["map50_95"],
            "mask_precision": mask_scores["precision"],
            "mask_recall": mask_scores["recall"],
            "mask_conf_threshold": mask_scores["conf_threshold"],
            "mask_per_class": mask_scores["per_class"],
        }
    return EvalResult(
        map50=scores["map50"],
        map50_95=scores["map50_95"],
        per_class=scores["per_class"],
        ms_per_image=1000.0 * elapsed_s / len(images),
        n_images=len(images),
        split=split,
        precision=scores["precision"],
        recall=scores["recall"],
        conf_threshold=scores["conf_threshold"],
        model=str(model),
        imgsz=int(used_imgsz[0]) if isinstance(used_imgsz, list | tuple) else used_imgsz,
        n_predictions=sum(len(d) for d in predictions.values()),
        data_yaml=str(info.data_yaml),
        label_hash=info.label_hash,
        **mask_fields,
    )
