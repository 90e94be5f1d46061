"""Verifier throughput and call counts against a loopback VLM endpoint with a fixed latency.

The fake endpoint answers each request after ``--latency-s`` (1 s) and processes at most
``--server-limit`` (16) requests at once; later ones queue server-side. Three measurements:

1. crop mode boxes per second against the server's ceiling (limit / latency = 16 boxes/s);
   target >= 0.9 of it;
2. calls per image in marks mode against crop mode, at >= 4 boxes per image; target >= 4x fewer;
3. calls on a rerun when verdicts are cached under ``verdict_cache_key``; target 0 (a dict stands
   in for the workspace store).

Run from the repository root: ``.venv/bin/python benchmarks/bench_verify.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.fakes

from labeler.verify import Verdict, verdict_cache_key
from labeler.verify.openai_backend import OpenAIVerifier
from tests.fakes.vlm_server import FakeVLMServer, RecordedRequest


class RemoteServer:
    """A FakeVLMServer in its own process (as a real endpoint would be: it must not share this
    process's GIL), read through its ``/fake/*`` endpoints."""

    def __init__(self, port: int) -> None:
        self.root = f"http://127.0.0.1:{port}"
        self.base_url = f"{self.root}/v1"

    def reset(self) -> None:
        httpx.post(f"{self.root}/fake/reset").raise_for_status()

    def stats(self) -> dict[str, int]:
        response = httpx.get(f"{self.root}/fake/stats")
        response.raise_for_status()
        return response.json()  # type: ignore[no-any-return]


def _serve(port_queue: multiprocessing.Queue, latency_s: float, limit: int) -> None:  # type: ignore[type-arg]
    server = FakeVLMServer(answer, latency_s=latency_s, max_concurrency=limit).start()
    port_queue.put(server.port)
    while True:
        time.sleep(3600)


@contextmanager
def remote_server(latency_s: float, limit: int) -> Iterator[RemoteServer]:
    context = multiprocessing.get_context("spawn")
    port_queue = context.Queue()
    process = context.Process(target=_serve, args=(port_queue, latency_s, limit), daemon=True)
    process.start()
    try:
        yield RemoteServer(port_queue.get(timeout=60))
    finally:
        process.terminate()
        process.join(timeout=10)


QUESTIONS = ("Is this a cat?", "Is this a dog?")


@dataclass
class SyntheticImage:
    image: Image.Image
    sha256: str
    xyxy: np.ndarray  # (n, 4) float32 pixels
    questions: list[str]


def make_images(
    count: int, boxes_per_image: int, questions_per_image: int, seed: int = 0
) -> list[SyntheticImage]:
    """Photo-like 640x480 images (smooth colour fields, so JPEG sizes are realistic, not those of
    pure noise) with ``boxes_per_image`` filled rectangles each."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        coarse = rng.integers(0, 255, size=(12, 16, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((640, 480), Image.Resampling.BICUBIC)
        draw = ImageDraw.Draw(image)
        boxes = []
        for _ in range(boxes_per_image):
            x1, y1 = rng.uniform(0, 560), rng.uniform(0, 400)
            w, h = rng.uniform(20, 80), rng.uniform(20, 80)
            boxes.append([x1, y1, x1 + w, y1 + h])
            draw.rectangle(boxes[-1], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        questions = [QUESTIONS[i % questions_per_image] for i in range(boxes_per_image)]
        images.append(
            SyntheticImage(
                image=image,
                sha256=hashlib.sha256(image.tobytes()).hexdigest(),
                xyxy=np.array(boxes, dtype=np.float32),
                questions=questions,
            )
        )
    return images


def answer(request: RecordedRequest) -> str:
    """Yes for crops; for marks, a JSON object answering every numbered box."""
    text = request.prompt_text
    if "numbered boxes" in text:
        count = int(text.split("shows ")[1].split()[0])
        return json.dumps({str(i): "yes" for i in range(1, count + 1)})
    return "Yes"


async def verify_all(verifier: OpenAIVerifier, images: list[SyntheticImage]) -> list[list[Verdict]]:
    """All images at once, as the pipeline does: concurrency is bounded by the verifier."""
    return list(
        await asyncio.gather(*(verifier.verify_boxes(i.image, i.xyxy, i.questions) for i in images))
    )


async def run_crop_throughput(
    server: RemoteServer, images: list[SyntheticImage], concurrency: int
) -> dict[str, float]:
    verifier = OpenAIVerifier("fake-vlm", url=server.base_url, concurrency=concurrency)
    server.reset()
    start = time.perf_counter()
    results = await verify_all(verifier, images)
    elapsed = time.perf_counter() - start
    await verifier.aclose()
    boxes = sum(len(r) for r in results)
    answered = sum(v.answer == "yes" for r in results for v in r)
    stats = server.stats()
    return {
        "boxes": boxes,
        "answered": answered,
        "seconds": elapsed,
        "boxes_per_s": boxes / elapsed,
        "calls": stats["requests"],
        "peak_server": stats["peak_processing"],
        "peak_in_flight": stats["peak_in_flight"],
    }


async def count_calls(
    server: RemoteServer, images: list[SyntheticImage], mode: str
) -> dict[str, float]:
    verifier = OpenAIVerifier("fake-vlm", url=server.base_url, mode=mode, concurrency=16)
    server.reset()
    start = time.perf_counter()
    results = await verify_all(verifier, images)
    elapsed = time.perf_counter() - start
    await verifier.aclose()
    calls = server.stats()["requests"]
    return {
        "calls": calls,
        "calls_per_image": calls / len(images),
        "answered": sum(v.answer == "yes" for r in results for v in r),
        "boxes": sum(len(r) for r in results),
        "seconds": elapsed,
    }


async def cached_rerun(server: RemoteServer, images: list[SyntheticImage]) -> dict[str, float]:
    """First run fills a dict keyed by verdict_cache_key; the rerun asks only for misses."""
    cache: dict[str, Verdict] = {}
    verifier = OpenAIVerifier("fake-vlm", url=server.base_url, concurrency=16)

    def keys(item: SyntheticImage) -> list[str]:
        return [
            verdict_cache_key(
                image_sha256=item.sha256,
                xyxy=box,
                question=question,
                model_id=verifier.model_id,
                template_hash=verifier.template_hash,
                mode=verifier.mode,
            )
            for box, question in zip(item.xyxy, item.questions, strict=True)
        ]

    async def one_pass() -> int:
        server.reset()

        async def one_image(item: SyntheticImage) -> None:
            item_keys = keys(item)
            missing = [i for i, key in enumerate(item_keys) if key not in cache]
            if not missing:
                return
            verdicts = await verifier.verify_boxes(
                item.image, item.xyxy[missing], [item.questions[i] for i in missing]
            )
            for i, verdict in zip(missing, verdicts, strict=True):
                if verdict.answer != "unknown":  # failures are asked again next time
                    cache[item_keys[i]] = verdict

        await asyncio.gather(*(one_image(item) for item in images))
        return server.stats()["requests"]

    first = await one_pass()
    second = await one_pass()
    await verifier.aclose()
    return {"first_calls": first, "rerun_calls": second, "cached": len(cache)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-s", type=float, default=1.0)
    parser.add_argument("--server-limit", type=int, default=16)
    parser.add_argument(
        "--concurrency",
        default="16,32",
        help="verifier bounds to measure crop throughput at, comma-separated (default: the "
        "server's limit, and twice it so that requests queue server-side)",
    )
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--boxes-per-image", type=int, default=8)
    args = parser.parse_args()

    ceiling = args.server_limit / args.latency_s
    rows: list[tuple[str, str, str, str]] = []
    with remote_server(args.latency_s, args.server_limit) as server:
        for concurrency in (int(c) for c in args.concurrency.split(",")):
            images = make_images(args.images, args.boxes_per_image, questions_per_image=1)
            crop = asyncio.run(run_crop_throughput(server, images, concurrency))
            ratio = crop["boxes_per_s"] / ceiling
            rows.append(
                (
                    f"crop boxes/s, verifier concurrency {concurrency}",
                    f"{crop['boxes_per_s']:.2f} boxes/s = {ratio:.3f} of {ceiling:g}/s "
                    f"({crop['boxes']:.0f} boxes in {crop['seconds']:.2f} s, "
                    f"{crop['calls']:.0f} calls, server peak "
                    f"{crop['peak_server']:.0f} processing / "
                    f"{crop['peak_in_flight']:.0f} open, {crop['answered']:.0f} answered yes)",
                    ">= 0.9",
                    "pass" if ratio >= 0.9 else "FAIL",
                )
            )
        for questions_per_image in (1, 2):
            images = make_images(args.images, args.boxes_per_image, questions_per_image, seed=1)
            crop_calls = asyncio.run(count_calls(server, images, "crop"))
            marks_calls = asyncio.run(count_calls(server, images, "marks"))
            fewer = crop_calls["calls"] / max(marks_calls["calls"], 1)
            rows.append(
                (
                    f"calls/image, {args.boxes_per_image} boxes, {questions_per_image} question(s)",
                    f"crop {crop_calls['calls_per_image']:.1f} ({crop_calls['seconds']:.1f} s) vs "
                    f"marks {marks_calls['calls_per_image']:.1f} ({marks_calls['seconds']:.1f} s) "
                    f"= {fewer:.1f}x fewer; marks answered "
                    f"{marks_calls['answered']:.0f}/{marks_calls['boxes']:.0f}",
                    ">= 4x",
                    "pass" if fewer >= 4 else "FAIL",
                )
            )
        images = make_images(args.images, args.boxes_per_image, questions_per_image=2, seed=2)
        cache = asyncio.run(cached_rerun(server, images))
        rows.append(
            (
                "calls on a rerun with the verdict cache",
                f"{cache['rerun_calls']:.0f} (first run {cache['first_calls']:.0f} calls, "
                f"{cache['cached']:.0f} verdicts cached)",
                "0",
                "pass" if cache["rerun_calls"] == 0 else "FAIL",
            )
        )

    print(
        f"Loopback endpoint in its own process: latency {args.latency_s:g} s, "
        f"server limit {args.server_limit} (more queue server-side); "
        f"{args.images} images x {args.boxes_per_image} boxes\n"
    )
    print("| measurement | result | target | |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
