"""Training the next round: on a dataset version, from the production model (``base:
production``), and the errors that say what is missing."""

from __future__ import annotations

from typing import Any

import pytest

from distill.registry import Registry
from serve.jobs.worker import registry_dir
from tests.serve.api.test_models import _job, _submit_labeling_to_train_on
from tests.serve.conftest import Service


def _train(service: Service, **body: Any) -> Any:
    return service.client.post(service.url("/train-jobs"), headers=service.headers, json=body)


def test_a_training_job_names_one_dataset_and_a_base_it_can_start_from(service: Service) -> None:
    neither = _train(service)
    assert neither.status_code == 422
    assert "exactly one of label_job_id and dataset_version" in neither.text
    both = _train(service, label_job_id="job_x", dataset_version="d1")
    assert both.status_code == 422
    missing = _train(service, dataset_version="d4")
    assert missing.status_code == 404 and "d4" in missing.json()["detail"]
    assert str(service.settings.data_dir) not in missing.text
    no_production = _train(service, dataset_version="d4", base="production")
    assert no_production.status_code == 409
    assert "no production model yet" in no_production.json()["detail"]


@pytest.mark.slow
def test_the_next_round_fine_tunes_production_on_a_dataset_version(service: Service) -> None:
    label_job_id = _submit_labeling_to_train_on(service)
    service.run_jobs()
    built = service.client.post(
        service.url("/datasets"), headers=service.headers, json={"label_job_ids": [label_job_id]}
    )
    assert built.status_code == 201, built.text

    first = _train(service, dataset_version="latest", imgsz=64, epochs=1, batch=4)
    assert first.status_code == 201, first.text
    service.run_jobs()
    v1 = _job(service, first.json()["id"])["result"]["model_version"]
    promoted = service.client.post(
        service.url(f"/models/{v1}/promote"), headers=service.headers, json={}
    )
    assert promoted.json()["promoted"] is True

    second = _train(service, dataset_version="d1", base="production", imgsz=64, epochs=1, batch=4)
    assert second.status_code == 201, second.text
    service.run_jobs()
    job = _job(service, second.json()["id"])
    assert job["status"] == "succeeded", job
    with Registry(registry_dir(service.settings.data_dir, service.project_id)) as registry:
        v2 = registry.get(job["result"]["model_version"])
        base = registry.get(v1).weights
    assert v2.parent == v1
    assert str(v2.config.get("base")) == str(base)  # started from production's checkpoint
