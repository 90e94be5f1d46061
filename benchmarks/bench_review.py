"""How fast is REVIEW at scale? The next queue item, a decision and the summary over HTTP, with
1,000,000 proposals in the job's workspace, on the service with SQLite and with PostgreSQL.

1. The workspace: ``--images`` (50,000) images of 1280x720 with ``--per-image`` (20) proposals
   each, written through the workspace's own save methods, in the pipeline's order and shape:
   ``start_run``, per image ``record_file``, ``record_image`` and ``save_proposals``, then the
   verifier's answers (``save_verdicts``, in batches, each keyed by ``verdict_cache_key`` as the
   pipeline keys them), the routed labels of every proposal (``labeler.route.route`` with the
   default thresholds, ``save_labels``) and ``finish_run``. No model runs: the scores are drawn.
   Detector scores are uniform over [0.35, 0.95] (the default box threshold up); the answers are
   a calibrated P(yes) uniform within the routing band for ``--review-share`` less 2% of the
   boxes (``verifier uncertain``: those go to review), an unclear reply for 1.5% and a failed
   request for 0.5% (both also to review), and otherwise a clear yes (70%) or no. Then
   ``--decided`` boxes (10,000) are decided, the queue's first ones, as reviewers before us
   would have. The workspace is built once per set of options and copied for each database
   (``--workdir`` keeps it for later runs).
2. The service: a project (4 classes), a reviewer key, the images and a succeeded labeling job
   (kind ``label``, the job's params as a submission stores them) written to the service
   database, the workspace at ``jobs/<id>/workspace``; then ``promptlabel serve --workers 0`` in
   its own process, on SQLite in the data folder or on PostgreSQL (``--database-url``: a fresh
   schema of it, dropped afterwards). A colleague's key first takes ``--held-claims`` (50) items
   from the top of the queue, which every later queue request must skip.
3. One client on a keep-alive connection (``http.client``, about 0.3 ms of its own per request)
   asks ``GET .../review/queue?limit=1`` and ``POST .../review/decisions`` with one decision on
   the box it was handed (accept and reject in turn), ``--requests`` (300) times after
   ``--warmup`` (20) untimed rounds; then ``GET .../review/summary`` ``--summary-requests`` (5)
   times. Each answer is checked (200, one item, the decision recorded).

Results on stdout (a markdown table, or ``--json``); progress on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # for tests.fakes

CLI = [sys.executable, "-c", "from serve.cli.main import main; main()"]
CLASSES: dict[str, str | list[str]] = {
    "person": "person",
    "car": "car",
    "dog": "dog",
    "bicycle": "bicycle",
}
IMAGE_WH = (1280, 720)
PROPOSE_KEY = "f" * 64  # the pipeline's propose_key is a sha256 hex like this
VERIFIER = {"model_id": "openai:bench-vlm", "template_id": "yes_no_v1", "mode": "crop"}
ENDPOINT = "http://127.0.0.1:9/v1"
UNCLEAR_SHARE = 0.015
ERROR_SHARE = 0.005


def note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- 1. the workspace -----------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkspaceFacts:
    images: int
    proposals: int
    needs_review: int
    decided: int
    build_s: float
    sha256s: list[str]


def _image_sha256(index: int) -> str:
    import hashlib

    return hashlib.sha256(f"bench-image-{index}".encode()).hexdigest()


def build_workspace(folder: Path, args: argparse.Namespace) -> WorkspaceFacts:
    """The workspace a labeling job of ``args.images`` images leaves behind (see the module's
    docstring), written with the workspace's own methods; then ``args.decided`` decisions."""
    from labeler.core.detections import Detections
    from labeler.export.dataset import unwritable_reasons
    from labeler.ontology import Ontology
    from labeler.route import RouteThresholds, route
    from labeler.store.workspace import LabelRow, Workspace
    from labeler.verify.base import question_for, verdict_cache_key

    started = time.perf_counter()
    ontology = Ontology.from_mapping(CLASSES)
    names = ontology.names
    questions = [question_for(c) or "" for c in ontology.classes]
    thresholds = RouteThresholds()
    rng = np.random.default_rng(args.seed)
    band_share = max(0.0, args.review_share - UNCLEAR_SHARE - ERROR_SHARE)
    template_hash = "t" * 16
    sha256s = [_image_sha256(i) for i in range(args.images)]
    labels: list[LabelRow] = []
    needs_review = 0
    with Workspace(folder) as workspace:
        run_id = workspace.start_run(
            {
                "images_dir": "/data/bench/images",
                "ontology": [c.model_dump() for c in ontology.classes],
                "detector": "default",
                "propose_key": PROPOSE_KEY,
                "verifier": VERIFIER["model_id"],
                "verify_mode": VERIFIER["mode"],
                "thresholds": asdict(thresholds),
                "val_fraction": 0.2,
            }
        )
        verdicts: list[dict[str, Any]] = []
        for index, sha in enumerate(sha256s):
            workspace.record_file(
                f"/data/bench/images/{index:06d}.jpg",
                sha256=sha,
                size_bytes=200_000 + index,
                mtime_ns=1_700_000_000_000_000_000 + index,
            )
            workspace.record_image(sha, IMAGE_WH)
            n = args.per_image
            wh = rng.uniform(24, 360, size=(n, 2))
            x1 = rng.uniform(0, IMAGE_WH[0] - wh[:, 0])
            y1 = rng.uniform(0, IMAGE_WH[1] - wh[:, 1])
            xyxy = np.stack([x1, y1, x1 + wh[:, 0], y1 + wh[:, 1]], axis=1).astype(np.float32)
            class_id = rng.integers(0, len(names), size=n)
            score = rng.uniform(0.35, 0.95, size=n).astype(np.float32)
            detections = Detections(xyxy, class_id, score, data={"box_score": score.copy()})
            workspace.save_proposals(sha, PROPOSE_KEY, detections, names)
            stored = workspace.load_proposals(sha, PROPOSE_KEY)
            unwritable = unwritable_reasons(stored.xyxy, IMAGE_WH)
            kinds = rng.uniform(size=n)
            for i in range(n):
                key = verdict_cache_key(
                    image_sha256=sha,
                    xyxy=stored.xyxy[i].tolist(),
                    question=questions[int(stored.class_id[i])],
                    model_id=VERIFIER["model_id"],
                    template_hash=template_hash,
                    mode=VERIFIER["mode"],
                    endpoint=ENDPOINT,
                )
                kind = kinds[i]
                error = None
                if kind < ERROR_SHARE:
                    answer, yes_prob, raw = "unknown", None, ""
                    error = "HTTPStatusError: Server error '503 Service Unavailable'"
                elif kind < ERROR_SHARE + UNCLEAR_SHARE:
                    answer, yes_prob, raw = "unknown", None, "I cannot tell from this crop."
                elif kind < ERROR_SHARE + UNCLEAR_SHARE + band_share:
                    yes_prob = float(rng.uniform(thresholds.reject, thresholds.accept))
                    answer, raw = ("yes", "Yes") if yes_prob >= 0.5 else ("no", "No")
                elif rng.uniform() < 0.7:
                    yes_prob = float(rng.uniform(thresholds.accept, 1.0))
                    answer, raw = "yes", "Yes"
                else:
                    yes_prob = float(rng.uniform(0.0, thresholds.reject))
                    answer, raw = "no", "No"
                verdicts.append(
                    {
                        "cache_key": key,
                        "answer": answer,
                        "yes_prob": yes_prob,
                        "raw": raw,
                        "error": error,
                        "model_id": VERIFIER["model_id"],
                        "template_id": VERIFIER["template_id"],
                        "template_hash": template_hash,
                        "mode": VERIFIER["mode"],
                        "question": questions[int(stored.class_id[i])],
                    }
                )
                decision = route(
                    detector_score=float(stored.confidence[i]),
                    verified=True,
                    yes_prob=yes_prob,
                    error=error,
                    unwritable=unwritable[i],
                    thresholds=thresholds,
                )
                needs_review += decision.status == "needs_review"
                labels.append(
                    LabelRow(
                        proposal_id=int(stored.data["proposal_id"][i]),
                        status=decision.status.value,
                        reason=decision.reason,
                        verdict_key=key,
                    )
                )
            if len(verdicts) >= 20_000:
                workspace.save_verdicts(verdicts)
                verdicts = []
            if (index + 1) % 5000 == 0:
                note(
                    f"  {index + 1} images, {len(labels)} proposals "
                    f"({time.perf_counter() - started:.0f} s)"
                )
        workspace.save_verdicts(verdicts)
        workspace.save_labels(run_id, labels)
        workspace.finish_run(run_id, {"labels": {"needs_review": needs_review}})
    proposals = len(labels)
    del labels
    decided = decide_first(folder, args.decided, middle=(thresholds.accept + thresholds.reject) / 2)
    return WorkspaceFacts(
        images=args.images,
        proposals=proposals,
        needs_review=needs_review,
        decided=decided,
        build_s=time.perf_counter() - started,
        sha256s=sha256s,
    )


