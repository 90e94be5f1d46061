"""What every CLI command shares: the consoles, progress bars, logging and one-line errors.

A command's result (a table, JSON, a version) goes to stdout through ``results`` or
``print_json``, so that ``promptlabel models list | grep v3`` and ``... --json | jq`` work;
progress, logs and diagnostics go to stderr through ``console``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsError
from rich.console import Console, ConsoleDimensions
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = [
    "JsonOption",
    "RichProgressSink",
    "console",
    "env_default",
    "fail",
    "given",
    "make_progress",
    "print_json",
    "results",
    "settings_or_exit",
    "setup_logging",
]

_Settings = TypeVar("_Settings", bound=BaseSettings)

console = Console(stderr=True)

# Every command that lists or reports takes it (CONVENTIONS: the command line).
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print the result as JSON on stdout instead of a table.")
]

# How wide a result may be drawn into a pipe or a file: rich's 80 columns squeeze the columns of
# `models list` to nothing there, which defeats `| grep`.
PIPE_WIDTH = 240


class ResultsConsole(Console):
    """The console for results, on stdout. In a terminal it is as wide as the terminal; into a
    pipe or a file (no colour codes then) tables are as wide as their rows, up to ``PIPE_WIDTH``,
    unless ``COLUMNS`` says otherwise."""

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        if self.is_terminal or os.environ.get("COLUMNS", "").isdigit():
            return size
        return ConsoleDimensions(max(size.width, PIPE_WIDTH), size.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)  # type: ignore[attr-defined]


results = ResultsConsole()

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


def settings_or_exit(read: Callable[[], _Settings]) -> _Settings:
    """The settings ``read`` returns (``get_label_settings``, ``get_service_settings`` ...), or
    one line naming what is wrong in the environment and exit 2 (not a traceback of
    pydantic's). Commands call it when they run: a bad variable never breaks ``--help``."""
    try:
        return read()
    except ValidationError as error:
        problems = "; ".join(
            f"PROMPTLABEL_{str(problem['loc'][0]).upper()}: "
            + str(problem["msg"]).removeprefix("Value error, ")
            for problem in error.errors()[:3]
        )
    except SettingsError as error:  # a value that is not valid JSON for a list or dict field
        problems = f"{error}; check the PROMPTLABEL_* variable's JSON"
    console.print(f"[bold red]error:[/] {escape(problems)}", highlight=False, soft_wrap=True)
    sys.exit(2)


def env_default(settings: type[BaseSettings], name: str) -> str:
    """What an option's help shows as its default: ``$PROMPTLABEL_NAME or VALUE``, VALUE being
    the settings class's own default (the environment is not read here)."""
    variable = f"${settings.model_config.get('env_prefix', '')}{name.upper()}"
    default = settings.model_fields[name].get_default(call_default_factory=True)
    return variable if default is None else f"{variable} or {default}"


def given(**options: Any) -> dict[str, Any]:
    """The options given on the command line (those not None), as a settings update."""
    return {name: value for name, value in options.items() if value is not None}


def print_json(payload: Any) -> None:
    """``payload`` as indented JSON on stdout, as ``--json`` promises: plain text (no colour,
    no wrapping), paths and other non-JSON values as strings."""
    typer.echo(json.dumps(payload, indent=2, default=str))


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one error line; raise the returned Exit. The message is text, never markup: it may
    quote file names and extras such as ``promptlabel[label]``."""
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code=code)
