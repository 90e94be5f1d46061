"""The exporter: a dataset Ultralytics trains on as-is and pycocotools loads, reproducibly."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image, PngImagePlugin

from labeler.core.detections import Detections
from labeler.core.exceptions import InputError
from labeler.core.images import load_image, sha256_file
from labeler.demo.synthetic import SHAPE_CLASSES, make_shapes_image, write_shapes_items
from labeler.export.dataset import (
    ExportItem,
    ExportSummary,
    export_dataset,
    split_for,
    unwritable_reasons,
    writable_boxes,
)

CLASSES = ("cat", "dog")


@dataclass(frozen=True)
class Case:
    """An item to export and the boxes the dataset must hold for it (after clipping)."""

    item: ExportItem
    class_id: list[int]
    xyxy: list[list[float]]

    @property
    def stem(self) -> str:
        return f"{self.item.source_path.stem}-{self.item.sha256[:8]}"


def _noise(image_wh: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    width, height = image_wh
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def _item(path: Path, xyxy: list[list[float]], class_id: list[int]) -> ExportItem:
    detections = Detections(
        xyxy=np.asarray(xyxy, np.float32).reshape(-1, 4),
        class_id=np.asarray(class_id, np.int64),
        confidence=np.full(len(class_id), 0.9, np.float32),
    )
    return ExportItem(path, sha256_file(path), load_image(path).image_wh, detections)


def _rotated_jpeg(path: Path, shown: Image.Image) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    shown.transpose(Image.Transpose.ROTATE_90).save(path, "JPEG", quality=95, exif=exif.tobytes())


@pytest.fixture
def cases(tmp_path: Path) -> list[Case]:
    """Plain JPEG, EXIF-rotated JPEG, background, grayscale PNG, clipped and degenerate boxes."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    _noise((96, 64), 0).save(src / "plain.jpg", quality=90)
    shapes, _ = make_shapes_image(np.random.default_rng(1), (96, 64), n_shapes=3)
    _rotated_jpeg(src / "rotated.jpg", shapes)
    _noise((80, 60), 2).save(src / "background.png")
    _noise((72, 56), 3).convert("L").save(src / "gray.png")
    _noise((64, 64), 4).save(src / "sub" / "plain.jpg", quality=90)
    _noise((50, 40), 5).save(src / "edge.png")
    return [
        Case(
            _item(src / "plain.jpg", [[10, 12, 40, 50], [50.25, 5.25, 90, 30.75]], [0, 1]),
            [0, 1],
            [[10, 12, 40, 50], [50.25, 5.25, 90, 30.75]],
        ),
        Case(_item(src / "rotated.jpg", [[5, 5, 30, 40]], [1]), [1], [[5, 5, 30, 40]]),
        Case(_item(src / "background.png", [], []), [], []),
        Case(_item(src / "gray.png", [[1.5, 2, 70, 55.5]], [0]), [0], [[1.5, 2, 70, 55.5]]),
        Case(_item(src / "sub" / "plain.jpg", [[0, 0, 64, 64]], [1]), [1], [[0, 0, 64, 64]]),
        Case(
            # Partly outside (clipped), sub-pixel wide, inverted, NaN: only the first survives.
            _item(
                src / "edge.png",
                [[-5, -3, 20, 20], [30, 30, 30.5, 39], [40, 30, 35, 35], [np.nan, 1, 5, 5]],
                [1, 0, 0, 1],
            ),
            [1],
            [[0, 0, 20, 20]],
        ),
    ]


def _export(cases: list[Case], out_dir: Path, **options: Any) -> ExportSummary:
    return export_dataset([case.item for case in cases], CLASSES, out_dir, **options)


