"""Requests generated from the OpenAPI spec by schemathesis: none may end in a 5xx."""

from __future__ import annotations

from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.serve.conftest import Service, Students, png_bytes


@pytest.mark.slow
def test_no_generated_request_gets_a_server_error(service: Service, students: Students) -> None:
    # Real objects to aim at: an image, a job and a production model exist, so valid ids reach
    # deep paths too, and generated bodies reach the image decoder.
    service.promote_onnx(students.static)
    service.client.post(
        service.url("/images"),
        headers=service.headers,
        files=[("files", ("a.png", png_bytes(1), "image/png"))],
    )
    service.client.post(service.url("/label-jobs"), headers=service.headers, json={})
    schema = schemathesis.openapi.from_asgi("/openapi.json", service.client.app)
    checked = 0
    statuses: Counter[int] = Counter()
    for result in schema.get_all_operations():
        operation = result.ok()

        # Driven by hypothesis directly (not schemathesis' pytest plugin) so that it runs under
        # the parametrized database fixture.
        @given(case=operation.as_strategy())
        @settings(
            max_examples=30, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        def no_server_error(case: schemathesis.Case) -> None:
            if case.path_parameters and "project_id" in case.path_parameters:
                # Aim at the caller's own project, so requests get past the 404 (other
                # projects' ids are covered in test_service_auth.py).
                case.path_parameters["project_id"] = service.project_id
            response = case.call(headers=service.headers)
            statuses[response.status_code // 100] += 1
            assert response.status_code < 500, (
                f"{case.method} {case.formatted_path} -> {response.status_code}: "
                f"{response.text[:500]}"
            )

        no_server_error()
        checked += 1
    assert checked >= 18
    assert statuses[2] >= 20 and statuses[4] >= 20, statuses  # both valid and invalid requests
