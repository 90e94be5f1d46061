"""What every CLI command shares: the console, progress bars, logging and one-line errors."""

from __future__ import annotations

import logging
import os
import sys

import typer
from pydantic import ValidationError
from pydantic_settings import SettingsError
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from labeler.settings import Settings, get_settings

__all__ = [
    "RichProgressSink",
    "console",
    "fail",
    "make_progress",
    "settings_or_exit",
    "setup_logging",
]

console = Console(stderr=True)

STAGE_TITLES = {
    "scan": "Scanning images",
    "propose": "Proposing boxes",
    "verify": "Verifying boxes",
    "export": "Exporting dataset",
}


class RichProgressSink:
    """Draws one rich bar per pipeline stage."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._tasks: dict[str, TaskID] = {}

    def start(self, stage: str, total: int) -> None:
        self._tasks[stage] = self._progress.add_task(STAGE_TITLES.get(stage, stage), total=total)

    def advance(self, stage: str, amount: int = 1) -> None:
        self._progress.advance(self._tasks[stage], amount)


def make_progress() -> Progress:
    # Transient: bars vanish when done, so an error or the summary is what stays on screen.
    return Progress(
        TextColumn("{task.description:<18}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


def setup_logging(verbose: bool) -> None:
    if not verbose:
        # Our rich bars are the UI; huggingface_hub and transformers read this when first imported.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, show_time=False)],
        force=True,
    )


def settings_or_exit() -> Settings:
    """The process's settings, or one line naming what is wrong in the environment and exit 2
    (not a traceback of pydantic's)."""
    try:
        return get_settings()
    except ValidationError as error:
        problems = "; ".join(
            f"PROMPTLABEL_{'_'.join(map(str, problem['loc'])).upper()}: {problem['msg']}"
            for problem in error.errors()[:3]
        )
    except SettingsError as error:  # a value that is not valid JSON for a list or dict field
        problems = f"{error}; check the PROMPTLABEL_* variable's JSON"
    console.print(f"[bold red]error:[/] {problems}", highlight=False, soft_wrap=True)
    sys.exit(2)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one error line; raise the returned Exit."""
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code=code)
