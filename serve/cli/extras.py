"""Which optional extra brings which import, so that a command run on an install without its extra
ends in one line that says what to install, not in a traceback."""

from __future__ import annotations

__all__ = ["EXTRA_BY_MODULE", "missing_module_message"]

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
    """One line for ``error`` raised while running ``command``: the extra to install when the
    module belongs to one, else a hint that the install is broken."""
    module = (error.name or "").split(".")[0]
    extra = EXTRA_BY_MODULE.get(module)
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
