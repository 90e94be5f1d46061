"""How fast is the HTTP SERVICE? Job submissions, prediction overhead, worker scaling.

Everything runs as a user would run it: ``promptlabel serve`` and ``promptlabel worker`` are
separate processes started here, the project and its key come from ``promptlabel projects create``
and ``promptlabel keys create``, and the clients speak HTTP over loopback. The database is SQLite
in the data folder, or PostgreSQL with ``--database-url`` (each part then works in a fresh schema
of that database, dropped afterwards, so the same database can be used again).

1. submissions: ``serve --workers 0`` (no worker: the queue only fills), 50 concurrent clients
   (asyncio, one ``httpx.AsyncClient`` with 50 connections) POST labeling jobs, each with its own
   Idempotency-Key; submissions/s and latency percentiles; then one client alone (the time one
   submit costs, without queueing); then a check that every submit got 201 and that the jobs in
   the database (listed over the API, counted in SQL) are exactly those.
2. predict: a full-size YOLO11n (3 classes, random weights with recalibrated BatchNorm, as in
   benchmarks/bench_runtime.py) exported to ONNX at 640, imported into the project's registry and
   promoted. One client POSTs the same 1280x720 JPEG to ``/predict``, as the raw body and as a
   multipart form; the bare device runtime runs the route's own steps without HTTP in this
   process (``serve.runtime.onnx.read_image_bytes`` on the same bytes,
   ``load_runtime(onnx, conf=0.1).predict([image])``, boxes over 0.25).
   Both use onnxruntime's default thread count (one per physical core: the route calls
   ``load_runtime`` without ``threads``, and so does this script), and all are interleaved
   request by request, the order swapped every round, so machine noise hits each. Each request
   is built once, as bytes, and sent over a keep-alive socket with ``sendall``; the answer is
   read by its Content-Length (``LeanHttpClient``): the client's work is not the service's
   overhead (httpx costs about 1 ms per request of its own, ``http.client`` about 0.3 ms). Two
   floors are timed alongside: an authenticated GET of the project (any request that checks a
   key) and the HTTP floor, the same body posted to a no-op ASGI app on the same uvicorn (C
   parser and event loop) in its own process, which answers as much JSON at once: what HTTP
   over loopback costs on this machine before the app does anything. Each predict answer's
   ``Server-Timing`` header also gives the route's own runtime time (decode + run) and the
   app's time for the request, so the overhead is measured a second way, within each request,
   free of the run-to-run noise of the model itself.
3. workers: a loopback OpenAI-compatible VLM (tests/fakes/vlm_server.py) answering after
   ``--vlm-latency`` s, a tiny random Grounding DINO as the detector, and labeling jobs of
   ``--images-per-job`` fresh images each. Every worker process first finishes a warm-up job (its
   imports and model load are then behind it); the measured span runs from the first measured
   job's ``started_at`` to the last one's ``finished_at`` (from the API). First one worker
   process, then a second one joins (the first stays warm) on a fresh set of jobs. Each worker
   gets ``--worker-threads`` torch threads (default half the CPUs), so that two workers on one
   machine stand in for two machines rather than fight over the same cores.

Run ``python benchmarks/bench_service.py --help`` for the options; ``--quick`` is a short run
(fewer requests and jobs; the numbers are noisier).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import itertools
import json
import math
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # for tests.fakes

from labeler.demo.synthetic import make_shapes_image  # noqa: E402
from tests.fakes.postgres import scratch_schema  # noqa: E402

PARTS = ("submissions", "predict", "workers")
CLI = [sys.executable, "-c", "from serve.cli.main import main; main()"]
ONTOLOGY_YAML = "classes:\n  shape: a shape\n"
CONF = 0.25  # the predict route's default score threshold

# Run in a fresh interpreter so that torch, transformers and Ultralytics (which patches
# PIL.Image.open) never load into this process, where the bare runtime is timed.
BUILD_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    what, out = sys.argv[1], Path(sys.argv[2])
    if what == "detector":
        from labeler.demo.tiny_models import build_tiny_grounding_dino

        build_tiny_grounding_dino(out)
    else:
        from tests.fakes.students import build_student, export_onnx

        weights = build_student(
            out.parent / "student", calibration_imgsz=320, class_bias=float(sys.argv[4])
        )
        export_onnx(weights, out, imgsz=int(sys.argv[3]))
    """
)


# The HTTP floor: a no-op ASGI app on uvicorn as ``promptlabel serve`` runs it (its defaults pick
# uvloop and httptools). It reads the whole body and answers JSON of a predict answer's size.
NOOP_SERVER_SCRIPT = textwrap.dedent(
    """
    import sys

    import uvicorn

    ANSWER = b'{"model_version": "v1", "image_wh": [1280, 720], "detections": []}'.ljust(160)

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        more_body = True
        while more_body:
            message = await receive()
            more_body = message.get("more_body", False)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(ANSWER)).encode()),
            (b"server-timing", b"app;dur=0"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": ANSWER})

    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
    """
)


