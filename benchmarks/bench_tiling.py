"""What does tiling cost? Time per image with ``tile_px`` against the untiled run.

Same model as ``bench_propose.py``: the full-size Grounding DINO tiny architecture at random init
(Swin-T + BERT-base, 900 queries, image processor at shortest edge 800 / longest 1333), no
download; random weights make the boxes meaningless but the compute is the real checkpoint's.
One synthetic 3840x2160 frame by default, 4 classes; the untiled and tiled runs alternate over
``--repeats`` rounds and the median is reported. Each 640-px tile is resized up to 800 px by the
processor, as the real checkpoint would, so a tile costs about as much as a whole frame.

    python benchmarks/bench_tiling.py --tile 640 --overlap 0.2 --repeats 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_propose import (
    CLASSES,
    build_full_size_grounding_dino,
    synthetic_images,
)

from labeler.demo.tiny_models import build_tiny_grounding_dino
from labeler.ontology import Ontology
from labeler.propose.detector import DetectorOptions, load_detector
from labeler.propose.tiling import tile_boxes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=3840)
    parser.add_argument("--height", type=int, default=2160)
    parser.add_argument("--tile", type=int, default=640, help="tile side in pixels")
    parser.add_argument("--overlap", type=float, default=0.2)
    parser.add_argument("--batch-size", type=int, default=4, help="tiles per forward pass")
    parser.add_argument("--repeats", type=int, default=1, help="timed rounds; median reported")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="torch intra-op threads"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny test model (smoke test only)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    ontology = Ontology.from_mapping(CLASSES)
    (image,) = synthetic_images(1, args.width, args.height)
    n_tiles = len(tile_boxes(image.size, args.tile, args.overlap))
    with tempfile.TemporaryDirectory() as workdir:
        build = build_tiny_grounding_dino if args.tiny else build_full_size_grounding_dino
        path = build(Path(workdir) / "model")
        plain = load_detector(path, DetectorOptions(device=args.device, batch_size=args.batch_size))
        tiled = plain.with_options(
            DetectorOptions(
                batch_size=args.batch_size, tile_px=args.tile, tile_overlap=args.overlap
            )
        )
        plain.propose([image], ontology)  # warm-up
        seconds: dict[str, list[float]] = {"untiled": [], "tiled": []}
        for repeat in range(args.repeats):
            for name in sorted(seconds, reverse=bool(repeat % 2)):
                detector = tiled if name == "tiled" else plain
                start = time.perf_counter()
                detector.propose([image], ontology)
                if detector.device.type == "cuda":
                    torch.cuda.synchronize()
                seconds[name].append(time.perf_counter() - start)

    untiled_s = statistics.median(seconds["untiled"])
    tiled_s = statistics.median(seconds["tiled"])
    model = "tiny test model" if args.tiny else "Grounding DINO tiny architecture (random init)"
    print(
        f"{model}; 1 image {args.width}x{args.height}, {len(CLASSES)} classes, tile {args.tile} "
        f"px, overlap {args.overlap}: {n_tiles} tiles + the whole image, batch {args.batch_size}, "
        f"{args.device}, {args.threads} threads, {args.repeats} repeat(s), "
        f"torch {torch.__version__}"
    )
    print()
    print("| run | s / image | / untiled |")
    print("|---|---:|---:|")
    print(f"| untiled | {untiled_s:.2f} | 1.00x |")
    print(f"| tiled ({n_tiles} tiles + whole image) | {tiled_s:.2f} | {tiled_s / untiled_s:.2f}x |")


if __name__ == "__main__":
    main()
