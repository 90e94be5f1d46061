"""Mask stage per image: ours vs one decoder call per box vs the bare image encoder (the limit).

Full-size SAM ViT-B (``SamConfig()``'s defaults are ViT-B) at random init, on CPU, 10 boxes per
image. Three ways per image:

1. ours: ``TransformersSegmenter.segment`` (preprocess, one forward with all boxes, best-IoU
   mask, masks resized to the original pixels);
2. per box: the image embedding once, then one prompt-encoder + decoder call per box and the same
   post-processing (autodistill's grounded-SAM pattern: ``set_image`` then ``predict`` per box);
3. the bare vision-encoder forward on the preprocessed image: the limit.

Target: ours within 10% of the bare encoder per image.
Run from the repository root: ``.venv/bin/python benchmarks/bench_masks.py``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from labeler.segment.transformers_sam import TransformersSegmenter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--boxes", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        SamModel(SamConfig()).save_pretrained(folder)
        SamProcessor(SamImageProcessor()).save_pretrained(folder)  # type: ignore[no-untyped-call]
        segmenter = TransformersSegmenter(folder, device="cpu")
    model, processor = segmenter.model, segmenter.processor
    times: dict[str, list[float]] = {"ours": [], "per_box": [], "bare_encoder": []}
    for _ in range(args.images):
        image = Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))
        xy = rng.uniform(0, 400, (args.boxes, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(20, 200, (args.boxes, 2))], axis=1)

        started = time.perf_counter()
        segmenter.segment(image, boxes)
        times["ours"].append(time.perf_counter() - started)

        started = time.perf_counter()
        with torch.inference_mode():
            inputs = processor(images=image, input_boxes=[boxes.tolist()], return_tensors="pt")
            embeddings = model.get_image_embeddings(inputs["pixel_values"])
            for i in range(args.boxes):
                out = model(
                    image_embeddings=embeddings,
                    input_boxes=inputs["input_boxes"][:, i : i + 1],
                    multimask_output=True,
                )
                masks = processor.image_processor.post_process_masks(
                    out.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"]
                )[0]
                _ = masks[0, int(out.iou_scores[0, 0].argmax())]
        times["per_box"].append(time.perf_counter() - started)

        pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]
        started = time.perf_counter()
        with torch.inference_mode():
            model.vision_encoder(pixel_values)
        times["bare_encoder"].append(time.perf_counter() - started)

    result = {name: round(statistics.median(values), 3) for name, values in times.items()}
    result["ours_over_encoder"] = round(result["ours"] / result["bare_encoder"], 3)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"median s/image over {args.images} images, {args.boxes} boxes each, CPU:")
        for name, value in result.items():
            print(f"  {name}: {value}")


if __name__ == "__main__":
    main()
