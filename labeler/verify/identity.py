"""What a verifier spec will be known as, computed without loading the verifier."""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from labeler.verify.registry import check_verifier_spec
from labeler.verify.templates import check_verify_mode, template_set

__all__ = [
    "MOONDREAM_DEFAULT_ENDPOINT",
    "VerifierIdentity",
    "normalized_endpoint",
    "openai_base_url",
    "verifier_identity",
]

OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
MOONDREAM_DEFAULT_ENDPOINT = "https://api.moondream.ai/v1"
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class VerifierIdentity:
    """``endpoint`` is the normalized server URL for a backend whose model name alone does not
    say which model answers (an OpenAI-compatible server, Moondream Cloud or a local Moondream
    Station); None for a local transformers model."""

    model_id: str
    template_id: str
    template_hash: str
    endpoint: str | None = None


def openai_base_url(url: str | None) -> str:
    """The base URL the OpenAI backend talks to: ``url``, else ``OPENAI_BASE_URL``, else
    OpenAI's API. One function, so the verifier and its cache identity cannot disagree."""
    return url or os.environ.get("OPENAI_BASE_URL") or OPENAI_DEFAULT_BASE_URL


def normalized_endpoint(url: str) -> str:
    """``url`` as a name for the server: lowercase scheme and host, no default port, no
    trailing slash, and no user, password, query or fragment, which may carry credentials."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"  # IPv6 literal
    try:
        port = parts.port
    except ValueError:  # a malformed port; the request itself will fail and say so
        port = None
    netloc = host if port is None or port == _DEFAULT_PORTS.get(scheme) else f"{host}:{port}"
    return urlunsplit((scheme, netloc, parts.path.rstrip("/"), "", ""))


def verifier_identity(spec: str, *, mode: str, url: str | None = None) -> VerifierIdentity:
    """The ``model_id`` and template a loaded verifier for ``spec`` reports, and the endpoint it
    would ask when loaded with ``url``; lets the pipeline look up cached verdicts (and skip
    loading the model when all are cached)."""
    backend, model = check_verifier_spec(spec)
    templates = template_set(check_verify_mode(mode))
    # Two servers can serve different models under one name, so their verdicts must not mix.
    endpoint = None
    if backend == "openai":
        endpoint = normalized_endpoint(openai_base_url(url))
    elif backend == "moondream":
        endpoint = normalized_endpoint(url or MOONDREAM_DEFAULT_ENDPOINT)
    return VerifierIdentity(
        model_id=f"{backend}:{model}" if model else backend,
        template_id=templates.template_id,
        template_hash=templates.template_hash,
        endpoint=endpoint,
    )
