"""API keys: required everywhere but health, hashed at rest, revocable, scoped to one project."""

from __future__ import annotations

import hashlib
import re

import pytest
import sqlalchemy as sa

from serve.api.auth import authenticate, create_api_key, revoke_api_key
from serve.db import api_keys
from tests.serve.conftest import Service, png_bytes


def test_every_route_but_health_needs_a_key(service: Service) -> None:
    spec = service.client.get("/openapi.json").json()
    checked = 0
    for path, operations in spec["paths"].items():
        if path == "/healthz" or path == "/review/session":
            continue  # health needs nothing; signing in takes the key in its body
        concrete = path.format(
            project_id=service.project_id,
            job_id="j",
            image_id="i",
            version="v1",
            image_sha256="0" * 64,
            proposal_id=1,
            sha256="0" * 64,
            hard_case_id="hc",
        )
        for method, operation in operations.items():
            response = service.client.request(method.upper(), concrete)
            assert response.status_code == 401, (method, path, response.status_code)
            assert response.headers["www-authenticate"] == "Bearer"
            assert "401" in operation["responses"], (method, path)  # and the spec says so
            checked += 1
    assert checked >= 18
    assert service.client.get("/healthz").status_code == 200


def test_every_answer_carries_a_request_id_and_the_time_spent_in_the_app(service: Service) -> None:
    answers = [
        service.client.get("/healthz"),
        service.client.get(service.url()),  # 401
        service.client.get(service.url(), headers=service.headers),
        service.client.get(service.url("/jobs/nope"), headers=service.headers),  # 404
    ]
    for answer in answers:
        assert re.fullmatch(r"[0-9a-f]{16}", answer.headers["x-request-id"]), answer.headers
        timing = re.fullmatch(r"app;dur=(\d+\.\d\d)", answer.headers["server-timing"])
        assert timing is not None and 0 < float(timing[1]) < 60_000, answer.headers
    echoed = service.client.get("/healthz", headers={"X-Request-ID": "caller-chosen-id"})
    assert echoed.headers["x-request-id"] == "caller-chosen-id"


@pytest.mark.parametrize(
    "authorization",
    [
        "",
        "Bearer",
        "Bearer nope",
        "Bearer pl_",
        "Bearer pl_abc.def",
        "Basic dXNlcjpwYXNz",
        "Bearer pl_" + "x" * 5000,
    ],
)
def test_bad_credentials_are_401(service: Service, authorization: str) -> None:
    response = service.client.get(service.url(), headers={"Authorization": authorization})
    assert response.status_code == 401


def test_keys_are_stored_hashed_and_revocation_is_immediate(service: Service) -> None:
    created = create_api_key(service.db, project_id=service.project_id, name="temp")
    secret = created.token.split(".", 1)[1]
    with service.db.read() as connection:
        stored = connection.execute(
            sa.select(api_keys.c.secret_sha256).where(api_keys.c.id == created.key_id)
        ).scalar_one()
    assert stored == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in stored
    headers = {"Authorization": f"Bearer {created.token}"}
    assert service.client.get(service.url(), headers=headers).status_code == 200
    revoke_api_key(service.db, created.key_id)
    assert service.client.get(service.url(), headers=headers).status_code == 401
    assert authenticate(service.db, created.token) is None
    # A wrong secret with a real key id is refused too.
    assert authenticate(service.db, f"pl_{created.key_id}.wrong") is None


def test_another_projects_key_gets_404_for_everything(service: Service) -> None:
    image_ids = [
        image["id"]
        for image in service.client.post(
            service.url("/images"),
            headers=service.headers,
            files=[("files", ("a.png", png_bytes(1), "image/png"))],
        ).json()["accepted"]
    ]
    job = service.client.post(service.url("/label-jobs"), headers=service.headers, json={}).json()
    _, intruder = service.new_project("other")

    own_paths = [
        ("GET", ""),
        ("PUT", "/ontology"),
        ("GET", "/images"),
        ("POST", "/images"),
        ("GET", f"/images/{image_ids[0]}"),
        ("GET", f"/images/{image_ids[0]}/file"),
        ("POST", "/label-jobs"),
        ("GET", "/jobs"),
        ("GET", f"/jobs/{job['id']}"),
        ("POST", f"/jobs/{job['id']}/cancel"),
        ("GET", f"/jobs/{job['id']}/results"),
        ("GET", f"/jobs/{job['id']}/export"),
        ("GET", "/models"),
        ("GET", "/promotions"),
        ("POST", "/predict"),
    ]
    for method, path in own_paths:
        response = service.client.request(
            method, service.url(path), headers=intruder, json={"classes": {"a": "a"}}
        )
        assert response.status_code == 404, (method, path, response.text)

    # The intruder's own project does not see the job or image either, by id.
    other_id = service.client.get("/v1/projects", headers=intruder).json()[0]["id"]
    assert other_id != service.project_id
    for path in (f"/jobs/{job['id']}", f"/images/{image_ids[0]}", f"/images/{image_ids[0]}/file"):
        response = service.client.get(f"/v1/projects/{other_id}{path}", headers=intruder)
        assert response.status_code == 404
    submit = service.client.post(
        f"/v1/projects/{other_id}/label-jobs", headers=intruder, json={"image_ids": image_ids}
    )
    assert submit.status_code == 404
    assert "no such images" in submit.json()["detail"]
    # And the job is untouched.
    still = service.client.get(service.url(f"/jobs/{job['id']}"), headers=service.headers).json()
    assert still["status"] == "queued" and not still["cancel_requested"]


def test_options_name_what_the_server_offers_and_never_where_it_is(service: Service) -> None:
    options = service.client.get("/v1/options", headers=service.headers)
    assert options.status_code == 200
    body = options.json()
    assert body["detectors"] == ["default"]
    assert body["verifiers"] == ["fake", "none"]
    assert body["limits"]["max_image_bytes"] == service.settings.max_image_bytes
    assert service.settings.service_detectors["default"] not in options.text
    assert service.settings.service_verifier_url not in options.text
