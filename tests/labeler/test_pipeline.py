"""The whole label run: stages, resume, re-routing, faults, and a kill in the middle."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from labeler.core.detections import Detections
from labeler.core.exceptions import DetectorError
from labeler.demo.synthetic import write_sample_images
from labeler.ontology import Ontology, parse_ontology
from labeler.pipeline import LabelConfig, run_label
from labeler.propose.detector import DetectorOptions
from labeler.route import RouteThresholds
from tests.fakes.vlm_server import FakeVLMServer, Fault, RecordedRequest
from tests.labeler.conftest import answer_by_question

ONTOLOGY = parse_ontology(
    """
classes:
  - name: circle
    detect: circle
    verify: Is this a circle?
  - name: square
    detect: [square, box]
  - name: triangle
    detect: triangle
    verify: false
"""
)


class ScriptedDetector:
    """Three boxes per image, one per class, at positions derived from the image size."""

    model_id = "scripted"

    def __init__(self) -> None:
        self.images_seen = 0

    def fingerprint(self) -> dict[str, object]:
        return {"model_id": self.model_id, "boxes": "one per class"}

    def propose(self, images: Sequence[Image.Image], ontology: Ontology) -> list[Detections]:
        self.images_seen += len(images)
        out = []
        for image in images:
            w, h = image.size
            out.append(
                Detections(
                    xyxy=np.array(
                        [[0, 0, w / 3, h / 3], [w / 3, h / 3, w / 2, h / 2], [w / 2, h / 2, w, h]]
                    ),
                    class_id=np.array([0, 1, 2]),
                    confidence=np.array([0.9, 0.6, 0.3]),
                    data={"box_score": np.array([0.9, 0.6, 0.3], np.float32)},
                    metadata={"image_wh": (w, h)},
                )
            )
        return out


class Exploding:
    """Stands in for a model that must not be used."""

    model_id = "exploding"

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"model used: {name}")


def make_config(
    images_dir: Path, out_dir: Path, server: FakeVLMServer, **overrides: Any
) -> LabelConfig:
    fields: dict[str, Any] = {
        "images_dir": images_dir,
        "ontology": ONTOLOGY,
        "out_dir": out_dir,
        "detector": "scripted",
        "verifier": "openai:fake-vlm",
        "verifier_url": server.base_url,
        "max_retries": 0,
        "request_timeout_s": 5.0,
    }
    fields.update(overrides)
    return LabelConfig(**fields)


def test_full_run_report_dataset_and_failures(
    images_dir: Path, tmp_path: Path, server: FakeVLMServer
) -> None:
    detector = ScriptedDetector()
    report = run_label(make_config(images_dir, tmp_path / "out", server), detector=detector)

    assert report["images"]["total"] == 9
    assert report["images"]["labeled"] == 6
    failed = {Path(f["path"]).name: f["error"] for f in report["images"]["failed"]}
    assert set(failed) == {"broken.jpg", "notes.png", "empty.webp"}
    assert failed["empty.webp"].startswith("zero_bytes")
    assert failed["notes.png"].startswith("not_an_image")
    assert failed["broken.jpg"].split(":")[0] in {"truncated", "corrupt"}
    # circle: asked, yes; square: asked with the default question, no; triangle: not asked.
    assert report["per_class"] == {
        "circle": {"accepted": 6, "rejected": 0, "needs_review": 0},
        "square": {"accepted": 0, "rejected": 6, "needs_review": 0},
        "triangle": {"accepted": 6, "rejected": 0, "needs_review": 0},
    }
    assert report["verifier"] == {"calls": 12, "cache_hits": 0, "errors": 0}
    questions = sorted({r.prompt_text for r in server.model_requests})
    assert any("Is this a circle?" in q for q in questions)
    assert any("Is this a square?" in q for q in questions)
    assert len(server.model_requests) == 12
    assert set(report["timings_s"]) >= {"propose", "verify", "export"}
    assert report["provenance"]["verifier"] == "openai:fake-vlm"
    assert report["provenance"]["template_hash"]

    out = tmp_path / "out"
    on_disk = json.loads((out / "report.json").read_text())
    assert (
        on_disk["labels"] == report["labels"] == {"accepted": 12, "rejected": 6, "needs_review": 0}
    )
    label_lines = [
        line for path in (out / "labels").rglob("*.txt") for line in path.read_text().splitlines()
    ]
    assert len(label_lines) == 12
    assert sorted({line.split()[0] for line in label_lines}) == ["0", "2"]
    assert json.loads((out / "review.json").read_text()) == []
    # labels.jsonl names each image where the dataset holds it (upright, so maybe re-encoded).
    records = [json.loads(line) for line in (out / "labels.jsonl").read_text().splitlines()]
    assert len(records) == 6
    in_dataset = [record["dataset_image"] for record in records]
    assert sorted(in_dataset) == sorted(
        path.relative_to(out).as_posix()
        for path in (out / "images").rglob("*")
        if path.is_file() and not path.name.startswith(".")  # the exporter's marker
    )
    for record in records:
        with Image.open(out / record["dataset_image"]) as image:
            assert list(image.size) == record["image_wh"]


def test_copies_of_one_image_are_labeled_once(
    images_dir: Path, tmp_path: Path, server: FakeVLMServer
) -> None:
    broken = {"broken.jpg", "notes.png", "empty.webp"}
    first = sorted(p for p in images_dir.rglob("*") if p.is_file() and p.name not in broken)[0]
    for name in ("copy-a", "copy-b"):
        shutil.copyfile(first, images_dir / f"{name}{first.suffix}")

    report = run_label(
        make_config(images_dir, tmp_path / "out", server), detector=ScriptedDetector()
    )

    assert (report["images"]["total"], report["images"]["labeled"]) == (11, 8)
    assert report["images"]["unique"] == 6
    assert report["verifier"]["calls"] == 12  # as many as without the copies
    assert sum(report["dataset"]["images"].values()) == 6


def test_rerun_repeats_nothing(images_dir: Path, tmp_path: Path, server: FakeVLMServer) -> None:
    config = make_config(images_dir, tmp_path / "out", server)
    first = run_label(config, detector=ScriptedDetector())
    calls = len(server.model_requests)
    second = run_label(config, detector=Exploding())  # type: ignore[arg-type]
    assert len(server.model_requests) == calls
    assert second["verifier"] == {"calls": 0, "cache_hits": 12, "errors": 0}
    assert second["labels"] == first["labels"]
    assert second["images"]["failed"] == first["images"]["failed"]
    # The first run's detector signed its proposals; the second ran none.
    assert first["provenance"]["detector_fingerprint"] == ScriptedDetector().fingerprint()
    assert second["provenance"]["detector_fingerprint"] is None


def test_verdicts_from_one_server_are_not_reused_for_another(
    images_dir: Path, tmp_path: Path, server: FakeVLMServer
) -> None:
    out = tmp_path / "out"
    run_label(make_config(images_dir, out, server), detector=ScriptedDetector())
    # Another server that serves a model of the same name: its answers are its own.
    with FakeVLMServer(script=lambda request: "No") as other:
        second = run_label(make_config(images_dir, out, other), detector=Exploding())  # type: ignore[arg-type]
        assert second["verifier"] == {"calls": 12, "cache_hits": 0, "errors": 0}
        assert len(other.model_requests) == 12
        assert second["per_class"]["circle"] == {"accepted": 0, "rejected": 6, "needs_review": 0}
    assert second["provenance"]["verifier_endpoint"] == other.base_url.rstrip("/")
    calls = len(server.model_requests)
    third = run_label(make_config(images_dir, out, server), detector=Exploding())  # type: ignore[arg-type]
    assert third["verifier"] == {"calls": 0, "cache_hits": 12, "errors": 0}
    assert len(server.model_requests) == calls


def test_threshold_change_reroutes_without_models(
    images_dir: Path, tmp_path: Path, server: FakeVLMServer
) -> None:
    run_label(make_config(images_dir, tmp_path / "out", server), detector=ScriptedDetector())
    rerouted = run_label(
        make_config(
            images_dir,
            tmp_path / "out",
            server,
            thresholds=RouteThresholds(accept=0.95, reject=0.05, review_below_score=0.5),
        ),
        detector=Exploding(),  # type: ignore[arg-type]
        verifier=Exploding(),  # type: ignore[arg-type]
    )
    # The fake's P(yes) is 0.9 for "Yes" and 0.1 for "No": both now fall between the thresholds;
    # triangles (score 0.3) fall below the review score.
    assert rerouted["labels"] == {"accepted": 0, "rejected": 0, "needs_review": 18}
    review = json.loads((tmp_path / "out" / "review.json").read_text())
    assert len(review) == 18
    assert {item["reason"].split(" (")[0] for item in review} == {
        "verifier uncertain",
        "detector score below review threshold",
    }


def test_verifier_failures_go_to_review_and_are_retried_next_run(
    images_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    faults = [Fault.server_error()] * 4
    with FakeVLMServer(script=answer_by_question, faults=faults) as server:
        config = make_config(images_dir, tmp_path / "out", server)
        first = run_label(config, detector=ScriptedDetector())
        assert first["verifier"]["errors"] == 4
        assert first["labels"]["needs_review"] == 4
        assert first["labels"]["accepted"] + first["labels"]["rejected"] == 18 - 4
        review = json.loads((tmp_path / "out" / "review.json").read_text())
        assert all(item["reason"].startswith("verifier error") for item in review)
        second = run_label(config, detector=Exploding())  # type: ignore[arg-type]
        assert second["verifier"]["calls"] == 4  # only the failed ones are asked again
        assert second["labels"] == {"accepted": 12, "rejected": 6, "needs_review": 0}


def test_no_verifier_accepts_detector_output(images_dir: Path, tmp_path: Path) -> None:
    config = LabelConfig(
        images_dir=images_dir, ontology=ONTOLOGY, out_dir=tmp_path / "out", detector="scripted"
    )
    report = run_label(config, detector=ScriptedDetector())
    assert report["labels"] == {"accepted": 18, "rejected": 0, "needs_review": 0}
    assert report["verifier"]["calls"] == 0


def test_changing_proposal_options_reruns_detector(
    images_dir: Path, tmp_path: Path, server: FakeVLMServer
) -> None:
    detector = ScriptedDetector()
    run_label(make_config(images_dir, tmp_path / "out", server), detector=detector)
    assert detector.images_seen == 6
    run_label(
        make_config(
            images_dir, tmp_path / "out", server, detector_options=DetectorOptions(max_det=50)
        ),
        detector=detector,
    )
    assert detector.images_seen == 12


# -- a kill in the middle, through the real CLI and a real tiny detector ---------------------------


def _answer_by_crop(request: RecordedRequest) -> str:
    digest = hashlib.sha256(request.image_urls[0].encode()).hexdigest()
    return "Yes" if digest[0] in "01234567" else "No"


def _label_cmd(images: Path, out: Path, ontology: Path, detector: Path, url: str) -> list[str]:
    return [
        sys.executable, "-c", "from serve.cli.main import main; main()",
        "label", str(images), "--ontology", str(ontology), "--out", str(out),
        "--detector", str(detector), "--box-threshold", "0", "--text-threshold", "0",
        "--max-det", "4", "--verifier", "openai:fake-vlm", "--verifier-url", url,
        "--concurrency", "2", "--batch-size", "2",
    ]  # fmt: skip


def _dataset_files(out: Path) -> dict[str, bytes]:
    return {
        path.relative_to(out).as_posix(): path.read_bytes()
        for folder in ("labels", "annotations", "images")
        for path in sorted((out / folder).rglob("*"))
        if path.is_file()
    }


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(tiny_detector_dir: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"
    write_sample_images(images, n=6, seed=3)
    ontology = tmp_path / "ontology.yaml"
    ontology.write_text("classes:\n  - {name: shape, detect: [circle, square]}\n")
    env = {**os.environ, "OPENAI_API_KEY": "test-key"}
    with FakeVLMServer(script=_answer_by_crop, latency_s=0.25) as server:
        clean = subprocess.run(
            _label_cmd(images, tmp_path / "clean", ontology, tiny_detector_dir, server.base_url),
            env=env, capture_output=True, text=True, timeout=240,
        )  # fmt: skip
        assert clean.returncode == 0, clean.stderr
        total_calls = len(server.model_requests)
        assert total_calls == 24

        server.reset()
        killed_out = tmp_path / "killed"
        command = _label_cmd(images, killed_out, ontology, tiny_detector_dir, server.base_url)
        process = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
        database = killed_out / ".promptlabel" / "workspace.db"
        deadline = time.monotonic() + 120
        stored = 0
        while time.monotonic() < deadline and process.poll() is None:
            if database.exists():
                try:
                    with sqlite3.connect(database, timeout=1) as db:
                        stored = db.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0]
                except sqlite3.OperationalError:
                    stored = 0
                if stored >= 6:
                    break
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert 6 <= stored < total_calls, "the kill did not land in the middle of verification"
        calls_before_kill = len(server.model_requests)

        resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
        assert resumed.returncode == 0, resumed.stderr
        resumed_calls = len(server.model_requests) - calls_before_kill
        # Finished verdicts are not asked again; at most the calls in flight at the kill repeat.
        assert resumed_calls <= total_calls - stored
    assert _dataset_files(killed_out) == _dataset_files(tmp_path / "clean")
    report = json.loads((killed_out / "report.json").read_text())
    clean_report = json.loads((tmp_path / "clean" / "report.json").read_text())
    assert report["labels"] == clean_report["labels"]
    assert report["labels"]["accepted"] > 0 and report["labels"]["rejected"] > 0


def test_dataset_inside_images_folder_is_not_rescanned(images_dir: Path) -> None:
    config = LabelConfig(
        images_dir=images_dir, ontology=ONTOLOGY, out_dir=images_dir / "dataset", detector="s"
    )
    first = run_label(config, detector=ScriptedDetector())
    second = run_label(config, detector=Exploding())  # type: ignore[arg-type]
    assert first["images"]["total"] == second["images"]["total"] == 9


def test_marks_mode_asks_once_per_image_and_question(
    images_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")

    def all_yes(request: RecordedRequest) -> str:
        numbers = request.prompt_text.split("labelled ")[1].split(".")[0]
        return json.dumps({n.strip(): "yes" for n in numbers.replace(" and ", ",").split(",")})

    with FakeVLMServer(script=all_yes) as server:
        report = run_label(
            make_config(images_dir, tmp_path / "out", server, verify_mode="marks"),
            detector=ScriptedDetector(),
        )
    # Per image: one call for the circle question, one for the square question.
    assert report["verifier"]["calls"] == 12
    assert all(len(r.images()) == 1 for r in server.model_requests)
    assert report["labels"]["needs_review"] == 0
    assert report["provenance"]["template_id"].startswith("marks")


def test_unclear_answers_are_kept_not_asked_again(
    images_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    with FakeVLMServer(script=lambda request: "It might be, hard to say") as server:
        config = make_config(images_dir, tmp_path / "out", server)
        first = run_label(config, detector=ScriptedDetector())
        assert first["labels"]["needs_review"] == 12
        review = json.loads((tmp_path / "out" / "review.json").read_text())
        assert {item["reason"] for item in review} == {"verifier answer could not be parsed"}
        second = run_label(config, detector=Exploding())  # type: ignore[arg-type]
        assert second["verifier"] == {"calls": 0, "cache_hits": 12, "errors": 0}
        assert len(server.model_requests) == 12
        assert second["labels"] == first["labels"]


class _StopAfter(Exception):
    pass


class _StoppingProgress:
    """A progress sink that stops the run after ``verdicts`` verifier answers (a Ctrl-C)."""

    def __init__(self, verdicts: int) -> None:
        self.verdicts = verdicts
        self.seen = 0

    def start(self, stage: str, total: int) -> None:
        pass

    def advance(self, stage: str, amount: int = 1) -> None:
        if stage == "verify":
            self.seen += amount
            if self.seen >= self.verdicts:
                raise _StopAfter


def test_each_answer_is_kept_as_it_arrives(tmp_path: Path, server: FakeVLMServer) -> None:
    # One image with many boxes: before, its answers were stored only once all of them came.
    folder = tmp_path / "one"
    write_sample_images(folder, n=1, seed=3)
    many = ScriptedDetector()
    single = many.propose  # three boxes; repeat them with offsets to get 30

    def propose(images: Sequence[Image.Image], ontology: Ontology) -> list[Detections]:
        (three,) = single(images, ontology)
        xyxy = np.concatenate([three.xyxy[:1] + i for i in range(30)])
        return [
            Detections(
                xyxy=xyxy,
                class_id=np.zeros(30, np.int64),
                confidence=np.full(30, 0.9),
                data={"box_score": np.full(30, 0.9, np.float32)},
                metadata=three.metadata,
            )
        ]

    many.propose = propose  # type: ignore[method-assign]
    config = make_config(folder, tmp_path / "out", server, concurrency=2)
    with pytest.raises(_StopAfter):
        run_label(config, detector=many, progress=_StoppingProgress(verdicts=10))
    asked = len(server.model_requests)
    assert asked < 30
    resumed = run_label(config, detector=Exploding())  # type: ignore[arg-type]
    # Only the answers in flight at the stop (at most the concurrency) are asked again.
    assert resumed["verifier"]["cache_hits"] >= 10
    assert len(server.model_requests) - asked <= 30 - 10


class _CannotTakeStrips(ScriptedDetector):
    """Fails, like Grounding DINO's resize, on any batch holding a very thin image."""

    def propose(self, images: Sequence[Image.Image], ontology: Ontology) -> list[Detections]:
        if any(max(i.size) / min(i.size) > 100 for i in images):
            raise ValueError("Size must contain 'height' and 'width' keys")
        return super().propose(images, ontology)


