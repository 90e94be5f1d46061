"""The Label Studio round trip without a server: coordinates, the labeling config, tasks, and
exports turned into decisions (matched by our ids or by IoU, malformed ones refused whole)."""

from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from labeler.core.detections import Detections
from labeler.core.exceptions import InputError
from labeler.export.label_studio import (
    import_label_studio,
    label_studio_config,
    label_studio_tasks,
    local_files_url,
    local_files_url_for,
    percent_to_xyxy,
    xyxy_to_percent,
)
from labeler.pipeline import run_label
from labeler.store.workspace import Workspace
from tests.fakes.vlm_server import FakeVLMServer
from tests.labeler.test_pipeline import Exploding, ScriptedDetector, make_config
from tests.serve.cli.test_main import assert_one_line_error, run_cli

NAMES = ("cat", "dog", "bird")
KEY = "propose-key"
SHA = "a" * 64
IMAGE_WH = (200, 100)
BOXES = [[10.0, 10.0, 50.0, 40.0], [100.0, 20.0, 150.0, 90.0], [160.0, 5.0, 195.0, 30.0]]


def _url(record: dict[str, Any]) -> str:
    return f"http://images.test/{record['image_sha256']}.png"


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[Workspace]:
    """One 200x100 image with three proposals: a cat, a dog and a bird."""
    with Workspace(tmp_path / "ws") as opened:
        opened.record_image(SHA, IMAGE_WH)
        detections = Detections(np.asarray(BOXES), np.arange(3), np.asarray([0.9, 0.8, 0.7]))
        opened.save_proposals(SHA, KEY, detections, NAMES)
        yield opened


def _records(workspace: Workspace, statuses: tuple[str, ...] = ("accepted",) * 3) -> list[Any]:
    """labels.jsonl records of the workspace's image, as a run writes them."""
    ids = workspace.load_proposals(SHA, KEY).data["proposal_id"].tolist()
    states = workspace.human_states(ids)
    labels = []
    for i, (pid, status) in enumerate(zip(ids, statuses, strict=True)):
        state = states.get(pid)
        labels.append(
            {
                "class_id": i,
                "class": NAMES[i],
                "score": 0.9 - i / 10,
                "xyxy": BOXES[i],
                "proposal_id": pid,
                "status": status,
                "version": state.version if state else 0,
                "yes_prob": None,
            }
        )
    return [{"path": "/x.png", "image_sha256": SHA, "image_wh": list(IMAGE_WH), "labels": labels}]


def _export(tasks: list[dict[str, Any]], edit: Any = None) -> list[dict[str, Any]]:
    """What Label Studio exports after an annotator opened each task's prediction, changed it with
    ``edit(result)`` and submitted: predictions come back as ids only."""
    exported = []
    for task_id, task in enumerate(tasks, start=1):
        result = copy.deepcopy(task["predictions"][0]["result"]) if task["predictions"] else []
        for item in result:
            item.pop("score", None)
        if edit is not None:
            result = edit(result)
        exported.append(
            {
                "id": task_id,
                "data": copy.deepcopy(task["data"]),
                "meta": copy.deepcopy(task["meta"]),
                "predictions": [task_id],
                "annotations": [
                    {"id": task_id, "result": result, "was_cancelled": False, "updated_at": "T1"}
                ],
            }
        )
    return exported


def _new_box(x: float, y: float, w: float, h: float, label: str, rid: str = "Ab3xZ") -> Any:
    return {
        "id": rid,
        "type": "rectanglelabels",
        "from_name": "label",
        "to_name": "image",
        "original_width": IMAGE_WH[0],
        "original_height": IMAGE_WH[1],
        "image_rotation": 0,
        "value": {
            "x": x,
            "y": y,
            "width": w,
            "height": h,
            "rotation": 0,
            "rectanglelabels": [label],
        },
    }


def _import(workspace: Workspace, export: Any, **options: Any) -> dict[str, Any]:
    return import_label_studio(
        workspace, export, reviewer="lsa", class_names=NAMES, **options
    ).as_dict()


# -- coordinates -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("xyxy", "image_wh"),
    [
        ((0, 0, 200, 100), (200, 100)),
        ((10.25, 3.5, 11.75, 99.99), (200, 100)),
        ((1, 2, 3, 4), (7, 13)),
        ((1234.5, 17.0, 4001.0, 2999.0), (4032, 3024)),
    ],
)
def test_percent_round_trip(xyxy: tuple[float, ...], image_wh: tuple[int, int]) -> None:
    percent = xyxy_to_percent(xyxy, image_wh)
    assert all(0.0 <= v <= 100.0 for v in percent.values())
    assert percent_to_xyxy(percent, image_wh) == pytest.approx(xyxy, abs=1e-9)


