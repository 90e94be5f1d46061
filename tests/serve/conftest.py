"""Exported YOLO students for the device-runtime tests, built once per session, offline
(see tests/fakes/students.py for why they are calibrated), and the HTTP service on a fresh
database with a project, a key, a tiny detector and a loopback VLM."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from labeler.ontology import Ontology
from serve.settings import ServiceSettings
from tests.fakes.postgres import scratch_schema
from tests.fakes.students import build_student, export_onnx

if TYPE_CHECKING:
    # The device runtime's tests share this folder and must run without the service's extra.
    from fastapi.testclient import TestClient

    from serve.db import Database
    from tests.fakes.vlm_server import FakeVLMServer, RecordedRequest


@dataclass(frozen=True)
class Students:
    weights: Path
    static: Path  # fixed 1x3x256x256 input
    dynamic: Path  # dynamic batch, height and width; exported at 256
    batch2: Path  # fixed 2x3x256x256 input
    imgsz: int = 256


@pytest.fixture(scope="session")
def students(tmp_path_factory: pytest.TempPathFactory) -> Students:
    folder = tmp_path_factory.mktemp("students")
    weights = build_student(folder)
    return Students(
        weights=weights,
        static=export_onnx(weights, folder / "static.onnx", imgsz=256),
        dynamic=export_onnx(weights, folder / "dynamic.onnx", imgsz=256, dynamic=True),
        batch2=export_onnx(weights, folder / "batch2.onnx", imgsz=256, batch=2),
    )


@pytest.fixture(scope="session")
def sample_images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Shapes on textured backgrounds at sizes that take every resize path, in several formats.

    At imgsz 256: 1280x720 shrinks 5x (odd pick), 512x288 2x (reduce), 1024x576 4x (even pick),
    480x640 and 333x517 by non-integer factors, 100x60 is enlarged; 256x256 is not resized.
    """
    from PIL import Image

    from labeler.demo.synthetic import make_shapes_image

    folder = tmp_path_factory.mktemp("runtime-images")
    rng = np.random.default_rng(7)
    specs = [
        ((1280, 720), "wide.png", "RGB"),
        ((480, 640), "tall.jpg", "RGB"),
        ((333, 517), "odd.png", "RGB"),
        ((512, 288), "half.png", "RGB"),
        ((1024, 576), "quarter.jpg", "RGB"),
        ((100, 60), "tiny.png", "RGB"),
        ((256, 256), "square.png", "L"),
    ]
    paths = []
    for image_wh, name, mode in specs:
        image, _ = make_shapes_image(rng, image_wh, 5)
        path = folder / name
        image.convert(mode).save(path, **({"quality": 90} if name.endswith(".jpg") else {}))
        paths.append(path)
    # A file whose pixels are stored sideways: both loaders must apply the EXIF orientation.
    image, _ = make_shapes_image(rng, (400, 300), 4)
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(folder / "rotated.jpg", exif=exif.tobytes(), quality=90)
    paths.append(folder / "rotated.jpg")
    return paths


# -- the HTTP service --------------------------------------------------------------------------
# Every service test runs on SQLite and on PostgreSQL. PostgreSQL tests need
# PROMPTLABEL_TEST_DATABASE_URL (`.ci/run` starts a server and sets it); without it they are
# skipped, unless PROMPTLABEL_REQUIRE_POSTGRES=1 (as in CI), which turns the skip into a failure.


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """None (SQLite in the data folder) or a PostgreSQL URL whose search_path is a fresh schema."""
    if request.param == "sqlite":
        yield None
        return
    base = os.environ.get("PROMPTLABEL_TEST_DATABASE_URL")
    if not base:
        if os.environ.get("PROMPTLABEL_REQUIRE_POSTGRES") == "1":
            pytest.fail("PROMPTLABEL_REQUIRE_POSTGRES=1 but PROMPTLABEL_TEST_DATABASE_URL is unset")
        pytest.skip("no PostgreSQL: set PROMPTLABEL_TEST_DATABASE_URL (scripts/start_postgres.sh)")
    with scratch_schema(base, prefix="test") as url:
        yield url


