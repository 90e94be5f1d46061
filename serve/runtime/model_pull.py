"""A device's verified local copy of a model served over HTTP (``promptlabel predict --model-url``).

``pull_model(url, cache_dir, refresh_s=...)`` returns the path of a copy whose SHA-256 matches
what the server announced, asking the server at most once per ``refresh_s``:

- no copy yet: download it (to a temporary file, hashed while it arrives), check the hash against
  the response's ``X-Content-SHA256`` header (or an ETag that holds a SHA-256), then rename it into
  place; a mismatch (a corrupt or cut-off download) is deleted and never used;
- a copy checked less than ``refresh_s`` ago: no request at all;
- otherwise a conditional GET (``If-None-Match`` with the copy's ETag): 304 keeps the copy, 200
  replaces it as above;
- the server unreachable, refusing (4xx/5xx) or sending a bad file: the copy is used and the
  result carries a warning; only with no copy at all is it an error (``ModelPullError``).

Layout, one folder per URL (so one cache can serve several)::

    CACHE/<sha256(url)[:16]>/model-<sha256[:16]>.onnx   the verified copy
    CACHE/<sha256(url)[:16]>/state.json   url, etag, sha256, version, file, checked_at (epoch s)
    CACHE/<sha256(url)[:16]>/.lock        held while pulling: two processes never interleave

The copy is written before the state that names it (both atomically), so a power cut at any
point leaves the old copy in use or the new one, never half a file. Only the standard library is
used: this runs on the base install.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal

from labeler.core.exceptions import InputError, ModelLoadError
from labeler.core.version import __version__
from serve.runtime.outbox import atomic_write

__all__ = [
    "DEFAULT_REFRESH_MINUTES",
    "SHA256_HEADER",
    "VERSION_HEADER",
    "ModelPullError",
    "PulledModel",
    "default_cache_dir",
    "pull_model",
]

logger = logging.getLogger(__name__)

DEFAULT_REFRESH_MINUTES = 10.0
SHA256_HEADER = "X-Content-SHA256"
VERSION_HEADER = "X-Model-Version"
STATE_NAME = "state.json"
_CHUNK_BYTES = 1 << 20
_SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
# How much of an error response to read for its message.
_ERROR_BODY_BYTES = 4096

How = Literal["cached", "not_modified", "downloaded", "fallback"]


class ModelPullError(ModelLoadError):
    """No usable model: the server could not provide one and there is no verified copy."""


@dataclass(frozen=True)
class PulledModel:
    """The local copy to load and how it was obtained.

    ``how``: ``cached`` (checked less than the refresh interval ago; no request made),
    ``not_modified`` (the server answered 304), ``downloaded`` (a new copy, verified), or
    ``fallback`` (the server could not be asked or gave no usable file; the copy is used and
    ``warning`` says why). ``version`` is the server's ``X-Model-Version`` (None if it sent none).
    """

    path: Path
    sha256: str
    version: str | None
    how: How
    url: str
    warning: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "sha256": self.sha256,
            "version": self.version,
            "how": self.how,
            "url": self.url,
            "warning": self.warning,
        }


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/promptlabel/models``, or ``~/.cache/promptlabel/models``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "promptlabel" / "models"


def pull_model(
    url: str,
    cache_dir: Path,
    *,
    refresh_s: float = DEFAULT_REFRESH_MINUTES * 60,
    api_key: str | None = None,
    timeout_s: float = 30.0,
    clock: Callable[[], float] = time.time,
) -> PulledModel:
    """A verified local copy of the model at ``url`` (see the module docstring).

    ``api_key`` is sent as ``Authorization: Bearer``. ``clock`` gives the time in epoch seconds
    (tests move it). Raises InputError for a URL that is not http(s), and ModelPullError only
    when there is no verified copy and the server cannot provide one; with a copy, every
    failure becomes the result's ``warning``.
    """
    if not url.startswith(("http://", "https://")):
        raise InputError(f"--model-url {url!r}: give an http:// or https:// URL")
    folder = Path(cache_dir) / hashlib.sha256(url.encode()).hexdigest()[:16]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelPullError(f"{folder}: cannot create the model cache ({exc})") from None
    with _locked(folder):
        return _Puller(url, folder, api_key, timeout_s).pull(refresh_s, clock())


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold ``folder/.lock`` exclusively (POSIX); elsewhere, no lock."""
    try:
        import fcntl
    except ImportError:  # Windows: devices we target are Linux; nothing to hold there
        yield
        return
    with open(folder / ".lock", "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@dataclass(frozen=True)
class _Copy:
    """The verified copy ``state.json`` names."""

    path: Path
    sha256: str
    etag: str
    version: str | None
    checked_at: float | None


class _Unavailable(Exception):
    """The server gave no usable file; the message says why (for a warning or an error)."""


class _Puller:
    def __init__(self, url: str, folder: Path, api_key: str | None, timeout_s: float) -> None:
        self.url = url
        self.folder = folder
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.state_path = folder / STATE_NAME

    def pull(self, refresh_s: float, now: float) -> PulledModel:
        copy = self._verified_copy()
        # A clock set back (checked "in the future") counts as due: ask rather than trust it.
        if copy is not None and copy.checked_at is not None:
            if 0 <= now - copy.checked_at < refresh_s:
                return self._result(copy, "cached")
        try:
            return self._ask(copy, now)
        except _Unavailable as problem:
            if copy is None:
                raise ModelPullError(
                    f"{problem}; and there is no verified copy in {self.folder} to use instead"
                ) from None
            when = (
                "never checked"
                if copy.checked_at is None
                else "last checked "
                + datetime.fromtimestamp(copy.checked_at, UTC).isoformat(timespec="seconds")
            )
            warning = (
                f"{problem}; using the cached copy ({copy.version or 'unknown version'}, "
                f"sha256 {copy.sha256[:12]}, {when})"
            )
            return self._result(copy, "fallback", warning)

    def _result(self, copy: _Copy, how: How, warning: str | None = None) -> PulledModel:
        return PulledModel(copy.path, copy.sha256, copy.version, how, self.url, warning)

    # -- the local copy ------------------------------------------------------------------------

    def _verified_copy(self) -> _Copy | None:
        """The copy ``state.json`` names if its bytes still hash to the recorded SHA-256."""
        try:
            state = json.loads(self.state_path.read_text())
            if state.get("url") != self.url:
                return None
            copy = _Copy(
                self.folder / Path(str(state["file"])).name,
                str(state["sha256"]),
                str(state["etag"]),
                None if state.get("version") is None else str(state["version"]),
                None if state.get("checked_at") is None else float(state["checked_at"]),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            logger.warning("%s: unreadable (%s); downloading the model again", self.state_path, exc)
            return None
        try:
            actual = _sha256_of(copy.path)
        except OSError as exc:
            logger.warning("%s: cannot read the cached model (%s)", copy.path, exc)
            return None
        if actual != copy.sha256:
            # Disk corruption or a hand edit: a file we cannot vouch for is never loaded.
            logger.warning(
                "%s: sha256 %s, not the %s it was downloaded with; downloading it again",
                copy.path,
                actual[:12],
                copy.sha256[:12],
            )
            return None
        return copy

    def _save_state(self, copy: _Copy) -> None:
        state = {
            "url": self.url,
            "etag": copy.etag,
            "sha256": copy.sha256,
            "version": copy.version,
            "file": copy.path.name,
            "checked_at": copy.checked_at,
        }
        atomic_write(self.state_path, (json.dumps(state, indent=2) + "\n").encode())

    # -- the server ----------------------------------------------------------------------------

    def _ask(self, copy: _Copy | None, now: float) -> PulledModel:
        headers = {
            "User-Agent": f"promptlabel/{__version__}",
            "Accept": "application/octet-stream",
        }
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        if copy is not None:
            headers["If-None-Match"] = copy.etag
        request = urllib.request.Request(self.url, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return self._download(response, now)
        except urllib.error.HTTPError as error:
            with error:
                if error.code == 304 and copy is not None:
                    checked = _Copy(
                        copy.path,
                        copy.sha256,
                        copy.etag,
                        error.headers.get(VERSION_HEADER) or copy.version,
                        now,
                    )
                    self._save_state(checked)
                    return self._result(checked, "not_modified")
                raise _Unavailable(
                    f"{self.url}: the server answered {error.code} ({_error_detail(error)})"
                ) from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
            reason = getattr(error, "reason", None) or error
            raise _Unavailable(f"{self.url}: cannot reach the server ({reason})") from None

    def _download(self, response: http.client.HTTPResponse, now: float) -> PulledModel:
        expected = _announced_sha256(response)
        if expected is None:
            raise _Unavailable(
                f"{self.url}: the server sent neither an {SHA256_HEADER} header nor an ETag "
                "holding a SHA-256, so the download cannot be verified"
            )
        partial = self.folder / f".download-{uuid.uuid4().hex}.tmp"
        try:
            actual = _write_hashing(response, partial)
            if actual != expected:
                raise _Unavailable(
                    f"{self.url}: the download's sha256 {actual[:12]} is not the "
                    f"{expected[:12]} the server announced (corrupt or cut off); not used"
                )
            destination = self.folder / f"model-{actual[:16]}.onnx"
            os.replace(partial, destination)
        finally:
            partial.unlink(missing_ok=True)
        copy = _Copy(
            destination,
            actual,
            response.headers.get("ETag") or f'"{actual}"',
            response.headers.get(VERSION_HEADER),
            now,
        )
        self._save_state(copy)
        self._remove_others(destination)
        return self._result(copy, "downloaded")

    def _remove_others(self, keep: Path) -> None:
        """Delete earlier copies and partial downloads (we hold the lock: none is in use)."""
        for path in [*self.folder.glob("model-*.onnx"), *self.folder.glob(".download-*.tmp")]:
            if path != keep:
                with contextlib.suppress(OSError):
                    path.unlink()


def _announced_sha256(response: http.client.HTTPResponse) -> str | None:
    """The SHA-256 the server vouches for: ``X-Content-SHA256``, else an ETag that is one."""
    for value in (response.headers.get(SHA256_HEADER), response.headers.get("ETag")):
        if value:
            digest = value.strip().removeprefix("W/").strip('"').lower()
            if _SHA256_PATTERN.match(digest):
                return digest
    return None


def _write_hashing(source: IO[bytes], path: Path) -> str:
    """Copy ``source`` to ``path`` (fsynced) and return the bytes' SHA-256."""
    digest = hashlib.sha256()
    with open(path, "wb") as handle:
        while chunk := source.read(_CHUNK_BYTES):
            digest.update(chunk)
            handle.write(chunk)
        handle.flush()
        os.fsync(handle.fileno())
    return digest.hexdigest()


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _error_detail(error: urllib.error.HTTPError) -> str:
    """The service's ``{"detail": ...}`` message, else the first line of the body or reason."""
    try:
        body = error.read(_ERROR_BODY_BYTES).decode("utf-8", "replace")
    except (OSError, http.client.HTTPException):
        body = ""
    with contextlib.suppress(ValueError, AttributeError):
        detail = json.loads(body).get("detail")
        if isinstance(detail, str):
            return detail
    first_line = body.strip().splitlines()[0][:200] if body.strip() else ""
    return first_line or str(error.reason)
