"""Training jobs, the registry over HTTP, and predictions with the production model."""

from __future__ import annotations

import asyncio
import importlib.metadata
import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from labeler.core.detections import Detections, as_records
from labeler.core.exceptions import InputError
from serve.runtime.onnx import load_runtime
from tests.serve.conftest import Service, Students, png_bytes


def _post_images(service: Service, n: int) -> None:
    response = service.client.post(
        service.url("/images"),
        headers=service.headers,
        files=[("files", (f"img{i}.png", png_bytes(i, (128, 96)), "image/png")) for i in range(n)],
    )
    assert response.status_code == 201, response.text


def _submit_labeling_to_train_on(service: Service) -> str:
    """Eight images and a labeling job over them (not run yet), with yolo11n.yaml to train."""
    service.settings.service_train_bases = {"yolo11n": "yolo11n.yaml"}
    _post_images(service, 8)
    label = service.client.post(
        service.url("/label-jobs"),
        headers=service.headers,
        json={"box_threshold": 0, "text_threshold": 0, "max_det": 2, "val_fraction": 0.5},
    )
    assert label.status_code == 201, label.text
    return str(label.json()["id"])


def _submit_training(service: Service, label_job_id: str, **options: int) -> str:
    """A training job (at 64 px) on a finished labeling job's dataset; its id."""
    body = {"label_job_id": label_job_id, "imgsz": 64, **options}
    response = service.client.post(service.url("/train-jobs"), headers=service.headers, json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _job(service: Service, job_id: str) -> dict[str, Any]:
    response = service.client.get(service.url(f"/jobs/{job_id}"), headers=service.headers)
    return dict(response.json())


@pytest.mark.slow
def test_train_register_promote_download_predict(service: Service) -> None:
    label_job_id = _submit_labeling_to_train_on(service)
    early = service.client.post(
        service.url("/train-jobs"), headers=service.headers, json={"label_job_id": label_job_id}
    )
    assert early.status_code == 409  # the labeling job has not run yet
    service.run_jobs()

    job_id = _submit_training(service, label_job_id, epochs=1, batch=4)
    service.run_jobs()
    job = _job(service, job_id)
    assert job["status"] == "succeeded", job
    version = job["result"]["model_version"]
    assert {"map50", "map50_95", "label_hash"} <= job["result"]["metrics"].keys()
    installed = importlib.metadata.version("promptlabel")
    assert job["result"]["provenance"] == {"promptlabel_version": installed}
    assert job["progress"]["stages"]["train"] == {"done": 1, "total": 1}

    models = service.client.get(service.url("/models"), headers=service.headers).json()
    assert [m["version"] for m in models] == [version]
    assert models[0]["stage"] == "none"
    assert "onnx" in models[0]["artifacts"]
    assert models[0]["promptlabel_version"] == installed

    no_model = service.client.post(
        service.url("/predict"),
        headers=service.headers,
        files={"file": ("a.png", png_bytes(1), "image/png")},
    )
    assert no_model.status_code == 409
    assert "no production model" in no_model.json()["detail"]

    promoted = service.client.post(
        service.url(f"/models/{version}/promote"), headers=service.headers, json={}
    ).json()
    assert promoted["promoted"] is True and promoted["candidate"] == version
    assert (
        service.client.get(service.url("/models/v999"), headers=service.headers).status_code == 404
    )

    onnx = service.client.get(service.url(f"/models/{version}/onnx"), headers=service.headers)
    assert onnx.status_code == 200
    session = ort.InferenceSession(onnx.content)
    assert session.get_inputs()[0].shape[-1] == 64

    image = png_bytes(3, (128, 96))
    answer = service.client.post(
        service.url("/predict"),
        headers=service.headers,
        files={"file": ("a.png", image, "image/png")},
        params={"conf": 0.1},
    )
    predicted = answer.json()
    assert predicted["model_version"] == version
    # Server-Timing: the runtime's share (decode and run) and the whole request inside the app.
    timings = dict(re.findall(r"(\w+);dur=([\d.]+)", answer.headers["server-timing"]))
    assert set(timings) == {"runtime", "app"}
    assert 0 < float(timings["runtime"]) <= float(timings["app"])
    assert predicted["image_wh"] == [128, 96]
    # The endpoint answers exactly what the device runtime answers for the same file.
    path = service.settings.data_dir / "direct.onnx"
    path.write_bytes(onnx.content)

    direct = load_runtime(path, conf=0.1).predict([Image.open(io.BytesIO(image)).convert("RGB")])[0]
    assert len(predicted["detections"]) == len(direct)
    if len(direct):
        np.testing.assert_allclose(
            [d["xyxy"] for d in predicted["detections"]], direct.xyxy, atol=0.01
        )

    bad = service.client.post(
        service.url("/predict"),
        headers=service.headers,
        files={"file": ("a.png", b"not an image", "image/png")},
    )
    assert bad.status_code == 422
    assert "not_an_image" in bad.json()["detail"]


def test_predict_takes_the_raw_image_or_a_form_and_answers_as_the_runtime_does(
    service: Service, students: Students, sample_images: list[Path]
) -> None:
    version = service.promote_onnx(students.static)
    direct = load_runtime(students.static, conf=0.1)
    for path in sample_images[:3]:
        data = path.read_bytes()
        kind = "image/png" if path.suffix == ".png" else "image/jpeg"
        raw = service.client.post(
            service.url("/predict"),
            headers={**service.headers, "Content-Type": kind},
            content=data,
            params={"conf": 0.1},
        )
        form = service.client.post(
            service.url("/predict"),
            headers=service.headers,
            files={"file": (path.name, data, kind)},
            params={"conf": 0.1},
        )
        assert raw.status_code == form.status_code == 200, (raw.text, form.text)
        assert raw.headers["content-type"] == "application/json"
        assert raw.json() == form.json()
        assert raw.json()["model_version"] == version
        assert "runtime;dur=" in raw.headers["server-timing"]
        expected = direct(Image.open(path))
        assert len(expected) > 0  # so that the comparison below compares boxes
        np.testing.assert_allclose(
            [d["xyxy"] for d in raw.json()["detections"]], expected.xyxy, atol=0.01
        )
        # Box for box the one record of a detection, as `promptlabel predict --json` prints it.
        assert raw.json()["detections"] == as_records(expected, direct.names)
    # Any image type, or bytes of no stated kind, is read as an image.
    octet = service.client.post(
        service.url("/predict"),
        headers={**service.headers, "Content-Type": "application/octet-stream"},
        content=sample_images[0].read_bytes(),
    )
    assert octet.status_code == 200, octet.text


def test_predict_refuses_what_is_not_one_image_by_name(
    service: Service, students: Students
) -> None:
    service.promote_onnx(students.static)
    service.settings.max_image_bytes = 1000

    def post(**request: Any) -> tuple[int, str]:
        headers = {**service.headers, **request.pop("headers", {})}
        response = service.client.post(service.url("/predict"), headers=headers, **request)
        return response.status_code, str(response.json()["detail"])

    png = {"Content-Type": "image/png"}
    status, detail = post(headers=png, content=b"not an image")
    assert status == 422 and detail.startswith("body") and "not_an_image" in detail
    too_large = "over the 1000-byte image limit (PROMPTLABEL_MAX_IMAGE_BYTES)"
    status, detail = post(headers=png, content=png_bytes(1, (64, 64)) + b"\0" * 1000)
    assert (status, detail) == (413, f"body: {too_large}")
    # Without a Content-Length (chunked), the limit holds while the body streams in.
    chunks = iter([b"\0" * 600, b"\0" * 600])
    assert post(headers=png, content=chunks) == (413, f"body: {too_large}")
    status, detail = post(files={"file": ("big.png", b"\0" * 1001, "image/png")})
    assert (status, detail) == (413, f"file: {too_large}")
    status, detail = post(files={"image": ("a.png", png_bytes(1), "image/png")})
    assert status == 422 and detail.startswith("file: missing")
    status, detail = post(data={"file": "a string, not a file"}, files={"x": ("x", b"x")})
    assert status == 422 and detail.startswith("file: missing")
    for content_type in ("application/json", "application/octet-streamx", "text/plain"):
        status, detail = post(headers={"Content-Type": content_type}, content=b"{}")
        assert status == 415 and f"'{content_type}'" in detail and "image/jpeg" in detail
    status, detail = post(content=b"")
    assert status == 415 and "(none)" in detail


def test_predict_decodes_only_the_upload_formats_one_per_cpu_at_most(
    service: Service, students: Students, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    import serve.api.routes.models

    service.promote_onnx(students.static)
    # Formats Pillow could read, which uploads refuse (EPS would even run Ghostscript).
    for kind in ("GIF", "ICO", "TGA", "PPM"):
        buffer = io.BytesIO()
        Image.new("RGB", (64, 48), "red").save(buffer, format=kind)
        response = service.client.post(
            service.url("/predict"),
            headers={**service.headers, "Content-Type": "image/x-anything"},
            content=buffer.getvalue(),
        )
        assert response.status_code == 422, (kind, response.text)
        assert response.json()["detail"] == (
            "body: not_an_image (send one image in one of: JPEG, PNG, WEBP, BMP, TIFF)"
        ), kind

    # Each decode holds one of the decode slots uploads use, so that a 10 KB PNG of 81 M pixels
    # per request cannot run 40 at once.
    slots = threading.BoundedSemaphore(1)
    held_while_decoding: list[bool] = []
    decode = serve.api.routes.models.read_image_bytes

    def watched(*args: Any, **kwargs: Any) -> Image.Image:
        held_while_decoding.append(not slots.acquire(blocking=False))
        return decode(*args, **kwargs)

    monkeypatch.setattr(serve.api.routes.models, "DECODE_SLOTS", slots)
    monkeypatch.setattr(serve.api.routes.models, "read_image_bytes", watched)
    response = service.client.post(
        service.url("/predict"),
        headers={**service.headers, "Content-Type": "image/png"},
        content=png_bytes(1, (64, 48)),
    )
    assert response.status_code == 200, response.text
    assert held_while_decoding == [True]
    assert slots.acquire(blocking=False)  # and given back


def test_predictions_run_in_the_apps_own_pool_one_per_thread_with_the_request_log_fields(
    service: Service, students: Students, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    import serve.api.routes.models
    import serve.telemetry

    service.promote_onnx(students.static)
    app = service.client.app
    one_at_a_time = ThreadPoolExecutor(1, thread_name_prefix="predict-test")
    monkeypatch.setitem(app.state.pools, "predict", one_at_a_time)  # type: ignore[attr-defined]
    inside, most_inside, lock = 0, 0, threading.Lock()
    seen: list[tuple[str, str | None]] = []
    decode = serve.api.routes.models.read_image_bytes

    def slow(*args: Any, **kwargs: Any) -> Image.Image:
        nonlocal inside, most_inside
        with lock:
            inside += 1
            most_inside = max(most_inside, inside)
            fields = serve.telemetry._context.get() or {}
            seen.append((threading.current_thread().name, fields.get("request_id")))
        time.sleep(0.2)
        with lock:
            inside -= 1
        return decode(*args, **kwargs)

    monkeypatch.setattr(serve.api.routes.models, "read_image_bytes", slow)

    def post(seed: int) -> int:
        return service.client.post(
            service.url("/predict"),
            headers={
                **service.headers,
                "Content-Type": "image/png",
                "X-Request-ID": f"predict-{seed}",
            },
            content=png_bytes(seed, (64, 48)),
        ).status_code

    try:
        with ThreadPoolExecutor(3) as clients:
            assert list(clients.map(post, range(3))) == [200, 200, 200]
    finally:
        one_at_a_time.shutdown()
    assert most_inside == 1
    assert all(thread.startswith("predict-test") for thread, _ in seen)
    assert sorted(request_id for _, request_id in seen) == ["predict-0", "predict-1", "predict-2"]


def test_a_production_model_that_does_not_load_is_503_without_its_path(
    service: Service, students: Students, tmp_path: Path
) -> None:
    import serve.api.routes.models

    copy = tmp_path / "model.onnx"
    copy.write_bytes(students.static.read_bytes())
    version = service.promote_onnx(copy)
    registry = service.settings.data_dir / "projects" / service.project_id / "registry"
    [stored] = registry.rglob(f"{version}/model.onnx")
    stored.write_bytes(stored.read_bytes()[:1000])  # damaged on disk
    serve.api.routes.models.PREDICTORS.forget(service.project_id)
    response = service.client.post(
        service.url("/predict"),
        headers={**service.headers, "Content-Type": "image/png"},
        content=png_bytes(1),
    )
    assert response.status_code == 503
    assert response.json()["detail"] == (
        f"production model {version} could not be loaded; the server's log says why"
    )


def test_a_client_gone_before_its_image_arrived_is_a_client_error() -> None:
    from fastapi import HTTPException
    from starlette.requests import Request

    from serve.api.routes.models import _image_from_request

    async def read(content_type: bytes) -> None:
        messages = iter(
            [
                {"type": "http.request", "body": b"--x\r\nContent-Disp", "more_body": True},
                {"type": "http.disconnect"},
            ]
        )

        async def receive() -> dict[str, Any]:
            return next(messages)

        scope = {"type": "http", "method": "POST", "headers": [(b"content-type", content_type)]}
        await _image_from_request(Request(scope, receive), max_bytes=1000)

    # Not a 500 and a traceback in the log: flaky device connections drop all the time.
    for content_type in (b"image/png", b"multipart/form-data; boundary=x"):
        with pytest.raises(HTTPException) as caught:
            asyncio.run(read(content_type))
        assert caught.value.status_code == 400
        assert caught.value.detail == "the client disconnected before the image arrived"


@pytest.mark.slow
def test_a_training_job_that_fails_or_is_cancelled_registers_nothing(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    import distill.export

    label_job_id = _submit_labeling_to_train_on(service)
    service.run_jobs()

    def train_job() -> dict[str, Any]:
        job_id = _submit_training(service, label_job_id, epochs=1, batch=4)
        service.run_jobs()
        return _job(service, job_id)

    real_export = distill.export.export_model

    def failing_export(*args: object, **kwargs: object) -> None:
        raise InputError("the exporter broke")

    monkeypatch.setattr(distill.export, "export_model", failing_export)
    failed = train_job()
    assert failed["status"] == "failed" and "the exporter broke" in failed["error"]

    def cancel_then_export(*args: object, **kwargs: object) -> object:
        (running,) = [
            j
            for j in service.client.get(service.url("/jobs"), headers=service.headers).json()
            if j["status"] == "running"
        ]
        service.client.post(service.url(f"/jobs/{running['id']}/cancel"), headers=service.headers)
        return real_export(*args, **kwargs)

    monkeypatch.setattr(distill.export, "export_model", cancel_then_export)
    assert train_job()["status"] == "cancelled"

    assert service.client.get(service.url("/models"), headers=service.headers).json() == []


def test_a_worker_stopping_mid_training_gives_the_job_back_within_a_batch(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    import distill.runs
    from serve.jobs.worker import Worker

    label_job_id = _submit_labeling_to_train_on(service)
    service.run_jobs()
    job_id = _submit_training(service, label_job_id, epochs=2, batch=2)

    stop = threading.Event()
    batches: list[int] = []
    real_train = distill.runs.train

    def train_told_to_stop_in_its_first_batch(*args: Any, **kwargs: Any) -> Any:
        check = kwargs.pop("stop_check")

        def sigterm_during_the_batch() -> None:
            batches.append(1)
            stop.set()
            check()

        return real_train(*args, stop_check=sigterm_during_the_batch, **kwargs)

    monkeypatch.setattr(distill.runs, "train", train_told_to_stop_in_its_first_batch)
    assert Worker(db=service.db, settings=service.settings).run_once(stop) is True
    job = _job(service, job_id)
    assert (job["status"], job["attempts"]) == ("queued", 0)
    assert batches == [1]  # 2 epochs of 2 batches were asked for; it stopped after the first
    assert service.client.get(service.url("/models"), headers=service.headers).json() == []

    monkeypatch.setattr(distill.runs, "train", real_train)
    service.run_jobs()
    job = _job(service, job_id)
    assert (job["status"], job["attempts"]) == ("succeeded", 1), job
    models = service.client.get(service.url("/models"), headers=service.headers).json()
    assert [m["version"] for m in models] == [job["result"]["model_version"]]


def test_promote_takes_no_body_or_a_known_one(service: Service, students: Students) -> None:
    version = service.promote_onnx(students.static)
    url = service.url(f"/models/{version}/promote")
    misspelt = service.client.post(url, headers=service.headers, json={"forse": True})
    assert misspelt.status_code == 422 and "forse" in misspelt.text
    bare = service.client.post(url, headers=service.headers)  # the gated promotion
    assert bare.status_code == 200, bare.text
    assert bare.json()["candidate"] == version and bare.json()["forced"] is False

    # Every decision is kept, with the scores it was made on.
    history = service.client.get(service.url("/promotions"), headers=service.headers)
    assert history.status_code == 200, history.text
    decisions = history.json()
    assert decisions[-1] == bare.json()
    assert {"candidate_map50_95", "production_map50_95", "tolerance"} <= decisions[-1].keys()
    assert decisions[-1]["tolerance"] == service.settings.promote_tolerance
    assert decisions[-1]["production_before"] == version  # it was production already
    assert decisions[-1]["promptlabel_version"] == importlib.metadata.version("promptlabel")
    only_this = service.client.get(
        service.url("/promotions"), headers=service.headers, params={"version": version}
    ).json()
    assert only_this == [d for d in decisions if d["candidate"] == version]
    unknown = service.client.get(
        service.url("/promotions"), headers=service.headers, params={"version": "v99"}
    )
    assert unknown.status_code == 404


@pytest.mark.parametrize("data_dir", ["promptlabel-data", "/srv/pl data", "."])
def test_promotion_reasons_name_the_labeling_job_not_the_servers_files(data_dir: str) -> None:
    from distill.registry import EvalSet, PromotionDecision
    from serve.api.routes.models import _promotion_public

    data_yaml = (
        Path(data_dir).absolute() / "jobs" / "job_0f89618f95f248fb" / "dataset" / "data.yaml"
    )
    decision = PromotionDecision(
        id=1,
        version="v2",
        previous_production="v1",
        promoted=True,
        forced=False,
        reason=f"mAP50-95 0.5 vs production v1 0.4 on {data_yaml} (val): within tolerance 0.01",
        candidate_map50_95=0.5,
        production_map50_95=0.4,
        tolerance=0.01,
        eval_set=EvalSet(str(data_yaml), "val", None),
        production_reevaluated=True,
        created_at="2026-12-01T22:00:00+00:00",
    )
    reason = _promotion_public(decision, Path(data_dir)).reason
    assert reason == (
        "mAP50-95 0.5 vs production v1 0.4 on the dataset of labeling job job_0f89618f95f248fb "
        "(val): within tolerance 0.01"
    )


def test_the_openapi_doc_describes_a_predicted_box_as_the_one_detection_record(
    service: Service,
) -> None:
    spec = service.client.get("/openapi.json").json()
    path = next(p for p in spec["paths"] if p.endswith("/predict"))
    answer = spec["paths"][path]["post"]["responses"]["200"]["content"]["application/json"]
    assert answer["schema"]["$ref"].endswith("/PredictResult")
    schemas = spec["components"]["schemas"]
    detections = schemas["PredictResult"]["properties"]["detections"]
    assert detections["items"]["$ref"].endswith("/DetectionPublic")
    box = schemas["DetectionPublic"]
    one_box = Detections(xyxy=[[1, 2, 3, 4]], class_id=[0], confidence=[0.5])
    record = as_records(one_box, ["shape"])[0]
    # The one detection record; a segmentation student's boxes add their mask (optional).
    assert list(box["properties"]) == [*record, "mask"]
    assert "mask" not in box["required"] and set(box["required"]) == set(record)
    assert all(box["properties"][name].get("description") for name in record)
