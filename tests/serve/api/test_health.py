"""/healthz and /v1/options say which promptlabel answers: the version its jobs record."""

from __future__ import annotations

import importlib.metadata

from tests.serve.conftest import Service


def test_healthz_names_the_database_and_the_version_without_a_key(service: Service) -> None:
    health = service.client.get("/healthz")
    assert health.status_code == 200
    assert health.json() == {
        "status": "ok",
        "database": service.db.dialect,
        "version": importlib.metadata.version("promptlabel"),
    }
    # The spec describes the answer, so clients can rely on its fields.
    spec = service.client.get("/openapi.json").json()
    answer = spec["paths"]["/healthz"]["get"]["responses"]["200"]["content"]["application/json"]
    schema = spec["components"]["schemas"][answer["schema"]["$ref"].rsplit("/", 1)[-1]]
    assert set(schema["required"]) == {"status", "database", "version"}


def test_options_name_the_servers_version(service: Service) -> None:
    options = service.client.get("/v1/options", headers=service.headers)
    assert options.status_code == 200
    assert options.json()["version"] == importlib.metadata.version("promptlabel")
    assert service.client.get("/v1/options").status_code == 401
