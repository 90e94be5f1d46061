"""Finding and decoding input images; every failure becomes an ImageError with a reason."""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from labeler.exceptions import ImageError

__all__ = [
    "IMAGE_EXTENSIONS",
    "LoadedImage",
    "iter_image_paths",
    "load_image",
    "sha256_file",
]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb limit


@dataclass(frozen=True)
class LoadedImage:
    path: Path
    sha256: str
    image: Image.Image  # RGB, EXIF orientation applied

    @property
    def image_wh(self) -> tuple[int, int]:
        return self.image.size


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


def load_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Decode an image fully to RGB with EXIF orientation applied.

    Raises ImageError with reason ``missing``, ``zero_bytes``, ``not_an_image``, ``too_many_pixels``,
    ``truncated``, ``corrupt`` or ``unreadable``.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageError(str(path), "missing") from None
    except OSError as exc:
        raise ImageError(str(path), "unreadable", exc.strerror or str(exc)) from None
    if not data:
        raise ImageError(str(path), "zero_bytes")
    sha256 = hashlib.sha256(data).hexdigest()
    try:
        with warnings.catch_warnings():
            # Pillow warns below its hard limit; we enforce our own limit instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as opened:
                width, height = opened.size
                if width * height > max_pixels:
                    raise ImageError(
                        str(path), "too_many_pixels", f"{width}x{height} > {max_pixels} pixels"
                    )
                opened.load()
                image = ImageOps.exif_transpose(opened)
                image = image.convert("RGB") if image.mode != "RGB" else image.copy()
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(str(path), "not_an_image") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(str(path), "too_many_pixels", str(exc)) from None
    except OSError as exc:
        reason = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        raise ImageError(str(path), reason, str(exc)) from None
    except (ValueError, SyntaxError, EOFError) as exc:
        raise ImageError(str(path), "corrupt", str(exc)) from None
    return LoadedImage(path=path, sha256=sha256, image=image)