def test_percent_of_known_box_and_rotated_box_becomes_its_bounding_box() -> None:
    assert xyxy_to_percent((20, 10, 60, 30), (200, 100)) == {
        "x": 10.0, "y": 10.0, "width": 20.0, "height": 20.0,
    }  # fmt: skip
    # 40x20 px turned 90 degrees clockwise about its top-left corner (20, 10).
    value = {"x": 10.0, "y": 10.0, "width": 20.0, "height": 20.0}
    assert percent_to_xyxy(value, (200, 100), rotation=90) == pytest.approx((0, 10, 20, 50))
    assert percent_to_xyxy(value, (200, 100), rotation=360) == pytest.approx((20, 10, 60, 30))


# -- the labeling config ---------------------------------------------------------------------------


def test_config_holds_hostile_class_names_as_valid_xml() -> None:
    names = ['a<b&"c', "it's", "x > y", "</Label><Label value='z'/>", "tab\tand\nnewline", "ünï"]
    root = ElementTree.fromstring(label_studio_config(names))
    assert root.tag == "View"
    image = root.find("Image")
    assert image is not None and image.attrib == {"name": "image", "value": "$image"}
    labels = root.find("RectangleLabels")
    assert labels is not None and labels.attrib == {"name": "label", "toName": "image"}
    assert [label.attrib["value"] for label in labels.findall("Label")] == names


@pytest.mark.parametrize(
    ("names", "message"),
    [([], "at least one"), (["cat", "cat"], "distinct"), (["nul\x00"], "cannot be written")],
)
def test_config_refuses_names_label_studio_cannot_hold(names: list[str], message: str) -> None:
    with pytest.raises(InputError, match=message):
        label_studio_config(names)


# -- tasks -----------------------------------------------------------------------------------------


def test_tasks_carry_predictions_in_percent_with_our_ids(workspace: Workspace) -> None:
    records = _records(workspace, ("accepted", "needs_review", "rejected"))
    records[0]["labels"][1]["yes_prob"] = 0.55
    records.append(
        {"path": "/broken.jpg", "image_sha256": "b" * 64, "image_wh": None, "labels": []}
    )
    records.append(
        {"path": "/bare.png", "image_sha256": "c" * 64, "image_wh": [5, 5], "labels": []}
    )
    tasks = label_studio_tasks(records, image_url_for=_url, model_version="gdino+vlm")
    assert len(tasks) == 2  # the undecodable image has no task; an image without boxes has one
    task, bare = tasks
    assert bare["predictions"] == [] and bare["data"]["image_sha256"] == "c" * 64
    assert task["data"]["image"] == f"http://images.test/{SHA}.png"
    assert task["data"]["image_sha256"] == task["meta"]["image_sha256"] == SHA
    (prediction,) = task["predictions"]
    assert prediction["model_version"] == "gdino+vlm"
    assert prediction["score"] == pytest.approx(0.55)  # the least confident box's P(yes)
    ids = [label["proposal_id"] for label in records[0]["labels"]]
    first, second = prediction["result"]  # the rejected bird is left out
    assert (first["id"], second["id"]) == (f"pl-{ids[0]}", f"pl-{ids[1]}")
    assert first["type"] == "rectanglelabels"
    assert (first["from_name"], first["to_name"], first["image_rotation"]) == ("label", "image", 0)
    assert (first["original_width"], first["original_height"]) == IMAGE_WH
    assert first["value"] == {
        "x": 5.0, "y": 10.0, "width": 20.0, "height": 30.0, "rotation": 0,
        "rectanglelabels": ["cat"],
    }  # fmt: skip
    shown = task["data"]["promptlabel"]["proposals"]
    assert [(s["proposal_id"], s["version"], s["xyxy"]) for s in shown] == [
        (ids[0], 0, BOXES[0]), (ids[1], 0, BOXES[1]),
    ]  # fmt: skip
    # Label Studio takes tasks as JSON.
    assert json.loads(json.dumps(tasks)) == tasks

    with_rejected = label_studio_tasks(
        records,
        image_url_for=_url,
        model_version="m",
        statuses=("accepted", "needs_review", "rejected"),
    )
    assert len(with_rejected[0]["predictions"][0]["result"]) == 3