def decide_first(folder: Path, count: int, *, middle: float) -> int:
    """Decide the queue's first ``count`` boxes (accept and reject in turn), one transaction
    each, as reviewers working through the queue would have."""
    from labeler.store.workspace import Workspace

    if count <= 0:
        return 0
    with Workspace(folder) as workspace:
        run_id = workspace.latest_run_id()
        assert run_id is not None
        candidates = workspace.review_candidates(run_id=run_id, middle=middle, limit=count)
        for n, candidate in enumerate(candidates):
            workspace.decide(
                candidate.proposal_id,
                action="accept" if n % 2 else "reject",
                base_version=candidate.version,
                reviewer="earlier-reviewer",
            )
    return len(candidates)


def cached_workspace(workdir: Path, args: argparse.Namespace) -> tuple[Path, WorkspaceFacts]:
    """The built workspace for these options (built now unless ``workdir`` holds it already)."""
    from labeler.store import workspace as workspace_module

    options = (
        f"v{workspace_module.SCHEMA_VERSION}-{args.images}x{args.per_image}-"
        f"r{args.review_share:g}-d{args.decided}-s{args.seed}"
    )
    folder = workdir / "workspaces" / options
    facts_file = folder / "facts.json"
    if facts_file.is_file():
        note(f"using the workspace built earlier in {folder}")
        return folder / "workspace", WorkspaceFacts(**json.loads(facts_file.read_text()))
    shutil.rmtree(folder, ignore_errors=True)
    note(f"building the workspace ({args.images} images x {args.per_image} proposals) ...")
    facts = build_workspace(folder / "workspace", args)
    facts_file.write_text(json.dumps(asdict(facts)))
    note(f"built in {facts.build_s:.0f} s")
    return folder / "workspace", facts


