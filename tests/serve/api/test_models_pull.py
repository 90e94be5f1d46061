"""Devices pull the production model: ``GET /models/production/onnx`` with a strong ETag (the
file's sha256), 304 for a device that has it, and ``pull_model`` against the real service."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from serve.runtime.model_pull import PulledModel, pull_model
from tests.fakes.live_app import LiveApp
from tests.serve.conftest import Service, Students

PRODUCTION_ONNX = "/models/production/onnx"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_no_production_model_is_404(service: Service) -> None:
    response = service.client.get(service.url(PRODUCTION_ONNX), headers=service.headers)

    assert response.status_code == 404
    assert response.json()["detail"] == "no production model yet: train one and promote it"


def test_production_without_an_onnx_export_is_409(service: Service, tmp_path: Path) -> None:
    from distill.registry import Registry
    from serve.jobs.worker import registry_dir

    weights = tmp_path / "best.pt"
    weights.write_bytes(b"weights" * 64)
    with Registry(registry_dir(service.settings.data_dir, service.project_id)) as registry:
        version = registry.register(weights=weights, metrics={}, dataset_hash=None, config={})
        registry.promote(version.version, evaluate=lambda *_: {})

    response = service.client.get(service.url(PRODUCTION_ONNX), headers=service.headers)

    assert response.status_code == 409
    assert response.json()["detail"] == "production model v1 has no ONNX export; export it first"


def test_the_production_onnx_carries_its_sha256_as_a_strong_etag(
    service: Service, students: Students
) -> None:
    version = service.promote_onnx(students.static)
    expected = students.static.read_bytes()
    etag = f'"{_sha256(expected)}"'

    response = service.client.get(service.url(PRODUCTION_ONNX), headers=service.headers)

    assert response.status_code == 200
    assert response.content == expected
    assert response.headers["ETag"] == etag
    assert response.headers["X-Content-SHA256"] == _sha256(expected)
    assert response.headers["X-Model-Version"] == version
    assert response.headers["Content-Type"] == "application/octet-stream"
    # The route for a named version still answers for that version.
    named = service.client.get(service.url(f"/models/{version}/onnx"), headers=service.headers)
    assert named.status_code == 200 and named.content == expected


@pytest.mark.parametrize("if_none_match", ["{etag}", "W/{etag}", '"other", {etag}', "*"], ids=str)
def test_a_device_that_has_the_model_gets_304_without_a_body(
    service: Service, students: Students, if_none_match: str
) -> None:
    version = service.promote_onnx(students.static)
    etag = f'"{_sha256(students.static.read_bytes())}"'

    response = service.client.get(
        service.url(PRODUCTION_ONNX),
        headers={**service.headers, "If-None-Match": if_none_match.format(etag=etag)},
    )

    assert response.status_code == 304
    assert response.content == b""
    assert response.headers["ETag"] == etag
    assert response.headers["X-Model-Version"] == version


def test_after_a_promotion_the_old_etag_gets_the_new_model(
    service: Service, students: Students
) -> None:
    service.promote_onnx(students.static)
    old_etag = f'"{_sha256(students.static.read_bytes())}"'
    new_version = service.promote_onnx(students.dynamic)

    response = service.client.get(
        service.url(PRODUCTION_ONNX), headers={**service.headers, "If-None-Match": old_etag}
    )

    assert response.status_code == 200
    assert response.content == students.dynamic.read_bytes()
    assert response.headers["X-Model-Version"] == new_version


def test_another_projects_key_cannot_pull_the_model(service: Service, students: Students) -> None:
    service.promote_onnx(students.static)
    _, other_headers = service.new_project("other")

    response = service.client.get(service.url(PRODUCTION_ONNX), headers=other_headers)

    assert response.status_code in (403, 404)
    assert response.content != students.static.read_bytes()


def test_pull_model_keeps_a_device_copy_in_step_with_the_service(
    service: Service, students: Students, tmp_path: Path
) -> None:
    """The device side against the real service on loopback: download, 304, promotion,
    and the service going away."""
    service.promote_onnx(students.static)
    api_key = service.headers["Authorization"].removeprefix("Bearer ")
    cache = tmp_path / "cache"
    with LiveApp(service.client.app) as live:
        url = live.url(service.url(PRODUCTION_ONNX))

        def pull(now: float) -> PulledModel:
            return pull_model(
                url, cache, refresh_s=60.0, api_key=api_key, clock=lambda: now, timeout_s=10.0
            )

        first = pull(0.0)
        first_bytes = first.path.read_bytes()
        unchanged = pull(60.0)
        service.promote_onnx(students.dynamic)
        cached = pull(61.0)
        promoted = pull(120.0)
    offline = pull(180.0)

    assert first.how == "downloaded" and first.version == "v1"
    assert first_bytes == students.static.read_bytes()
    assert not first.path.exists(), "the replaced copy is removed"
    assert unchanged.how == "not_modified"
    assert cached.how == "cached" and cached.version == "v1"
    assert promoted.how == "downloaded" and promoted.version == "v2"
    assert promoted.path.read_bytes() == students.dynamic.read_bytes()
    assert offline.how == "fallback" and offline.version == "v2"


def test_a_promotions_per_class_checks_are_public_without_the_servers_files(tmp_path: Path) -> None:
    from distill.registry import EvalSet, GateCheck, PromotionDecision
    from serve.api.routes.models import _promotion_public

    data_dir = tmp_path / "data"
    data_yaml = data_dir / "jobs" / "job_0f89618f95f248fb" / "dataset" / "data.yaml"
    eval_set = EvalSet(data_yaml, "val", "labels-1")
    decision = PromotionDecision(
        id=1,
        version="v2",
        previous_production="v1",
        promoted=False,
        forced=False,
        reason="refused",
        candidate_map50_95=0.55,
        production_map50_95=0.5,
        tolerance=0.005,
        eval_set=eval_set,
        production_reevaluated=False,
        created_at="2026-12-05T18:00:00+00:00",
        checks=(
            GateCheck(eval_set, None, 0.55, 0.5, None, "pass"),
            GateCheck(eval_set, "square", 0.4, 0.5, 30.0, "worse"),
        ),
    )

    public = _promotion_public(decision, data_dir).model_dump()

    assert public["checks"] == [
        {
            "data": "the dataset of labeling job job_0f89618f95f248fb",
            "split": "val",
            "class_name": None,
            "candidate_map50_95": 0.55,
            "production_map50_95": 0.5,
            "instances": None,
            "outcome": "pass",
        },
        {
            "data": "the dataset of labeling job job_0f89618f95f248fb",
            "split": "val",
            "class_name": "square",
            "candidate_map50_95": 0.4,
            "production_map50_95": 0.5,
            "instances": 30.0,
            "outcome": "worse",
        },
    ]
