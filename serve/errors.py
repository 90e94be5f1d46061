"""The HTTP service's own errors, beside ``labeler.core.exceptions``' tree.

PromptlabelError
└── InputError
    ├── NotFoundError      a named object does not exist (or is another project's): 404
    ├── ForbiddenError     the API key's role does not allow the route: 403
    └── ConflictError      the request contradicts stored state (a reused idempotency key with
                           another body, a job not finished yet): 409
"""

from __future__ import annotations

from labeler.core.exceptions import InputError

__all__ = ["ConflictError", "ForbiddenError", "NotFoundError"]


class NotFoundError(InputError):
    """A named object does not exist, or belongs to another project (which must not be told)."""


class ForbiddenError(InputError):
    """The caller's API key may not do this (its role); the message names the role needed."""


class ConflictError(InputError):
    """The request contradicts what is stored (the HTTP service answers 409)."""