def test_an_image_the_detector_cannot_take_fails_alone(
    images_dir: Path, tmp_path: Path, server: FakeVLMServer
) -> None:
    Image.new("RGB", (3000, 1), (200, 200, 200)).save(images_dir / "divider.png")
    config = make_config(
        images_dir,
        tmp_path / "out",
        server,
        verifier="none",
        detector_options=DetectorOptions(batch_size=4),
    )
    report = run_label(config, detector=_CannotTakeStrips())
    failed = {Path(f["path"]).name: f["error"] for f in report["images"]["failed"]}
    assert failed["divider.png"].startswith("detector_failed: Size must contain")
    assert report["images"]["labeled"] == 6  # its batch-mates were proposed one by one

    class Broken(ScriptedDetector):
        def propose(self, images: Sequence[Image.Image], ontology: Ontology) -> list[Detections]:
            raise RuntimeError("CUDA error: device-side assert triggered")

    with pytest.raises(
        DetectorError, match="failed on all 7 images; the last error: RuntimeError: CUDA"
    ):
        run_label(
            make_config(images_dir, tmp_path / "out2", server, verifier="none"), detector=Broken()
        )


def test_an_output_folder_holding_the_images_is_refused(
    images_dir: Path, server: FakeVLMServer
) -> None:
    from labeler.core.exceptions import InputError

    for out in (images_dir, images_dir.parent):
        with pytest.raises(InputError, match="holds the images folder"):
            run_label(make_config(images_dir, out, server), detector=Exploding())  # type: ignore[arg-type]


