"""Which optional extra brings which import, so that a command run on an install without its extra
ends in one line that says what to install, not in a traceback."""

from __future__ import annotations

__all__ = ["EXTRA_BY_COMMAND", "EXTRA_BY_MODULE", "missing_module_message"]

# Each extra includes the ones before it (pyproject.toml: train = label + ..., serve = train + ...).
EXTRAS_IN_ORDER = ("label", "train", "serve")

# The extra each command needs as a whole: `train` needs torch too, but naming 'label' there would
# send the user round twice.
EXTRA_BY_COMMAND: dict[str, str] = {
    "label": "label",
    "demo": "label",
    "train": "train",
    "eval": "train",
    "export": "train",
    "models": "train",
    "serve": "serve",
    "worker": "serve",
    "projects": "serve",
    "keys": "serve",
    "review": "serve",
}

# Top-level import name -> the extra of pyproject.toml that installs it.
EXTRA_BY_MODULE: dict[str, str] = {
    **dict.fromkeys(
        (
            "torch",
            "torchvision",
            "transformers",
            "tokenizers",
            "safetensors",
            "huggingface_hub",
            "openai",
            "httpx",
            "pycocotools",
            "scipy",
        ),
        "label",
    ),
    **dict.fromkeys(("ultralytics", "onnx", "cv2", "polars"), "train"),
    **dict.fromkeys(
        (
            "fastapi",
            "fastapi_offline",
            "starlette",
            "uvicorn",
            "sqlalchemy",
            "psycopg",
            "multipart",
            "python_multipart",
            "prometheus_client",
            "pythonjsonlogger",
        ),
        "serve",
    ),
}


def missing_module_message(error: ModuleNotFoundError, command: str) -> str:
    """One line for ``error`` raised while running ``command``: the extra to install (the
    command's own when it includes the module's), else a hint that the install is broken."""
    module = (error.name or "").split(".")[0]
    extra = EXTRA_BY_MODULE.get(module)
    command_extra = EXTRA_BY_COMMAND.get(command.split(" ")[0])
    if extra is not None and command_extra is not None:
        extra = max(extra, command_extra, key=EXTRAS_IN_ORDER.index)
    what = f"`promptlabel {command}`" if command else "this command"
    if extra is None:
        return (
            f"{what} cannot import {module or error}: the installation looks incomplete; "
            "reinstall promptlabel (pip install --force-reinstall promptlabel)"
        )
    return (
        f"{what} needs the '{extra}' extra ({module} is not installed): "
        f"pip install 'promptlabel[{extra}]'"
    )
