"""Each verifier a server offers asks its own server with its own key: a local vLLM and a hosted
API side by side. Callers see the names only."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from labeler.core.exceptions import InputError
from labeler.verify.identity import normalized_endpoint
from serve.jobs.service import dataset_dir
from serve.jobs.worker import Worker
from serve.settings import ServiceSettings
from tests.fakes.vlm_server import FakeVLMServer
from tests.serve.api.test_jobs import submit, upload
from tests.serve.conftest import Service, answer_by_crop, png_bytes


@pytest.fixture
def second_server() -> Iterator[FakeVLMServer]:
    with FakeVLMServer(script=answer_by_crop) as running:
        yield running


@pytest.fixture
def service_settings(
    service_settings: ServiceSettings,
    vlm_server: FakeVLMServer,
    second_server: FakeVLMServer,
    monkeypatch: pytest.MonkeyPatch,
) -> ServiceSettings:
    """The test service with two verifiers of the same model name on two servers, each with its
    own key; the shared URL and OPENAI_API_KEY point elsewhere, so neither may be used."""
    monkeypatch.setenv("KEY_A", "key-of-a")
    monkeypatch.setenv("KEY_B", "key-of-b")
    monkeypatch.setenv("OPENAI_API_KEY", "the-shared-key")
    fields = service_settings.model_dump()
    fields["service_verifiers"] = {
        "none": "none",
        "a": {"spec": "openai:fake-vlm", "url": vlm_server.base_url, "api_key_env": "KEY_A"},
        "b": {"spec": "openai:fake-vlm", "url": second_server.base_url, "api_key_env": "KEY_B"},
    }
    fields["service_verifier_url"] = "http://127.0.0.1:9/v1"  # nothing listens there
    return ServiceSettings(**fields)


def _authorizations(server: FakeVLMServer) -> set[str]:
    return {request.headers.get("authorization", "") for request in server.model_requests}


def test_each_verifier_asks_its_own_server_with_its_own_key(
    service: Service, vlm_server: FakeVLMServer, second_server: FakeVLMServer
) -> None:
    upload(service, *((f"img{i}.png", png_bytes(i)) for i in range(2)))
    job_a = submit(service, {"verifier": "a"}).json()["id"]
    assert service.run_jobs() == 1
    assert vlm_server.model_requests and not second_server.model_requests
    assert _authorizations(vlm_server) == {"Bearer key-of-a"}

    job_b = submit(service, {"verifier": "b"}).json()["id"]
    asked_a = len(vlm_server.model_requests)
    assert service.run_jobs() == 1
    assert len(vlm_server.model_requests) == asked_a  # B's job never asks A
    assert second_server.model_requests
    assert _authorizations(second_server) == {"Bearer key-of-b"}

    endpoints = {}
    for job_id, server in ((job_a, vlm_server), (job_b, second_server)):
        job = service.client.get(service.url(f"/jobs/{job_id}"), headers=service.headers).json()
        assert job["status"] == "succeeded", job
        assert job["result"]["verifier"]["errors"] == 0
        # The verdicts are named by the verifier's own server (the run's own report says so).
        report = json.loads(
            (dataset_dir(service.settings.data_dir, job_id) / "report.json").read_text()
        )
        endpoints[job_id] = report["provenance"]["verifier_endpoint"]
        assert endpoints[job_id] == normalized_endpoint(server.base_url)
        # Callers see the name they chose, never the server or the key's variable.
        shown = json.dumps(job)
        assert server.base_url not in shown and "KEY_" not in shown
    assert endpoints[job_a] != endpoints[job_b]


def test_options_name_the_verifiers_and_nothing_behind_them(
    service: Service, vlm_server: FakeVLMServer, second_server: FakeVLMServer
) -> None:
    response = service.client.get("/v1/options", headers=service.headers)
    assert response.status_code == 200, response.text
    assert response.json()["verifiers"] == ["a", "b", "none"]
    for private in (vlm_server.base_url, second_server.base_url, "KEY_A", "KEY_B", "127.0.0.1"):
        assert private not in response.text


def test_a_worker_refuses_to_start_without_a_verifiers_key(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KEY_B")
    with pytest.raises(InputError, match=r"verifier 'b': its key variable KEY_B is not set"):
        Worker(db=service.db, settings=service.settings)