def test_a_file_whose_bytes_changed_unseen_is_reported_then_labeled_again(
    images_dir: Path, tmp_path: Path, server: FakeVLMServer
) -> None:
    victim = images_dir / "swapped.bmp"  # a BMP's size depends on its dimensions only
    Image.new("RGB", (64, 48), (200, 30, 30)).save(victim)
    config = make_config(images_dir, tmp_path / "out", server, verifier="none")
    assert run_label(config, detector=ScriptedDetector())["images"]["labeled"] == 7
    # Other bytes, same size and mtime (cp -p, an archive): the scan trusts its stored hash.
    stat = victim.stat()
    Image.new("RGB", (64, 48), (30, 200, 30)).save(victim)
    assert victim.stat().st_size == stat.st_size
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    second = run_label(config, detector=ScriptedDetector())
    failed = {Path(f["path"]).name: f["error"] for f in second["images"]["failed"]}
    assert failed["swapped.bmp"].startswith("changed")
    assert second["images"]["labeled"] == 6
    # The image left out of the dataset counts no labels: accepted is what the export holds.
    assert second["labels"]["accepted"] > 0
    assert _exported_boxes(tmp_path / "out") == (second["labels"]["accepted"],) * 2
    third = run_label(config, detector=ScriptedDetector())  # hashed again: new content, labeled
    assert "swapped.bmp" not in {Path(f["path"]).name for f in third["images"]["failed"]}
    assert third["images"]["labeled"] == 7


