"""Dataset versions: a project's training data as immutable, content-hashed snapshots.

A version is the union of labeled datasets (the folders ``promptlabel label`` and the service's
labeling jobs write, with reviewers' decisions already in them) on top of a parent version, and
is itself a dataset Ultralytics trains on as-is::

    STORE/d3/data.yaml            train, val (and hard_cases) and the class names
    STORE/d3/images/{train,val}/  the images (hard-linked from their sources when possible)
    STORE/d3/labels/{train,val}/  YOLO rows, class ids in this version's names
    STORE/d3/hard_cases.txt       the hard cases held out in val: the ``hard_cases`` split
    STORE/d3/manifest.json        lineage: parent, sources, counts, content hash

Rules, so that scores across versions can be compared:

- An image is known by the SHA-256 of its file's bytes. An image the parent has keeps the
  parent's split: val only grows (an image in val stays in val in every later version) and a
  training image never moves into val. A new image keeps the split its source gave it (the
  exporter's split is a function of the image's hash, so it is stable too).
- Where several sources hold one image, the later source's labels win (a later job's review
  is newer); the parent's labels give way to any source's.
- Class names are matched by name: the parent's names first, then new ones in order of first
  appearance; every label row is rewritten to the version's class ids.
- Hard cases (images devices sent back, named by the SHA-256 of the uploaded frame, which the
  exporter's file names carry as ``-<sha256[:8]>``) that fall in val form the ``hard_cases``
  split, so the promotion gate can score the models on hard cases neither trained on. Those in
  train are trained on, as any image.
- The content hash covers the class names and every (split, image hash, label bytes); a build
  whose content equals an existing version's returns that version instead of a copy.
- A version folder is written whole under a temporary name and renamed into place, and never
  changed afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from distill.dataset import check_dataset, label_path_for, read_label_file
from labeler.core.exceptions import InputError

__all__ = [
    "DatasetVersion",
    "DatasetVersions",
    "VersionSource",
    "hard_case_split",
    "version_workspace",
]

MANIFEST = "manifest.json"
HARD_CASES_LIST = "hard_cases.txt"
_VERSION_RE = re.compile(r"^d([1-9][0-9]*)$")
# The exporter's image names end in "-<sha256[:8]>" (and "-<n>" when two names would clash).
_SHA8_RE = re.compile(r"-([0-9a-f]{8})(?:-[0-9]+)?$")
_SPLITS = ("train", "val")


@dataclass(frozen=True)
class VersionSource:
    """A labeled dataset folder to take into a version, and what its lineage records of it."""

    name: str  # e.g. the labeling job's id, or the folder's name
    dataset_dir: Path
    details: Mapping[str, Any] = field(default_factory=dict)  # e.g. review decision counts


@dataclass(frozen=True)
class DatasetVersion:
    """One version as its manifest records it."""

    version: str
    path: Path
    content_hash: str
    parent: str | None
    created_at: str
    names: list[str]
    task: str
    splits: dict[str, int]  # images per split (hard_cases included)
    instances: dict[str, int]
    label_hash: str  # distill.dataset's, of what training reads (the model registry records it)
    sources: list[dict[str, Any]]
    added: dict[str, int]  # images new in this version, per split
    relabeled: int  # images the parent had whose labels a source changed

    @property
    def data_yaml(self) -> Path:
        return self.path / "data.yaml"

    @property
    def number(self) -> int:
        return int(self.version[1:])

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path), "data_yaml": str(self.data_yaml)}


@dataclass
class _Entry:
    """One image of the version being built."""

    image: Path
    label: bytes  # YOLO rows in the version's class ids
    split: str
    origin: str  # the source (or "parent") whose labels these are
    sha8: str | None


class DatasetVersions:
    """The versions under one folder (``WORKSPACE/datasets`` for the CLI, a project's folder in
    the service). Safe for several processes: numbers are taken by renaming into place."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def list(self) -> list[DatasetVersion]:
        """Every version, oldest first."""
        if not self.root.is_dir():
            return []
        numbered = [
            (int(match.group(1)), child)
            for child in self.root.iterdir()
            if (match := _VERSION_RE.match(child.name)) and (child / MANIFEST).is_file()
        ]
        return [_load(path) for _, path in sorted(numbered)]

    def latest(self) -> DatasetVersion | None:
        versions = self.list()
        return versions[-1] if versions else None

    def get(self, version: str) -> DatasetVersion:
        """``d3`` (or ``3``, or ``latest``); InputError naming the known versions otherwise."""
        wanted = version.strip()
        if wanted == "latest":
            found = self.latest()
            if found is None:
                raise InputError(f"no dataset version in {self.root} yet")
            return found
        name = f"d{wanted}" if wanted.isdigit() else wanted
        path = self.root / name
        if _VERSION_RE.match(name) is None or not (path / MANIFEST).is_file():
            known = ", ".join(v.version for v in self.list()) or "none yet"
            raise InputError(f"no dataset version {version!r} in {self.root} (versions: {known})")
        return _load(path)

    def create(
        self,
        sources: Sequence[VersionSource],
        *,
        parent: str | None = "latest",
        hard_cases: Collection[str] = (),
    ) -> tuple[DatasetVersion, bool]:
        """Build a version from ``parent`` (``"latest"``: the newest, when there is one; None:
        none) and ``sources`` in order; returns it and whether it is new (False: an existing
        version already holds exactly this content, and that one is returned).

        ``hard_cases`` are SHA-256 hashes (or 8-character prefixes) of hard-case frames. Errors
        (InputError) name the source folder, file or version at fault; nothing is written then.
        """
        if not sources and parent is None:
            raise InputError("a dataset version needs at least one labeled dataset")
        base = self._parent(parent)
        names = list(base.names) if base is not None else []
        entries: dict[str, _Entry] = {}
        task_of: dict[str, str] = {}
        if base is not None:
            for digest, entry in _read_version_entries(base).items():
                entries[digest] = entry
            task_of[f"parent {base.version}"] = base.task
        parent_entries = {d: (e.split, e.label) for d, e in entries.items()}
        for source in sources:
            info = check_dataset(source.dataset_dir)
            task_of[f"{source.name} ({source.dataset_dir})"] = info.task
            id_map = [_class_index(names, name) for name in info.names]
            seen: set[Path] = set()
            for split in _SPLITS:
                for image in info.images.get(split, ()):
                    if image in seen:  # val pointing at the train folder
                        continue
                    seen.add(image)
                    digest = _sha256_file(image)
                    label = _remapped(label_path_for(image), id_map, len(info.names))
                    known = entries.get(digest)
                    entries[digest] = _Entry(
                        image=image,
                        label=label,
                        # The parent's split (or an earlier source's) stands: val only grows.
                        split=known.split if known is not None else split,
                        origin=source.name,
                        sha8=_sha8(image),
                    )
        tasks = set(task_of.values())
        if len(tasks) > 1:
            described = ", ".join(f"{name}: {task}" for name, task in task_of.items())
            raise InputError(
                f"the datasets mix boxes and masks ({described}); a version must be all boxes "
                "(detect) or all polygons (segment)"
            )
        if not entries:
            raise InputError("the datasets hold no images")
        wanted = {h.lower()[:8] for h in hard_cases}
        held_out = sorted(
            d for d, e in entries.items() if e.split == "val" and e.sha8 in wanted and e.sha8
        )
        content_hash = _content_hash(names, entries)
        for existing in self.list():
            if existing.content_hash == content_hash:
                return existing, False
        self.root.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix=".building-", dir=self.root))
        try:
            files = _write_files(building, entries)
            document: dict[str, Any] = {
                "train": "images/train",
                "val": "images/val",
                "names": names,
            }
            if not any(e.split == "val" for e in entries.values()):
                document["val"] = "images/train"  # as the exporter does with a single image
            if held_out:
                (building / HARD_CASES_LIST).write_text(
                    "".join(f"{files[d]}\n" for d in held_out), encoding="utf-8"
                )
                document["hard_cases"] = HARD_CASES_LIST
            (building / "data.yaml").write_text(
                yaml.safe_dump(document, sort_keys=False, allow_unicode=True), encoding="utf-8"
            )
            info = check_dataset(building)  # what training will read, checked now
            splits = {**info.splits, **({"hard_cases": len(held_out)} if held_out else {})}
            added: dict[str, int] = {}
            relabeled = 0
            for digest, entry in entries.items():
                if digest not in parent_entries:
                    added[entry.split] = added.get(entry.split, 0) + 1
                elif parent_entries[digest][1] != entry.label:
                    relabeled += 1
            manifest = {
                "content_hash": content_hash,
                "parent": base.version if base is not None else None,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "names": names,
                "task": info.task,
                "splits": splits,
                "instances": dict(info.instances),
                "label_hash": info.label_hash,
                "sources": [
                    {"name": s.name, "dataset_dir": str(s.dataset_dir), **dict(s.details)}
                    for s in sources
                ],
                "added": added,
                "relabeled": relabeled,
            }
            (building / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            return _load(self._rename_into_place(building)), True
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise

    def _parent(self, parent: str | None) -> DatasetVersion | None:
        if parent is None:
            return None
        if parent == "latest":
            return self.latest()
        return self.get(parent)

    def _rename_into_place(self, building: Path) -> Path:
        """The next free number: a rename onto a version another process just made fails, so
        take the one after."""
        number = max((v.number for v in self.list()), default=0) + 1
        while True:
            target = self.root / f"d{number}"
            try:
                os.rename(building, target)
            except OSError:
                if not target.exists():
                    raise
                number += 1
                continue
            return target


def version_workspace(folder: Path) -> Path | None:
    """The workspace a dataset version lives in (``WORKSPACE/datasets/dN``), or None when
    ``folder`` is not a version: training on a version registers the model there, never inside
    the immutable version folder."""
    folder = folder.resolve()
    if (
        _VERSION_RE.match(folder.name)
        and (folder / MANIFEST).is_file()
        and folder.parent.name == "datasets"
    ):
        return folder.parent.parent
    return None


def hard_case_split(version: DatasetVersion) -> Path | None:
    """The version's data.yaml when it has a ``hard_cases`` split, else None."""
    return version.data_yaml if version.splits.get("hard_cases") else None


def _load(path: Path) -> DatasetVersion:
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        return DatasetVersion(version=path.name, path=path.resolve(), **manifest)
    except (OSError, ValueError, TypeError) as error:
        raise InputError(
            f"{path / MANIFEST}: unreadable dataset version manifest ({error})"
        ) from None


def _class_index(names: list[str], name: str) -> int:
    if name not in names:
        names.append(name)
    return names.index(name)


def _remapped(label_path: Path, id_map: list[int], n_classes: int) -> bytes:
    """The label file's rows with class ids mapped to the version's; b"" for no file."""
    if not label_path.exists():
        return b""
    read_label_file(label_path, n_classes)  # InputError naming the file and line when malformed
    rows = []
    for line in label_path.read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if fields:
            rows.append(" ".join([str(id_map[int(fields[0])]), *fields[1:]]))
    return "".join(f"{row}\n" for row in rows).encode("utf-8")


def _read_version_entries(version: DatasetVersion) -> dict[str, _Entry]:
    entries: dict[str, _Entry] = {}
    for split in _SPLITS:
        folder = version.path / "images" / split
        if not folder.is_dir():
            continue
        for image in sorted(p for p in folder.iterdir() if p.is_file()):
            label_path = label_path_for(image)
            entries[_sha256_file(image)] = _Entry(
                image=image,
                label=label_path.read_bytes() if label_path.exists() else b"",
                split=split,
                origin=f"parent {version.version}",
                sha8=_sha8(image),
            )
    return entries


def _sha8(image: Path) -> str | None:
    match = _SHA8_RE.search(image.stem)
    return match.group(1) if match else None


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _content_hash(names: Sequence[str], entries: Mapping[str, _Entry]) -> str:
    digest = hashlib.sha256(json.dumps(list(names), ensure_ascii=False).encode("utf-8"))
    for image_hash in sorted(entries):
        entry = entries[image_hash]
        digest.update(f"{entry.split}\0{image_hash}\0{len(entry.label)}\0".encode())
        digest.update(entry.label)
    return digest.hexdigest()


def _write_files(root: Path, entries: Mapping[str, _Entry]) -> dict[str, str]:
    """Images and labels under ``root``; returns each image's path relative to ``root``."""
    placed: dict[str, str] = {}
    used: set[str] = set()
    for digest in sorted(entries, key=lambda d: (entries[d].split, entries[d].image.name, d)):
        entry = entries[digest]
        stem, suffix = entry.image.stem, entry.image.suffix
        name, counter = f"{stem}{suffix}", 1
        while f"{entry.split}/{name}".casefold() in used:
            counter += 1
            name = f"{stem}-{counter}{suffix}"
        used.add(f"{entry.split}/{name}".casefold())
        image_path = root / "images" / entry.split / name
        image_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(entry.image, image_path)
        except OSError:
            shutil.copyfile(entry.image, image_path)
        label_path = label_path_for(image_path)
        label_path.parent.mkdir(parents=True, exist_ok=True)
        label_path.write_bytes(entry.label)
        placed[digest] = f"images/{entry.split}/{name}"
    return placed
