"""Finding and decoding input images; every failure becomes an ImageError with a reason."""

from __future__ import annotations

import hashlib
import io
import re
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from labeler.core.exceptions import ImageError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "MAX_SIDE",
    "DecodedImage",
    "LoadedImage",
    "check_image_size",
    "decode_image_bytes",
    "iter_image_paths",
    "load_image",
    "open_image_bytes",
    "sha256_file",
    "to_rgb",
]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb limit
# JPEG's own limit. Longer sides are strips no detector can use, and a 1x80,000,000 PNG (155 KB,
# under the pixel limit) takes 16 s to decode, row by row.
MAX_SIDE = 65_535
# Leading bytes of the formats we accept: a file that starts like an image but cannot be opened is
# a damaged image ("corrupt"), not some other kind of file ("not_an_image").
_SIGNATURES = (b"\xff\xd8", b"\x89PNG\r\n\x1a\n", b"BM", b"II*\x00", b"MM\x00*")


@dataclass(frozen=True)
class LoadedImage:
    path: Path
    sha256: str
    image: Image.Image  # RGB, EXIF orientation applied

    @property
    def image_wh(self) -> tuple[int, int]:
        return self.image.size


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image  # RGB, EXIF orientation applied
    format: str  # how the bytes were encoded, as Pillow names it: "JPEG", "PNG", "MPO", ...


def iter_image_paths(root: str | Path) -> Iterator[Path]:
    """Image files below ``root``, recursively, sorted, extensions matched case-insensitively."""
    root = Path(root)
    if not root.is_dir():
        raise ImageError(str(root), "not a directory")
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.suffix.lower() in IMAGE_EXTENSIONS and not any(
            part.startswith(".") for part in path.relative_to(root).parts
        ):
            yield path


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _looks_like_an_image(data: bytes) -> bool:
    return data.startswith(_SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` in RGB (itself when it is already); 16-bit grayscale keeps its high byte, as
    OpenCV does.

    32-bit integer grayscale is read as 16-bit (values clipped to 0..65535).
    """
    if image.mode.startswith("I;16") or image.mode == "I":
        # Pillow's convert() clips these at 255, which turns most 16-bit images white.
        high_byte = np.clip(np.asarray(image, dtype=np.int64), 0, 65535) >> 8
        image = Image.fromarray(high_byte.astype(np.uint8), "L")
    return image if image.mode == "RGB" else image.convert("RGB")


def open_image_bytes(
    data: bytes, *, max_pixels: int, formats: tuple[str, ...] | None = None
) -> Image.Image:
    """``PIL.Image.open`` as Pillow ships it, even after Ultralytics has been imported, with
    Pillow's own pixel limit raised to ``max_pixels`` when that is higher.

    Importing Ultralytics replaces ``PIL.Image.open`` with a wrapper that, the first time a file
    is not recognised, pip-installs pi-heif (or raises ModuleNotFoundError when auto-install is
    off). A text file named ``.jpg`` must stay ``not_an_image`` and never start an install.
    Pillow refuses images over twice its limit inside ``open``, before the caller's own limit is
    checked, so a caller that allows more would never get them.
    """
    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels
    opener = Image.open
    if opener.__module__ != Image.__name__:
        opener = getattr(sys.modules.get(opener.__module__), "_image_open", opener)
    return opener(io.BytesIO(data), formats=formats)


def check_image_size(image: Image.Image, *, name: str, max_pixels: int) -> None:
    """ImageError ``too_many_pixels`` for an image over ``max_pixels`` or ``MAX_SIDE``, from its
    header, before any pixel is decoded. This check, not Pillow's, is what holds: Ultralytics
    switches Pillow's off for the whole process (``Image.MAX_IMAGE_PIXELS = None``) once it
    has processed images."""
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(
            name, "too_many_pixels", f"{width}x{height} = {width * height} pixels > {max_pixels}"
        )
    if max(width, height) > MAX_SIDE:
        raise ImageError(name, "too_many_pixels", f"{width}x{height}: a side over {MAX_SIDE}")


def decode_image_bytes(
    data: bytes,
    *,
    name: str,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    formats: tuple[str, ...] | None = None,
) -> DecodedImage:
    """Decode encoded image bytes fully to RGB with EXIF orientation applied.

    ``name`` is what errors call the image. The pixel count is checked from the header, before
    any pixel is decoded. ``formats`` (Pillow's names, e.g. ``("JPEG", "PNG")``) limits which
    decoders may try the bytes; None lets every decoder Pillow has try them.

    Raises ImageError with reason ``zero_bytes``, ``not_an_image``, ``too_many_pixels``,
    ``truncated`` or ``corrupt`` (including an image whose header is damaged).
    """
    if not data:
        raise ImageError(name, "zero_bytes")
    try:
        with warnings.catch_warnings():
            # Pillow warns below its hard limit; we enforce our own limit instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with open_image_bytes(data, max_pixels=max_pixels, formats=formats) as opened:
                check_image_size(opened, name=name, max_pixels=max_pixels)
                encoding = str(opened.format)
                opened.load()
                image = to_rgb(ImageOps.exif_transpose(opened))
    except ImageError:
        raise
    except (UnidentifiedImageError, ImportError):  # ImportError: a patched opener, see above
        if _looks_like_an_image(data):
            raise ImageError(name, "corrupt", "the image header cannot be read") from None
        raise ImageError(name, "not_an_image") from None
    except Image.DecompressionBombError as exc:  # Pillow's limit, raised to ours when lower
        # Refused inside open(), before the size is ours to read; Pillow's words carry it.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{found.group(1)} pixels" if found else "more pixels"
        raise ImageError(name, "too_many_pixels", f"{size} > {max_pixels}") from None
    except OSError as exc:
        reason = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        raise ImageError(name, reason, str(exc)) from None
    except Exception as exc:  # decoders raise many types (SyntaxError, struct.error, ...)
        raise ImageError(name, "corrupt", f"{type(exc).__name__}: {exc}") from None
    return DecodedImage(image=image, format=encoding)


def load_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Decode an image fully to RGB with EXIF orientation applied.

    Raises ImageError with reason ``missing``, ``zero_bytes``, ``not_an_image``,
    ``too_many_pixels``, ``truncated``, ``corrupt`` (including an image whose header is damaged)
    or ``unreadable``.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageError(str(path), "missing") from None
    except OSError as exc:
        raise ImageError(str(path), "unreadable", exc.strerror or str(exc)) from None
    decoded = decode_image_bytes(data, name=str(path), max_pixels=max_pixels)
    return LoadedImage(path=path, sha256=hashlib.sha256(data).hexdigest(), image=decoded.image)
