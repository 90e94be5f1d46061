"""``promptlabel push``: send the hard cases in an outbox to the service, then remove them.

Base install only (a device has no httpx): the standard library's ``urllib.request``. Each entry
is removed from the outbox only after the server confirmed it (200 or 201). Before uploading an
entry the command asks the server whether it has that frame from this device already
(``GET .../hard-cases/by-sha256/{sha256}``), so a push resumed after a dropped connection uploads
nothing twice. Connection errors, timeouts and 5xx/429 answers are retried with exponential
backoff; a refused entry (400, 413, 415, 422) stays in the outbox and the others go on; any other
4xx (a bad key, a wrong project) stops the push at once.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from serve.cli.common import console, fail, make_progress, print_json, results

__all__ = ["push"]

API_KEY_VARIABLE = "PROMPTLABEL_API_KEY"
# Answers about one entry only: it stays in the outbox, the other entries go on.
_ENTRY_REFUSED = frozenset({400, 413, 415, 422})
# Answers that may go away by themselves: tried again after a pause.
_TRY_AGAIN = frozenset({408, 429})
_PROJECT_URL = re.compile(r"^(?P<prefix>.*?)/v1/projects/(?P<project>[^/]+)/?$")
_MAX_BACKOFF_S = 30.0


class _Transient(Exception):
    """The server could not be reached, or answered that it cannot serve now."""


class _Stop(Exception):
    """An answer that no other entry would get differently (401, 403, 404 ...)."""


@dataclass
class _Refused(Exception):
    status: int
    detail: str


@dataclass
class PushSummary:
    outbox: str
    created: int = 0  # new hard cases on the server
    merged: int = 0  # frames the server had from another device: this one's name was added
    already_on_server: int = 0  # frames the server had from this device: removed, not re-sent
    refused: list[dict[str, Any]] = field(default_factory=list)
    left: int = 0  # entries still in the outbox
    error: str | None = None  # why the push stopped early

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _detail(error: urllib.error.HTTPError) -> str:
    """The ``detail`` of the service's JSON error body, or the body's first line."""
    try:
        body = error.read(4096).decode("utf-8", "replace")
    except (OSError, http.client.HTTPException):
        body = ""
    try:
        detail = json.loads(body)["detail"]
    except (ValueError, KeyError, TypeError):
        detail = body.strip().splitlines()[0] if body.strip() else (error.reason or "")
    return detail if isinstance(detail, str) else json.dumps(detail)[:500]


def _multipart(fields: list[tuple[str, str | None, str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body of (name, file name or None, content type, bytes) fields, and
    its Content-Type."""
    boundary = f"promptlabel-{secrets.token_hex(16)}"
    parts = []
    for name, filename, content_type, data in fields:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            # Outbox names are digits, hex and a suffix; anything else is made harmless.
            safe = re.sub(r'["\r\n\\]', "_", filename)
            disposition += f'; filename="{safe}"'
        head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
        head += f"Content-Type: {content_type}\r\n\r\n"
        parts.append(head.encode() + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


class _Service:
    """The service's hard-case routes of one project, over one urllib opener."""

    def __init__(self, project_url: str, api_key: str, *, timeout_s: float) -> None:
        self.project_url = project_url
        self._headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
        self._timeout_s = timeout_s
        self._opener = urllib.request.build_opener()

    def _call(
        self, method: str, path: str, *, body: bytes | None = None, headers: dict[str, str]
    ) -> tuple[int, Any]:
        request = urllib.request.Request(
            self.project_url + path,
            data=body,
            method=method,
            headers={**self._headers, **headers},
        )
        try:
            with self._opener.open(request, timeout=self._timeout_s) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            status = error.code
            detail = _detail(error)
            if status >= 500 or status in _TRY_AGAIN:
                raise _Transient(f"{status} {detail}") from None
            raise _Refused(status, detail) from None
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as error:
            # URLError: refused, unreachable, DNS; HTTPException: the connection dropped
            # mid-answer; OSError: resets and timeouts; ValueError: a reply cut short.
            reason = getattr(error, "reason", None) or error
            raise _Transient(f"{type(error).__name__}: {reason}") from None

    def has_from_device(self, sha256: str, device: str | None) -> bool:
        """Whether the server has this frame as a hard case sent by ``device`` already."""
        try:
            _, case = self._call("GET", f"/hard-cases/by-sha256/{sha256}", headers={})
        except _Refused as refused:
            if refused.status == 404 and refused.detail.startswith("no hard case"):
                return False
            raise
        return device is not None and device in case.get("devices", [])

    def upload(self, frame: bytes, frame_name: str, manifest: dict[str, Any]) -> bool:
        """Send one entry; True if it made a new hard case (201), False if merged (200)."""
        body, content_type = _multipart(
            [
                ("manifest", None, "application/json", json.dumps(manifest).encode()),
                ("file", frame_name, "application/octet-stream", frame),
            ]
        )
        headers = {"Content-Type": content_type, "X-Content-SHA256": str(manifest["sha256"])}
        status, _ = self._call("POST", "/hard-cases", body=body, headers=headers)
        return status == 201


def _project_url(url: str, project: str | None) -> str:
    """``http(s)://host[:port][/prefix]/v1/projects/PROJECT``, from --url and --project."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise fail(f"--url {url!r}: expected http(s)://host[:port], e.g. http://server:8000")
    path = parts.path.rstrip("/")
    named = _PROJECT_URL.match(path)
    if named is not None:
        if project is not None and project != named["project"]:
            raise fail(f"--project {project!r} differs from the project in --url {url!r}")
        return url.rstrip("/")
    if project is None:
        raise fail(
            "no project: give --project PROJECT_ID or a --url ending in /v1/projects/PROJECT_ID"
        )
    return f"{parts.scheme}://{parts.netloc}{path}/v1/projects/{urllib.parse.quote(project)}"


def _pending(root: Path) -> list[Any]:
    """The outbox's complete entries, oldest first (read without touching partial writes)."""
    from serve.runtime.outbox import read_entries

    return list(read_entries(root))


def _with_retries(
    attempt: Any, *, what: str, retries: int, backoff_s: float
) -> Any:  # the attempt's result
    for tried in range(retries + 1):
        try:
            return attempt()
        except _Transient as error:
            if tried == retries:
                raise
            wait_s = min(backoff_s * 2**tried, _MAX_BACKOFF_S)
            console.print(
                f"[yellow]retrying[/] {escape(what)} in {wait_s:.1f} s ({escape(str(error))})",
                highlight=False,
            )
            time.sleep(wait_s)
    raise AssertionError("unreachable")  # pragma: no cover


def push(
    outbox: Annotated[
        Path, typer.Argument(help="The outbox folder that `predict --collect` filled.")
    ],
    url: Annotated[
        str,
        typer.Option(
            help="The service: http://host:8000 with --project, or the project's own URL, "
            "http://host:8000/v1/projects/PROJECT_ID."
        ),
    ],
    project: Annotated[
        str | None, typer.Option(help="The project's id (when --url does not name it).")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary as JSON on stdout.")
    ] = False,
    retries: Annotated[
        int, typer.Option(min=0, help="Tries again per entry after a connection error or 5xx.")
    ] = 5,
    backoff: Annotated[
        float,
        typer.Option(min=0.0, help="Seconds before the first retry; doubled each time (to 30)."),
    ] = 1.0,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds to wait for an answer.")] = 60.0,
) -> None:
    """Send the hard cases in OUTBOX to the service; each is removed once the server has it.

    The API key comes from $PROMPTLABEL_API_KEY (a labeler key of the project). Safe to run
    again after an interruption: frames the server has from this device already are removed
    without being sent again. Progress goes to stderr, the summary to stdout (--json for
    scripts). Exit code 0 when the outbox was emptied, 1 when entries are left (refused, or the
    server could not be reached), 2 for a usage error.
    """
    api_key = os.environ.get(API_KEY_VARIABLE, "").strip()
    if not api_key:
        raise fail(f"{API_KEY_VARIABLE} is not set: export a labeler key of the project")
    project_url = _project_url(url, project)
    if not outbox.is_dir():
        raise fail(f"outbox {outbox} is not a folder (fill one with `predict --collect`)")
    entries = _pending(outbox)
    service = _Service(project_url, api_key, timeout_s=timeout)
    summary = PushSummary(outbox=str(outbox))
    with make_progress() as progress:
        task = progress.add_task("Pushing", total=len(entries))
        for entry in entries:
            device = entry.manifest.get("device")

            def send(entry: Any = entry, device: Any = device) -> str:
                # Asked on every try: after a dropped connection the server may have it.
                if service.has_from_device(entry.sha256, device):
                    return "already_on_server"
                created = service.upload(entry.frame.read_bytes(), entry.frame.name, entry.manifest)
                return "created" if created else "merged"

            try:
                outcome = _with_retries(
                    send, what=entry.frame.name, retries=retries, backoff_s=backoff
                )
            except _Transient as error:
                summary.error = f"could not reach {project_url} after {retries + 1} tries: {error}"
                break
            except _Refused as refused:
                if refused.status not in _ENTRY_REFUSED:
                    summary.error = (
                        f"the server refused the push: {refused.status} {refused.detail}"
                    )
                    break
                summary.refused.append(
                    {"frame": entry.frame.name, "status": refused.status, "detail": refused.detail}
                )
                console.print(
                    f"[yellow]refused[/] {escape(entry.frame.name)}: {refused.status} "
                    f"{escape(refused.detail)} (kept in the outbox)",
                    highlight=False,
                )
                progress.advance(task)
                continue
            entry.remove()  # only now: the server has it
            setattr(summary, outcome, getattr(summary, outcome) + 1)
            progress.advance(task)
    summary.left = len(_pending(outbox))
    if as_json:
        print_json(summary.as_dict())
    else:
        results.print(
            f"{summary.created} new, {summary.merged} merged, {summary.already_on_server} "
            f"already on the server, {len(summary.refused)} refused; {summary.left} left in "
            f"{escape(str(outbox))}",
            highlight=False,
            soft_wrap=True,
        )
    if summary.error is not None:
        raise fail(f"{summary.error}; run push again to send the rest", code=1)
    if summary.refused:
        raise typer.Exit(code=1)
