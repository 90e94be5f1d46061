"""The ``promptlabel`` command: a thin layer over the packages' public functions.

One module per command group: ``label`` (label, demo), ``predict``, ``push``, ``distill`` (train,
eval, models, export) and ``service`` (serve, worker, projects, keys).
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from serve.cli import datasets as cli_datasets
from serve.cli import distill as cli_distill
from serve.cli import label as cli_label
from serve.cli import label_studio as cli_label_studio
from serve.cli import predict as cli_predict
from serve.cli import push as cli_push
from serve.cli import review as cli_review
from serve.cli import service as cli_service
from serve.cli.common import console, fail, results
from serve.cli.extras import missing_module_message

app = typer.Typer(
    name="promptlabel",
    help=(
        "Class prompts in, verified labels and a fast on-device model out: an open-vocabulary "
        "detector proposes boxes, a vision-language model checks them, and a YOLO student "
        "trained on the verified labels is evaluated, registered, exported and served over HTTP."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        from labeler.core.version import __version__

        results.print(f"promptlabel {__version__}", highlight=False, soft_wrap=True)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            is_eager=True,
            callback=_print_version,
            help="Print the version (the one provenance records) and exit.",
        ),
    ] = False,
) -> None:
    """Options of ``promptlabel`` itself (the help text is the app's, above)."""


app.command("label")(cli_label.label)
app.command("demo")(cli_label.demo)
app.command("predict")(cli_predict.predict)
app.command("push")(cli_push.push)
app.command("train")(cli_distill.train_command)
app.command("eval")(cli_distill.eval_command)
app.add_typer(cli_distill.models_app, name="models")
app.add_typer(cli_datasets.datasets_app, name="datasets")
app.command("export")(cli_distill.export_command)
app.command("serve")(cli_service.serve_command)
app.command("worker")(cli_service.worker_command)
app.add_typer(cli_service.projects_app, name="projects")
app.add_typer(cli_service.keys_app, name="keys")
app.add_typer(cli_label_studio.label_studio_app, name="label-studio")
app.command("review")(cli_review.review_command)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        sys.exit(130)
    except ModuleNotFoundError as error:
        # The base install (the device's) lacks the extras the other stages need.
        words = [arg for arg in sys.argv[1:] if not arg.startswith("-")]
        groups = {group.name for group in app.registered_groups}
        command = " ".join(words[:2] if words and words[0] in groups else words[:1])
        fail(missing_module_message(error, command))
        sys.exit(2)
