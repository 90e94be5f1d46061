"""Every error promptlabel raises on purpose.

    PromptlabelError
    ├── InputError                 the user's input is wrong; the message names the file or field
    │   ├── OntologyError          an ontology file is invalid (line and field named)
    │   └── ImageError             one image cannot be used (reason: corrupt, truncated, ...)
    ├── ModelLoadError             a checkpoint cannot be loaded (which, from where, what to do)
    ├── DetectorError              the detector failed on every image, or on 8 in a row
    ├── VerifierError              the verifier backend failed after its retries
    │   └── VerifierRateLimited    the backend kept answering 429
    ├── StoreError                 the workspace database cannot be used
    └── StaleDecision              a reviewer decided on a box version another decision replaced
                                   (``current`` holds the box's state now; the service's 409)

The CLI turns a PromptlabelError that is not an ImageError into one line and exit code 2; an
ImageError is recorded against its image and the run goes on. The HTTP service adds its own two
(``serve.errors``: NotFoundError, ConflictError) under InputError.
"""

from __future__ import annotations

__all__ = [
    "DetectorError",
    "ImageError",
    "InputError",
    "ModelLoadError",
    "OntologyError",
    "PromptlabelError",
    "StaleDecision",
    "StoreError",
    "VerifierError",
    "VerifierRateLimited",
]


class PromptlabelError(Exception):
    """Base of every error promptlabel raises on purpose."""


class InputError(PromptlabelError):
    """The user's input (a file, an option, a field) is wrong."""


class OntologyError(InputError):
    """An ontology file is invalid."""


class ImageError(InputError):
    """One image cannot be used; ``reason`` is a short machine-readable word."""

    def __init__(self, path: str, reason: str, detail: str = "") -> None:
        self.path = path
        self.reason = reason
        self.detail = detail
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))


class ModelLoadError(PromptlabelError):
    """A model checkpoint cannot be loaded."""


class DetectorError(PromptlabelError):
    """The detector failed on every image, or on many in a row: the model or the machine (a GPU
    out of memory), not the images. ``summary`` says so without the last error's own text, which
    may name the model's files."""

    def __init__(self, summary: str, last_error: BaseException) -> None:
        super().__init__(f"{summary}; the last error: {type(last_error).__name__}: {last_error}")
        self.summary = summary


class VerifierError(PromptlabelError):
    """The verifier backend failed after its retries."""


class VerifierRateLimited(VerifierError):
    """The verifier backend kept answering 429 Too Many Requests."""


class StoreError(PromptlabelError):
    """The workspace database cannot be used."""


class StaleDecision(PromptlabelError):
    """A decision was made on a version of a box that another decision has replaced; nothing was
    changed. ``current`` is the box's state now (a ``labeler.store.decisions.HumanState``, or
    None when every decision on it was undone before)."""

    def __init__(self, message: str, *, current: object) -> None:
        super().__init__(message)
        self.current = current
