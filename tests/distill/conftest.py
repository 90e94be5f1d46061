"""Fixtures for the distill tests: a small shapes dataset and one student trained on it, once.

The student is trained through ``distill.train.train`` itself (3 epochs of yolo11n.yaml from
scratch at imgsz 64), with every socket refused and the working directory set to an empty
folder, so the tests can check that training needs no network and writes nothing in the cwd.
Three CPU epochs teach it almost nothing: it exists to exercise the plumbing, not to detect.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from distill.train import TrainResult, train
from labeler.demo.synthetic import SHAPE_CLASSES, write_shapes_items
from labeler.export.dataset import ExportSummary, export_dataset

STUDENT_EPOCHS = 3
STUDENT_IMGSZ = 64
# Arguments shared by every training in the tests, so runs with the same seed can be compared.
TRAIN_OPTIONS: dict[str, Any] = {
    "base": "yolo11n.yaml",
    "imgsz": STUDENT_IMGSZ,
    "batch": 8,
    "device": "cpu",
    "workers": 0,
    "seed": 0,
}


@dataclass
class NetworkLog:
    """Hosts and addresses something tried to reach while sockets were refused."""

    attempts: list[str] = field(default_factory=list)


def refuse_network(monkeypatch: pytest.MonkeyPatch) -> NetworkLog:
    """Fail every name lookup and connection (as pytest-socket does) and record them."""
    log = NetworkLog()

    def refuse_lookup(host: Any, *args: Any, **kwargs: Any) -> Any:
        log.attempts.append(str(host))
        raise socket.gaierror(socket.EAI_NONAME, "network disabled in tests")

    def refuse_connect(self: socket.socket, address: Any) -> None:
        log.attempts.append(str(address))
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "getaddrinfo", refuse_lookup)
    monkeypatch.setattr(socket.socket, "connect", refuse_connect)
    return log


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[NetworkLog]:
    yield refuse_network(monkeypatch)


@dataclass(frozen=True)
class ShapesDataset:
    path: Path
    summary: ExportSummary


def make_shapes_dataset(root: Path, *, n: int = 16, seed: int = 0) -> ShapesDataset:
    """``n`` 64x64 shape images exported as a YOLO + COCO dataset with about a quarter in val."""
    items = write_shapes_items(root / "src", n=n, seed=seed, image_wh=(64, 64))
    summary = export_dataset(items, SHAPE_CLASSES, root / "dataset", val_fraction=0.25)
    return ShapesDataset(path=root / "dataset", summary=summary)


@pytest.fixture(scope="session")
def shapes_dataset(tmp_path_factory: pytest.TempPathFactory) -> ShapesDataset:
    """The dataset the session's student is trained on; tests must not modify it."""
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"))


@dataclass(frozen=True)
class Student:
    result: TrainResult
    progress: list[tuple[int, int, dict[str, float]]]
    network: NetworkLog
    cwd_after: list[str]


@pytest.fixture(scope="session")
def student(shapes_dataset: ShapesDataset, tmp_path_factory: pytest.TempPathFactory) -> Student:
    """A student trained once per session (plots on, as the product does by default)."""
    calls: list[tuple[int, int, dict[str, float]]] = []
    cwd = tmp_path_factory.mktemp("cwd")
    with pytest.MonkeyPatch.context() as monkeypatch:
        network = refuse_network(monkeypatch)
        monkeypatch.chdir(cwd)
        result = train(
            shapes_dataset.path,
            epochs=STUDENT_EPOCHS,
            progress=lambda epoch, epochs, metrics: calls.append((epoch, epochs, metrics)),
            **TRAIN_OPTIONS,
        )
        cwd_after = sorted(p.name for p in cwd.iterdir())
    return Student(result=result, progress=calls, network=network, cwd_after=cwd_after)
