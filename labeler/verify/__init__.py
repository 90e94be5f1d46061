"""The VERIFY stage: ask a vision-language model whether each proposed box is what it claims."""

from labeler.verify.base import (
    Answer,
    Verdict,
    Verifier,
    VerifierBase,
    VerifierStats,
    question_for,
    verdict_cache_key,
)
from labeler.verify.registry import (
    BACKENDS,
    VALID_SPECS,
    check_verifier_spec,
    load_verifier,
    parse_verifier_spec,
)
from labeler.verify.templates import MODES, check_verify_mode

__all__ = [
    "BACKENDS",
    "MODES",
    "VALID_SPECS",
    "Answer",
    "Verdict",
    "Verifier",
    "VerifierBase",
    "VerifierStats",
    "check_verifier_spec",
    "check_verify_mode",
    "load_verifier",
    "parse_verifier_spec",
    "question_for",
    "verdict_cache_key",
]