def test_an_image_over_the_pixel_limit_is_tried_again_under_a_higher_one(
    images_dir: Path, tmp_path: Path, server: FakeVLMServer
) -> None:
    small = make_config(images_dir, tmp_path / "out", server, verifier="none", max_image_pixels=100)
    first = run_label(small, detector=ScriptedDetector())
    assert first["images"]["labeled"] == 0
    assert all(
        f["error"].startswith("too_many_pixels")
        for f in first["images"]["failed"]
        if Path(f["path"]).name not in {"broken.jpg", "notes.png", "empty.webp"}
    )
    roomy = make_config(images_dir, tmp_path / "out", server, verifier="none")
    assert run_label(roomy, detector=ScriptedDetector())["images"]["labeled"] == 6


def test_report_records_the_promptlabel_version(
    images_dir: Path, tmp_path: Path, server: FakeVLMServer
) -> None:
    config = make_config(images_dir, tmp_path / "out", server, verifier="none")
    report = run_label(config, detector=ScriptedDetector())
    on_disk = json.loads((tmp_path / "out" / "report.json").read_text())
    installed = importlib.metadata.version("promptlabel")
    assert on_disk["provenance"]["promptlabel_version"] == installed
    assert report["provenance"] == on_disk["provenance"]


# -- boxes the dataset cannot hold are never accepted -------------------------------------------


