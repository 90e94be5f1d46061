"""Fixtures the labeler's pipeline tests share: a folder of sample and broken images, and a
loopback VLM that says yes to circles."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from labeler.demo.synthetic import write_sample_images
from tests.fakes.vlm_server import FakeVLMServer, RecordedRequest


def answer_by_question(request: RecordedRequest) -> str:
    return "Yes" if "circle" in request.prompt_text else "No"


@pytest.fixture
def images_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    write_sample_images(folder, n=6, seed=1)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this jpeg stops here")
    (folder / "notes.png").write_text("not an image at all")
    (folder / "empty.webp").write_bytes(b"")
    return folder


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeVLMServer]:
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    with FakeVLMServer(script=answer_by_question) as running:
        yield running
