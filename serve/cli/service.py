"""``promptlabel serve``, ``worker``, ``projects`` and ``keys``: run and administer the service."""

from __future__ import annotations

import logging
import signal
import threading
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from labeler.core.exceptions import PromptlabelError
from serve.cli.common import (
    JsonOption,
    console,
    env_default,
    fail,
    print_json,
    results,
    settings_or_exit,
)
from serve.settings import ServiceSettings, get_service_settings

__all__ = ["keys_app", "projects_app", "serve_command", "worker_command"]

projects_app = typer.Typer(help="Create and list projects.", no_args_is_help=True)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)


class LogFormat(StrEnum):
    json = "json"
    text = "text"


class KeyRole(StrEnum):
    # serve.api.auth.Role's values, here so that --help lists them without importing the service.
    admin = "admin"
    labeler = "labeler"
    reviewer = "reviewer"


LogFormatOption = Annotated[LogFormat, typer.Option(help="One JSON object per line, or text.")]

DataDirOption = Annotated[
    Path | None,
    typer.Option(
        help="Service data folder.", show_default=env_default(ServiceSettings, "data_dir")
    ),
]


def _settings(data_dir: Path | None) -> ServiceSettings:
    settings = settings_or_exit(get_service_settings)
    return settings.model_copy(update={"data_dir": data_dir}) if data_dir else settings


def _database(settings: ServiceSettings, *, existing: bool = False):  # type: ignore[no-untyped-def]
    """The service's database; with ``existing``, a SQLite one must be there already, so that a
    command run in the wrong folder says so instead of making an empty database there."""
    from serve.db import Database, sqlite_path

    if existing and settings.database_url is None:
        path = sqlite_path(settings.data_dir)
        if not path.is_file():
            raise fail(
                f"no service database in {settings.data_dir.resolve()} ({path.name} is not "
                "there): pass --data-dir or set PROMPTLABEL_DATA_DIR to the folder `promptlabel "
                "serve` uses (`promptlabel projects create` starts a new one)"
            )
    db = Database(settings.database_url, data_dir=settings.data_dir)
    db.create_schema()
    return db


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%d %H:%M")


def _iso(seconds: float | None) -> str | None:
    """A timestamp as --json prints it: ISO 8601 in UTC, to the second (None stays None)."""
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat(timespec="seconds")