class _WithUnwritableBoxes(ScriptedDetector):
    """The scripted boxes plus unverified triangles, three of which no dataset can hold."""

    def propose(self, images: Sequence[Image.Image], ontology: Ontology) -> list[Detections]:
        out = []
        for image, scripted in zip(images, super().propose(images, ontology), strict=True):
            w, h = image.size
            extra = np.array(
                [
                    [w - 0.4, 0, w + 5, 10],  # 0.4 px wide once clipped to the image
                    [w + 1, h + 1, w + 5, h + 5],  # outside the image altogether
                    [2, 2, 2.6, 50],  # 0.6 px wide
                    [2, 2, 3, 3],  # exactly 1 px a side: written (outside a 1x1 image)
                ],
                np.float32,
            )
            more = Detections(
                xyxy=extra,
                class_id=np.full(4, 2),
                confidence=np.full(4, 0.8),
                data={"box_score": np.full(4, 0.8, np.float32)},
            )
            out.append(Detections.merge([scripted, more]))
        return out


def _exported_boxes(out: Path) -> tuple[int, int]:
    """Boxes in the YOLO label files and in the COCO annotations."""
    yolo = sum(len(path.read_text().splitlines()) for path in (out / "labels").rglob("*.txt"))
    coco = sum(
        len(json.loads(path.read_text())["annotations"])
        for path in (out / "annotations").glob("instances_*.json")
    )
    return yolo, coco


