"""The one door to Ultralytics: its environment is set before it is imported, and only here.

Ultralytics reads a few variables once, when it is first imported:

- ``YOLO_OFFLINE=True`` turns off its connectivity probe, telemetry, hub and update checks. Weight
  downloads that a user asks for (``--base yolo11n.pt``) are still tried once; with the flag set a
  failed download fails at once instead of retrying for a minute.
- ``YOLO_AUTOINSTALL=false`` stops it from running ``pip install`` for a missing optional package.

Both are set with ``os.environ.setdefault``, so a user's own setting wins. Every distill module
imports Ultralytics through ``import_ultralytics()`` or ``load_yolo()``; when something imported
Ultralytics earlier, it keeps the environment it saw then (a debug line says so).

Fonts: ``check_det_dataset()`` ends with ``check_font("Arial.ttf")`` and the plotting code asks
for the same font (``Arial.Unicode.ttf`` for non-ASCII class names). ``check_font`` first looks for
``USER_CONFIG_DIR/<name>``, then in matplotlib's font list, and only then sends a HEAD request to
github.com and downloads it. ``ensure_fonts()`` puts a copy of DejaVu Sans, which matplotlib (an
Ultralytics dependency) ships, under both names in ``USER_CONFIG_DIR``, so the first lookup succeeds
and nothing touches the network. This is the very place Ultralytics would download the font to; the
only visible difference is that plot labels are drawn in DejaVu Sans rather than Arial (and CJK
class names render as boxes, as DejaVu Sans has no CJK glyphs).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from labeler.core.exceptions import InputError, ModelLoadError
from labeler.core.files import copy_atomically

__all__ = [
    "ENV_DEFAULTS",
    "FONT_NAMES",
    "configure_environment",
    "ensure_fonts",
    "import_ultralytics",
    "load_yolo",
    "quiet_ultralytics",
    "ultralytics_device",
]

logger = logging.getLogger(__name__)

ENV_DEFAULTS: dict[str, str] = {"YOLO_OFFLINE": "True", "YOLO_AUTOINSTALL": "false"}
# The names Ultralytics' check_font() is asked for (Latin and non-Latin class names).
FONT_NAMES: tuple[str, ...] = ("Arial.ttf", "Arial.Unicode.ttf")
_INSTALL_HINT = "pip install 'promptlabel[train]'"


def configure_environment() -> None:
    """Set Ultralytics' offline defaults in ``os.environ`` unless the user set them already."""
    for name, value in ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)


def ensure_fonts() -> list[Path]:
    """Make ``check_font`` find its fonts locally; returns the font files it will use.

    A missing font is written as a copy of matplotlib's DejaVu Sans (atomically, so concurrent
    processes never see half a file). A folder that cannot be written is logged and left alone:
    Ultralytics then falls back to its own probe, which fails quickly offline.
    """
    from matplotlib import font_manager
    from ultralytics.utils import USER_CONFIG_DIR

    source = Path(font_manager.findfont("DejaVu Sans", fallback_to_default=True))
    fonts: list[Path] = []
    for name in FONT_NAMES:
        target = Path(USER_CONFIG_DIR) / name
        if not target.is_file():
            try:
                copy_atomically(source, target)
            except OSError as exc:
                logger.debug("cannot place %s for Ultralytics: %s", target, exc)
                continue
        fonts.append(target)
    return fonts


@functools.cache
def import_ultralytics() -> ModuleType:
    """The ``ultralytics`` module, imported with promptlabel's environment and fonts in place.

    Raises ModelLoadError when Ultralytics is not installed.
    """
    if "ultralytics" in sys.modules:
        logger.debug(
            "ultralytics was imported before promptlabel set YOLO_OFFLINE/YOLO_AUTOINSTALL"
        )
    configure_environment()
    try:
        import ultralytics
    except ImportError as exc:
        raise ModelLoadError(
            f"training and evaluating a student needs Ultralytics: {_INSTALL_HINT}"
        ) from exc
    ensure_fonts()
    return ultralytics


def load_yolo(model: str | Path, *, what: str = "model") -> Any:
    """An ``ultralytics.YOLO`` for a .pt/.onnx file or an architecture .yaml.

    Raises ModelLoadError naming the file and why it cannot be loaded. ``what`` names the role of
    the file in the message (``"model"``, ``"base model"``).
    """
    ultralytics = import_ultralytics()
    text = str(model)
    is_file_path = Path(text).suffix.lower() in {".pt", ".onnx"}
    if is_file_path and not Path(text).is_file():
        raise ModelLoadError(f"cannot load {what} {text}: the file does not exist")
    try:
        with quiet_ultralytics():
            return ultralytics.YOLO(text)
    except Exception as exc:  # Ultralytics raises anything from KeyError to RuntimeError here
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"cannot load {what} {text}: {reason}. Pass a YOLO checkpoint (.pt), an ONNX file "
            "exported by `promptlabel export`, or an architecture such as yolo11n.yaml"
        ) from exc


def ultralytics_device(device: str) -> str:
    """Ultralytics' spelling of a device: ``"auto"`` picks CUDA, then MPS, then the CPU.

    Accepts ``auto``, ``cpu``, ``mps``, ``cuda``, ``cuda:N`` and Ultralytics' own ``0`` / ``0,1``;
    InputError when a GPU is asked for and torch sees none.
    """
    import torch

    text = str(device).strip().lower()
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if text == "auto":
        if torch.cuda.is_available():
            return "0"
        return "mps" if has_mps else "cpu"
    if text in {"cpu", "mps"}:
        if text == "mps" and not has_mps:
            raise InputError("device 'mps' was asked for but torch sees no Apple GPU; use cpu")
        return text
    gpu = text.removeprefix("cuda").removeprefix(":") or "0"
    if not all(part.isdigit() for part in gpu.split(",")):
        raise InputError(
            f"device {device!r} is not a device name (auto, cpu, mps, cuda, cuda:1, 0)"
        )
    if not torch.cuda.is_available():
        raise InputError(
            f"device {device!r} was asked for but CUDA is not available to torch here; "
            "use --device cpu (or auto)"
        )
    return gpu


@contextlib.contextmanager
def quiet_ultralytics(level: int = logging.WARNING) -> Iterator[None]:
    """Raise Ultralytics' logger to ``level`` for the block; its progress bars go quiet as well.

    Ultralytics disables its TQDM bars whenever its logger is above INFO.
    """
    ultralytics_logger = logging.getLogger("ultralytics")
    previous = ultralytics_logger.level
    ultralytics_logger.setLevel(max(level, previous))
    try:
        yield
    finally:
        ultralytics_logger.setLevel(previous)
