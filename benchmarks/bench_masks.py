"""Mask stage per image: ours vs one decoder call per box vs the bare image encoder (the limit).

Full-size SAM ViT-B at random init, on CPU, 10 boxes per image, through either backend:

- ``--backend transformers`` (default): ``SamModel(SamConfig())`` saved with ``save_pretrained``
  and loaded as ``--masks transformers:DIR`` is;
- ``--backend segment-anything``: an original-format checkpoint saved under a name that does not
  say ``vit_b`` (so the loader must recognise it from its shapes and build it through
  ``sam_model_registry``), loaded as ``--masks segment-anything:FILE.pth`` is.

Three ways per image:

1. ours: the segmenter's ``segment`` (one image embedding, every box in one batched decoder call,
   the best-IoU mask of three, masks at the original size);
2. per box: the image embedding once, then one prompt-encoder + decoder call per box and the same
   post-processing (autodistill's grounded-SAM pattern: ``set_image`` then ``predict`` per box);
3. the bare image-encoder forward on the preprocessed image: the limit.

Target: ours within 10% of the bare encoder per image. Each way is timed by the wall clock and by
the process's CPU time (``time.process_time``, all threads): on a machine shared with other work
the CPU time is the steadier of the two. The first image warms up and is not counted.
Run from the repository root: ``.venv/bin/python benchmarks/bench_masks.py [--backend ...]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from labeler.segment import load_segmenter

# One way of computing the masks of an image's boxes: (image, boxes xyxy) -> nothing kept.
Way = Callable[[Image.Image, np.ndarray], None]


def transformers_ways(folder: Path) -> tuple[str, dict[str, Way]]:
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    SamModel(SamConfig()).save_pretrained(folder)
    SamProcessor(SamImageProcessor()).save_pretrained(folder)  # type: ignore[no-untyped-call]
    segmenter: Any = load_segmenter(f"transformers:{folder}", device="cpu")
    model, processor = segmenter.model, segmenter.processor

    def per_box(image: Image.Image, boxes: np.ndarray) -> None:
        with torch.inference_mode():
            inputs = processor(images=image, input_boxes=[boxes.tolist()], return_tensors="pt")
            embeddings = model.get_image_embeddings(inputs["pixel_values"])
            for i in range(len(boxes)):
                out = model(
                    image_embeddings=embeddings,
                    input_boxes=inputs["input_boxes"][:, i : i + 1],
                    multimask_output=True,
                )
                masks = processor.image_processor.post_process_masks(
                    out.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"]
                )[0]
                masks[0, int(out.iou_scores[0, 0].argmax())]

    def bare_encoder(image: Image.Image, boxes: np.ndarray) -> None:
        pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            model.vision_encoder(pixel_values)

    return "SamModel", {"ours": segmenter.segment, "per_box": per_box, "bare_encoder": bare_encoder}


def segment_anything_ways(folder: Path) -> tuple[str, dict[str, Way]]:
    from segment_anything import sam_model_registry

    checkpoint = folder / "my_sam.pth"
    torch.save(sam_model_registry["vit_b"]().state_dict(), checkpoint)
    segmenter: Any = load_segmenter(f"segment-anything:{checkpoint}", device="cpu")
    predictor, model = segmenter.predictor, segmenter.model

    def per_box(image: Image.Image, boxes: np.ndarray) -> None:
        with torch.inference_mode():
            predictor.set_image(np.asarray(image))
            for box in boxes:
                masks, iou, _ = predictor.predict(box=box, multimask_output=True)
                masks[int(iou.argmax())]
            predictor.reset_image()

    def bare_encoder(image: Image.Image, boxes: np.ndarray) -> None:
        pixels = predictor.transform.apply_image(np.asarray(image))
        resized = torch.as_tensor(pixels).permute(2, 0, 1)[None]
        with torch.inference_mode():
            model.image_encoder(model.preprocess(resized))

    ways: dict[str, Way] = {"ours": segmenter.segment, "per_box": per_box}
    return f"segment-anything {segmenter.model_type}", ways | {"bare_encoder": bare_encoder}


BACKENDS = {"transformers": transformers_ways, "segment-anything": segment_anything_ways}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=sorted(BACKENDS), default="transformers")
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--boxes", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        loaded_as, ways = BACKENDS[args.backend](Path(folder))
    print(f"loaded as {loaded_as}", file=sys.stderr)
    rng = np.random.default_rng(0)
    times: dict[str, list[float]] = {w + suffix: [] for w in ways for suffix in ("", "_cpu")}
    for index in range(args.images + 1):  # the first image warms up and is not counted
        image = Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))
        xy = rng.uniform(0, 400, (args.boxes, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(20, 200, (args.boxes, 2))], axis=1)
        for name, way in ways.items():
            started, started_cpu = time.perf_counter(), time.process_time()
            way(image, boxes)
            if index > 0:
                times[name].append(time.perf_counter() - started)
                times[name + "_cpu"].append(time.process_time() - started_cpu)

    result: dict[str, float | str] = {
        name: round(statistics.median(values), 3) for name, values in times.items()
    }
    for suffix in ("", "_cpu"):
        result[f"ours_over_encoder{suffix}"] = round(
            statistics.median(times["ours" + suffix])
            / statistics.median(times["bare_encoder" + suffix]),
            3,
        )
    result["model"] = loaded_as
    if args.json:
        print(json.dumps(result))
    else:
        print(f"median s/image over {args.images} images, {args.boxes} boxes each, CPU:")
        for key, shown in result.items():
            print(f"  {key}: {shown}")


if __name__ == "__main__":
    main()
