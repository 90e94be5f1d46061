"""The ``promptlabel`` command: a thin layer over the packages' public functions.

One module per command group: ``label`` (label, demo), ``predict``, ``distill`` (train, eval,
models, export) and ``service`` (serve, worker, projects, keys).
"""

from __future__ import annotations

import sys

import typer

from serve.cli import distill as cli_distill
from serve.cli import label as cli_label
from serve.cli import predict as cli_predict
from serve.cli import service as cli_service
from serve.cli.common import console

app = typer.Typer(
    name="promptlabel",
    help="Class prompts in, verified labels and a training-ready dataset out.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

app.command("label")(cli_label.label)
app.command("demo")(cli_label.demo)
app.command("predict")(cli_predict.predict)
app.command("train")(cli_distill.train_command)
app.command("eval")(cli_distill.eval_command)
app.add_typer(cli_distill.models_app, name="models")
app.command("export")(cli_distill.export_command)
app.command("serve")(cli_service.serve_command)
app.command("worker")(cli_service.worker_command)
app.add_typer(cli_service.projects_app, name="projects")
app.add_typer(cli_service.keys_app, name="keys")


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        sys.exit(130)