class LeanHttpClient:
    """HTTP/1.1 on one keep-alive socket, with next to no client work: a request is bytes built
    once (``build``) and sent with ``sendall``; the answer is read by its Content-Length."""

    def __init__(self, host: str, port: int, timeout_s: float = 120.0) -> None:
        self.host = host
        self.sock = socket.create_connection((host, port), timeout=timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.pending = b""

    def build(self, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    def send(self, request: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        """Send one built request; its status, headers (lower-case names) and body."""
        self.sock.sendall(request)
        data = self.pending
        while b"\r\n\r\n" not in data:
            data += self._recv()
        head, _, data = data.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = [
            (name.strip().lower(), value.strip())
            for name, _, value in (line.partition(":") for line in header_lines)
        ]
        lengths = [int(value) for name, value in headers if name == "content-length"]
        if not lengths:
            raise RuntimeError(f"an answer without Content-Length: {head[:300]!r}")
        while len(data) < lengths[0]:
            data += self._recv()
        self.pending = data[lengths[0] :]
        return int(status_line.split()[1]), headers, data[: lengths[0]]

    def _recv(self) -> bytes:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise RuntimeError("the server closed the connection")
        return chunk

    def close(self) -> None:
        self.sock.close()


# -- processes -------------------------------------------------------------------------------------


class Processes:
    """Child processes, each in its own process group, stopped (group and all) by ``stop_all``."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen[bytes]] = []

    def start(
        self, command: list[str], *, env: dict[str, str], log: Path
    ) -> subprocess.Popen[bytes]:
        log.parent.mkdir(parents=True, exist_ok=True)
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
        self.running.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
        """SIGTERM the process group (a worker gives its job back), SIGKILL if it lingers."""
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.running = [p for p in self.running if p is not process]

    def stop_all(self) -> None:
        for process in reversed(list(self.running)):
            self.stop(process)


def log_tail(log: Path, chars: int = 3000) -> str:
    try:
        return log.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def base_env() -> dict[str, str]:
    """This environment without PROMPTLABEL_* (so only what a part sets applies), offline."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMPTLABEL_")}
    env.update(HF_HUB_OFFLINE="1", YOLO_OFFLINE="True", YOLO_AUTOINSTALL="false")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def run_cli(args: list[str], env: dict[str, str]) -> str:
    """Run a ``promptlabel`` command to completion; its last stdout line (ids, tokens)."""
    result = subprocess.run(
        [*CLI, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"promptlabel {shlex.join(args)} failed:\n{result.stderr[-2000:]}")
    return result.stdout.strip().splitlines()[-1]


def build(what: str, out: Path, *extra: str) -> Path:
    """Build the tiny detector or the exported student in a fresh interpreter (see BUILD_SCRIPT)."""
    if not out.exists():
        result = subprocess.run(
            [sys.executable, "-c", BUILD_SCRIPT, what, str(out), *extra],
            cwd=REPO_ROOT,
            env=base_env(),
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"building the {what} failed:\n{result.stderr[-3000:]}")
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def connect_when_up(
    host: str, port: int, process: subprocess.Popen[bytes], log: Path
) -> LeanHttpClient:
    """A client of the server that ``process`` starts on ``port``, once it accepts connections."""
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited ({process.returncode}):\n{log_tail(log)}")
        try:
            return LeanHttpClient(host, port)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the server did not accept connections:\n{log_tail(log)}"
                ) from None
            time.sleep(0.1)


# -- the database and the service ----------------------------------------------------------------


@contextlib.contextmanager
def database_for(url: str | None) -> Iterator[str | None]:
    """None (SQLite in the data folder), or ``url`` with its search_path on a fresh schema."""
    if url is None:
        yield None
        return
    with scratch_schema(url, prefix="bench") as schema_url:
        yield schema_url


@dataclass
class Service:
    """A running ``promptlabel serve`` with one project (one class) and its API key."""

    base_url: str
    project_id: str
    headers: dict[str, str]
    data_dir: Path
    env: dict[str, str]
    database_url: str | None
    logs: Path
    process: subprocess.Popen[bytes]
    log: Path

    def url(self, path: str = "") -> str:
        return f"/v1/projects/{self.project_id}{path}"


def start_service(
    processes: Processes,
    folder: Path,
    *,
    database_url: str | None,
    detector_dir: Path,
    extra_env: dict[str, str] | None = None,
) -> Service:
    data_dir = folder / "data"
    logs = folder / "logs"
    env = base_env() | {
        "PROMPTLABEL_DATA_DIR": str(data_dir),
        "PROMPTLABEL_SERVICE_DETECTORS": json.dumps({"default": str(detector_dir)}),
        **(extra_env or {}),
    }
    if database_url is not None:
        env["PROMPTLABEL_DATABASE_URL"] = database_url
    ontology = folder / "ontology.yaml"
    ontology.parent.mkdir(parents=True, exist_ok=True)
    ontology.write_text(ONTOLOGY_YAML)
    data_args = ["--data-dir", str(data_dir)]
    project_id = run_cli(
        ["projects", "create", "bench", "--ontology", str(ontology), *data_args], env
    )
    token = run_cli(["keys", "create", "--project", "bench", "--name", "bench", *data_args], env)
    port = free_port()
    log = logs / "serve.log"
    command = ["serve", "--workers", "0", "--port", str(port), "--log-format", "text", *data_args]
    process = processes.start([*CLI, *command], env=env, log=log)
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"promptlabel serve exited ({process.returncode}):\n{log_tail(log)}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                break
        if time.monotonic() > deadline:
            raise RuntimeError(f"promptlabel serve did not answer /healthz:\n{log_tail(log)}")
        time.sleep(0.1)
    return Service(
        base_url=base_url,
        project_id=project_id,
        headers={"Authorization": f"Bearer {token}"},
        data_dir=data_dir,
        env=env,
        database_url=database_url,
        logs=logs,
        process=process,
        log=log,
    )


def png_bytes(seed: int, image_wh: tuple[int, int] = (160, 120)) -> bytes:
    """A small PNG of shapes on a textured background; each seed gives different bytes."""
    image, _ = make_shapes_image(np.random.default_rng(seed), image_wh, 3)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def upload(client: httpx.Client, service: Service, seeds: list[int]) -> list[str]:
    """Upload one PNG per seed; their image ids, in seed order."""
    files = [("files", (f"img-{seed}.png", png_bytes(seed), "image/png")) for seed in seeds]
    response = client.post(service.url("/images"), headers=service.headers, files=files)
    if response.status_code != 201:
        raise RuntimeError(f"upload: {response.status_code} {response.text[:500]}")
    by_name = {image["filename"]: image["id"] for image in response.json()["accepted"]}
    return [by_name[f"img-{seed}.png"] for seed in seeds]


def list_all_jobs(client: httpx.Client, service: Service) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    while True:
        response = client.get(
            service.url("/jobs"),
            headers=service.headers,
            params={"limit": 500, "offset": len(found)},
        )
        response.raise_for_status()
        page = response.json()
        found.extend(page)
        if len(page) < 500:
            return found


def percentiles_ms(seconds: list[float]) -> tuple[float, float, float]:
    """p50, p99 and max, in milliseconds."""
    values = np.asarray(seconds) * 1e3
    return float(np.percentile(values, 50)), float(np.percentile(values, 99)), float(values.max())


def database_label(url: str | None) -> str:
    if url is None:
        return "SQLite (data folder)"
    import sqlalchemy as sa

    return "PostgreSQL " + sa.make_url(url).render_as_string(hide_password=True).split("?")[0]


# -- 1. submissions --------------------------------------------------------------------------------


@dataclass
class Submitted:
    status: int  # 0: no HTTP answer (``error`` says why)
    seconds: float
    job_id: str | None
    error: str | None = None


async def submit_jobs(
    service: Service, *, total: int, clients: int, key_prefix: str
) -> tuple[list[Submitted], float]:
    """``total`` label-job submits from ``clients`` concurrent loops; results and wall seconds."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    results: list[Submitted] = []
    numbers = itertools.count()
    async with httpx.AsyncClient(base_url=service.base_url, limits=limits, timeout=120) as client:

        async def one_client() -> None:
            while (number := next(numbers)) < total:
                headers = {**service.headers, "Idempotency-Key": f"{key_prefix}-{number}"}
                started = time.perf_counter()
                try:
                    response = await client.post(
                        service.url("/label-jobs"), json={}, headers=headers
                    )
                except httpx.TransportError as error:
                    # Counted (status 0) and shown in the check line, not fatal to the run.
                    seconds = time.perf_counter() - started
                    results.append(Submitted(0, seconds, None, f"{type(error).__name__}"))
                    continue
                seconds = time.perf_counter() - started
                job_id = response.json().get("id") if response.status_code == 201 else None
                results.append(Submitted(response.status_code, seconds, job_id))

        wall = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        wall = time.perf_counter() - wall
    return results, wall


def count_in_sql(service: Service) -> tuple[int, int]:
    """(jobs, job_images rows) of the project, counted straight in the database."""
    import sqlalchemy as sa

    from serve.db import Database, job_images, jobs

    db = Database(service.database_url, data_dir=service.data_dir, pool_size=1)
    try:
        with db.read() as connection:
            job_count = connection.execute(
                sa.select(sa.func.count()).where(jobs.c.project_id == service.project_id)
            ).scalar_one()
            image_rows = connection.execute(
                sa.select(sa.func.count())
                .select_from(job_images.join(jobs, jobs.c.id == job_images.c.job_id))
                .where(jobs.c.project_id == service.project_id)
            ).scalar_one()
    finally:
        db.engine.dispose()
    return int(job_count), int(image_rows)


SUBMIT_ROUTE = "/v1/projects/{project_id}/label-jobs"


def request_seconds_buckets(service: Service, route: str) -> dict[float, float]:
    """The service's own latency histogram for POSTs to ``route``: upper bound -> cumulative count.

    Timed inside the app (from the first middleware to the response), so it leaves out what
    happens before the app sees a request: the event loop's and the kernel's queues, the client.
    """
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{service.base_url}/metrics", headers=service.headers, timeout=30).text
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "promptlabel_http_request_seconds":
            continue
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name.endswith("_bucket")
                and labels.get("route") == route
                and labels.get("method") == "POST"
            ):
                buckets[float(labels["le"])] = sample.value
    return buckets


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The smallest bucket bound under which a fraction ``q`` of the new observations fall."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    return next((b for b, c in zip(bounds, counts, strict=True) if c >= q * total), math.inf)


def bench_submissions(args: argparse.Namespace, folder: Path, detector_dir: Path) -> bool:
    processes = Processes()
    with database_for(args.database_url) as database_url:
        try:
            service = start_service(
                processes, folder, database_url=database_url, detector_dir=detector_dir
            )
            with httpx.Client(base_url=service.base_url, timeout=120) as client:
                upload(client, service, list(range(args.upload_images)))
            warm, _ = asyncio.run(
                submit_jobs(service, total=args.clients, clients=args.clients, key_prefix="warm")
            )
            in_app_before = request_seconds_buckets(service, SUBMIT_ROUTE)
            results, wall = asyncio.run(
                submit_jobs(
                    service, total=args.submissions, clients=args.clients, key_prefix="bench"
                )
            )
            in_app_after = request_seconds_buckets(service, SUBMIT_ROUTE)
            sequential, sequential_wall = asyncio.run(
                submit_jobs(service, total=args.sequential, clients=1, key_prefix="one")
            )
            with httpx.Client(base_url=service.base_url, timeout=120) as client:
                listed = list_all_jobs(client, service)
            job_count, image_rows = count_in_sql(service)
        finally:
            processes.stop_all()

    statuses: dict[int, int] = {}
    everything = [*warm, *results, *sequential]
    for result in everything:
        statuses[result.status] = statuses.get(result.status, 0) + 1
    transport_errors: dict[str, int] = {}
    for result in everything:
        if result.error is not None:
            transport_errors[result.error] = transport_errors.get(result.error, 0) + 1
    submitted_ids = {r.job_id for r in everything if r.job_id is not None}
    listed_ids = {job["id"] for job in listed}
    submits = len(everything)
    ok = (
        statuses == {201: submits}
        and len(submitted_ids) == submits
        and listed_ids == submitted_ids
        and len(listed) == job_count == submits
        and image_rows == submits * args.upload_images
    )
    print()
    print(
        f"### Submissions: {database_label(database_url)}, {args.clients} concurrent clients, "
        f"{args.upload_images} images per job, `serve --workers 0`"
    )
    print()
    print("| clients | submits | wall s | submits/s | p50 ms | p99 ms | max ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for clients, timed, seconds in (
        (args.clients, results, wall),
        (1, sequential, sequential_wall),
    ):
        p50, p99, worst = percentiles_ms([r.seconds for r in timed])
        print(
            f"| {clients} | {len(timed)} | {seconds:.2f} | {len(timed) / seconds:.0f} "
            f"| {p50:.1f} | {p99:.1f} | {worst:.1f} |"
        )
    print()
    print(
        f"inside the app ({args.clients} clients, from the service's own histogram, bucket "
        f"bounds): p50 <= {bucket_quantile(in_app_before, in_app_after, 0.5) * 1000:.0f} ms, "
        f"p99 <= {bucket_quantile(in_app_before, in_app_after, 0.99) * 1000:.0f} ms"
    )
    print()
    print(
        f"check ({len(warm)} warm-up + {len(results) + len(sequential)} timed submits): "
        f"statuses {statuses}"
        f"{f' (0: no answer, {transport_errors})' if transport_errors else ''}; "
        f"{len(submitted_ids)} distinct job ids; {len(listed)} jobs listed by the API "
        f"({'the same ids' if listed_ids == submitted_ids else 'NOT the submitted ids'}); "
        f"SQL: {job_count} jobs, {image_rows} job_images rows -> {'OK' if ok else 'FAILED'}"
    )
    return ok


# -- 2. predict ------------------------------------------------------------------------------------


def jpeg_bytes(image_wh: tuple[int, int]) -> bytes:
    image, _ = make_shapes_image(np.random.default_rng(1), image_wh, 6)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def register_production(data_dir: Path, project_id: str, onnx_path: Path) -> str:
    """Import the ONNX file into the project's registry and make it production."""
    from distill.registry import Registry
    from serve.jobs.worker import registry_dir

    def no_evaluation(*_: Any, **__: Any) -> dict[str, Any]:
        raise AssertionError("the first promotion compares with nothing")

    with Registry(registry_dir(data_dir, project_id)) as registry:
        version = registry.import_model(onnx_path)
        decision = registry.promote(version.version, evaluate=no_evaluation, force=True)
        if not decision.promoted:
            raise RuntimeError(f"promotion refused: {decision.reason}")
    return version.version


def bench_predict(args: argparse.Namespace, folder: Path, onnx_path: Path) -> bool:
    from labeler.core.images import DEFAULT_MAX_PIXELS
    from serve.runtime.onnx import load_runtime, read_image_bytes

    data = jpeg_bytes((args.width, args.height))
    request = httpx.Request("POST", "http://x/", files={"file": ("frame.jpg", data, "image/jpeg")})
    form_body = request.read()
    form_type = request.headers["content-type"]
    detector = load_runtime(onnx_path, conf=0.1)  # as serve/api/routes/models.py loads it

    max_pixels = DEFAULT_MAX_PIXELS  # the service's default

    def bare() -> int:
        # The route's own steps without HTTP: decode the bytes, run, keep boxes over conf.
        image = read_image_bytes(data, name="frame.jpg", max_pixels=max_pixels)
        detections = detector.predict([image])[0]
        return int((detections.confidence >= CONF).sum())

    processes = Processes()
    forms = {"raw": (data, "image/jpeg"), "multipart": (form_body, form_type)}
    timed_keys = ("raw", "multipart", "bare", "get", "http")
    seconds: dict[str, list[float]] = {key: [] for key in timed_keys}
    # Each endpoint form's Server-Timing, request by request (the warm-up's come first).
    server_ms: dict[str, list[dict[str, float]]] = {form: [] for form in forms}
    boxes: dict[str, set[int]] = {"raw": set(), "multipart": set(), "bare": set()}
    with database_for(args.database_url) as database_url:
        clients: list[LeanHttpClient] = []
        try:
            service = start_service(
                processes, folder, database_url=database_url, detector_dir=folder / "unused"
            )
            version = register_production(service.data_dir, service.project_id, onnx_path)
            noop_port = free_port()
            noop_log = folder / "logs" / "noop.log"
            noop = processes.start(
                [sys.executable, "-c", NOOP_SERVER_SCRIPT, str(noop_port)],
                env=base_env(),
                log=noop_log,
            )
            host, port = service.base_url.removeprefix("http://").split(":")
            client = LeanHttpClient(host, int(port))
            clients.append(client)
            noop_client = connect_when_up(host, noop_port, noop, noop_log)
            clients.append(noop_client)
            requests = {
                form: client.build(
                    "POST",
                    service.url("/predict"),
                    {**service.headers, "Content-Type": content_type},
                    body,
                )
                for form, (body, content_type) in forms.items()
            }
            get_request = client.build("GET", service.url(), service.headers)
            http_request = noop_client.build("POST", "/", {"Content-Type": "image/jpeg"}, data)

            def endpoint(form: str) -> int:
                status, headers, payload = client.send(requests[form])
                if status != 200:
                    raise RuntimeError(f"predict: {status} {payload[:500]!r}")
                timing = server_timing_ms([v for name, v in headers if name == "server-timing"])
                server_ms[form].append(timing)
                return len(json.loads(payload)["detections"])

            def project_get() -> int:
                status, _, payload = client.send(get_request)
                if status != 200:
                    raise RuntimeError(f"project: {status} {payload[:500]!r}")
                return 0

            def http_floor() -> int:
                status, _, payload = noop_client.send(http_request)
                if status != 200:
                    raise RuntimeError(f"no-op app: {status} {payload[:500]!r}")
                return 0

            methods: dict[str, Callable[[], int]] = {
                "raw": partial(endpoint, "raw"),
                "multipart": partial(endpoint, "multipart"),
                "bare": bare,
                "get": project_get,
                "http": http_floor,
            }
            for _ in range(args.predict_warmup):
                for method in methods.values():
                    method()
            for round_number in range(args.predict_requests):
                order = list(methods) if round_number % 2 == 0 else list(reversed(methods))
                for key in order:
                    started = time.perf_counter()
                    found = methods[key]()
                    seconds[key].append(time.perf_counter() - started)
                    if key in boxes:
                        boxes[key].add(found)
        finally:
            for lean_client in clients:
                lean_client.close()
            processes.stop_all()

    bare_ms = percentiles_ms(seconds["bare"])
    print()
    print(
        f"### Predict: {database_label(database_url)}; YOLO11n (3 classes, random weights, "
        f"calibrated BatchNorm, class bias {args.class_bias:g}) ONNX {args.imgsz}x{args.imgsz} "
        f"as production {version}; "
        f"one {args.width}x{args.height} JPEG ({len(data) / 1024:.0f} KiB), "
        f"{args.predict_requests} interleaved rounds after {args.predict_warmup} warm-up; "
        f"onnxruntime default threads on both sides; {os.cpu_count()} CPUs"
    )
    print()
    print("| what | p50 ms | p99 ms | max ms | boxes (conf >= 0.25) |")
    print("|---|---:|---:|---:|---:|")
    rows = [
        ("raw", "POST /predict, raw body (HTTP, auth, decode, run, JSON)"),
        ("multipart", "POST /predict, multipart form (the same and form parsing)"),
        ("bare", "bare runtime: read_image_bytes(bytes) + load_runtime(...).predict([image])"),
        ("get", "(floor) authenticated GET /v1/projects/{id}"),
        ("http", "(floor) HTTP: the same body to a no-op ASGI app on uvicorn"),
    ]
    for key, label in rows:
        p50, p99, worst = percentiles_ms(seconds[key])
        box_counts = ", ".join(map(str, sorted(boxes.get(key, ()))))
        print(f"| {label} | {p50:.1f} | {p99:.1f} | {worst:.1f} | {box_counts} |")
    print()
    same_boxes = boxes["raw"] == boxes["multipart"] == boxes["bare"]
    for form in forms:
        endpoint_ms = percentiles_ms(seconds[form])
        paired_ms = (np.asarray(seconds[form]) - np.asarray(seconds["bare"])) * 1e3
        print(
            f"{form}: p99 {endpoint_ms[1] - bare_ms[1]:+.1f} ms over bare (target <= 5), p50 "
            f"{endpoint_ms[0] - bare_ms[0]:+.1f} ms; per round endpoint - bare: p50 "
            f"{np.percentile(paired_ms, 50):+.1f} ms, p99 {np.percentile(paired_ms, 99):+.1f} ms"
        )
    print(f"same box count everywhere: {'yes' if same_boxes else 'NO'}")
    print()
    print(
        "Within each request (the route times its runtime call, decode + run, and the app its "
        "whole handling; both in the Server-Timing header):"
    )
    print()
    print("| endpoint time outside the runtime call | p50 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|")
    http_p50, http_p99, http_max = percentiles_ms(seconds["http"])
    print(
        f"| (floor) HTTP alone: the same body to a no-op ASGI app | {http_p50:.2f} | "
        f"{http_p99:.2f} | {http_max:.2f} |"
    )
    for form in forms:
        timed = server_ms[form][-len(seconds[form]) :]
        total_ms = np.asarray(seconds[form]) * 1e3
        runtime_ms = np.asarray([t["runtime"] for t in timed])
        app_ms = np.asarray([t["app"] for t in timed])
        within = [
            ("total: client-measured request - runtime", total_ms - runtime_ms),
            ("in the app: app - runtime (auth, body, thread hops, JSON)", app_ms - runtime_ms),
            (
                "outside the app: client-measured - app (client, loopback, uvicorn)",
                total_ms - app_ms,
            ),
        ]
        for label, values in within:
            p50, p99, worst = np.percentile(values, [50, 99, 100])
            print(f"| {form}: {label} | {p50:.2f} | {p99:.2f} | {worst:.2f} |")
    return same_boxes


def server_timing_ms(values: list[str] | None) -> dict[str, float]:
    """``Server-Timing`` headers (``app;dur=1.2``, ``runtime;dur=3.4``) as ``{"app": 1.2, ...}``."""
    timings: dict[str, float] = {}
    for metric in ", ".join(values or []).split(","):
        name, _, params = metric.strip().partition(";")
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "dur":
                timings[name] = float(value)
    return timings


# -- 3. workers ------------------------------------------------------------------------------------


@dataclass
class WorkerPool:
    """``promptlabel worker`` processes of one service, each with its own log."""

    processes: Processes
    service: Service
    env: dict[str, str]
    workers: list[tuple[subprocess.Popen[bytes], Path]] = field(default_factory=list)

    def add(self) -> Path:
        log = self.service.logs / f"worker-{len(self.workers) + 1}.log"
        command = [*CLI, "worker", "--log-format", "text"]
        self.workers.append((self.processes.start(command, env=self.env, log=log), log))
        return log

    def check_alive(self) -> None:
        for process, log in self.workers:
            if process.poll() is not None:
                raise RuntimeError(f"a worker exited ({process.returncode}):\n{log_tail(log)}")


def finished_jobs(log: Path) -> int:
    try:
        return log.read_text(errors="replace").count("job succeeded")
    except OSError:
        return 0


def submit_label_job(client: httpx.Client, service: Service, image_ids: list[str], key: str) -> str:
    body = {
        "image_ids": image_ids,
        "verifier": "fake",
        "box_threshold": 0,
        "text_threshold": 0,
        "max_det": 2,
    }
    response = client.post(
        service.url("/label-jobs"), json=body, headers={**service.headers, "Idempotency-Key": key}
    )
    if response.status_code != 201:
        raise RuntimeError(f"submit: {response.status_code} {response.text[:500]}")
    return str(response.json()["id"])


def wait_for_jobs(
    client: httpx.Client, service: Service, pool: WorkerPool, job_ids: list[str], timeout_s: float
) -> list[dict[str, Any]]:
    """The jobs once every one of them has ended; raises if one did not succeed."""
    deadline = time.monotonic() + timeout_s
    while True:
        jobs = []
        for job_id in job_ids:
            response = client.get(service.url(f"/jobs/{job_id}"), headers=service.headers)
            response.raise_for_status()
            jobs.append(response.json())
        if all(job["status"] in {"succeeded", "failed", "cancelled"} for job in jobs):
            failed = [job for job in jobs if job["status"] != "succeeded"]
            if failed:
                raise RuntimeError(f"{len(failed)} job(s) did not succeed: {failed[0]['error']}")
            return jobs
        pool.check_alive()
        if time.monotonic() > deadline:
            states = [job["status"] for job in jobs]
            raise RuntimeError(f"jobs still not done after {timeout_s:.0f} s: {states}")
        time.sleep(0.2)


def warm_up(
    client: httpx.Client,
    service: Service,
    pool: WorkerPool,
    log: Path,
    image_ids: Iterator[str],
    keys: Iterator[int],
) -> int:
    """Give one-image jobs until the worker writing ``log`` has finished one; how many were run."""
    given = 0
    while finished_jobs(log) == 0:
        if given >= 10:
            raise RuntimeError(f"the worker never got a warm-up job:\n{log_tail(log)}")
        job_id = submit_label_job(client, service, [next(image_ids)], f"warm-{next(keys)}")
        wait_for_jobs(client, service, pool, [job_id], timeout_s=300)
        given += 1
        deadline = time.monotonic() + 5  # the log line follows the database write
        while finished_jobs(log) == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
    return given


def seconds_of(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


@dataclass
class ScalingRun:
    workers: int
    jobs: list[dict[str, Any]]
    vlm_calls: int
    peak_vlm_in_flight: int

    @property
    def span_s(self) -> float:
        started = min(seconds_of(job["started_at"]) for job in self.jobs)
        finished = max(seconds_of(job["finished_at"]) for job in self.jobs)
        return finished - started

    @property
    def jobs_per_min(self) -> float:
        return len(self.jobs) / self.span_s * 60

    @property
    def mean_job_s(self) -> float:
        return statistics.mean(
            seconds_of(job["finished_at"]) - seconds_of(job["started_at"]) for job in self.jobs
        )

    def mean_stage_s(self, stage: str) -> float:
        return statistics.mean(
            float(job["result"]["timings_s"].get(stage, 0.0)) for job in self.jobs
        )

    def verifier_total(self, what: str) -> int:
        """Summed over the jobs' results: ``calls`` or ``errors``."""
        return sum(int(job["result"]["verifier"][what]) for job in self.jobs)


def bench_workers(args: argparse.Namespace, folder: Path, detector_dir: Path) -> bool:
    from tests.fakes.vlm_server import FakeVLMServer

    processes = Processes()
    runs: list[ScalingRun] = []
    per_run = args.jobs * args.images_per_job
    warm_images = 20
    with (
        database_for(args.database_url) as database_url,
        FakeVLMServer(latency_s=args.vlm_latency) as vlm,
    ):
        try:
            service = start_service(
                processes,
                folder,
                database_url=database_url,
                detector_dir=detector_dir,
                extra_env={
                    "PROMPTLABEL_SERVICE_VERIFIERS": json.dumps({"fake": "openai:fake-vlm"}),
                    "PROMPTLABEL_SERVICE_VERIFIER_URL": vlm.base_url,
                },
            )
            env = service.env | {
                "OPENAI_API_KEY": "anything",
                "PROMPTLABEL_CONCURRENCY": str(args.vlm_concurrency),
                "PROMPTLABEL_SERVICE_DEVICE": "cpu",
                "PROMPTLABEL_SERVICE_VERIFIERS": json.dumps({"fake": "openai:fake-vlm"}),
                "PROMPTLABEL_SERVICE_VERIFIER_URL": vlm.base_url,
                # An idle worker looks for work this often; only the first claim waits on it.
                "PROMPTLABEL_POLL_INTERVAL_S": "0.2",
                # Each worker process gets this many torch/OpenMP threads, in both runs: two
                # workers on one small machine would otherwise fight over the same cores, which
                # workers on separate machines (what the second process stands for) do not.
                "OMP_NUM_THREADS": str(args.worker_threads),
                "MKL_NUM_THREADS": str(args.worker_threads),
            }
            pool = WorkerPool(processes, service, env)
            with httpx.Client(base_url=service.base_url, timeout=120) as client:
                image_ids = upload(client, service, list(range(warm_images + 2 * per_run)))
                warm_ids = iter(image_ids[:warm_images])
                keys = itertools.count()
                for run_number, workers in enumerate((1, 2)):
                    while len(pool.workers) < workers:
                        warm_up(client, service, pool, pool.add(), warm_ids, keys)
                    vlm.reset()
                    fresh = image_ids[warm_images + run_number * per_run :][:per_run]
                    job_ids = [
                        submit_label_job(
                            client,
                            service,
                            fresh[i * args.images_per_job : (i + 1) * args.images_per_job],
                            f"run{run_number}-{i}",
                        )
                        for i in range(args.jobs)
                    ]
                    jobs = wait_for_jobs(client, service, pool, job_ids, timeout_s=900)
                    runs.append(
                        ScalingRun(workers, jobs, len(vlm.model_requests), vlm.peak_in_flight)
                    )
        finally:
            processes.stop_all()

    print()
    print(
        f"### Workers: {database_label(database_url)}; {args.jobs} labeling jobs x "
        f"{args.images_per_job} fresh images per run, tiny Grounding DINO (CPU, max_det 2), "
        f"fake VLM {args.vlm_latency:g} s per answer, PROMPTLABEL_CONCURRENCY="
        f"{args.vlm_concurrency}, OMP_NUM_THREADS={args.worker_threads} per worker; "
        "span = first started_at to last finished_at, warm workers"
    )
    print()
    print(
        "| worker processes | jobs | verifier calls | of them errors | VLM requests served "
        "| peak VLM in flight | span s | mean job s (propose, verify) | jobs/min | vs 1 |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for run in runs:
        print(
            f"| {run.workers} | {len(run.jobs)} | {run.verifier_total('calls')} "
            f"| {run.verifier_total('errors')} | {run.vlm_calls} | {run.peak_vlm_in_flight} "
            f"| {run.span_s:.2f} | {run.mean_job_s:.2f} ({run.mean_stage_s('propose'):.2f}, "
            f"{run.mean_stage_s('verify'):.2f}) | {run.jobs_per_min:.1f} "
            f"| {run.jobs_per_min / runs[0].jobs_per_min:.2f}x |"
        )
    print()
    ratio = runs[1].jobs_per_min / runs[0].jobs_per_min
    print(f"scaling 2 workers / 1 worker: {ratio:.2f}x (target >= 1.8)")
    errors = sum(run.verifier_total("errors") for run in runs)
    if errors:
        # A verifier error sends the box to review without waiting for the VLM: such jobs are
        # faster than real ones, so the numbers above do not measure labeling throughput.
        print(
            f"INVALID: {errors} verifier call(s) failed (see the worker logs in "
            f"{service.logs}); the jobs did less work than they should have"
        )
    return errors == 0


# -- main ------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--database-url",
        help="PostgreSQL URL (each part uses a fresh schema in it); default: SQLite",
    )
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated: {PARTS}")
    parser.add_argument("--quick", action="store_true", help="fewer requests and jobs (~2 min)")
    parser.add_argument(
        "--workdir", type=Path, help="keep data and logs here (default: a temp dir)"
    )
    group = parser.add_argument_group("submissions")
    group.add_argument("--submissions", type=int, default=2000, help="timed submits (2000)")
    group.add_argument("--clients", type=int, default=50, help="concurrent clients (50)")
    group.add_argument(
        "--sequential", type=int, default=200, help="then submits from one client (200)"
    )
    group.add_argument("--upload-images", type=int, default=5, help="images in the project (5)")
    group = parser.add_argument_group("predict")
    group.add_argument("--predict-requests", type=int, default=200, help="timed rounds (200)")
    group.add_argument("--predict-warmup", type=int, default=10, help="untimed rounds (10)")
    group.add_argument("--width", type=int, default=1280)
    group.add_argument("--height", type=int, default=720)
    group.add_argument("--imgsz", type=int, default=640, help="ONNX input size (640)")
    group.add_argument(
        "--class-bias",
        type=float,
        default=-16.0,
        help="class-score bias of the random student: sets how many boxes come back (-16: ~10)",
    )
    group = parser.add_argument_group("workers")
    group.add_argument("--jobs", type=int, default=8, help="labeling jobs per run (8)")
    group.add_argument("--images-per-job", type=int, default=4, help="(4)")
    group.add_argument("--vlm-latency", type=float, default=1.0, help="seconds per answer (1.0)")
    group.add_argument("--vlm-concurrency", type=int, default=4, help="per worker (4)")
    group.add_argument(
        "--worker-threads",
        type=int,
        default=max(1, (os.cpu_count() or 2) // 2),
        help="OMP_NUM_THREADS of each worker process (default: half the CPUs)",
    )
    args = parser.parse_args()
    # A SIGTERM unwinds like Ctrl-C, so the finally blocks stop the servers and workers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parts = [part.strip() for part in args.only.split(",") if part.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"--only: unknown part(s) {unknown}; choose from {PARTS}")
    if args.quick:
        args.submissions, args.sequential = 500, 100
        args.predict_requests, args.predict_warmup = 60, 5
        args.jobs = 4

    with contextlib.ExitStack() as stack:
        if args.workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-svc-")))
        else:
            workdir = args.workdir.resolve()
            workdir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        models = workdir / "models"
        detector_dir = models / "tiny-grounding-dino"
        onnx_path = models / f"yolo11n-{args.imgsz}-bias{args.class_bias:g}.onnx"
        if {"submissions", "workers"} & set(parts):
            build("detector", detector_dir)
        if "predict" in parts:
            models.mkdir(parents=True, exist_ok=True)
            build("student", onnx_path, str(args.imgsz), str(args.class_bias))
        print(f"built the models in {time.perf_counter() - started:.1f} s")
        ok = True
        runners = {
            "submissions": lambda: bench_submissions(args, workdir / "submissions", detector_dir),
            "predict": lambda: bench_predict(args, workdir / "predict", onnx_path),
            "workers": lambda: bench_workers(args, workdir / "workers", detector_dir),
        }
        for part in parts:
            shutil.rmtree(workdir / part, ignore_errors=True)  # a kept workdir's earlier run
            ok = runners[part]() and ok
        print()
        print(f"total {time.perf_counter() - started:.0f} s")
    print()
    print(f"command: `python {shlex.join(['benchmarks/bench_service.py', *sys.argv[1:]])}`")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
