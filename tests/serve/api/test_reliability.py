"""Crash safety and faults: a SIGKILLed worker's job finishes with the labels an uninterrupted run
gives; a VLM failing 30% of the time never turns a proposal into a silent accept, reject or drop."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.vlm_server import FakeVLMServer, Fault
from tests.serve.conftest import Service, png_bytes

JOB_BODY = {"verifier": "fake", "box_threshold": 0, "text_threshold": 0, "max_det": 4}


def _upload(service: Service, n: int) -> None:
    response = service.client.post(
        service.url("/images"),
        headers=service.headers,
        files=[("files", (f"img{i}.png", png_bytes(i), "image/png")) for i in range(n)],
    )
    assert response.status_code == 201, response.text


def _submit(service: Service, key: str) -> str:
    response = service.client.post(
        service.url("/label-jobs"),
        headers={**service.headers, "Idempotency-Key": key},
        json=JOB_BODY,
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _job(service: Service, job_id: str) -> dict[str, Any]:
    response = service.client.get(service.url(f"/jobs/{job_id}"), headers=service.headers)
    return dict(response.json())


def _labels(service: Service, job_id: str) -> list[Any]:
    items = service.client.get(
        service.url(f"/jobs/{job_id}/results"), headers=service.headers
    ).json()["items"]
    return [(item["image_id"], item["status"], item["labels"]) for item in items]


def _worker_env(service: Service, lease_s: float) -> dict[str, str]:
    settings = service.settings
    env = {
        **os.environ,
        "OPENAI_API_KEY": "test-key",
        "PROMPTLABEL_DATA_DIR": str(settings.data_dir),
        "PROMPTLABEL_SERVICE_DETECTORS": json.dumps(settings.service_detectors),
        "PROMPTLABEL_SERVICE_VERIFIERS": json.dumps(
            settings.model_dump(mode="json")["service_verifiers"]
        ),
        "PROMPTLABEL_SERVICE_VERIFIER_URL": str(settings.service_verifier_url),
        "PROMPTLABEL_SERVICE_DEVICE": "cpu",
        "PROMPTLABEL_LEASE_S": str(lease_s),
        "PROMPTLABEL_POLL_INTERVAL_S": "0.1",
        "PROMPTLABEL_MAX_RETRIES": "0",
        "PROMPTLABEL_REQUEST_TIMEOUT_S": "5",
        "PROMPTLABEL_CONCURRENCY": "2",
        "PROMPTLABEL_BATCH_SIZE": "2",
    }
    if settings.database_url:
        env["PROMPTLABEL_DATABASE_URL"] = settings.database_url
    return env


def _start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-c", "from serve.cli.main import main; main()", "worker"]
    with log.open("wb") as stderr:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [*command, "--log-format", "text"], env=env, stdout=subprocess.DEVNULL, stderr=stderr
        )


def _wait(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _slow_job(service: Service, vlm_server: FakeVLMServer, key: str) -> str:
    """A queued labeling job over 6 images whose 24 verifier answers take 0.3 s each."""
    _upload(service, 6)
    vlm_server.latency_s = 0.3
    return _submit(service, key)


def _wait_until_verifying(service: Service, job_id: str, done: int = 0) -> None:
    def verifying() -> bool:
        progress = _job(service, job_id).get("progress") or {}
        return progress.get("stage") == "verify" and progress.get("done", 0) >= done

    _wait(verifying, 120, f"verification to reach {done} answers")


@dataclass
class _Interrupted:
    """A labeling job that a worker process is running halfway, and a clean run to compare with."""

    job_id: str
    clean_id: str
    clean_calls: int
    worker: subprocess.Popen[bytes]
    calls_before: int = 0


def _worker_halfway_through_a_job(
    service: Service, vlm_server: FakeVLMServer, env: dict[str, str], log: Path
) -> _Interrupted:
    """Run a clean job, then start a worker process on a second job (slow VLM) and return once
    it is halfway through verification."""
    _upload(service, 6)
    clean_id = _submit(service, "clean")
    service.run_jobs()
    assert _job(service, clean_id)["status"] == "succeeded"
    clean_calls = len(vlm_server.model_requests)
    assert clean_calls == 24

    vlm_server.reset()
    vlm_server.latency_s = 0.2
    job_id = _submit(service, "interrupted")
    worker = _start_worker(env, log)

    try:
        _wait_until_verifying(service, job_id, done=6)  # halfway
    except BaseException:
        worker.kill()
        worker.wait()
        raise
    return _Interrupted(job_id, clean_id, clean_calls, worker)


def _assert_resumed_like_a_clean_run(
    service: Service, vlm_server: FakeVLMServer, run: _Interrupted
) -> None:
    # Finished verdicts were kept: at most the calls in flight at the stop were asked again.
    assert len(vlm_server.model_requests) - run.calls_before <= run.clean_calls - 6
    assert _labels(service, run.job_id) == _labels(service, run.clean_id)
    assert (
        _job(service, run.job_id)["result"]["labels"]
        == _job(service, run.clean_id)["result"]["labels"]
    )


@pytest.mark.slow
def test_sigkilled_worker_job_finishes_with_identical_labels(
    service: Service, vlm_server: FakeVLMServer, tmp_path: Path
) -> None:
    env = _worker_env(service, lease_s=2.0)
    run = _worker_halfway_through_a_job(service, vlm_server, env, tmp_path / "worker1.log")
    run.worker.send_signal(signal.SIGKILL)
    run.worker.wait()
    killed_at = _job(service, run.job_id)
    assert killed_at["status"] == "running" and killed_at["attempts"] == 1
    run.calls_before = len(vlm_server.model_requests)
    assert run.calls_before < run.clean_calls

    second = _start_worker(env, tmp_path / "worker2.log")
    try:
        _wait(lambda: _job(service, run.job_id)["status"] == "succeeded", 120, "the take-over")
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=30)
    assert _job(service, run.job_id)["attempts"] == 2
    _assert_resumed_like_a_clean_run(service, vlm_server, run)
    assert second.returncode == 0, (tmp_path / "worker2.log").read_text()[-2000:]


@pytest.mark.slow
def test_sigterm_gives_the_running_job_back_without_using_an_attempt(
    service: Service, vlm_server: FakeVLMServer, tmp_path: Path
) -> None:
    # A long lease: if the job were not given back, nothing could take it over during the test.
    env = _worker_env(service, lease_s=600.0)
    run = _worker_halfway_through_a_job(service, vlm_server, env, tmp_path / "worker.log")
    run.worker.send_signal(signal.SIGTERM)
    stopping = time.monotonic()
    run.worker.wait(timeout=30)
    log = (tmp_path / "worker.log").read_text()
    assert run.worker.returncode == 0, log[-2000:]
    assert time.monotonic() - stopping < 5.0  # it stopped at its next verdict, not the job's end
    assert "job given back to the queue" in log
    given_back = _job(service, run.job_id)
    assert (given_back["status"], given_back["attempts"]) == ("queued", 0)
    run.calls_before = len(vlm_server.model_requests)
    assert run.calls_before < run.clean_calls

    service.run_jobs()  # any worker takes it at once: no lease to wait out
    assert _job(service, run.job_id)["attempts"] == 1
    _assert_resumed_like_a_clean_run(service, vlm_server, run)


def test_serve_shutdown_gives_its_workers_jobs_back(
    service: Service, vlm_server: FakeVLMServer
) -> None:
    from fastapi.testclient import TestClient

    from serve.api.app import create_app

    job_id = _slow_job(service, vlm_server, "during-shutdown")
    app = create_app(service.settings, db=service.db, workers=1)
    with TestClient(app):  # its lifespan starts the in-process worker, and stops it at the end
        _wait_until_verifying(service, job_id)
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 5.0
    given_back = _job(service, job_id)
    assert (given_back["status"], given_back["attempts"]) == ("queued", 0)
    asked = len(vlm_server.model_requests)
    assert asked < 24  # stopped mid-way

    service.run_jobs()
    finished = _job(service, job_id)
    assert (finished["status"], finished["attempts"]) == ("succeeded", 1)


def _mixed_faults(n: int, rate: float, seed: int) -> list[Fault | None]:
    rng = random.Random(seed)
    kinds = [
        Fault.rate_limit(retry_after_s=0.05),
        Fault.server_error(),
        Fault.hang(hang_s=3.0),
        Fault.garbage(),
    ]
    return [rng.choice(kinds) if rng.random() < rate else None for _ in range(n)]


def test_vlm_failing_30_percent_sends_affected_proposals_to_review(
    service: Service, vlm_server: FakeVLMServer
) -> None:
    _upload(service, 6)
    clean_id = _submit(service, "clean")
    service.run_jobs()
    clean = {image: labels for image, _, labels in _labels(service, clean_id)}

    vlm_server.reset()
    vlm_server.faults = _mixed_faults(500, rate=0.3, seed=4)
    service.settings.request_timeout_s = 1.0  # the hangs become timeouts
    faulty_id = _submit(service, "faulty")
    service.run_jobs()
    job = _job(service, faulty_id)
    assert job["status"] == "succeeded", job
    faulty = {image: labels for image, _, labels in _labels(service, faulty_id)}
    assert faulty.keys() == clean.keys()

    reviewed = 0
    for image, labels in faulty.items():
        assert len(labels) == len(clean[image])  # nothing dropped
        for got, want in zip(labels, clean[image], strict=True):
            assert got["xyxy"] == want["xyxy"]
            if got["status"] == "needs_review":
                reviewed += 1
                assert got["reason"].startswith(("verifier error", "verifier answer could not"))
            else:
                # A proposal that did get an answer is routed exactly as without faults.
                assert got["status"] == want["status"]
    faults_served = sum(1 for fault in vlm_server.faults[: len(vlm_server.model_requests)] if fault)
    assert faults_served >= 3
    assert reviewed >= 1
    assert job["result"]["labels"]["needs_review"] == reviewed
    assert job["result"]["verifier"]["errors"] >= 1


def test_cancel_stops_a_running_job_within_a_second(
    service: Service, vlm_server: FakeVLMServer
) -> None:
    import threading

    from serve.jobs.worker import Worker

    job_id = _slow_job(service, vlm_server, "to-cancel")
    stop = threading.Event()
    worker = Worker(db=service.db, settings=service.settings, name="cancel-test")
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    try:
        _wait_until_verifying(service, job_id)
        response = service.client.post(
            service.url(f"/jobs/{job_id}/cancel"), headers=service.headers
        )
        assert response.json()["cancel_requested"] is True
        asked = time.monotonic()
        _wait(lambda: _job(service, job_id)["status"] == "cancelled", 10, "the cancel")
        assert time.monotonic() - asked < 2.0
    finally:
        stop.set()
        thread.join(timeout=30)
    assert len(vlm_server.model_requests) < 24  # it did stop asking
    assert _job(service, job_id)["error"] == "cancelled on request"
