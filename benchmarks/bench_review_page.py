"""How long does a REVIEWER wait for the page? From a key press to the next item drawn.

1. The job: the service app (in this process, on SQLite in a temp folder) labels ``--images``
   (60) fresh 1280x720 JPEG scenes (labeler.demo's shapes on textured backgrounds) with a tiny
   random Grounding DINO (``--max-det`` 4 boxes each, thresholds 0) and a loopback
   OpenAI-compatible VLM (tests/fakes/vlm_server.py) that answers every question with an
   uncertain yes, so every box goes to review: a real labeling job, run by a real worker.
2. The page: the app served by uvicorn on 127.0.0.1 (a thread of this process), Debian's Chromium
   (headless, driven by Playwright, 1280x800) signed in with a reviewer key, on the job's queue.
3. The reviewer: presses A (accept) ``--items`` (200) times, each as soon as the page shows the
   next item (the body's ``data-item`` changes: a reviewer faster than any human). The page
   measures each wait itself (``window.reviewTimings``): from the key event's own time stamp to
   the animation frame after the next item's image, boxes and crop are drawn (Konva draws
   synchronously, so that frame shows them). The decisions go to the server meanwhile; the
   first ``--warmup`` (5) items are not counted.

Results on stdout (a markdown table, or ``--json``); progress on stderr.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("YOLO_OFFLINE", "True")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHROMIUM = os.environ.get("PROMPTLABEL_CHROMIUM", "/usr/bin/chromium")


def note(message: str) -> None:
    print(f"[bench_review_page] {message}", file=sys.stderr, flush=True)


def jpeg_scene(seed: int) -> bytes:
    import numpy as np

    from labeler.demo.synthetic import make_shapes_image

    image, _ = make_shapes_image(np.random.default_rng(seed), (1280, 720), n_shapes=4)
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def make_job(work: Path, args: argparse.Namespace, vlm_url: str) -> tuple[Any, str, str, str]:
    """The app, its project id, a reviewer key's token, and the succeeded job's id."""
    from fastapi.testclient import TestClient

    from labeler.demo.tiny_models import build_tiny_grounding_dino
    from labeler.ontology import Ontology
    from serve.api.app import create_app
    from serve.api.auth import create_api_key, create_project
    from serve.jobs.worker import Worker
    from serve.settings import ServiceSettings

    detector = build_tiny_grounding_dino(work / "tiny-gdino")
    settings = ServiceSettings(
        data_dir=work / "data",
        service_detectors={"default": str(detector)},
        service_verifiers={"fake": "openai:fake-vlm"},
        service_verifier_url=vlm_url,
        service_device="cpu",
        max_retries=0,
        concurrency=8,
    )
    app = create_app(settings)
    with TestClient(app) as client:
        db = app.state.db
        ontology = Ontology.from_mapping({"circle": ["circle"], "square": ["square"]})
        project_id = create_project(db, name="bench", ontology=ontology)
        labeler = create_api_key(db, project_id=project_id, name="bench")
        reviewer = create_api_key(db, project_id=project_id, name="ana", role="reviewer")
        headers = {"Authorization": f"Bearer {labeler.token}"}
        base = f"/v1/projects/{project_id}"
        files = [
            ("files", (f"scene{i:03d}.jpg", jpeg_scene(i), "image/jpeg"))
            for i in range(args.images)
        ]
        uploaded = client.post(f"{base}/images", headers=headers, files=files)
        uploaded.raise_for_status()
        job = client.post(
            f"{base}/label-jobs",
            headers=headers,
            json={
                "verifier": "fake",
                "max_det": args.max_det,
                "box_threshold": 0.0,
                "text_threshold": 0.0,
            },
        ).json()
        note(f"labeling {args.images} images (job {job['id']})")
        worker = Worker(db=db, settings=settings, name="bench-worker")
        while worker.run_once():
            pass
        done = client.get(f"{base}/jobs/{job['id']}", headers=headers).json()
        if done["status"] != "succeeded":
            raise SystemExit(f"the labeling job did not succeed: {done}")
        in_review = done["result"]["labels"]["needs_review"]
        note(f"job done: {in_review} boxes in review")
        if in_review < args.items + args.warmup + 1:
            raise SystemExit(
                f"only {in_review} boxes in review; raise --images or --max-det to review "
                f"{args.items + args.warmup}"
            )
    return app, project_id, reviewer.token, str(job["id"])


def review_in_browser(url: str, token: str, job_id: str, presses: int) -> list[float]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        # bypass_csp: Playwright's waits evaluate strings, which the page's CSP forbids.
        context = browser.new_context(viewport={"width": 1280, "height": 800}, bypass_csp=True)
        page = context.new_page()
        page.goto(f"{url}/review/")
        page.locator("#api-key").fill(token)
        page.keyboard.press("Enter")
        page.locator("#job-list button").first.wait_for()
        page.goto(f"{url}/review/?job={job_id}")
        page.wait_for_function("document.body.dataset.item")
        page.wait_for_function("window.reviewTimings.length >= 1")
        started = page.evaluate("window.reviewTimings.length")
        for turn in range(presses):
            shown = page.evaluate("document.body.dataset.item")
            page.keyboard.press("a")
            page.wait_for_function(
                "shown => (document.body.dataset.item || shown) !== shown", arg=shown, polling="raf"
            )
            if turn % 50 == 49:
                note(f"{turn + 1} items reviewed")
        try:
            page.wait_for_function(
                "count => window.reviewTimings.length >= count",
                arg=started + presses,
                timeout=10_000,
            )
        except Exception:
            shown = page.evaluate(
                "[window.reviewTimings.length, document.body.dataset.item,"
                " document.getElementById('notice').textContent,"
                " document.getElementById('progress').textContent]"
            )
            raise SystemExit(
                f"the page stopped short of {started + presses} timings: {shown}"
            ) from None
        timings: list[float] = page.evaluate("window.reviewTimings")[started:]
        browser.close()
    return timings


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile: a value that was measured, never an interpolation."""
    return float(np.percentile(values, q, method="inverted_cdf"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--max-det", type=int, default=4)
    parser.add_argument("--items", type=int, default=200, help="items reviewed and counted")
    parser.add_argument("--warmup", type=int, default=5, help="items reviewed first, not counted")
    parser.add_argument("--json", action="store_true", help="results as JSON on stdout")
    args = parser.parse_args()
    if not os.path.exists(CHROMIUM):
        parser.exit(2, f"bench_review_page: no Chromium at {CHROMIUM} (apt-get install chromium)\n")

    from tests.fakes.live_app import LiveApp
    from tests.fakes.vlm_server import FakeVLMServer

    with tempfile.TemporaryDirectory(prefix="bench-review-page-") as folder:
        work = Path(folder)
        with FakeVLMServer(script=lambda _: "Yes", confidence=0.55) as vlm:
            app, _, token, job_id = make_job(work, args, vlm.base_url)
        with LiveApp(app) as live:
            started = time.perf_counter()
            timings = review_in_browser(live.url(), token, job_id, args.items + args.warmup)
            elapsed = time.perf_counter() - started
        app.state.db.dispose()
    counted = timings[args.warmup :]
    result = {
        "items": len(counted),
        "p50_ms": round(statistics.median(counted), 1),
        "p95_ms": round(percentile(counted, 95), 1),
        "p99_ms": round(percentile(counted, 99), 1),
        "max_ms": round(max(counted), 1),
        "wall_s": round(elapsed, 1),
        "command": "python benchmarks/bench_review_page.py " + shlex.join(sys.argv[1:]),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"`{result['command'].strip()}`\n")
    print("| items | p50 | p95 | p99 | max |")
    print("|---|---|---|---|---|")
    print(
        f"| {result['items']} | {result['p50_ms']} ms | {result['p95_ms']} ms | "
        f"{result['p99_ms']} ms | {result['max_ms']} ms |"
    )


if __name__ == "__main__":
    main()
