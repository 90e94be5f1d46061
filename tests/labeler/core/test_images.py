"""Finding and decoding input images: discovery rules, normalisation to RGB, and failure reasons."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from labeler.core.exceptions import ImageError
from labeler.core.images import iter_image_paths, load_image, sha256_file
from tests.fakes.images import encoded, noise_image, png_claiming

# ----------------------------------------------------------------------------- discovery


def test_iter_image_paths_is_recursive_sorted_case_insensitive_and_skips_hidden(
    tmp_path: Path,
) -> None:
    wanted = ["a.jpg", "B.JPG", "c.PnG", "sub/d.jpeg", "sub/deeper/e.webp", "z.TIFF"]
    ignored = [".hidden/f.jpg", "sub/.g.png", "sub/.cache/h.png", "notes.txt", "i.jpg.txt", "j"]
    for name in wanted + ignored:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "folder.jpg").mkdir()  # a directory with an image-like name is not an image

    found = list(iter_image_paths(tmp_path))

    assert found == sorted(tmp_path / name for name in wanted)


def test_iter_image_paths_accepts_a_hidden_root(tmp_path: Path) -> None:
    # Only parts below the root count: a user's ``~/.photos`` is still scanned.
    root = tmp_path / ".photos"
    root.mkdir()
    (root / "a.png").write_bytes(b"x")

    assert list(iter_image_paths(root)) == [root / "a.png"]


@pytest.mark.parametrize("make", [lambda p: p / "missing", lambda p: p / "file.jpg"])
def test_iter_image_paths_rejects_what_is_not_a_directory(
    tmp_path: Path, make: Callable[[Path], Path]
) -> None:
    (tmp_path / "file.jpg").write_bytes(b"x")

    with pytest.raises(ImageError) as caught:
        list(iter_image_paths(make(tmp_path)))

    assert caught.value.reason == "not a directory"


# ----------------------------------------------------------------------------- decoding


def test_load_image_applies_exif_orientation(tmp_path: Path) -> None:
    shown = noise_image(96, 64)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.png"
    # Stored turned the other way, so the displayed picture is ``shown``; PNG keeps pixels exact.
    shown.transpose(Image.Transpose.ROTATE_90).save(path, exif=exif.tobytes())

    loaded = load_image(path)

    with Image.open(path) as stored:
        assert stored.size == (64, 96)
    assert loaded.image_wh == (96, 64)
    assert np.array_equal(np.asarray(loaded.image), np.asarray(shown))


def test_load_image_reports_the_file_hash(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    noise_image().save(path)

    loaded = load_image(path)

    assert loaded.sha256 == sha256_file(path)
    assert loaded.path == path


def _gray16() -> Image.Image:
    ramp = (np.arange(64 * 32, dtype=np.uint16).reshape(32, 64) * 32).astype(np.uint16)
    return Image.fromarray(ramp)


@pytest.mark.parametrize(
    ("name", "make", "fmt"),
    [
        ("gray", lambda: noise_image().convert("L"), "PNG"),
        ("gray_alpha", lambda: noise_image().convert("LA"), "PNG"),
        ("rgba", lambda: noise_image().convert("RGBA"), "PNG"),
        ("palette", lambda: noise_image().convert("P"), "PNG"),
        ("bilevel", lambda: noise_image().convert("1"), "PNG"),
        ("cmyk_jpeg", lambda: noise_image().convert("CMYK"), "JPEG"),
        ("gray16", _gray16, "PNG"),
        ("gray16_tiff", _gray16, "TIFF"),
    ],
)
def test_load_image_converts_every_mode_to_rgb(
    tmp_path: Path, name: str, make: Callable[[], Image.Image], fmt: str
) -> None:
    source = make()
    path = tmp_path / f"{name}.{fmt.lower()}"
    source.save(path, fmt)

    loaded = load_image(path)

    assert loaded.image.mode == "RGB"
    assert loaded.image_wh == source.size


def test_load_image_keeps_the_high_byte_of_16_bit_images(tmp_path: Path) -> None:
    # Pillow's convert("RGB") clips 16-bit values at 255; most of this ramp would turn white.
    source = _gray16()
    path = tmp_path / "gray16.png"
    source.save(path)

    rgb = np.asarray(load_image(path).image)

    expected = (np.asarray(source) >> 8).astype(np.uint8)
    assert np.array_equal(rgb[..., 0], expected)
    assert np.array_equal(rgb[..., 0], rgb[..., 2])


# ----------------------------------------------------------------------------- failures


def _truncated_jpeg() -> bytes:
    data = encoded(noise_image(256, 192), "JPEG", quality=90)
    return data[: len(data) // 2]


def _truncated_png() -> bytes:
    data = encoded(noise_image(256, 192), "PNG")
    return data[: len(data) // 2]


def _corrupt_png_data() -> bytes:
    data = bytearray(encoded(noise_image(), "PNG"))
    start = data.index(b"IDAT") + 10
    data[start : start + 64] = bytes(64)  # zeroed compressed stream: the inflater fails
    return bytes(data)


def _corrupt_jpeg_tables() -> bytes:
    data = bytearray(encoded(noise_image(), "JPEG"))
    start = data.index(b"\xff\xc4") + 4  # inside the first Huffman table
    data[start : start + 26] = b"\xff" * 26
    return bytes(data)


def _jpeg_header_with_zero_size() -> bytes:
    data = bytearray(encoded(noise_image(), "JPEG"))
    start = data.index(b"\xff\xc0") + 5  # frame header: height and width
    data[start : start + 4] = bytes(4)
    return bytes(data)


# (file name, bytes or None for no file, max_pixels, expected reason)
BAD_FILES = [
    pytest.param("empty.jpg", b"", None, "zero_bytes", id="zero-bytes"),
    pytest.param("notes.jpg", b"just some text\n", None, "not_an_image", id="text-named-jpg"),
    pytest.param("half.jpg", _truncated_jpeg(), None, "truncated", id="truncated-jpeg"),
    pytest.param("half.png", _truncated_png(), None, "truncated", id="truncated-png"),
    pytest.param(
        "header.jpg",
        encoded(noise_image(), "JPEG")[:300],
        None,
        "truncated",
        id="jpeg-cut-in-header",
    ),
    pytest.param("broken.png", _corrupt_png_data(), None, "corrupt", id="corrupt-png-stream"),
    pytest.param("broken.jpg", _corrupt_jpeg_tables(), None, "corrupt", id="corrupt-jpeg-tables"),
    pytest.param("zero.jpg", _jpeg_header_with_zero_size(), None, "corrupt", id="jpeg-zero-size"),
    pytest.param("magic.png", b"\x89PNG\r\n\x1a\n", None, "corrupt", id="png-signature-only"),
    pytest.param(
        "bomb.png", png_claiming(100_000, 100_000), None, "too_many_pixels", id="pillow-bomb"
    ),
    pytest.param("big.png", png_claiming(500, 400), 10_000, "too_many_pixels", id="over-limit"),
    pytest.param("gone.jpg", None, None, "missing", id="missing-file"),
]


@pytest.mark.parametrize(("name", "content", "max_pixels", "reason"), BAD_FILES)
def test_load_image_names_the_reason_a_file_cannot_be_used(
    tmp_path: Path, name: str, content: bytes | None, max_pixels: int | None, reason: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    limits = {} if max_pixels is None else {"max_pixels": max_pixels}

    with pytest.raises(ImageError) as caught:
        load_image(path, **limits)

    assert caught.value.reason == reason
    assert caught.value.path == str(path)
    assert str(path) in str(caught.value)


def test_truncated_jpeg_reason_comes_from_pillows_message(tmp_path: Path) -> None:
    path = tmp_path / "half.jpg"
    path.write_bytes(_truncated_jpeg())

    with pytest.raises(ImageError) as caught:
        load_image(path)

    assert caught.value.reason == "truncated"
    assert "image file is truncated" in caught.value.detail


def test_small_limit_rejects_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "real.png"
    noise_image(200, 100).save(path)

    with pytest.raises(ImageError) as caught:
        load_image(path, max_pixels=200 * 100 - 1)

    assert caught.value.reason == "too_many_pixels"
    assert "200x100" in caught.value.detail
    assert load_image(path, max_pixels=200 * 100).image_wh == (200, 100)


def test_a_directory_is_unreadable(tmp_path: Path) -> None:
    folder = tmp_path / "folder.jpg"
    folder.mkdir()

    with pytest.raises(ImageError) as caught:
        load_image(folder)

    assert caught.value.reason == "unreadable"


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"just some text\n", "not_an_image"), (b"\x89PNG\r\n\x1a\n", "corrupt")],
)
def test_reasons_hold_after_ultralytics_patches_pillow(
    tmp_path: Path, content: bytes, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Importing Ultralytics replaces PIL.Image.open with a wrapper that tries to install pi-heif
    # (here: raises ModuleNotFoundError, auto-install being off) on the first unrecognised file.
    import ultralytics.utils.patches  # noqa: F401

    path = tmp_path / "file.jpg"
    path.write_bytes(content)

    with pytest.raises(ImageError) as caught:
        load_image(path)

    assert caught.value.reason == reason
    assert "pi-heif" not in caplog.text  # no install was attempted (nor refused)
    assert Image.open.__module__ == "ultralytics.utils.patches"  # the patch really was in place


def test_the_pixel_limit_is_the_callers_on_both_sides_of_pillows_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from labeler.core.images import decode_image_bytes

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 89_478_485)  # Pillow's default; restored after
    bomb = png_claiming(20_000, 10_000)  # 200 M pixels: over twice Pillow's default limit
    with pytest.raises(ImageError) as caught:
        decode_image_bytes(bomb, name="bomb.png", max_pixels=89_478_485)
    # Pillow refuses it inside open(), before the size is ours to read: the limit named is ours.
    assert (caught.value.reason, caught.value.detail) == (
        "too_many_pixels",
        "200000000 pixels > 89478485",
    )
    # Ultralytics switches Pillow's check off; ours holds, and says the same.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with pytest.raises(ImageError) as caught:
        decode_image_bytes(bomb, name="bomb.png", max_pixels=89_478_485)
    assert caught.value.detail == "20000x10000 = 200000000 pixels > 89478485"
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 89_478_485)
    # A caller that allows more gets past Pillow's refusal to the pixels (a few dozen bytes of
    # them here, hence truncated).
    with pytest.raises(ImageError) as caught:
        decode_image_bytes(bomb, name="bomb.png", max_pixels=300_000_000)
    assert caught.value.reason in {"truncated", "corrupt"}


def test_a_side_over_jpegs_limit_is_refused_from_the_header() -> None:
    from labeler.core.images import MAX_SIDE, decode_image_bytes

    # 1 x 80,000,000 is under the pixel limit, and a PNG decodes it row by row for 16 s.
    with pytest.raises(ImageError) as caught:
        decode_image_bytes(png_claiming(1, 80_000_000), name="strip.png")
    assert (caught.value.reason, caught.value.detail) == (
        "too_many_pixels",
        f"1x80000000: a side over {MAX_SIDE}",
    )
