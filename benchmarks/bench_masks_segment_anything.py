"""Mask stage per image through an original SAM checkpoint: ours vs one decoder call per box vs the
bare image encoder (the limit).

A full-size SAM ViT-B at random init, saved as an original-format checkpoint under a name that does
not say ``vit_b`` (so the loader must recognise it from its shapes and build it through
``sam_model_registry``), on CPU, 10 boxes per image. Three ways per image:

1. ours: ``SegmentAnythingSegmenter.segment`` (``set_image`` once, every box in one
   ``predict_torch`` call, the best-IoU mask of three, masks at the original size);
2. per box: ``set_image`` once, then ``SamPredictor.predict(box=...)`` per box (autodistill's
   grounded-SAM pattern), the best-IoU mask of each;
3. the bare image-encoder forward on the resized, normalised image: the limit.

Target: ours within 10% of the bare encoder per image. Each way is timed by the wall clock and by
the process's CPU time (``time.process_time``, all threads): on a machine shared with other work the
CPU time is the steadier of the two.
Run from the repository root: ``.venv/bin/python benchmarks/bench_masks_segment_anything.py``.
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

from labeler.segment import load_segmenter
from labeler.segment.segment_anything_backend import SegmentAnythingSegmenter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--boxes", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from segment_anything import sam_model_registry

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(folder) / "my_sam.pth"
        torch.save(sam_model_registry["vit_b"]().state_dict(), checkpoint)
        segmenter = load_segmenter(f"segment-anything:{checkpoint}", device="cpu")
    assert isinstance(segmenter, SegmentAnythingSegmenter)
    print(f"loaded as {segmenter.model_type}", file=sys.stderr)
    predictor, model = segmenter.predictor, segmenter.model
    ways = ("ours", "per_box", "bare_encoder")
    times: dict[str, list[float]] = {w + suffix: [] for w in ways for suffix in ("", "_cpu")}
    for index in range(args.images + 1):  # the first image warms up and is not counted
        image = Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))
        xy = rng.uniform(0, 400, (args.boxes, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(20, 200, (args.boxes, 2))], axis=1)
        pixels = np.asarray(image)
        took: dict[str, float] = {}

        started, started_cpu = time.perf_counter(), time.process_time()
        segmenter.segment(image, boxes)
        took["ours"] = time.perf_counter() - started
        took["ours_cpu"] = time.process_time() - started_cpu

        started, started_cpu = time.perf_counter(), time.process_time()
        with torch.inference_mode():
            predictor.set_image(pixels)
            for box in boxes:
                masks, iou, _ = predictor.predict(box=box, multimask_output=True)
                masks[int(iou.argmax())]
            predictor.reset_image()
        took["per_box"] = time.perf_counter() - started
        took["per_box_cpu"] = time.process_time() - started_cpu

        resized = torch.as_tensor(predictor.transform.apply_image(pixels)).permute(2, 0, 1)[None]
        started, started_cpu = time.perf_counter(), time.process_time()
        with torch.inference_mode():
            model.image_encoder(model.preprocess(resized))
        took["bare_encoder"] = time.perf_counter() - started
        took["bare_encoder_cpu"] = time.process_time() - started_cpu
        if index > 0:
            for name, value in took.items():
                times[name].append(value)

    result: dict[str, float | str] = {
        name: round(statistics.median(values), 3) for name, values in times.items()
    }
    for suffix in ("", "_cpu"):
        result[f"ours_over_encoder{suffix}"] = round(
            statistics.median(times["ours" + suffix])
            / statistics.median(times["bare_encoder" + suffix]),
            3,
        )
    result["model_type"] = segmenter.model_type
    if args.json:
        print(json.dumps(result))
    else:
        print(f"median s/image over {args.images} images, {args.boxes} boxes each, CPU:")
        for key, shown in result.items():
            print(f"  {key}: {shown}")


if __name__ == "__main__":
    main()