def test_boxes_the_dataset_cannot_hold_are_rejected_with_the_reason(
    tmp_path: Path, server: FakeVLMServer
) -> None:
    images = tmp_path / "images"
    write_sample_images(images, n=3, seed=2)
    Image.new("RGB", (1, 1), "white").save(images / "dot.png")  # every box in it is sub-pixel
    out = tmp_path / "out"

    report = run_label(make_config(images, out, server), detector=_WithUnwritableBoxes())

    # The 1x1 image: 3 scripted + 4 extra boxes, none writable. Each other image: 3 of its 4
    # extra boxes. A verified class's unwritable box is not even asked about.
    assert report["labels"]["rejected"] == 3 + 7 + 3 * 3  # squares (verifier: no) + unwritable
    assert report["verifier"]["calls"] == 3 * 2
    assert report["labels"]["accepted"] == 3 * 3  # circle, triangle and the 1 px triangle
    assert _exported_boxes(out) == (9, 9)
    assert sum(report["dataset"]["boxes"].values()) == 9

    lines = (out / "labels.jsonl").read_text().splitlines()
    records = {Path(record["path"]).name: record for record in map(json.loads, lines)}
    dot = records["dot.png"]["labels"]
    assert [label["status"] for label in dot] == ["rejected"] * 7
    assert all(label["reason"].startswith("too small to export") for label in dot)
    assert "1x1 image" in dot[0]["reason"]
    # Every label is the one detection record plus the labeler's evidence.
    assert list(dot[0])[:4] == ["class_id", "class", "score", "xyxy"]
    with sqlite3.connect(out / ".promptlabel" / "workspace.db") as db:
        reasons = [
            row[0] for row in db.execute("SELECT reason FROM labels WHERE status='rejected'")
        ]
    assert sum(reason.startswith("too small to export") for reason in reasons) == 7 + 3 * 3

    # Re-routed without a verifier and with every threshold at its loosest: still rejected.
    loose = RouteThresholds(accept=0.0, reject=0.0, review_below_score=0.0)
    rerouted = run_label(
        make_config(images, out, server, verifier="none", thresholds=loose),
        detector=Exploding(),  # type: ignore[arg-type]
    )
    assert rerouted["labels"] == {"accepted": 3 * 4, "rejected": 7 + 3 * 3, "needs_review": 0}
    assert _exported_boxes(out) == (12, 12)


@pytest.mark.slow
def test_a_real_detector_on_a_1x1_image_accepts_only_what_is_exported(
    tiny_detector_dir: Path, tmp_path: Path
) -> None:
    images = tmp_path / "images"
    write_sample_images(images, n=2, seed=4)
    Image.new("RGB", (1, 1), "gray").save(images / "dot.png")
    config = LabelConfig(
        images_dir=images,
        ontology=parse_ontology("classes:\n  - {name: shape, detect: [circle, square]}\n"),
        out_dir=tmp_path / "out",
        detector=str(tiny_detector_dir),
        detector_options=DetectorOptions(
            box_threshold=0.0, text_threshold=0.0, max_det=5, device="cpu"
        ),
    )

    report = run_label(config)

    lines = (tmp_path / "out" / "labels.jsonl").read_text().splitlines()
    records = {Path(record["path"]).name: record for record in map(json.loads, lines)}
    dot = records["dot.png"]["labels"]
    assert len(dot) > 0 and {label["status"] for label in dot} == {"rejected"}
    assert report["labels"]["accepted"] > 0
    assert _exported_boxes(tmp_path / "out") == (report["labels"]["accepted"],) * 2
