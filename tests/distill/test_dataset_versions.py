"""Dataset versions: unions of labeled datasets on a parent, val only grows, hard cases held out,
content-hashed and immutable."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from distill.dataset import check_dataset, list_split_images
from distill.dataset_versions import DatasetVersions, VersionSource, version_workspace
from labeler.core.exceptions import InputError

BOX = "0.5 0.5 0.2 0.2"


def _image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (32, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _dataset(root: Path, names: list[str], images: dict[str, tuple[str, int, list[str]]]) -> Path:
    """A YOLO dataset as the exporter writes it: ``images`` maps a file stem to (split, pixel
    seed, label rows). The same seed is the same image bytes in every dataset."""
    for stem, (split, seed, rows) in images.items():
        _image(root / "images" / split / f"{stem}.png", seed)
        label = root / "labels" / split / f"{stem}.txt"
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("".join(f"{row}\n" for row in rows))
    # As the exporter does when no image falls in val: val is the train folder.
    has_val = any(split == "val" for split, _, _ in images.values())
    val = "images/val" if has_val else "images/train"
    (root / "data.yaml").write_text(
        yaml.safe_dump({"train": "images/train", "val": val, "names": names})
    )
    return root


def _labels(version_dir: Path) -> dict[str, tuple[str, str]]:
    """stem -> (split, label text) of a version."""
    found = {}
    for split in ("train", "val"):
        for label in sorted((version_dir / "labels" / split).glob("*.txt")):
            found[label.stem] = (split, label.read_text())
    return found


def test_a_first_version_is_a_trainable_copy_with_its_lineage(tmp_path: Path) -> None:
    job = _dataset(tmp_path / "job1", ["cat", "dog"], {
        "a-00000001": ("train", 1, [f"0 {BOX}"]),
        "b-00000002": ("train", 2, [f"1 {BOX}"]),
        "c-00000003": ("val", 3, [f"1 {BOX}", f"0 {BOX}"]),
    })  # fmt: skip
    store = DatasetVersions(tmp_path / "store")
    version, created = store.create([VersionSource("job1", job, {"human_decisions": 2})])
    assert created and version.version == "d1" and version.parent is None
    assert version.splits == {"train": 2, "val": 1}
    assert version.instances == {"train": 2, "val": 2}
    assert version.sources == [{"name": "job1", "dataset_dir": str(job), "human_decisions": 2}]
    assert version.added == {"train": 2, "val": 1} and version.relabeled == 0
    info = check_dataset(version.path)  # Ultralytics' layout, checked as training reads it
    assert info.names == ["cat", "dog"] and info.label_hash == version.label_hash
    assert store.get("latest") == version == store.get("1") == store.get("d1")
    manifest = json.loads((version.path / "manifest.json").read_text())
    assert manifest["content_hash"] == version.content_hash


def test_val_only_grows_and_later_labels_win(tmp_path: Path) -> None:
    first = _dataset(tmp_path / "job1", ["cat"], {
        "a-00000001": ("train", 1, [f"0 {BOX}"]),
        "v-00000002": ("val", 2, [f"0 {BOX}"]),
    })  # fmt: skip
    store = DatasetVersions(tmp_path / "store")
    d1, _ = store.create([VersionSource("job1", first)])
    # The second round's export puts the val image in train and the train image in val (another
    # val fraction, say), relabels one, and brings a new image in each split.
    second = _dataset(tmp_path / "job2", ["cat"], {
        "v-00000002": ("train", 2, ["0 0.4 0.4 0.2 0.2"]),
        "a-00000001": ("val", 1, [f"0 {BOX}"]),
        "n-00000004": ("train", 4, [f"0 {BOX}"]),
        "m-00000005": ("val", 5, []),
    })  # fmt: skip
    d2, created = store.create([VersionSource("job2", second)])
    assert created and d2.version == "d2" and d2.parent == "d1"
    labels = _labels(d2.path)
    assert labels["v-00000002"] == ("val", "0 0.4 0.4 0.2 0.2\n")  # stays in val, relabeled
    assert labels["a-00000001"][0] == "train"  # never moves into val
    assert labels["n-00000004"][0] == "train" and labels["m-00000005"] == ("val", "")
    assert d2.added == {"train": 1, "val": 1} and d2.relabeled == 1
    val_before = {p.name for p in list_split_images(d1.data_yaml, "val")}
    val_after = {p.name for p in list_split_images(d2.data_yaml, "val")}
    assert val_before <= val_after
    # d1 is untouched: versions are immutable.
    assert _labels(d1.path)["v-00000002"] == ("val", f"0 {BOX}\n")


def test_class_names_are_matched_by_name(tmp_path: Path) -> None:
    first = _dataset(tmp_path / "job1", ["cat", "dog"], {"a-00000001": ("train", 1, [f"1 {BOX}"])})
    second = _dataset(tmp_path / "job2", ["dog", "bird"], {
        "b-00000002": ("train", 2, [f"0 {BOX}", f"1 {BOX}"]),
    })  # fmt: skip
    store = DatasetVersions(tmp_path / "store")
    store.create([VersionSource("job1", first)])
    d2, _ = store.create([VersionSource("job2", second)])
    assert d2.names == ["cat", "dog", "bird"]
    labels = _labels(d2.path)
    assert labels["a-00000001"][1] == f"1 {BOX}\n"  # dog stays 1
    assert labels["b-00000002"][1] == f"1 {BOX}\n2 {BOX}\n"  # dog 0 -> 1, bird 1 -> 2


def test_the_same_content_is_the_same_version(tmp_path: Path) -> None:
    job = _dataset(tmp_path / "job1", ["cat"], {"a-00000001": ("train", 1, [f"0 {BOX}"])})
    store = DatasetVersions(tmp_path / "store")
    d1, _ = store.create([VersionSource("job1", job)])
    again, created = store.create([VersionSource("job1 again", job)])
    assert not created and again == d1 and [v.version for v in store.list()] == ["d1"]
    # A change of one label is a new version.
    (job / "labels" / "train" / "a-00000001.txt").write_text("0 0.3 0.3 0.1 0.1\n")
    d2, created = store.create([VersionSource("job1 edited", job)])
    assert created and d2.content_hash != d1.content_hash and d2.relabeled == 1


def test_hard_cases_in_val_are_a_split_of_their_own(tmp_path: Path) -> None:
    job = _dataset(tmp_path / "job1", ["cat"], {
        "frame-abcdef01": ("val", 1, [f"0 {BOX}"]),
        "frame-abcdef02": ("train", 2, [f"0 {BOX}"]),
        "other-12345678": ("val", 3, [f"0 {BOX}"]),
    })  # fmt: skip
    store = DatasetVersions(tmp_path / "store")
    version, _ = store.create(
        [VersionSource("job1", job)],
        hard_cases=["abcdef01" + "0" * 56, "abcdef02" + "0" * 56],
    )
    assert version.splits["hard_cases"] == 1  # the one in train is trained on, not held out
    held_out = list_split_images(version.data_yaml, "hard_cases")
    assert [p.name for p in held_out] == ["frame-abcdef01.png"]
    assert check_dataset(version.path).splits["hard_cases"] == 1  # what evaluation reads
    assert held_out[0].resolve() in {
        p.resolve() for p in list_split_images(version.data_yaml, "val")
    }


def test_bad_input_names_what_is_wrong_and_writes_nothing(tmp_path: Path) -> None:
    store = DatasetVersions(tmp_path / "store")
    boxes = _dataset(tmp_path / "boxes", ["cat"], {"a-00000001": ("train", 1, [f"0 {BOX}"])})
    polygons = _dataset(tmp_path / "polygons", ["cat"], {
        "b-00000002": ("train", 2, ["0 0.1 0.1 0.5 0.1 0.5 0.5"]),
    })  # fmt: skip
    with pytest.raises(InputError, match="mix boxes and masks"):
        store.create([VersionSource("boxes", boxes), VersionSource("polygons", polygons)])
    broken = _dataset(tmp_path / "broken", ["cat"], {"c-00000003": ("train", 3, ["7 0.5"])})
    with pytest.raises(InputError, match=r"c-00000003\.txt"):
        store.create([VersionSource("broken", broken)])
    assert store.list() == [] and not (store.root.exists() and any(store.root.iterdir()))
    with pytest.raises(InputError, match=r"no dataset version 'd9'.*versions: none yet"):
        store.get("d9")
    with pytest.raises(InputError, match="at least one labeled dataset"):
        store.create([], parent=None)


def test_builds_at_once_get_distinct_numbers(tmp_path: Path) -> None:
    store = DatasetVersions(tmp_path / "store")
    jobs = [
        _dataset(tmp_path / f"job{i}", ["cat"], {f"a{i}-0000000{i}": ("train", i, [f"0 {BOX}"])})
        for i in range(1, 5)
    ]
    with ThreadPoolExecutor(4) as pool:
        made = list(
            pool.map(lambda j: store.create([VersionSource(j.name, j)], parent=None)[0], jobs)
        )
    assert sorted(v.version for v in made) == ["d1", "d2", "d3", "d4"]
    assert [v.version for v in store.list()] == ["d1", "d2", "d3", "d4"]


def test_a_versions_workspace_is_where_its_models_register(tmp_path: Path) -> None:
    job = _dataset(tmp_path / "job1", ["cat"], {"a-00000001": ("train", 1, [f"0 {BOX}"])})
    store = DatasetVersions(tmp_path / "ws" / "datasets")
    version, _ = store.create([VersionSource("job1", job)])
    assert version_workspace(version.path) == (tmp_path / "ws").resolve()
    assert version_workspace(job) is None