def test_local_files_urls(tmp_path: Path) -> None:
    (tmp_path / "data set" / "images").mkdir(parents=True)
    image = tmp_path / "data set" / "images" / "cat 1.jpg"
    assert local_files_url(image, document_root=tmp_path) == (
        "/data/local-files/?d=data%20set/images/cat%201.jpg"
    )
    with pytest.raises(InputError, match="document root"):
        local_files_url("/elsewhere/cat.jpg", document_root=tmp_path)
    url_for = local_files_url_for(tmp_path, tmp_path / "data set")
    assert url_for({"dataset_image": "images/cat 1.jpg", "path": "/x"}).endswith(
        "images/cat%201.jpg"
    )
    assert url_for({"dataset_image": None, "path": str(tmp_path / "a.png")}).endswith("?d=a.png")


# -- back: decisions -------------------------------------------------------------------------------


def _ids(workspace: Workspace) -> list[int]:
    ids: list[int] = workspace.load_proposals(SHA, KEY).data["proposal_id"].tolist()
    return ids


def test_matched_by_id_deleted_relabeled_moved_and_drawn_boxes(workspace: Workspace) -> None:
    ids = _ids(workspace)
    tasks = label_studio_tasks(_records(workspace), image_url_for=_url, model_version="m")

    def annotate(result: list[Any]) -> list[Any]:
        cat, dog, bird = result
        dog["value"]["rectanglelabels"] = ["bird"]  # relabel
        bird["value"]["x"] += 5.0  # moved 10 px
        cat["value"]["y"] += 0.5  # half a pixel: still the same box
        return [cat, dog, bird, _new_box(40, 50, 10, 20, "dog")]

    summary = _import(workspace, _export(tasks, annotate))
    assert summary == {
        "accepted": 1, "relabeled": 1, "edited": 1, "rejected": 0, "added": 1, "unchanged": 0,
        "stale": [], "unmatched_tasks": [], "unannotated_tasks": [],
    }  # fmt: skip
    states = workspace.human_states()
    assert (states[ids[0]].action, states[ids[0]].xyxy) == ("accept", None)
    assert (states[ids[1]].action, states[ids[1]].class_id) == ("relabel", 2)
    assert states[ids[2]].action == "edit"
    # Moved 10 px right, then clipped to the image like every box.
    assert states[ids[2]].xyxy == pytest.approx((170, 5, 200, 30))
    (added,) = [s for pid, s in states.items() if pid not in ids]
    assert (added.action, added.class_id, added.xyxy) == ("add", 1, (80.0, 50.0, 100.0, 70.0))
    assert {s.reviewer for s in states.values()} == {"lsa"}

    # The same export again changes nothing.
    again = _import(workspace, _export(tasks, annotate))
    assert again["unchanged"] == 4 and again["accepted"] == again["added"] == 0
    assert len(workspace.human_states()) == 4


def test_deleted_box_is_rejected(workspace: Workspace) -> None:
    ids = _ids(workspace)
    tasks = label_studio_tasks(_records(workspace), image_url_for=_url, model_version="m")
    summary = _import(workspace, _export(tasks, lambda result: result[:2]))
    assert (summary["accepted"], summary["rejected"]) == (2, 1)
    assert workspace.human_states()[ids[2]].status == "rejected"


def test_boxes_whose_ids_changed_are_matched_by_iou(workspace: Workspace) -> None:
    ids = _ids(workspace)
    tasks = label_studio_tasks(_records(workspace), image_url_for=_url, model_version="m")

    def redrawn(result: list[Any]) -> list[Any]:
        for n, item in enumerate(result):
            item["id"] = f"region{n}"  # a tool that drops region ids
        cat, dog, bird = result
        cat["value"]["width"] += 0.2  # 0.4 px wider: same box
        dog["value"]["rectanglelabels"] = ["cat"]
        bird["value"]["x"] = 0.0  # moved far away: IoU 0, so deleted + drawn anew
        return [bird, dog, cat]  # order does not matter

    summary = _import(workspace, _export(tasks, redrawn))
    assert (summary["accepted"], summary["relabeled"]) == (1, 1)
    assert (summary["rejected"], summary["added"]) == (1, 1)
    states = workspace.human_states()
    assert states[ids[0]].action == "accept"
    assert (states[ids[1]].action, states[ids[1]].class_id) == ("relabel", 0)
    assert states[ids[2]].status == "rejected"


@pytest.mark.parametrize(("threshold", "edited", "added"), [(0.4, 3, 0), (0.6, 0, 3)])
def test_iou_threshold_decides_what_still_matches(
    workspace: Workspace, threshold: float, edited: int, added: int
) -> None:
    tasks = label_studio_tasks(_records(workspace), image_url_for=_url, model_version="m")

    def shifted(result: list[Any]) -> list[Any]:
        for item in result:
            item["id"] = "x" + item["id"]
            item["value"]["x"] += item["value"]["width"] / 3  # IoU 0.5 with the shown box
        return result

    summary = _import(workspace, _export(tasks, shifted), iou_threshold=threshold)
    assert (summary["edited"], summary["added"], summary["rejected"]) == (edited, added, added)


