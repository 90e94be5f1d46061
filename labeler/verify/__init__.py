"""The VERIFY stage: ask a vision-language model whether each proposed box is what it claims."""

from labeler.verify.base import (
    BACKENDS,
    VALID_SPECS,
    Answer,
    Verdict,
    Verifier,
    VerifierBase,
    VerifierStats,
    check_verifier_spec,
    load_verifier,
    parse_verifier_spec,
    question_for,
    verdict_cache_key,
)

__all__ = [
    "BACKENDS",
    "VALID_SPECS",
    "Answer",
    "Verdict",
    "Verifier",
    "VerifierBase",
    "VerifierStats",
    "check_verifier_spec",
    "load_verifier",
    "parse_verifier_spec",
    "question_for",
    "verdict_cache_key",
]
