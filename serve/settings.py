"""The HTTP service's settings: its data, database, limits, queue, and the models it offers.

The service runs every stage, so ``ServiceSettings`` has the label and training settings' fields
too (``PROMPTLABEL_CONCURRENCY``, ``PROMPTLABEL_PROMOTE_TOLERANCE`` ...). What callers may choose
is configured by name: ``PROMPTLABEL_SERVICE_DETECTORS``, ``PROMPTLABEL_SERVICE_TRAIN_BASES`` and
``PROMPTLABEL_SERVICE_VERIFIERS``, whose entries each say which server to ask and where its key
is::

    {"none": "none",
     "local": {"spec": "openai:Qwen2-VL", "url": "http://vllm:8000/v1", "api_key_env": "VLLM_KEY"},
     "hosted": {"spec": "openai:gpt-4o-mini", "api_key_env": "OPENAI_API_KEY"}}
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from distill.settings import TrainSettings
from labeler.core.exceptions import InputError, ModelLoadError
from labeler.propose.options import DEFAULT_DETECTOR
from labeler.settings import LabelSettings
from labeler.verify.registry import check_verifier_spec

__all__ = [
    "ResolvedVerifier",
    "ServiceSettings",
    "VerifierEntry",
    "get_service_settings",
]

# URL ingestion: how long one fetch may take, and how many redirects it follows.
DEFAULT_FETCH_TIMEOUT_S = 15.0
DEFAULT_MAX_REDIRECTS = 3
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HTTP_BACKENDS = frozenset({"openai", "moondream"})  # the backends that ask a server


class VerifierEntry(BaseModel):
    """One verifier the service offers. A plain string in ``PROMPTLABEL_SERVICE_VERIFIERS`` is
    ``{"spec": ...}``.

    ``url``: its server (None: ``PROMPTLABEL_SERVICE_VERIFIER_URL``, then the backend's default).
    ``api_key_env``: the name of the variable holding its key (None: the backend's own,
    ``OPENAI_API_KEY`` or ``MOONDREAM_API_KEY``); the key itself never goes in the settings.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    spec: str
    url: str | None = None
    api_key_env: str | None = None

    @model_validator(mode="after")
    def _check(self) -> VerifierEntry:
        try:
            backend, _ = check_verifier_spec(self.spec)
        except InputError as error:
            raise ValueError(str(error)) from None
        if backend not in _HTTP_BACKENDS and (self.url or self.api_key_env):
            raise ValueError(
                f"a {backend!r} verifier asks no server: it takes no url or api_key_env"
            )
        if self.url is not None:
            parts = urlsplit(self.url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                # Not echoed: a URL may carry a user and password.
                raise ValueError("url must be an http(s) URL with a host")
        if self.api_key_env is not None and not _ENV_NAME.fullmatch(self.api_key_env):
            # Not echoed: what was pasted here may be the key itself.
            raise ValueError(
                "api_key_env must be the name of an environment variable holding the key "
                "(e.g. OPENAI_API_KEY), not the key"
            )
        return self


@dataclass(frozen=True)
class ResolvedVerifier:
    """What a job hands ``load_verifier`` for a verifier name: never shown to callers."""

    spec: str
    url: str | None
    api_key: str | None = field(default=None, repr=False)


class ServiceSettings(TrainSettings, LabelSettings):
    """``promptlabel serve`` and ``worker``: every stage's settings, and the service's own."""

    data_dir: Path = Path("promptlabel-data")  # images, job folders, registries, the SQLite db
    database_url: str | None = None  # None: SQLite in data_dir; or postgresql+psycopg://...
    # How long an idle client connection stays open. Longer than the idle timeout of the proxies
    # and clients in front of us (nginx 75 s, AWS ALB 60 s): when the server closes first, a
    # request sent at that moment is lost without an answer (seen under load with uvicorn's 5 s).
    http_keep_alive_s: int = 90
    # What API callers may choose; names map to model ids or local paths (callers never send paths).
    service_detectors: dict[str, str] = Field(default_factory=lambda: {"default": DEFAULT_DETECTOR})
    service_verifiers: dict[str, VerifierEntry] = Field(
        default_factory=lambda: {"none": VerifierEntry(spec="none")}
    )
    # The server of the verifiers that name none of their own.
    service_verifier_url: str | None = None
    service_train_bases: dict[str, str] = Field(default_factory=lambda: {"yolo11n": "yolo11n.pt"})
    # Segmenters a labeling job's ``masks`` may name: name -> --masks spec (none offered unless
    # the operator lists some, e.g. {"sam": "transformers:facebook/sam-vit-base"}).
    service_segmenters: dict[str, str] = Field(default_factory=dict)
    service_device: str = "auto"
    lease_s: float = 60.0  # a worker that stops renewing its lease for this long loses the job
    poll_interval_s: float = 1.0
    max_attempts: int = 3  # a job whose worker dies this many times fails
    max_upload_bytes: int = 512 * 1024 * 1024
    max_image_bytes: int = 50 * 1024 * 1024
    max_files_per_upload: int = 1000
    max_zip_members: int = 10_000
    max_zip_total_bytes: int = 2 * 1024 * 1024 * 1024
    max_urls_per_request: int = 100
    # CIDRs or host names that URL ingestion may reach although they are private (JSON list).
    url_allowlist: list[str] = Field(default_factory=list)
    fetch_timeout_s: float = DEFAULT_FETCH_TIMEOUT_S
    # For all the URLs of one /images/fetch request: those not fetched by then are rejected.
    fetch_request_timeout_s: float = 120.0
    max_redirects: int = DEFAULT_MAX_REDIRECTS
    # How long a review queue item stays claimed for the reviewer it was handed to: meanwhile
    # colleagues' queues skip it. Long enough to decide one box, short enough that a reviewer
    # who walks away holds nothing for long.
    review_claim_s: float = Field(default=120.0, gt=0, le=3600)
    # Signs the review page's session cookies. Unset: a random secret kept in data_dir, which
    # every process of one service shares; set it when the processes do not share data_dir.
    session_secret: SecretStr | None = None

    @field_validator("service_verifiers", mode="before")
    @classmethod
    def _verifier_entries(cls, value: Any) -> Any:
        # Checked when the service starts, not when a caller's job first names one; each
        # problem names its entry.
        if not isinstance(value, dict):
            return value  # pydantic says what it should be
        entries: dict[str, VerifierEntry] = {}
        for name, entry in value.items():
            try:
                if isinstance(entry, VerifierEntry):
                    entries[name] = entry
                elif isinstance(entry, str):
                    entries[name] = VerifierEntry(spec=entry)
                else:
                    entries[name] = VerifierEntry.model_validate(entry)
            except ValidationError as error:
                raise ValueError(f"{name!r}: {_first_problem(error)}") from None
        return entries

    def verifier_key_problems(self) -> list[str]:
        """One line per offered verifier whose ``api_key_env`` is not set (or is empty)."""
        return [
            f"verifier {name!r}: its key variable {entry.api_key_env} is not set "
            "(PROMPTLABEL_SERVICE_VERIFIERS)"
            for name, entry in self.service_verifiers.items()
            if entry.api_key_env is not None and not os.environ.get(entry.api_key_env)
        ]

    def check_verifier_keys(self) -> None:
        """InputError naming each verifier whose key variable is missing: a worker refuses to
        start without them rather than fail each job that names one."""
        problems = self.verifier_key_problems()
        if problems:
            raise InputError("; ".join(problems))

    def resolve_verifier(self, name: str) -> ResolvedVerifier:
        """The spec, server and key of the offered verifier ``name``. ModelLoadError (whose
        message is for the server's log, not for callers) when its key variable is missing."""
        entry = self.service_verifiers[name]
        api_key = None
        if entry.api_key_env is not None:
            api_key = os.environ.get(entry.api_key_env)
            if not api_key:
                raise ModelLoadError(
                    f"verifier {name!r}: its key variable {entry.api_key_env} is not set"
                )
        return ResolvedVerifier(
            spec=entry.spec, url=entry.url or self.service_verifier_url, api_key=api_key
        )


def _first_problem(error: ValidationError) -> str:
    problem = error.errors()[0]
    where = ".".join(map(str, problem["loc"]))
    message = str(problem["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


@lru_cache(maxsize=1)
def get_service_settings() -> ServiceSettings:
    """The process's service settings, read once; ``get_service_settings.cache_clear()`` after
    changing the environment."""
    return ServiceSettings()