# -- 2. the service -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceFixture:
    data_dir: Path
    project_id: str
    job_id: str
    reviewer: dict[str, str]
    colleague: dict[str, str]


def make_service_data(
    data_dir: Path, database_url: str | None, workspace: Path, facts: WorkspaceFacts
) -> ServiceFixture:
    """A project, two reviewer keys, the job's images and the succeeded labeling job in the
    service database; the workspace copied to where the job keeps it."""
    import sqlalchemy as sa

    from labeler.ontology import Ontology
    from serve.api.auth import create_api_key, create_project, new_id
    from serve.api.schemas import LabelJobCreate
    from serve.db import Database, images, job_images, jobs, projects
    from serve.jobs.queue import JobKind, JobStatus
    from serve.jobs.service import job_dir

    db = Database(database_url, data_dir=data_dir)
    try:
        db.create_schema()
        project_id = create_project(db, name="bench", ontology=Ontology.from_mapping(CLASSES))
        reviewer = create_api_key(db, project_id=project_id, name="ana", role="reviewer")
        colleague = create_api_key(db, project_id=project_id, name="ben", role="reviewer")
        now = time.time()
        image_rows = [
            {
                "id": new_id("img"),
                "project_id": project_id,
                "sha256": sha,
                "filename": f"{index:06d}.jpg",
                "extension": "jpg",
                "size_bytes": 200_000 + index,
                "width": IMAGE_WH[0],
                "height": IMAGE_WH[1],
                "created_at": now,
            }
            for index, sha in enumerate(facts.sha256s)
        ]
        job_id = new_id("job")
        request = LabelJobCreate(verifier="bench")
        with db.write() as connection:
            ontology = connection.execute(
                sa.select(projects.c.ontology).where(projects.c.id == project_id)
            ).scalar_one()
            params = request.model_dump(mode="json") | {
                "image_count": len(image_rows),
                "ontology": ontology,
            }
            params.pop("image_ids")
            connection.execute(
                jobs.insert().values(
                    id=job_id,
                    project_id=project_id,
                    kind=JobKind.LABEL.value,
                    status=JobStatus.SUCCEEDED.value,
                    params=params,
                    attempts=1,
                    max_attempts=3,
                    run_after=now,
                    cancel_requested=False,
                    result={"labels": {"needs_review": facts.needs_review}},
                    created_at=now,
                    started_at=now,
                    finished_at=now,
                    updated_at=now,
                )
            )
            for start in range(0, len(image_rows), 5000):
                chunk = image_rows[start : start + 5000]
                connection.execute(images.insert(), chunk)
                connection.execute(
                    job_images.insert(),
                    [
                        {
                            "job_id": job_id,
                            "position": start + i,
                            "image_id": row["id"],
                            "status": "labeled",
                        }
                        for i, row in enumerate(chunk)
                    ],
                )
    finally:
        db.dispose()
    target = job_dir(data_dir, job_id) / "workspace"
    target.mkdir(parents=True)
    for file in workspace.iterdir():
        shutil.copy2(file, target / file.name)
    return ServiceFixture(
        data_dir=data_dir,
        project_id=project_id,
        job_id=job_id,
        reviewer={"Authorization": f"Bearer {reviewer.token}"},
        colleague={"Authorization": f"Bearer {colleague.token}"},
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def running_service(
    data_dir: Path, database_url: str | None, log: Path
) -> Iterator[tuple[str, int]]:
    """``promptlabel serve --workers 0`` on this data folder and database, in its own process
    group; its host and port once ``/healthz`` answers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMPTLABEL_")}
    env.update(HF_HUB_OFFLINE="1", YOLO_OFFLINE="True", YOLO_AUTOINSTALL="false")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PROMPTLABEL_DATA_DIR"] = str(data_dir)
    if database_url is not None:
        env["PROMPTLABEL_DATABASE_URL"] = database_url
    port = free_port()
    command = [*CLI, "serve", "--workers", "0", "--port", str(port), "--log-format", "text"]
    with log.open("ab") as stderr:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"promptlabel serve exited:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(OSError):
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                connection.request("GET", "/healthz")
                if connection.getresponse().status == 200:
                    connection.close()
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"promptlabel serve did not answer:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield "127.0.0.1", port
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()


# -- 3. the client ---------------------------------------------------------------------------------


class Client:
    """JSON over one keep-alive ``http.client`` connection."""

    def __init__(self, host: str, port: int) -> None:
        self.connection = http.client.HTTPConnection(host, port, timeout=600)

    def call(
        self, method: str, path: str, headers: dict[str, str], body: Any = None
    ) -> tuple[int, Any, float]:
        """The status, the decoded answer and the seconds from sending to the last byte."""
        payload = None if body is None else json.dumps(body).encode()
        sent = {**headers, "Content-Type": "application/json"} if payload else headers
        started = time.perf_counter()
        self.connection.request(method, path, body=payload, headers=sent)
        response = self.connection.getresponse()
        data = response.read()
        elapsed = time.perf_counter() - started
        return response.status, json.loads(data) if data else None, elapsed

    def close(self) -> None:
        self.connection.close()


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
    values = np.asarray(seconds) * 1000
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {
        "n": len(values),
        "p50_ms": round(float(p50), 2),
        "p95_ms": round(float(p95), 2),
        "p99_ms": round(float(p99), 2),
        "max_ms": round(float(values.max()), 2),
    }


def time_routes(
    client: Client, fixture: ServiceFixture, args: argparse.Namespace
) -> dict[str, dict[str, float]]:
    base = f"/v1/projects/{fixture.project_id}/jobs/{fixture.job_id}/review"
    if args.held_claims:
        status, answer, _ = client.call(
            "GET", f"{base}/queue?limit={args.held_claims}", fixture.colleague
        )
        assert status == 200 and len(answer["items"]) == args.held_claims, (status, answer)
        held = {item["proposal_id"] for item in answer["items"]}
    else:
        held = set()
    queue_s: list[float] = []
    decide_s: list[float] = []
    for round_number in range(args.warmup + args.requests):
        status, answer, queue_elapsed = client.call(
            "GET", f"{base}/queue?limit=1", fixture.reviewer
        )
        if status != 200 or len(answer["items"]) != 1:
            raise RuntimeError(f"queue: {status} {str(answer)[:500]}")
        item = answer["items"][0]
        if item["proposal_id"] in held:
            raise RuntimeError(f"the queue handed out box {item['proposal_id']}, held by another")
        decision = {
            "proposal_id": item["proposal_id"],
            "action": "accept" if round_number % 2 else "reject",
            "base_version": item["version"],
        }
        status, answer, decide_elapsed = client.call(
            "POST", f"{base}/decisions", fixture.reviewer, {"decisions": [decision]}
        )
        if status != 200 or answer["results"][0]["state"]["version"] != item["version"] + 1:
            raise RuntimeError(f"decisions: {status} {str(answer)[:500]}")
        if round_number >= args.warmup:
            queue_s.append(queue_elapsed)
            decide_s.append(decide_elapsed)
    summary_s: list[float] = []
    for _ in range(args.summary_requests):
        status, answer, elapsed = client.call("GET", f"{base}/summary", fixture.reviewer)
        if status != 200:
            raise RuntimeError(f"summary: {status} {str(answer)[:500]}")
        summary_s.append(elapsed)
    expected_decided = args.decided + args.warmup + args.requests
    if answer["needs_review_decided"] != expected_decided:
        raise RuntimeError(
            f"summary: {answer['needs_review_decided']} decided, expected {expected_decided}"
        )
    return {
        "queue": percentiles_ms(queue_s),
        "decision": percentiles_ms(decide_s),
        "summary": percentiles_ms(summary_s),
    }


@contextlib.contextmanager
def database_for(url: str | None) -> Iterator[str | None]:
    if url is None:
        yield None
        return
    from tests.fakes.postgres import scratch_schema

    with scratch_schema(url, prefix="bench_review") as schema_url:
        yield schema_url


def bench_database(
    name: str,
    url: str | None,
    workdir: Path,
    workspace: Path,
    facts: WorkspaceFacts,
    args: argparse.Namespace,
) -> dict[str, dict[str, float]]:
    folder = workdir / f"service-{name}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    with database_for(url) as database_url:
        note(f"{name}: writing the project, keys, images and job; copying the workspace ...")
        fixture = make_service_data(folder / "data", database_url, workspace, facts)
        with running_service(fixture.data_dir, database_url, folder / "serve.log") as address:
            note(f"{name}: timing ...")
            client = Client(*address)
            try:
                return time_routes(client, fixture, args)
            finally:
                client.close()


ROUTE_LABELS = {
    "queue": "`GET /queue?limit=1` (the next item)",
    "decision": "`POST /decisions` (one decision)",
    "summary": "`GET /summary`",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--database-url",
        help="also run on this PostgreSQL (in a fresh schema of it); SQLite always runs",
    )
    parser.add_argument("--only-postgres", action="store_true", help="skip the SQLite run")
    parser.add_argument("--images", type=int, default=50_000, help="(50000)")
    parser.add_argument("--per-image", type=int, default=20, help="proposals per image (20)")
    parser.add_argument(
        "--review-share",
        type=float,
        default=0.15,
        help="share of the boxes the route sends to review (0.15)",
    )
    parser.add_argument("--decided", type=int, default=10_000, help="decided before timing")
    parser.add_argument("--held-claims", type=int, default=50, help="a colleague's claims (50)")
    parser.add_argument("--requests", type=int, default=300, help="timed rounds (300)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed rounds first (20)")
    parser.add_argument("--summary-requests", type=int, default=5, help="(5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="keep the workspace and logs here")
    parser.add_argument("--json", action="store_true", help="results as JSON on stdout")
    args = parser.parse_args()
    if args.only_postgres and not args.database_url:
        parser.error("--only-postgres needs --database-url")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    with contextlib.ExitStack() as stack:
        if args.workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-rv-")))
        else:
            workdir = args.workdir.resolve()
            workdir.mkdir(parents=True, exist_ok=True)
        workspace, facts = cached_workspace(workdir, args)
        databases: list[tuple[str, str | None]] = []
        if not args.only_postgres:
            databases.append(("SQLite", None))
        if args.database_url:
            databases.append(("PostgreSQL", args.database_url))
        results = {
            name: bench_database(name, url, workdir, workspace, facts, args)
            for name, url in databases
        }

    command = shlex.join(["benchmarks/bench_review.py", *sys.argv[1:]])
    workspace_facts = {k: v for k, v in asdict(facts).items() if k != "sha256s"}
    if args.json:
        print(json.dumps({"command": command, "workspace": workspace_facts, "results": results}))
        return
    print(
        f"workspace: {facts.proposals:,} proposals on {facts.images:,} images, "
        f"{facts.needs_review:,} routed to review, {facts.decided:,} of them decided before "
        f"timing (built in {facts.build_s:.0f} s); {args.held_claims} held by a colleague; "
        f"{args.requests} timed rounds after {args.warmup}"
    )
    print()
    print("| database | route | requests | p50 ms | p95 ms | p99 ms | max ms |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, routes in results.items():
        for route_name, stats in routes.items():
            print(
                f"| {name} | {ROUTE_LABELS[route_name]} | {stats['n']} | {stats['p50_ms']:.1f} "
                f"| {stats['p95_ms']:.1f} | {stats['p99_ms']:.1f} | {stats['max_ms']:.1f} |"
            )
    print()
    print(f"command: `python {command}`")


if __name__ == "__main__":
    main()
