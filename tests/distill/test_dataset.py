"""check_dataset: what it reports for a good dataset, and the error for each kind of bad one."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from distill.dataset import check_dataset, label_path_for, read_label_file
from labeler.core.exceptions import InputError
from labeler.demo.synthetic import SHAPE_CLASSES
from tests.distill.conftest import ShapesDataset

GOOD_YAML = "train: images/train\nval: images/val\nnames: {0: cat, 1: dog}\n"


def _write_dataset(root: Path, labels: dict[str, str], yaml_text: str = GOOD_YAML) -> Path:
    """A tiny dataset: one 8x8 PNG per entry of ``labels`` (``split/stem`` -> label text)."""
    for key, text in labels.items():
        split, stem = key.split("/")
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (200, 10, 10)).save(root / "images" / split / f"{stem}.png")
        (root / "labels" / split / f"{stem}.txt").write_text(text)
    (root / "data.yaml").write_text(yaml_text)
    return root


GOOD_LABELS = {
    "train/a": "0 0.5 0.5 0.2 0.2\n1 0.25 0.25 0.1 0.1\n",
    "train/b": "",
    "val/c": "1 0.5 0.5 0.5 0.5\n",
}


def test_an_exported_dataset_is_described(shapes_dataset: ShapesDataset) -> None:
    info = check_dataset(shapes_dataset.path)

    assert info.names == list(SHAPE_CLASSES)
    assert info.task == "detect"
    assert info.splits == shapes_dataset.summary.images
    assert info.instances == shapes_dataset.summary.boxes
    assert re.fullmatch(r"[0-9a-f]{64}", info.label_hash)
    assert info.data_yaml == (shapes_dataset.path / "data.yaml").resolve()
    assert [p.parent.name for p in info.images["val"]] == ["val"] * info.splits["val"]
    # The YAML itself may be passed instead of its folder.
    assert check_dataset(shapes_dataset.path / "data.yaml") == info


def test_label_hash_follows_labels_and_names_not_location(tmp_path: Path) -> None:
    first = check_dataset(_write_dataset(tmp_path / "one", GOOD_LABELS))
    moved = check_dataset(_write_dataset(tmp_path / "two", GOOD_LABELS))
    assert moved.label_hash == first.label_hash

    edited = dict(GOOD_LABELS, **{"val/c": "1 0.5 0.5 0.5 0.4\n"})
    assert check_dataset(_write_dataset(tmp_path / "edited", edited)).label_hash != first.label_hash

    renamed = GOOD_YAML.replace("dog", "wolf")
    renamed_root = _write_dataset(tmp_path / "renamed", GOOD_LABELS, renamed)
    assert check_dataset(renamed_root).label_hash != first.label_hash

    # A new background image (no label file at all) is a new dataset too.
    background = tmp_path / "background"
    _write_dataset(background, GOOD_LABELS)
    Image.new("RGB", (8, 8)).save(background / "images" / "train" / "empty.png")
    assert check_dataset(background).label_hash != first.label_hash


def test_polygon_rows_make_a_segment_dataset(tmp_path: Path) -> None:
    labels = {
        "train/a": "0 0.1 0.1 0.6 0.1 0.3 0.7\n",
        "val/b": "1 0.2 0.2 0.4 0.2 0.4 0.4 0.2 0.4\n",
    }
    info = check_dataset(_write_dataset(tmp_path, labels))

    assert info.task == "segment"
    assert info.instances == {"train": 1, "val": 1}
    rows = read_label_file(tmp_path / "labels" / "train" / "a.txt", n_classes=2)
    assert rows.xyxy_norm.tolist() == [[0.1, 0.1, 0.6, 0.7]]  # a polygon counts as its extent


def test_names_may_be_a_list_or_string_keys_and_val_may_reuse_train(tmp_path: Path) -> None:
    yaml_text = "train: images/train\nval: images/train\nnames: {'0': cat, '1': dog}\n"
    info = check_dataset(_write_dataset(tmp_path, {"train/a": "0 0.5 0.5 0.2 0.2\n"}, yaml_text))
    assert info.names == ["cat", "dog"]
    assert info.splits == {"train": 1, "val": 1}


def test_a_path_key_moves_the_dataset_root(tmp_path: Path) -> None:
    _write_dataset(tmp_path / "data", GOOD_LABELS)
    (tmp_path / "elsewhere.yaml").write_text("path: data\n" + GOOD_YAML)
    assert check_dataset(tmp_path / "elsewhere.yaml").splits == {"train": 2, "val": 1}


def test_labels_sit_beside_images_as_ultralytics_expects(tmp_path: Path) -> None:
    image = tmp_path / "images" / "sub" / "images" / "train" / "x.jpg"
    assert label_path_for(image) == tmp_path / "images" / "sub" / "labels" / "train" / "x.txt"


@dataclass(frozen=True)
class Broken:
    """A change to a good dataset and what the error must mention (``{root}`` is the folder)."""

    change: Callable[[Path], None]
    message: list[str]


def _replace_yaml(text: str) -> Callable[[Path], None]:
    return lambda root: (root / "data.yaml").write_text(text)


def _label(key: str, text: str) -> Callable[[Path], None]:
    split, stem = key.split("/")
    return lambda root: (root / "labels" / split / f"{stem}.txt").write_text(text)


def _empty_val(root: Path) -> None:
    for path in (root / "images" / "val").iterdir():
        path.unlink()


def _corrupt_image(root: Path) -> None:
    (root / "images" / "train" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")


BROKEN: dict[str, Broken] = {
    "no data.yaml": Broken(lambda root: (root / "data.yaml").unlink(), ["data.yaml not found"]),
    "invalid yaml": Broken(_replace_yaml("names: [cat, dog\n"), ["data.yaml", "not valid YAML"]),
    "yaml is a list": Broken(_replace_yaml("- cat\n- dog\n"), ["expected a mapping"]),
    "names missing": Broken(
        _replace_yaml("train: images/train\nval: images/val\n"), ["'names' must be a list"]
    ),
    "names a string": Broken(
        _replace_yaml("train: images/train\nval: images/val\nnames: cat\n"), ["'names' must be"]
    ),
    "names with a gap": Broken(
        _replace_yaml("train: images/train\nval: images/val\nnames: {0: cat, 2: dog}\n"),
        ["without gaps"],
    ),
    "no names": Broken(
        _replace_yaml("train: images/train\nval: images/val\nnames: []\n"), ["lists no classes"]
    ),
    "duplicate names": Broken(
        _replace_yaml("train: images/train\nval: images/val\nnames: [cat, cat]\n"), ["unique"]
    ),
    "no train entry": Broken(_replace_yaml("val: images/val\nnames: [cat, dog]\n"), ["'train:'"]),
    "train folder missing": Broken(
        lambda root: shutil.rmtree(root / "images" / "train"), ["images/train", "does not exist"]
    ),
    "val folder empty": Broken(_empty_val, ["val split", "holds no images"]),
    "class id too large": Broken(
        _label("train/a", "0 0.5 0.5 0.2 0.2\n2 0.5 0.5 0.2 0.2\n"),
        ["a.txt:2", "class id 2 is outside the 2 class names"],
    ),
    "negative class id": Broken(_label("val/c", "-1 0.5 0.5 0.2 0.2\n"), ["c.txt:1", "whole"]),
    "fractional class id": Broken(_label("val/c", "0.5 0.5 0.5 0.2 0.2\n"), ["c.txt:1", "whole"]),
    "four values": Broken(_label("train/a", "\n0 0.5 0.5 0.2\n"), ["a.txt:2", "got 4 values"]),
    "six values": Broken(_label("train/a", "0 0.5 0.5 0.2 0.2 0.1\n"), ["a.txt:1", "got 6"]),
    "not numbers": Broken(_label("train/a", "cat 0.5 0.5 0.2 0.2\n"), ["a.txt:1", "numbers"]),
    "pixel coordinates": Broken(
        _label("train/a", "0 32 32 10 10\n"), ["a.txt:1", "normalized to 0..1"]
    ),
    "not finite": Broken(_label("train/a", "0 nan 0.5 0.2 0.2\n"), ["a.txt:1", "normalized"]),
    "zero width": Broken(_label("train/a", "0 0.5 0.5 0 0.2\n"), ["a.txt:1", "above 0"]),
    "corrupt image": Broken(_corrupt_image, ["a.png", "cannot be read as an image"]),
    "boxes and polygons": Broken(
        _label("val/c", "1 0.1 0.1 0.6 0.1 0.3 0.7\n"), ["mix boxes", "a.txt:1", "c.txt:1"]
    ),
    "pose dataset": Broken(_replace_yaml(GOOD_YAML + "kpt_shape: [17, 3]\n"), ["keypoint"]),
}


@pytest.mark.parametrize("case", BROKEN.values(), ids=BROKEN.keys())
def test_a_broken_dataset_is_refused_with_the_file_named(case: Broken, tmp_path: Path) -> None:
    root = _write_dataset(tmp_path / "dataset", GOOD_LABELS)
    case.change(root)

    with pytest.raises(InputError) as error:
        check_dataset(root)

    for expected in case.message:
        assert expected in str(error.value)


def test_a_missing_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        check_dataset(tmp_path / "nowhere")
