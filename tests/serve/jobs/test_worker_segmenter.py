"""A worker loads a job's segmenter once and keeps it for the next jobs (CONVENTIONS 8)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from serve.settings import ServiceSettings
from tests.labeler.segment.tiny_models import save_tiny_sam
from tests.serve.api.test_jobs import submit, upload
from tests.serve.conftest import Service, png_bytes


@pytest.fixture(scope="module")
def tiny_sam_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_sam(tmp_path_factory.mktemp("worker_tiny_sam"))


@pytest.fixture
def service_settings(service_settings: ServiceSettings, tiny_sam_folder: Path) -> ServiceSettings:
    """The service's settings, offering the tiny SAM as the segmenter "tiny"."""
    return service_settings.model_copy(
        update={"service_segmenters": {"tiny": f"transformers:{tiny_sam_folder}"}}
    )


def test_two_mask_jobs_load_the_segmenter_once(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    from labeler.segment.transformers_sam import TransformersSegmenter
    from serve.jobs.worker import Worker

    loads: list[str] = []
    real_init = TransformersSegmenter.__init__

    def counting_init(self: TransformersSegmenter, model_id: str, **kwargs: Any) -> None:
        loads.append(model_id)
        real_init(self, model_id, **kwargs)

    monkeypatch.setattr(TransformersSegmenter, "__init__", counting_init)
    upload(service, ("a.png", png_bytes(1)), ("b.png", png_bytes(2)))
    jobs = [
        submit(service, {"verifier": "none", "masks": "tiny"}, key="one").json(),
        submit(service, {"verifier": "none", "masks": "tiny", "max_det": 2}, key="two").json(),
        submit(service, {"verifier": "none"}, key="no-masks").json(),
    ]
    worker = Worker(db=service.db, settings=service.settings, name="keeps-models")
    assert worker.run_once() and worker.run_once() and worker.run_once()

    assert len(loads) == 1  # the second job reused the first job's segmenter
    for job, wants_masks in zip(jobs, (True, True, False), strict=True):
        done = service.client.get(service.url(f"/jobs/{job['id']}"), headers=service.headers)
        assert done.json()["status"] == "succeeded", done.json()
        items = service.client.get(
            service.url(f"/jobs/{job['id']}/results"), headers=service.headers
        ).json()["items"]
        labels = [label for item in items for label in item["labels"]]
        assert labels
        # Every box accepted before its mask was made carries that mask (COCO RLE).
        with_mask = [label for label in labels if label.get("mask") is not None]
        assert bool(with_mask) == wants_masks, labels
