"""Verifier backends by name: ``"openai:MODEL"``, ``"transformers:ID_OR_PATH"``, ``"moondream"``.

Each loader imports its backend when called, so checking a spec (or using the OpenAI backend) never
imports torch; ``labeler.verify.base`` imports no backend, and each backend imports base.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from labeler.core.exceptions import InputError
from labeler.verify.base import (
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT_S,
    Verifier,
)
from labeler.verify.templates import DEFAULT_VERIFY_MODE, check_verify_mode

if TYPE_CHECKING:
    import httpx

__all__ = [
    "BACKENDS",
    "VALID_SPECS",
    "LoadOptions",
    "check_verifier_spec",
    "load_verifier",
    "parse_verifier_spec",
]


VALID_SPECS = (
    "none",
    "openai:MODEL (e.g. openai:gpt-4o-mini)",
    "transformers:MODEL_ID_OR_PATH (e.g. transformers:/models/SmolVLM-256M-Instruct)",
    "moondream or moondream:MODEL",
)


@dataclass(frozen=True)
class LoadOptions:
    """Everything ``load_verifier`` hands a backend besides the model name. ``api_key`` None:
    the backend's own variable (``OPENAI_API_KEY``, ``MOONDREAM_API_KEY``)."""

    url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    concurrency: int = DEFAULT_CONCURRENCY
    mode: str = DEFAULT_VERIFY_MODE
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_retries: int = DEFAULT_MAX_RETRIES
    http_client: httpx.AsyncClient | None = None
    device: str = "auto"


def _load_openai(model: str | None, options: LoadOptions) -> Verifier:
    from labeler.verify.openai_backend import OpenAIVerifier

    assert model is not None  # check_verifier_spec requires it
    return OpenAIVerifier(
        model,
        url=options.url,
        api_key=options.api_key,
        mode=options.mode,
        concurrency=options.concurrency,
        timeout_s=options.timeout_s,
        max_retries=options.max_retries,
        http_client=options.http_client,
    )


def _load_transformers(model: str | None, options: LoadOptions) -> Verifier:
    from labeler.verify.transformers_backend import TransformersVerifier

    assert model is not None  # check_verifier_spec requires it
    return TransformersVerifier(
        model, mode=options.mode, concurrency=options.concurrency, device=options.device
    )


def _load_moondream(model: str | None, options: LoadOptions) -> Verifier:
    from labeler.verify.moondream_backend import MoondreamVerifier

    return MoondreamVerifier(
        model,
        url=options.url,
        api_key=options.api_key,
        mode=options.mode,
        concurrency=options.concurrency,
        timeout_s=options.timeout_s,
        max_retries=options.max_retries,
    )


# Backend name -> loader. Loaders import their backend lazily, so that checking a spec (or using
# the OpenAI backend) never imports torch.
BACKENDS: dict[str, Callable[[str | None, LoadOptions], Verifier]] = {
    "openai": _load_openai,
    "transformers": _load_transformers,
    "moondream": _load_moondream,
}
_NEEDS_MODEL = frozenset({"openai", "transformers"})


def parse_verifier_spec(spec: str) -> tuple[str, str | None]:
    """Split ``"backend:model"``: ``"openai:gpt-4o-mini"`` -> ``("openai", "gpt-4o-mini")``,
    ``"none"`` or ``""`` -> ``("none", None)``, ``"moondream"`` -> ``("moondream", None)``.

    Only the first colon splits, so paths keep theirs. Does not check the backend exists.
    """
    text = spec.strip()
    if not text or text.lower() == "none":
        return "none", None
    backend, _, model = text.partition(":")
    return backend.strip().lower(), (model.strip() or None)


def check_verifier_spec(spec: str) -> tuple[str, str | None]:
    """``parse_verifier_spec`` plus validation, without loading anything.

    Raises InputError naming the valid specs when the backend is unknown or needs a model name.
    """
    backend, model = parse_verifier_spec(spec)
    valid = "; ".join(VALID_SPECS)
    if backend != "none" and backend not in BACKENDS:
        raise InputError(f"unknown verifier {spec!r}: backend {backend!r} is not one of: {valid}")
    if backend in _NEEDS_MODEL and model is None:
        raise InputError(f"verifier {spec!r} needs a model name after the colon: {valid}")
    return backend, model


def load_verifier(
    spec: str,
    *,
    url: str | None = None,
    api_key: str | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    mode: str = DEFAULT_VERIFY_MODE,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_retries: int = DEFAULT_MAX_RETRIES,
    http_client: httpx.AsyncClient | None = None,
    device: str = "auto",
) -> Verifier | None:
    """The verifier a spec names, ready to use; None for ``"none"``. ``url`` and ``api_key`` are
    for the backends that speak HTTP; without them each uses its own variables and default.

    Raises InputError for a bad spec, mode or option (and for a missing API key), and
    ModelLoadError when a local model cannot be loaded.
    """
    backend, model = check_verifier_spec(spec)
    check_verify_mode(mode)
    if concurrency < 1:
        raise InputError(f"verifier concurrency must be at least 1, got {concurrency}")
    if timeout_s <= 0:
        raise InputError(f"verifier timeout must be positive, got {timeout_s} s")
    if max_retries < 0:
        raise InputError(f"max_retries must be 0 or more, got {max_retries}")
    if backend == "none":
        return None
    options = LoadOptions(
        url=url,
        api_key=api_key,
        concurrency=concurrency,
        mode=mode,
        timeout_s=timeout_s,
        max_retries=max_retries,
        http_client=http_client,
        device=device,
    )
    return BACKENDS[backend](model, options)
