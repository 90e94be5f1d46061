"""What a verifier spec will be known as, computed without loading the verifier."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from labeler.verify.base import check_verifier_spec
from labeler.verify.templates import Mode, template_set

__all__ = ["VerifierIdentity", "verifier_identity"]


@dataclass(frozen=True)
class VerifierIdentity:
    model_id: str
    template_id: str
    template_hash: str


def verifier_identity(spec: str, *, mode: str) -> VerifierIdentity:
    """The ``model_id`` and template a loaded verifier for ``spec`` reports; lets the pipeline look
    up cached verdicts (and skip loading the model when all are cached)."""
    backend, model = check_verifier_spec(spec)
    templates = template_set(cast(Mode, mode))
    return VerifierIdentity(
        model_id=f"{backend}:{model}" if model else backend,
        template_id=templates.template_id,
        template_hash=templates.template_hash,
    )
