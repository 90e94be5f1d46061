"""The files a worker prepares for a job survive a crash halfway."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from serve.ingest.store import blob_path
from serve.jobs.worker import _materialize


def test_a_copy_cut_short_is_not_taken_for_the_image_by_the_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    sha256 = "ab" * 32
    blob = blob_path(data_dir, sha256, ".png")
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"\x89PNG" + b"x" * 1000)
    row = SimpleNamespace(position=0, image_id="img_1", sha256=sha256, extension=".png")

    def no_links(*args: object) -> None:
        raise OSError("links not allowed here")

    def crash_halfway(source: Path, target: Path) -> None:
        Path(target).write_bytes(Path(source).read_bytes()[:10])
        raise SystemExit("killed")

    real_copyfile = shutil.copyfile
    monkeypatch.setattr(os, "link", no_links)
    monkeypatch.setattr(shutil, "copyfile", crash_halfway)
    with pytest.raises(SystemExit):
        _materialize([row], data_dir, tmp_path / "job" / "images")
    monkeypatch.setattr(shutil, "copyfile", real_copyfile)  # the retry's copy works

    by_stem = _materialize([row], data_dir, tmp_path / "job" / "images")

    (image,) = [p for p in (tmp_path / "job" / "images").iterdir() if not p.name.startswith(".")]
    assert image.read_bytes() == blob.read_bytes()
    assert by_stem == {image.stem: "img_1"}
