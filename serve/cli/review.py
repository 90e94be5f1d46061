"""``promptlabel review DATASET_DIR``: review a labeled dataset in the browser, on this machine
(``serve.api.local_review``: the service's review page and API over the dataset's workspace)."""

from __future__ import annotations

import getpass
import os
import socket
import sys
import threading
import time
import webbrowser
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from labeler.core.exceptions import PromptlabelError
from serve.cli.common import console, fail, settings_or_exit, setup_logging

if TYPE_CHECKING:
    import uvicorn

__all__ = ["DEFAULT_REVIEW_PORT", "review_command"]

DEFAULT_REVIEW_PORT = 8765
LOOPBACK = "127.0.0.1"


def _user_name() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in the environment nor the password database
        return "local"


def _browser_available() -> bool:
    """Whether a graphical browser can open: Python's own fallback without a display is a
    text browser that would take over this terminal while the server logs to it."""
    if os.environ.get("BROWSER"):
        return True
    if sys.platform.startswith(("linux", "freebsd", "openbsd", "netbsd")):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def _listen(port: int) -> socket.socket:
    """A socket bound to 127.0.0.1:``port`` (0: any free port), or one line and exit 2."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((LOOPBACK, port))
        # Listening now: a browser that comes before the server has started waits in the
        # backlog instead of being refused.
        sock.listen(128)
    except OSError as error:
        sock.close()
        raise fail(
            f"{LOOPBACK}:{port}: cannot listen ({error.strerror or error}); choose another "
            "--port, or --port 0 for any free one"
        ) from None
    return sock


def _open_browser_when_ready(server: uvicorn.Server, url: str) -> None:
    while not server.started and not server.should_exit:
        time.sleep(0.05)
    if not server.started:
        return
    try:
        opened = webbrowser.open(url)
    except webbrowser.Error:
        opened = False
    if not opened:
        console.print(f"no web browser opened: open {url}", markup=False, soft_wrap=True)


def review_command(
    dataset_dir: Annotated[
        Path, typer.Argument(help="The dataset folder `promptlabel label --out` wrote.")
    ],
    port: Annotated[
        int,
        typer.Option(min=0, max=65535, help="Port on 127.0.0.1 to serve on (0: any free one)."),
    ] = DEFAULT_REVIEW_PORT,
    reviewer: Annotated[
        str | None,
        typer.Option(help="The name each decision records (default: your user name)."),
    ] = None,
    workspace: Annotated[
        Path | None, typer.Option(help="Workspace folder (default: DATASET_DIR/.promptlabel).")
    ] = None,
    browser: Annotated[
        bool, typer.Option("--browser/--no-browser", help="Open the page in a web browser.")
    ] = True,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log more.")] = False,
) -> None:
    """Review DATASET_DIR's labels in the browser: serve the review page on 127.0.0.1, print
    its URL and open it. Each decision is saved as it is made; the page's export (or a rerun of
    `promptlabel label`) writes them into the dataset. Ctrl-C stops."""
    from serve.settings import get_service_settings

    settings = settings_or_exit(get_service_settings)
    setup_logging(verbose)
    import uvicorn

    from serve.api.local_review import create_local_review_app

    name = reviewer if reviewer is not None else _user_name()
    try:
        app = create_local_review_app(
            dataset_dir, reviewer=name, workspace_dir=workspace, settings=settings
        )
    except PromptlabelError as error:
        raise fail(str(error)) from None
    sock = _listen(port)
    url = f"http://{LOOPBACK}:{sock.getsockname()[1]}/review/"
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on"))
    target = app.state.review_target
    console.print(
        f"reviewing {escape(str(target.dataset_dir))} as {escape(name)}; Ctrl-C stops",
        highlight=False,
        soft_wrap=True,
    )
    if target.reexport_problem is not None:
        console.print(
            f"[yellow]warning:[/] {escape(target.reexport_problem)}",
            highlight=False,
            soft_wrap=True,
        )
    # The result, on stdout: scripts and tests read the URL from there.
    typer.echo(url)
    sys.stdout.flush()
    if browser and _browser_available():
        threading.Thread(
            target=_open_browser_when_ready, args=(server, url), name="browser", daemon=True
        ).start()
    elif browser:
        console.print(f"no web browser here: open {url}", markup=False, soft_wrap=True)
    with sock:
        server.run(sockets=[sock])