def _tree(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _split_of(out_dir: Path) -> dict[str, str]:
    """Exported image stem to its split."""
    return {
        path.stem: path.parent.name
        for path in (out_dir / "images").glob("*/*")
        if not path.name.startswith(".")
    }


def _yolo_to_xyxy(row: list[float], image_wh: tuple[int, int]) -> list[float]:
    cx, cy, w, h = row
    width, height = image_wh
    return [
        (cx - w / 2) * width,
        (cy - h / 2) * height,
        (cx + w / 2) * width,
        (cy + h / 2) * height,
    ]


@pytest.fixture
def network_attempts(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Fail every connection (as pytest-socket does) and record the hosts that were tried."""
    attempts: list[str] = []

    def refuse_lookup(host: Any, *args: Any, **kwargs: Any) -> Any:
        attempts.append(str(host))
        raise socket.gaierror(socket.EAI_NONAME, "network disabled in tests")

    def refuse_connect(self: socket.socket, address: Any) -> None:
        attempts.append(str(address))
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "getaddrinfo", refuse_lookup)
    monkeypatch.setattr(socket.socket, "connect", refuse_connect)
    yield attempts


# Ultralytics' check_det_dataset() ends with check_font(), which sends a HEAD request for Arial.ttf
# even with YOLO_OFFLINE=True; that probe is the only network use we tolerate (it fails here).
FONT_PROBE_HOSTS = {"github.com"}


# ----------------------------------------------------------------------------- Ultralytics


def test_ultralytics_accepts_the_dataset(
    cases: list[Case], tmp_path: Path, network_attempts: list[str]
) -> None:
    from ultralytics.data.dataset import YOLODataset
    from ultralytics.data.utils import check_det_dataset

    summary = _export(cases, tmp_path / "out")
    data = check_det_dataset(str(summary.data_yaml))

    assert data["names"] == {0: "cat", 1: "dog"}
    assert data["nc"] == 2
    assert Path(data["train"]) == (tmp_path / "out" / "images" / "train").resolve()
    assert Path(data["val"]) == (tmp_path / "out" / "images" / "val").resolve()
    by_stem = {case.stem: case for case in cases}
    for split in ("train", "val"):
        dataset = YOLODataset(
            img_path=data[split], data=data, task="detect", imgsz=64, augment=False, batch_size=2
        )
        assert len(dataset.labels) == summary.images[split] > 0
        assert sum(len(label["cls"]) for label in dataset.labels) == summary.boxes[split]
        for label in dataset.labels:
            case = by_stem[Path(label["im_file"]).stem]
            width, height = case.item.image_wh
            assert label["shape"] == (height, width)
            assert label["cls"].reshape(-1).tolist() == case.class_id
            got = [_yolo_to_xyxy(row, (width, height)) for row in label["bboxes"].tolist()]
            np.testing.assert_allclose(
                np.reshape(got, (-1, 4)), np.reshape(case.xyxy, (-1, 4)), atol=0.01
            )
    assert set(network_attempts) <= FONT_PROBE_HOSTS


def test_one_epoch_of_training_runs_offline(tmp_path: Path, network_attempts: list[str]) -> None:
    from ultralytics import YOLO

    items = write_shapes_items(tmp_path / "src", n=8, seed=0, image_wh=(64, 64))
    summary = export_dataset(items, SHAPE_CLASSES, tmp_path / "dataset", val_fraction=0.25)
    runs = tmp_path / "runs"

    YOLO("yolo11n.yaml").train(
        data=str(summary.data_yaml),
        epochs=1,
        imgsz=64,
        batch=4,
        workers=0,
        device="cpu",
        amp=False,
        plots=False,  # plots draw labels with Arial.ttf; off, training needs no font
        project=str(runs),
        name="smoke",
        exist_ok=True,
        verbose=False,
    )

    assert (runs / "smoke" / "weights" / "last.pt").is_file()
    assert (runs / "smoke" / "results.csv").is_file()
    assert set(network_attempts) <= FONT_PROBE_HOSTS


# ----------------------------------------------------------------------------- COCO and YOLO files


def test_coco_files_load_and_round_trip_the_boxes(cases: list[Case], tmp_path: Path) -> None:
    from pycocotools.coco import COCO

    summary = _export(cases, tmp_path / "out")
    by_stem = {case.stem: case for case in cases}
    for split in ("train", "val"):
        coco = COCO(str(tmp_path / "out" / "annotations" / f"instances_{split}.json"))
        assert coco.loadCats(coco.getCatIds()) == [
            {"id": 1, "name": "cat"},
            {"id": 2, "name": "dog"},
        ]
        images = coco.loadImgs(coco.getImgIds())
        assert len(images) == summary.images[split]
        assert [image["id"] for image in images] == list(range(1, len(images) + 1))
        assert len(coco.getAnnIds()) == summary.boxes[split]
        for image in images:
            assert (tmp_path / "out" / "images" / split / image["file_name"]).is_file()
            case = by_stem[Path(image["file_name"]).stem]
            assert (image["width"], image["height"]) == case.item.image_wh
            annotations = coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]]))
            assert [a["category_id"] - 1 for a in annotations] == case.class_id
            assert all(a["iscrowd"] == 0 for a in annotations)
            xywh = np.reshape([a["bbox"] for a in annotations], (-1, 4))
            expected = np.reshape(case.xyxy, (-1, 4)).astype(np.float64)
            expected[:, 2:] -= expected[:, :2]
            np.testing.assert_allclose(xywh, expected, atol=0.01)
            np.testing.assert_allclose(
                [a["area"] for a in annotations], expected[:, 2] * expected[:, 3], atol=0.01
            )


def test_yolo_rows_round_trip_the_boxes(cases: list[Case], tmp_path: Path) -> None:
    summary = _export(cases, tmp_path / "out")
    splits = _split_of(tmp_path / "out")

    assert sorted(splits) == sorted(case.stem for case in cases)
    for case in cases:
        label = tmp_path / "out" / "labels" / splits[case.stem] / f"{case.stem}.txt"
        rows = [line.split() for line in label.read_text().splitlines()]
        assert [int(row[0]) for row in rows] == case.class_id
        assert all(len(value.split(".")[1]) == 6 for row in rows for value in row[1:])
        got = [_yolo_to_xyxy([float(v) for v in row[1:]], case.item.image_wh) for row in rows]
        np.testing.assert_allclose(
            np.reshape(got, (-1, 4)), np.reshape(case.xyxy, (-1, 4)), atol=0.01
        )
    assert summary.background == 1


def test_background_image_has_an_empty_label_file(cases: list[Case], tmp_path: Path) -> None:
    _export(cases, tmp_path / "out")
    stem = cases[2].stem

    labels = list((tmp_path / "out" / "labels").glob(f"*/{stem}.txt"))
    images = list((tmp_path / "out" / "images").glob(f"*/{stem}.png"))

    assert len(labels) == 1 and labels[0].read_bytes() == b""
    assert len(images) == 1


def test_data_yaml_names_the_splits_and_classes(cases: list[Case], tmp_path: Path) -> None:
    _export(cases, tmp_path / "out")

    document = yaml.safe_load((tmp_path / "out" / "data.yaml").read_text())

    assert document == {
        "train": "images/train",
        "val": "images/val",
        "names": {0: "cat", 1: "dog"},
    }


# ----------------------------------------------------------------------------- image files


def test_exif_rotated_image_is_written_upright(cases: list[Case], tmp_path: Path) -> None:
    _export(cases, tmp_path / "out")
    rotated = cases[1]
    (exported,) = (tmp_path / "out" / "images").glob(f"*/{rotated.stem}.jpg")

    with Image.open(exported) as image:
        assert image.size == (96, 64)
        assert image.getexif().get(0x0112, 1) == 1
        pixels = np.asarray(image.convert("RGB")).astype(np.int16)
    shown = np.asarray(load_image(rotated.item.source_path).image).astype(np.int16)
    assert np.abs(pixels - shown).mean() < 2  # JPEG quality 95 of the same picture


def test_plain_images_are_hard_linked_or_copied(cases: list[Case], tmp_path: Path) -> None:
    plain = cases[0]
    _export(cases, tmp_path / "linked")
    _export(cases, tmp_path / "copied", link=False)

    (linked,) = (tmp_path / "linked" / "images").glob(f"*/{plain.stem}.jpg")
    (copied,) = (tmp_path / "copied" / "images").glob(f"*/{plain.stem}.jpg")

    assert linked.read_bytes() == copied.read_bytes() == plain.item.source_path.read_bytes()
    assert os.path.samefile(linked, plain.item.source_path)
    assert not os.path.samefile(copied, plain.item.source_path)


def _save(fmt: str, mode: str = "RGB", **options: Any) -> Callable[[Path], None]:
    def save(path: Path) -> None:
        _noise((40, 30), 9).convert(mode).save(path, fmt, **options)

    return save


def _jpeg_with_trailing_bytes(path: Path) -> None:
    _noise((40, 30), 9).save(path, "JPEG")
    path.write_bytes(path.read_bytes() + b"\x00" * 16)


# (source name, how to write it, exported extension, whether the bytes are copied unchanged)
FORMATS = [
    pytest.param("a.png", _save("PNG"), ".png", True, id="rgb-png"),
    pytest.param("a.jpg", _save("JPEG"), ".jpg", True, id="rgb-jpeg"),
    pytest.param("A.JPG", _save("JPEG"), ".jpg", True, id="uppercase-jpeg"),
    pytest.param("a.jpeg", _save("JPEG"), ".jpg", True, id="jpeg-extension"),
    pytest.param("a.bmp", _save("BMP"), ".bmp", True, id="rgb-bmp"),
    pytest.param("a.webp", _save("WEBP", lossless=True), ".webp", True, id="rgb-webp"),
    pytest.param("png.jpg", _save("PNG"), ".png", True, id="png-named-jpg"),
    pytest.param("a.tif", _save("TIFF"), ".png", False, id="tiff"),
    pytest.param("rgba.png", _save("PNG", "RGBA"), ".png", False, id="rgba-png"),
    pytest.param("p.png", _save("PNG", "P"), ".png", False, id="palette-png"),
    pytest.param("gray.jpg", _save("JPEG", "L"), ".jpg", False, id="gray-jpeg"),
    pytest.param("cmyk.jpg", _save("JPEG", "CMYK"), ".jpg", False, id="cmyk-jpeg"),
    pytest.param("tail.jpg", _jpeg_with_trailing_bytes, ".jpg", False, id="jpeg-trailing-bytes"),
]


@pytest.mark.parametrize(("name", "write", "extension", "copied"), FORMATS)
def test_each_format_is_copied_or_reencoded(
    tmp_path: Path, name: str, write: Callable[[Path], None], extension: str, copied: bool
) -> None:
    source = tmp_path / name
    write(source)
    item = _item(source, [[1, 1, 20, 20]], [0])

    export_dataset([item], CLASSES, tmp_path / "out")

    (exported,) = (tmp_path / "out" / "images" / "train").glob("*.*")
    assert exported.name == f"{Path(name).stem}-{item.sha256[:8]}{extension}"
    assert (exported.read_bytes() == source.read_bytes()) is copied
    assert exported.read_bytes().endswith(b"\xff\xd9") or extension != ".jpg"
    with Image.open(exported) as image:
        assert image.mode == "RGB"
        assert image.size == (40, 30)
    if extension == ".png":  # lossless: the pixels are the ones the detector saw
        assert np.array_equal(
            np.asarray(load_image(exported).image), np.asarray(load_image(source).image)
        )


_XMP_ROTATED = (
    '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF'
    ' xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description'
    ' xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
)


def _xmp() -> dict[str, Any]:
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", _XMP_ROTATED)
    return {"pnginfo": info}


def _xmp_and_exif_without_orientation() -> dict[str, Any]:
    exif = Image.Exif()
    exif[0x010F] = "Camera maker"  # an eXIf chunk, but the orientation is only in the XMP
    return {**_xmp(), "exif": exif.tobytes()}


def _imagemagick_raw_profile() -> dict[str, Any]:
    """ImageMagick's "Raw profile type exif": a zTXt chunk holding the EXIF block in hex."""
    exif = Image.Exif()
    exif[0x0112] = 6
    raw = exif.tobytes()
    hex_lines = "\n".join(raw.hex()[i : i + 72] for i in range(0, 2 * len(raw), 72))
    info = PngImagePlugin.PngInfo()
    info.add_text("Raw profile type exif", f"\nexif\n{len(raw):8d}\n{hex_lines}\n", zip=True)
    return {"pnginfo": info}


def _text_after_pixels(path: Path) -> None:
    """Move a PNG's text chunks after its pixel data (Pillow reads them only in load())."""
    data = path.read_bytes()
    chunks, offset = [], 8
    while offset < len(data):
        end = offset + 12 + int.from_bytes(data[offset : offset + 4], "big")
        chunks.append(data[offset:end])
        offset = end
    text = [chunk for chunk in chunks if chunk[4:8] in (b"tEXt", b"zTXt", b"iTXt")]
    rest = [chunk for chunk in chunks if chunk not in text]
    path.write_bytes(data[:8] + b"".join(rest[:-1] + text + rest[-1:]))  # rest[-1] is IEND


@pytest.mark.parametrize(
    ("save_options", "after_pixels"),
    [
        pytest.param(_xmp, False, id="xmp-itxt"),
        pytest.param(_xmp, True, id="xmp-itxt-after-idat"),
        pytest.param(_xmp_and_exif_without_orientation, True, id="exif-then-xmp-after-idat"),
        pytest.param(_imagemagick_raw_profile, False, id="imagemagick-raw-profile"),
        pytest.param(_imagemagick_raw_profile, True, id="imagemagick-raw-profile-after-idat"),
    ],
)
def test_png_orientation_outside_exif_chunk_is_applied(
    tmp_path: Path, save_options: Callable[[], dict[str, Any]], after_pixels: bool
) -> None:
    """The exporter reads the orientation where load_image does, so the frames agree."""
    source = tmp_path / "phone.png"
    _noise((60, 40), 7).save(source, "PNG", **save_options())
    if after_pixels:
        _text_after_pixels(source)
    item = _item(source, [[5, 10, 30, 50]], [1])
    assert item.image_wh == (40, 60)  # the frame the detector saw: rotated by load_image

    summary = export_dataset([item], CLASSES, tmp_path / "out")

    assert summary.skipped == {}
    (exported,) = (tmp_path / "out" / "images" / "train").glob("*.png")
    assert np.array_equal(
        np.asarray(load_image(exported).image), np.asarray(load_image(source).image)
    )
    (label,) = (tmp_path / "out" / "labels" / "train").glob("*.txt")
    row = [float(v) for v in label.read_text().split()]
    np.testing.assert_allclose(_yolo_to_xyxy(row[1:], (40, 60)), [5, 10, 30, 50], atol=1e-3)


@pytest.mark.parametrize(
    ("char", "n_chars", "n_kept"),
    [
        pytest.param("\U00020000", 62, 50, id="4-byte"),  # 200 bytes kept of 248
        pytest.param("\u4e00", 80, 66, id="3-byte"),  # 198 of 240: the 67th would be split
        pytest.param("\u00e9", 80, 80, id="2-byte"),  # 160 bytes: the 80-character cap holds
    ],
)
def test_long_unicode_names_fit_the_file_system(
    tmp_path: Path, char: str, n_chars: int, n_kept: int
) -> None:
    # Both names fit in 255 bytes and share their first 200; same bytes, so the same hash too.
    first, second = tmp_path / f"{char * n_chars}.png", tmp_path / f"{char * n_chars}a.png"
    _noise((20, 20), 0).save(first)
    second.write_bytes(first.read_bytes())
    items = [_item(first, [], []), _item(second, [], [])]

    export_dataset(items, CLASSES, tmp_path / "out", val_fraction=0)

    sha = items[0].sha256[:8]
    stem = char * n_kept
    names = sorted(p.name for p in (tmp_path / "out" / "images" / "train").iterdir())
    assert names == [f"{stem}-{sha}-2.png", f"{stem}-{sha}.png"]
    labels = [p.name for p in (tmp_path / "out" / "labels" / "train").iterdir()]
    assert all(len(name.encode()) <= 255 for name in names + labels)


def test_file_names_are_safe_and_unique(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _noise((32, 32), 0).save(tmp_path / "a" / "same.png")
    _noise((32, 32), 0).save(tmp_path / "b" / "same.png")  # same name and same bytes
    _noise((32, 32), 1).save(tmp_path / "my photo #1.PNG")
    _noise((32, 32), 2).save(tmp_path / "..hidden-ish.png")
    items = [
        _item(tmp_path / "a" / "same.png", [], []),
        _item(tmp_path / "b" / "same.png", [], []),
        _item(tmp_path / "my photo #1.PNG", [], []),
        _item(tmp_path / "..hidden-ish.png", [], []),
    ]

    export_dataset(items, CLASSES, tmp_path / "out", val_fraction=0)

    names = sorted(p.name for p in (tmp_path / "out" / "images" / "train").iterdir())
    sha = [item.sha256[:8] for item in items]
    assert names == sorted(
        [
            f"same-{sha[0]}.png",
            f"same-{sha[0]}-2.png",
            f"my_photo_1-{sha[2]}.png",
            f"hidden-ish-{sha[3]}.png",
        ]
    )


# ----------------------------------------------------------------------------- determinism, splits


def test_two_exports_are_byte_identical(cases: list[Case], tmp_path: Path) -> None:
    _export(cases, tmp_path / "first")
    _export(cases, tmp_path / "second")
    _export(list(reversed(cases)), tmp_path / "reversed")

    first = _tree(tmp_path / "first")
    assert first == _tree(tmp_path / "second")
    assert first == _tree(tmp_path / "reversed")
    assert "annotations/instances_train.json" in first


def test_adding_an_image_moves_no_other(tmp_path: Path) -> None:
    items = write_shapes_items(tmp_path / "src", n=12, seed=1, image_wh=(32, 32))
    hash_splits = {split_for(item.sha256, 0.3) for item in items[:11]}
    assert hash_splits == {"train", "val"}  # both splits come from the hashes, none forced

    export_dataset(items[:11], SHAPE_CLASSES, tmp_path / "before", val_fraction=0.3)
    export_dataset(items, SHAPE_CLASSES, tmp_path / "after", val_fraction=0.3)

    before, after = _split_of(tmp_path / "before"), _split_of(tmp_path / "after")
    assert len(after) == len(before) + 1
    assert {stem: after[stem] for stem in before} == before
    for item in items:
        stem = f"{item.source_path.stem}-{item.sha256[:8]}"
        assert after[stem] == split_for(item.sha256, 0.3)


def test_split_for_follows_the_fraction() -> None:
    hashes = [f"{i:064x}" for i in range(0, 2**64, 2**56)]  # evenly spread first 64 bits
    hashes = [h[-16:] + "0" * 48 for h in hashes]

    val = sum(split_for(h, 0.25) == "val" for h in hashes)

    assert val == len(hashes) // 4
    assert {split_for(h, 0.0) for h in hashes} == {"train"}


@pytest.mark.parametrize(("n_items", "val_fraction"), [(2, 1e-12), (3, 1e-12), (5, 0.01)])
def test_val_is_never_empty_with_two_or_more_images(
    tmp_path: Path, n_items: int, val_fraction: float
) -> None:
    items = write_shapes_items(tmp_path / "src", n=n_items, seed=2, image_wh=(32, 32))

    summary = export_dataset(items, SHAPE_CLASSES, tmp_path / "out", val_fraction=val_fraction)

    assert summary.images == {"train": n_items - 1, "val": 1}
    # The image moved is the one whose hash is nearest to the val range.
    nearest = min(items, key=lambda item: item.sha256)
    stem = f"{nearest.source_path.stem}-{nearest.sha256[:8]}"
    assert _split_of(tmp_path / "out")[stem] == "val"


def test_train_is_never_empty_either(tmp_path: Path) -> None:
    items = write_shapes_items(tmp_path / "src", n=3, seed=2, image_wh=(32, 32))

    summary = export_dataset(items, SHAPE_CLASSES, tmp_path / "out", val_fraction=0.999999)

    assert summary.images == {"train": 1, "val": 2}


@pytest.mark.parametrize(("n_items", "val_fraction"), [(4, 0.0), (1, 0.5), (0, 0.2)])
def test_without_val_images_val_points_at_train(
    tmp_path: Path, n_items: int, val_fraction: float, network_attempts: list[str]
) -> None:
    from ultralytics.data.utils import check_det_dataset

    items = write_shapes_items(tmp_path / "src", n=n_items, seed=3, image_wh=(32, 32))

    summary = export_dataset(items, SHAPE_CLASSES, tmp_path / "out", val_fraction=val_fraction)

    assert summary.images == {"train": n_items, "val": 0}
    data = check_det_dataset(str(summary.data_yaml))
    assert data["val"] == data["train"]
    val_json = json.loads((tmp_path / "out" / "annotations" / "instances_val.json").read_text())
    assert val_json["images"] == [] and val_json["annotations"] == []


# ----------------------------------------------------------------------------- re-export


def test_reexport_replaces_the_dataset_and_keeps_other_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = write_shapes_items(tmp_path / "first", n=4, seed=4, image_wh=(32, 32))
    second = write_shapes_items(tmp_path / "second", n=3, seed=5, image_wh=(32, 32))
    export_dataset(first, SHAPE_CLASSES, out)
    (out / "report.json").write_text("{}\n")
    (out / ".promptlabel").mkdir()
    (out / ".promptlabel" / "workspace.db").write_bytes(b"db")
    (out / "labels" / "train.cache").write_bytes(b"stale Ultralytics cache")

    summary = export_dataset(second, SHAPE_CLASSES, out)

    expected = {f"{item.source_path.stem}-{item.sha256[:8]}" for item in second}
    assert set(_split_of(out)) == expected
    assert {p.stem for p in (out / "labels").glob("*/*.txt")} == expected
    assert not (out / "labels" / "train.cache").exists()
    assert (out / "report.json").read_text() == "{}\n"
    assert (out / ".promptlabel" / "workspace.db").read_bytes() == b"db"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [".promptlabel", "annotations", "data.yaml", "images", "labels", "report.json"]
    )
    assert sum(summary.images.values()) == 3


@pytest.mark.parametrize(
    ("managed", "make"),
    [
        ("images", lambda out: (out / "images").mkdir() or (out / "images" / "mine.jpg").touch()),
        ("labels", lambda out: (out / "labels").mkdir() or (out / "labels" / "a.txt").touch()),
        ("data.yaml", lambda out: (out / "data.yaml").write_text("train: x\nval: y\n")),
        ("annotations", lambda out: (out / "annotations").write_text("a file")),
    ],
)
def test_refuses_to_replace_what_it_did_not_write(
    tmp_path: Path, managed: str, make: Callable[[Path], Any]
) -> None:
    items = write_shapes_items(tmp_path / "src", n=2, seed=6, image_wh=(32, 32))
    out = tmp_path / "out"
    out.mkdir()
    make(out)
    before = _tree(out)

    with pytest.raises(InputError, match=managed):
        export_dataset(items, SHAPE_CLASSES, out)

    assert _tree(out) == before
    assert sorted(p.name for p in out.iterdir()) == [managed]


def test_empty_managed_folders_are_replaced(tmp_path: Path) -> None:
    items = write_shapes_items(tmp_path / "src", n=2, seed=6, image_wh=(32, 32))
    (tmp_path / "out" / "images").mkdir(parents=True)

    summary = export_dataset(items, SHAPE_CLASSES, tmp_path / "out")

    assert sum(summary.images.values()) == 2


def test_a_failed_export_leaves_the_previous_one(cases: list[Case], tmp_path: Path) -> None:
    out = tmp_path / "out"
    _export(cases, out)
    before = _tree(out)
    wrong = _item(cases[0].item.source_path, [[1, 1, 5, 5]], [len(CLASSES)])

    with pytest.raises(ValueError, match="class ids"):
        export_dataset([case.item for case in cases[1:]] + [wrong], CLASSES, out)

    assert _tree(out) == before
    assert not [p for p in out.iterdir() if p.name.startswith(".promptlabel-export-staging")]


# ----------------------------------------------------------------------------- bad input


def test_missing_and_changed_files_are_left_out(cases: list[Case], tmp_path: Path) -> None:
    cases[2].item.source_path.unlink()
    cases[3].item.source_path.write_bytes(b"edited since labeling")

    summary = _export(cases, tmp_path / "out")

    assert summary.skipped == {
        str(cases[2].item.source_path): "missing",
        str(cases[3].item.source_path): "changed",
    }
    assert sorted(_split_of(tmp_path / "out")) == sorted(
        case.stem for case in cases if case not in (cases[2], cases[3])
    )


def test_an_item_of_another_size_is_left_out(cases: list[Case], tmp_path: Path) -> None:
    item = cases[1].item  # EXIF-rotated: 96x64 as shown, 64x96 as stored
    stored = ExportItem(item.source_path, item.sha256, (64, 96), item.detections)

    summary = export_dataset(
        [stored, *(case.item for case in cases[2:])], CLASSES, tmp_path / "out"
    )

    assert summary.skipped == {str(item.source_path): "size_mismatch"}
    assert sorted(_split_of(tmp_path / "out")) == sorted(case.stem for case in cases[2:])


def test_malformed_items_are_a_bug(cases: list[Case], tmp_path: Path) -> None:
    item = cases[0].item
    upper = ExportItem(item.source_path, item.sha256.upper(), item.image_wh, item.detections)

    with pytest.raises(ValueError, match="sha256"):
        export_dataset([upper], CLASSES, tmp_path / "out")
    with pytest.raises(ValueError, match="listed twice"):
        export_dataset([item, item], CLASSES, tmp_path / "out")


def test_class_id_out_of_range_is_a_bug(cases: list[Case], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="class ids"):
        export_dataset([case.item for case in cases], ["cat"], tmp_path / "out")


@pytest.mark.parametrize("class_names", [["cat", "cat"], ["cat", ""]])
def test_class_names_must_be_unique_and_non_empty(tmp_path: Path, class_names: list[str]) -> None:
    with pytest.raises(ValueError, match="class names"):
        export_dataset([], class_names, tmp_path / "out")


@pytest.mark.parametrize("val_fraction", [-0.1, 1.0, 1.5, float("nan")])
def test_val_fraction_must_be_in_range(tmp_path: Path, val_fraction: float) -> None:
    with pytest.raises(InputError, match="val_fraction"):
        export_dataset([], CLASSES, tmp_path / "out", val_fraction=val_fraction)
    with pytest.raises(InputError, match="val_fraction"):
        split_for("0" * 64, val_fraction)


@pytest.mark.parametrize("sha256", ["", "abc", "g" * 64, "A" * 64, "0" * 63])
def test_split_for_wants_a_sha256_digest(sha256: str) -> None:
    with pytest.raises(ValueError, match="sha256"):
        split_for(sha256, 0.2)


def test_synthetic_items_export_with_exact_boxes(tmp_path: Path) -> None:
    image, detections = make_shapes_image(np.random.default_rng(0), (64, 48), n_shapes=3)
    image.save(tmp_path / "shapes.png")
    item = ExportItem(
        tmp_path / "shapes.png", sha256_file(tmp_path / "shapes.png"), (64, 48), detections
    )

    export_dataset([item], SHAPE_CLASSES, tmp_path / "out")

    (label,) = (tmp_path / "out" / "labels" / "train").glob("*.txt")
    rows = [[float(v) for v in line.split()] for line in label.read_text().splitlines()]
    assert [int(row[0]) for row in rows] == detections.class_id.tolist()
    got = [_yolo_to_xyxy(row[1:], (64, 48)) for row in rows]
    np.testing.assert_allclose(got, detections.xyxy, atol=1e-3)


@pytest.mark.parametrize(
    ("xyxy", "writable"),
    [
        ([10, 10, 20, 20], True),
        ([2, 2, 3, 3], True),  # exactly one pixel a side
        ([-5, -3, 20, 20], True),  # clipped, still large
        ([30, 30, 30.5, 39], False),  # 0.5 px wide
        ([49.6, 0, 60, 10], False),  # 0.4 px wide once clipped to the 50 px wide image
        ([51, 41, 60, 50], False),  # outside the image
        ([40, 30, 35, 35], False),  # inverted
        ([np.nan, 1, 5, 5], False),
    ],
)
def test_writable_boxes_is_the_rule_the_exporter_writes_by(
    xyxy: list[float], writable: bool, tmp_path: Path
) -> None:
    source = tmp_path / "edge.png"
    _noise((50, 40), 5).save(source)
    item = _item(source, [xyxy], [0])

    _, keep = writable_boxes(item.detections.xyxy, item.image_wh)
    summary = export_dataset([item], CLASSES, tmp_path / "out")
    reasons = unwritable_reasons(item.detections.xyxy, item.image_wh)

    assert keep.tolist() == [writable]
    assert summary.boxes["train"] == int(writable)
    assert summary.dropped_boxes == int(not writable)
    assert (reasons[0] is None) is writable
    if not writable:
        assert reasons[0] is not None and reasons[0].startswith("too small to export")
        assert "50x40 image" in reasons[0]


def test_writable_boxes_agrees_with_the_export_on_random_boxes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    source = tmp_path / "tiny.png"
    _noise((7, 5), 1).save(source)
    corners = rng.uniform(-2, 9, (200, 2)).astype(np.float32)
    sides = rng.choice([0.0, 0.5, 0.999, 1.0, 1.001, 3.0], (200, 2)).astype(np.float32)
    xyxy = np.concatenate([corners, corners + sides], axis=1)
    item = _item(source, xyxy.tolist(), [0] * len(xyxy))

    _, keep = writable_boxes(item.detections.xyxy, item.image_wh)
    summary = export_dataset([item], CLASSES, tmp_path / "out")

    assert 0 < keep.sum() < len(keep)
    assert summary.boxes["train"] == keep.sum()
    assert summary.dropped_boxes == len(keep) - keep.sum()