def test_decisions_made_after_the_export_are_not_overwritten(workspace: Workspace) -> None:
    ids = _ids(workspace)
    tasks = label_studio_tasks(_records(workspace), image_url_for=_url, model_version="m")
    workspace.decide(ids[0], action="reject", base_version=0, reviewer="ana")  # in our own review
    workspace.decide(ids[1], action="accept", base_version=0, reviewer="ana")  # agrees with LS
    summary = _import(workspace, _export(tasks))
    assert summary["stale"] == [ids[0]]
    assert (summary["unchanged"], summary["accepted"]) == (1, 1)
    states = workspace.human_states()
    assert (states[ids[0]].status, states[ids[0]].reviewer) == ("rejected", "ana")
    assert states[ids[2]].reviewer == "lsa"


def test_latest_uncancelled_annotation_counts_and_tasks_not_ours_are_reported(
    workspace: Workspace,
) -> None:
    ids = _ids(workspace)
    tasks = label_studio_tasks(_records(workspace), image_url_for=_url, model_version="m")
    export = _export(tasks)
    annotations = export[0]["annotations"]
    deleted_all = {"id": 7, "result": [], "was_cancelled": False, "updated_at": "T0"}
    skipped = {"id": 8, "result": [], "was_cancelled": True, "updated_at": "T9"}
    annotations[:0] = [deleted_all, skipped]
    for item in annotations[2]["result"]:  # the newest: sizes left to the workspace
        del item["original_width"], item["original_height"]
    export.append({"id": 41, "data": {"image": "x", "image_sha256": "f" * 64}, "annotations": []})
    export.append({"id": 42, "data": {"image": "y"}, "annotations": []})
    export.append({**copy.deepcopy(export[0]), "id": 43, "annotations": [skipped]})
    summary = _import(workspace, export)
    assert summary["accepted"] == 3 and summary["rejected"] == 0
    assert summary["unmatched_tasks"] == [41, 42]
    assert summary["unannotated_tasks"] == [43]
    assert all(workspace.human_states()[pid].status == "accepted" for pid in ids)


def _result(task: dict[str, Any]) -> list[Any]:
    result: list[Any] = task["annotations"][0]["result"]
    return result


def _shown(task: dict[str, Any], index: int) -> dict[str, Any]:
    shown: dict[str, Any] = task["data"]["promptlabel"]["proposals"][index]
    return shown


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda t: t.update(data="oops"), r"task 1: 'data' must be an object"),
        (lambda t: t.update(annotations={}), r"task 1: 'annotations' must be a list"),
        (lambda t: t["annotations"].append(3), r"task 1: annotations\[1\] must be an object"),
        (lambda t: t["annotations"][0].update(result="x"), r"task 1: annotation 'result'"),
        (lambda t: _result(t).append("box"), r"task 1: result\[3\] must be an object"),
        (lambda t: _result(t)[1].update(value=None), r"task 1: result\[1\]\.value must be"),
        (lambda t: _result(t)[0]["value"].pop("x"), r"task 1: result\[0\]\.value\.x must be"),
        (lambda t: _result(t)[0]["value"].update(y="1"), r"\[0\]\.value\.y must be a finite"),
        (lambda t: _result(t)[0]["value"].update(width=0), r"value\.width must be positive"),
        (lambda t: _result(t)[0]["value"].update(x=float("nan")), r"value\.x must be a finite"),
        (lambda t: _result(t)[2]["value"].update(rectanglelabels=[]), r"must be one class name"),
        (lambda t: _result(t)[2]["value"].update(rectanglelabels=["cow"]), r"unknown class 'cow'"),
        (lambda t: _result(t)[0].update(original_width=-3), r"original_width must be positive"),
        (lambda t: _result(t)[0]["value"].update(x=150.0), r"result\[0\]: the box lies outside"),
        (
            lambda t: t["data"]["promptlabel"].update(proposals={}),
            r"data\.promptlabel\.proposals' must be a list",
        ),
        (lambda t: _shown(t, 0).update(xyxy=[1, 2]), r"proposals\[0\]\.xyxy must be 4 numbers"),
        (lambda t: _shown(t, 0).update(version="1"), r"proposals\[0\]\.version must be an int"),
        (
            lambda t: _shown(t, 1).update(proposal_id=9999),
            r"task 1: proposal 9999 is not a box of image aaaa",
        ),
    ],
)
def test_malformed_exports_name_the_task_and_change_nothing(
    workspace: Workspace, breakage: Any, message: str
) -> None:
    records = _records(workspace)
    tasks = label_studio_tasks(records, image_url_for=_url, model_version="m", propose_key=KEY)
    (good,) = _export(tasks)
    # A first, valid task: nothing of it may be decided when a later one is malformed.
    export = [{**copy.deepcopy(good), "id": 0}, good]
    breakage(good)
    with pytest.raises(InputError, match=message):
        _import(workspace, export)
    assert workspace.human_states() == {}


