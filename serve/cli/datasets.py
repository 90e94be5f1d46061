"""``promptlabel datasets``: dataset versions (``distill.dataset_versions``) in a workspace."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from distill.dataset_versions import DatasetVersion, DatasetVersions, VersionSource
from labeler.core.exceptions import PromptlabelError
from serve.cli.common import JsonOption, console, fail, print_json, results
from serve.cli.distill import WorkspaceOption, default_workspace

__all__ = ["datasets_app"]

datasets_app = typer.Typer(
    help="Dataset versions: build one from labeled datasets, list, show.", no_args_is_help=True
)


def _store(workspace: Path | None) -> DatasetVersions:
    return DatasetVersions(default_workspace(workspace) / "datasets")


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{split} {n}" for split, n in counts.items()) or "-"


def _row(version: DatasetVersion) -> list[str]:
    return [
        version.version,
        version.parent or "-",
        version.task,
        _counts(version.splits),
        _counts(version.added),
        str(version.relabeled),
        ", ".join(source["name"] for source in version.sources) or "-",
        version.content_hash[:12],
        version.created_at,
    ]


def _table(versions: list[DatasetVersion]) -> Table:
    table = Table(header_style="bold")
    for column in ("version", "parent", "task", "images", "new", "relabeled", "sources", "hash"):
        table.add_column(column, no_wrap=column != "sources")
    table.add_column("created", no_wrap=True)
    for version in versions:
        table.add_row(*(escape(cell) for cell in _row(version)))
    return table


@datasets_app.command("build")
def datasets_build(
    dataset_dirs: Annotated[
        list[Path], typer.Argument(help="Labeled dataset folders (promptlabel label --out).")
    ],
    parent: Annotated[
        str,
        typer.Option(help="The version to build on: latest, a version such as d2, or none."),
    ] = "latest",
    hard_cases: Annotated[
        Path | None,
        typer.Option(
            help="A file of hard-case image SHA-256s, one per line: those in val become the "
            "hard_cases split."
        ),
    ] = None,
    workspace: WorkspaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Build a version: the parent's images and labels, then each folder's in order (a later
    folder's labels win); val only grows. Prints the version (an existing one when nothing
    changed)."""
    store = _store(workspace)
    try:
        wanted = (
            [line.strip() for line in hard_cases.read_text().splitlines() if line.strip()]
            if hard_cases is not None
            else []
        )
    except OSError as error:
        raise fail(f"--hard-cases {hard_cases}: {error.strerror or error}") from None
    sources = [VersionSource(path.name, path) for path in dataset_dirs]
    try:
        version, created = store.create(
            sources, parent=None if parent == "none" else parent, hard_cases=wanted
        )
    except PromptlabelError as error:
        raise fail(str(error)) from None
    if as_json:
        print_json(version.as_dict() | {"created": created})
        return
    results.print(_table([version]))
    what = "built" if created else "unchanged: the same content is"
    console.print(f"{what} {version.version} in {escape(str(store.root))}", highlight=False)
    console.print(f"next: promptlabel train {escape(str(version.path))}", highlight=False)


@datasets_app.command("list")
def datasets_list(workspace: WorkspaceOption = None, as_json: JsonOption = False) -> None:
    """Every version, oldest first: images per split, what is new, where it came from."""
    try:
        versions = _store(workspace).list()
    except PromptlabelError as error:
        raise fail(str(error)) from None
    if as_json:
        print_json([version.as_dict() for version in versions])
        return
    results.print(_table(versions))


@datasets_app.command("show")
def datasets_show(
    version: Annotated[str, typer.Argument(help="A version such as d2, or latest.")],
    workspace: WorkspaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """One version: lineage, counts per split, classes and its data.yaml."""
    try:
        found = _store(workspace).get(version)
    except PromptlabelError as error:
        raise fail(str(error)) from None
    if as_json:
        print_json(found.as_dict())
        return
    lines = [
        f"[bold]{found.version}[/] ({found.task}), parent {found.parent or '-'}, "
        f"{found.created_at}",
        f"data.yaml: {escape(str(found.data_yaml))}",
        f"content hash: {found.content_hash}",
        f"classes: {escape(', '.join(found.names))}",
        f"images: {_counts(found.splits)}; instances: {_counts(found.instances)}",
        f"new here: {_counts(found.added)}; relabeled: {found.relabeled}",
    ]
    lines += [
        f"source {escape(source['name'])}: {escape(str(source.get('dataset_dir', '')))}"
        for source in found.sources
    ]
    for line in lines:
        results.print(line, highlight=False)