@pytest.fixture
def db(tmp_path: Path, database_url: str | None) -> Iterator[Database]:
    """An empty service database (schema created) on SQLite or PostgreSQL."""
    from serve.db import Database

    database = Database(database_url, data_dir=tmp_path)
    database.create_schema()
    yield database
    database.dispose()


@pytest.fixture
def vlm_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeVLMServer]:
    """A loopback OpenAI-compatible VLM that says yes to every crop that is mostly bright."""
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    from tests.fakes.vlm_server import FakeVLMServer

    with FakeVLMServer(script=answer_by_crop) as running:
        yield running


def answer_by_crop(request: RecordedRequest) -> str:
    """A deterministic yes/no that depends on the crop only (so reruns agree)."""
    digest = hashlib.sha256(request.image_urls[0].encode()).hexdigest()
    return "Yes" if digest[0] in "01234567" else "No"


@pytest.fixture
def service_settings(
    tmp_path: Path,
    database_url: str | None,
    tiny_detector_dir: Path,
    vlm_server: FakeVLMServer,
) -> ServiceSettings:
    return ServiceSettings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        service_detectors={"default": str(tiny_detector_dir)},
        service_verifiers={"none": "none", "fake": "openai:fake-vlm"},
        service_verifier_url=vlm_server.base_url,
        service_device="cpu",
        lease_s=30.0,
        poll_interval_s=0.05,
        max_retries=0,
        request_timeout_s=5.0,
        concurrency=4,
        batch_size=2,
        url_allowlist=[],
    )


@dataclass
class Service:
    client: TestClient
    settings: ServiceSettings
    db: Database
    project_id: str
    headers: dict[str, str]

    def url(self, path: str = "") -> str:
        return f"/v1/projects/{self.project_id}{path}"

    def run_jobs(self) -> int:
        """Run queued jobs in this thread until none is left; returns how many ran."""
        from serve.jobs.worker import Worker

        worker = Worker(db=self.db, settings=self.settings, name="test-worker")
        ran = 0
        while worker.run_once():
            ran += 1
        return ran

    def promote_onnx(self, onnx_path: Path) -> str:
        """Import an exported model into the project's registry as production; its version."""
        from distill.registry import Registry
        from serve.jobs.worker import registry_dir

        with Registry(registry_dir(self.settings.data_dir, self.project_id)) as registry:
            version = registry.import_model(onnx_path).version
            decision = registry.promote(version, evaluate=_no_evaluation, force=True)
        assert decision.promoted, decision.reason
        return version

    def new_project(self, name: str) -> tuple[str, dict[str, str]]:
        from serve.api.auth import create_api_key, create_project

        project_id = create_project(self.db, name=name, ontology=SHAPES)
        key = create_api_key(self.db, project_id=project_id)
        return project_id, {"Authorization": f"Bearer {key.token}"}


def _no_evaluation(*_: object, **__: object) -> dict[str, float]:
    raise AssertionError("a first promotion compares with nothing")


SHAPES = Ontology.from_mapping({"shape": ["circle", "square"]})


@pytest.fixture
def service(service_settings: ServiceSettings) -> Iterator[Service]:
    """The app on a fresh database, one project with an ontology and a key; no worker threads."""
    from fastapi.testclient import TestClient

    from serve.api.app import create_app
    from serve.api.auth import create_api_key, create_project

    app = create_app(service_settings)
    with TestClient(app) as client:
        db = app.state.db
        project_id = create_project(db, name="shapes", ontology=SHAPES)
        key = create_api_key(db, project_id=project_id, name="tests")
        yield Service(
            client=client,
            settings=service_settings,
            db=db,
            project_id=project_id,
            headers={"Authorization": f"Bearer {key.token}"},
        )
    app.state.db.dispose()


def png_bytes(seed: int = 0, size: tuple[int, int] = (96, 72)) -> bytes:
    """A small PNG of shapes on a textured background; the same seed gives the same bytes."""
    from labeler.demo.synthetic import make_shapes_image

    image, _ = make_shapes_image(np.random.default_rng(seed), size, n_shapes=2)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