def test_an_export_that_is_not_a_task_list(workspace: Workspace, tmp_path: Path) -> None:
    path = tmp_path / "export.json"
    path.write_text('{"tasks": []}')
    with pytest.raises(InputError, match=r"export\.json: a Label Studio JSON export is a list"):
        _import(workspace, path)
    path.write_text("[{")
    with pytest.raises(InputError, match=r"export\.json: not a JSON file"):
        _import(workspace, path)
    with pytest.raises(InputError, match="cannot read"):
        _import(workspace, tmp_path / "missing.json")
    with pytest.raises(InputError, match="task #1 must be an object"):
        _import(workspace, [{"data": {}}, "task"])
    with pytest.raises(InputError, match="reviewer must be named"):
        import_label_studio(workspace, [], reviewer="", class_names=NAMES)


# -- the whole trip through a run, with a simulated Label Studio -----------------------------------


def test_round_trip_through_a_run_changes_the_dataset_as_annotated(
    images_dir: Path, tmp_path: Path, server: FakeVLMServer
) -> None:
    out = tmp_path / "out"
    config = make_config(images_dir, out, server)
    first = run_label(config, detector=ScriptedDetector())
    tasks = label_studio_tasks(out, image_url_for=_url, model_version="scripted")
    assert len(tasks) == 6
    assert all(t["data"]["promptlabel"]["propose_key"] == first["provenance"]["propose_key"]
               for t in tasks)  # fmt: skip

    def annotate(result: list[Any]) -> list[Any]:
        circle, _triangle = result  # squares were rejected, so not shown
        return [circle, _new_box(1, 1, 10, 10, "square")]

    export = _export(tasks[:1], annotate)
    names = config.ontology.names
    with Workspace(config.workspace) as workspace:
        summary = import_label_studio(workspace, export, reviewer="lsa", class_names=names)
    assert (summary.accepted, summary.rejected, summary.added) == (1, 1, 1)
    again = run_label(config, detector=Exploding())
    assert again["labels_by_decider"]["human"] == {
        "accepted": 2, "rejected": 1, "needs_review": 0,
    }  # fmt: skip
    assert again["labels"]["accepted"] == first["labels"]["accepted"] - 1 + 1


def test_command_line_export_and_import(
    images_dir: Path, tmp_path: Path, server: FakeVLMServer
) -> None:
    out = tmp_path / "out"
    config = make_config(images_dir, out, server)
    run_label(config, detector=ScriptedDetector())
    tasks_path, config_path = tmp_path / "tasks.json", tmp_path / "config.xml"
    exported = run_cli(
        "label-studio", "export", out, "--out", tasks_path, "--config-out", config_path,
        "--document-root", tmp_path,
    )  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    tasks = json.loads(tasks_path.read_text())
    assert len(tasks) == 6 and tasks[0]["data"]["image"].startswith("/data/local-files/?d=out/")
    assert tasks[0]["predictions"][0]["model_version"] == "scripted+openai:fake-vlm"
    labels = ElementTree.fromstring(config_path.read_text()).iter("Label")
    assert [label.attrib["value"] for label in labels] == list(config.ontology.names)

    export_path = tmp_path / "export.json"
    export_path.write_text(json.dumps(_export(tasks[:2], lambda result: result[:1])))
    imported = run_cli("label-studio", "import", out, export_path, "--reviewer", "lsa", "--json")
    assert imported.returncode == 0, imported.stderr
    summary = json.loads(imported.stdout)
    assert (summary["accepted"], summary["rejected"]) == (2, 2)

    export_path.write_text('[{"id": 5, "data": []}]')
    broken = run_cli("label-studio", "import", out, export_path)
    assert_one_line_error(broken, "Label Studio task 5: 'data' must be an object")
    elsewhere = run_cli("label-studio", "import", tmp_path, export_path)
    assert_one_line_error(elsewhere, "data.yaml")