def serve_command(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[
        int,
        typer.Option(
            min=0, help="Job workers inside this process (0: only `promptlabel worker`s)."
        ),
    ] = 1,
    data_dir: DataDirOption = None,
    log_format: LogFormatOption = LogFormat.json,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the HTTP API (docs at /docs) with in-process workers."""
    import uvicorn

    from serve.api.app import create_app
    from serve.telemetry import configure_logging

    configure_logging(
        level=logging.DEBUG if verbose else logging.INFO, json_format=log_format == LogFormat.json
    )
    settings = _settings(data_dir)
    try:
        app = create_app(settings, workers=workers)
    except PromptlabelError as error:
        raise fail(str(error)) from None
    logging.getLogger(__name__).info(
        "serving on http://%s:%d (docs at /docs), %d in-process workers, database %r",
        host,
        port,
        workers,
        app.state.db,
    )
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        timeout_keep_alive=settings.http_keep_alive_s,
    )


def worker_command(
    threads: Annotated[int, typer.Option(min=1, help="Jobs to run at once in this process.")] = 1,
    data_dir: DataDirOption = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve Prometheus metrics on this port.")
    ] = None,
    log_format: LogFormatOption = LogFormat.json,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run jobs from the queue until SIGTERM or Ctrl-C (the running job is given back)."""
    from serve.jobs.worker import ModelCache, Worker
    from serve.telemetry import configure_logging

    configure_logging(
        level=logging.DEBUG if verbose else logging.INFO, json_format=log_format == LogFormat.json
    )
    settings = _settings(data_dir)
    try:
        settings.check_verifier_keys()
        db = _database(settings)
    except PromptlabelError as error:
        raise fail(str(error)) from None
    # A worker pointed at the wrong folder would wait on an empty queue: say which it uses.
    logging.getLogger(__name__).info(
        "worker: %d job thread(s), database %r, data folder %s",
        threads,
        db,
        settings.data_dir.resolve(),
    )
    if metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(metrics_port)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    models = ModelCache()
    runners = [
        threading.Thread(
            target=Worker(db=db, settings=settings, models=models).run,
            args=(stop,),
            name=f"worker-{i}",
        )
        for i in range(threads)
    ]
    for runner in runners:
        runner.start()
    while any(runner.is_alive() for runner in runners):
        stop.wait(0.5)
        for runner in runners:
            runner.join(timeout=0.1)


@projects_app.command("create")
def projects_create(
    name: Annotated[str, typer.Argument(help="A unique project name.")],
    ontology: Annotated[
        Path | None, typer.Option(help="An ontology YAML file (or PUT it over the API later).")
    ] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Create a project; print its id."""
    from labeler.ontology import load_ontology
    from serve.api.auth import create_project

    try:
        loaded = load_ontology(ontology) if ontology else None
        project_id = create_project(_database(_settings(data_dir)), name=name, ontology=loaded)
    except PromptlabelError as error:
        raise fail(str(error)) from None
    typer.echo(project_id)


@projects_app.command("set-ontology")
def projects_set_ontology(
    name: Annotated[str, typer.Argument(help="The project's name.")],
    ontology: Annotated[Path, typer.Argument(help="An ontology YAML file.")],
    data_dir: DataDirOption = None,
) -> None:
    """Replace a project's ontology (as PUT /ontology does); submitted jobs keep theirs."""
    from labeler.ontology import load_ontology
    from serve.api.auth import get_project_by_name, set_project_ontology

    try:
        loaded = load_ontology(ontology)
        db = _database(_settings(data_dir), existing=True)
        set_project_ontology(db, get_project_by_name(db, name), loaded)
    except PromptlabelError as error:
        raise fail(str(error)) from None
    names = ", ".join(c.name for c in loaded.classes)
    console.print(f"project {name}: {len(loaded.classes)} classes ({names})", highlight=False)


@projects_app.command("list")
def projects_list(data_dir: DataDirOption = None, as_json: JsonOption = False) -> None:
    """List projects (--json: with their class names)."""
    import sqlalchemy as sa

    from serve.db import projects

    with _database(_settings(data_dir), existing=True).read() as connection:
        rows = connection.execute(sa.select(projects).order_by(projects.c.created_at)).all()
    if as_json:
        print_json(
            [
                {
                    "id": row.id,
                    "name": row.name,
                    "classes": [c["name"] for c in row.ontology.get("classes", [])],
                    "created_at": _iso(row.created_at),
                }
                for row in rows
            ]
        )
        return
    table = Table("id", "name", "classes", "created")
    for row in rows:
        table.add_row(
            row.id, row.name, str(len(row.ontology.get("classes", []))), _when(row.created_at)
        )
    results.print(table)


@keys_app.command("create")
def keys_create(
    project: Annotated[str, typer.Option(help="The project name the key may use.")],
    name: Annotated[str, typer.Option(help="What the key is for (shown in `keys list`).")] = "",
    role: Annotated[
        KeyRole,
        typer.Option(
            help="labeler: upload, label, review, train, promote, predict; reviewer: review "
            "only; admin: everything."
        ),
    ] = KeyRole.labeler,
    data_dir: DataDirOption = None,
) -> None:
    """Create an API key for PROJECT and print it once (only its hash is stored)."""
    from serve.api.auth import create_api_key, get_project_by_name

    try:
        db = _database(_settings(data_dir), existing=True)
        created = create_api_key(
            db, project_id=get_project_by_name(db, project), name=name, role=role.value
        )
    except PromptlabelError as error:
        raise fail(str(error)) from None
    console.print(
        f"{created.role.value} key {created.key_id} for project {project} "
        f"({created.project_id}); store it now, it is not shown again:",
        highlight=False,
    )
    typer.echo(created.token)


@keys_app.command("list")
def keys_list(data_dir: DataDirOption = None, as_json: JsonOption = False) -> None:
    """List API keys (ids only; secrets are never stored)."""
    from serve.api.auth import list_api_keys

    keys = list_api_keys(_database(_settings(data_dir), existing=True))
    if as_json:
        # Field by field, so that nothing added to ApiKey later is printed unseen.
        print_json(
            [
                {
                    "key_id": key.key_id,
                    "project_id": key.project_id,
                    "project": key.project_name,
                    "name": key.name,
                    "role": key.role.value,
                    "created_at": _iso(key.created_at),
                    "revoked_at": _iso(key.revoked_at),
                }
                for key in keys
            ]
        )
        return
    table = Table("key id", "project", "name", "role", "created", "revoked")
    for key in keys:
        table.add_row(
            key.key_id,
            key.project_name,
            key.name,
            key.role.value,
            _when(key.created_at),
            _when(key.revoked_at),
        )
    results.print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key id (or the whole key).")],
    data_dir: DataDirOption = None,
) -> None:
    """Revoke an API key; requests with it are refused from now on."""
    from serve.api.auth import revoke_api_key

    try:
        revoked = revoke_api_key(_database(_settings(data_dir), existing=True), key_id)
    except PromptlabelError as error:
        raise fail(str(error)) from None
    console.print(f"revoked {revoked}", highlight=False)  # the id, never the secret
