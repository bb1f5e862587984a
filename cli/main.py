"""The ``topiary`` command.

Operator commands live here (``serve``, ``worker``, ``migrate``, ``keys create|revoke``,
``demo``, ``latency-agent``); the user commands that talk to a server (``submit``,
``status``, ``trials``, ``download``, ``cancel``) live in ``cli.jobs``. This module stays importable
without torch: ``worker`` execs the worker program and ``demo`` imports what needs it
inside the command.

``print`` (through rich) lives only in the CLI modules; everything else logs.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated, Literal

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from sqlalchemy import Engine

from cli import jobs as cli_jobs
from service.config import Settings, get_settings, settings_problems
from service.errors import ConfigurationError, DatabaseError, NotFoundError
from service.logs import configure_logging

app = typer.Typer(help="Topiary: prune PyTorch CNNs to a latency and memory budget.",
                  no_args_is_help=True)
keys_app = typer.Typer(help="Create and revoke API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)
logger = logging.getLogger("cli.main")


def _settings() -> Settings:
    """The settings from the environment; when one is wrong, a line naming its variable
    and exit status 2 (not pydantic's traceback)."""
    try:
        return get_settings()
    except ValidationError as error:
        errors.print(f"[red]bad settings:[/red] {escape(settings_problems(error))}",
                     highlight=False)
        raise typer.Exit(code=2) from None


def _migrated(settings: Settings) -> None:
    """Migrate our database; when it cannot be reached or refuses, a line saying so and
    exit status 2 (the URL shown without its password)."""
    from service.db import migrate

    try:
        migrate(settings.database_url)
    except DatabaseError as error:
        errors.print(f"[red]cannot use the database:[/red] {escape(str(error))}; check that "
                     "it runs and that TOPIARY_DATABASE_URL names it", highlight=False)
        raise typer.Exit(code=2) from None


@app.command()
def serve(host: Annotated[str | None, typer.Option(help="bind address (TOPIARY_HOST)")] = None,
          port: Annotated[int | None, typer.Option(help="port (TOPIARY_PORT)")] = None,
          processes: Annotated[int | None, typer.Option(
              min=1, max=64, show_default=False,
              help="API processes, e.g. one per core (TOPIARY_API_PROCESSES, default 1; "
                   "more than one needs PostgreSQL)")] = None) -> None:
    """Migrate the database, then serve the REST API with uvicorn."""
    import uvicorn

    from service.api.app import create_app
    from service.api.metrics import MULTIPROCESS_DIR_VARIABLE, fresh_metrics_dir
    from service.api.server import uvicorn_options

    settings = _settings()
    updates = {key: value for key, value in {"host": host, "port": port,
                                             "api_processes": processes}.items()
               if value is not None}
    settings = settings.model_copy(update=updates)
    try:
        settings.check_auth_binding()
        settings.check_api_processes()
    except ConfigurationError as error:
        errors.print(f"[red]refusing to start:[/red] {error}")
        raise typer.Exit(code=2) from error
    configure_logging(settings.log_level)
    os.umask(0o077)  # the database, uploads and logs it creates are its user's alone
    settings.ensure_directories()
    _migrated(settings)
    logger.info("serving", extra={"host": settings.host, "port": settings.port,
                                  "auth": settings.auth, "processes": settings.api_processes})
    if settings.api_processes == 1:
        uvicorn.run(create_app(settings), **uvicorn_options(settings))
        return
    # Each process builds its own app from the environment: hand it this command's options.
    os.environ.update({"TOPIARY_HOST": settings.host, "TOPIARY_PORT": str(settings.port),
                       "TOPIARY_API_PROCESSES": str(settings.api_processes),
                       MULTIPROCESS_DIR_VARIABLE: str(fresh_metrics_dir(settings.home))})
    uvicorn.run("service.api.app:create_app_from_environment", factory=True,
                workers=settings.api_processes, **uvicorn_options(settings))


@app.command()
def worker(device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
           threads: Annotated[int | None, typer.Option(
               min=1, show_default=False, help="torch intra-op threads (default: torch's)")]
           = None,
           exit_when_idle: Annotated[bool, typer.Option(
               help="stop when no job is left instead of waiting for more")] = False) -> None:
    """Run a worker: claim jobs from the database (TOPIARY_DATABASE_URL) and run them."""
    # The worker is its own program (`python -m workers`, also installed as
    # `topiary-worker`): exec it so that signals reach it and the CLI stays torch-free.
    arguments = [sys.executable, "-m", "workers", "--device", device]
    if threads is not None:
        arguments += ["--threads", str(threads)]
    if exit_when_idle:
        arguments.append("--exit-when-idle")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, arguments)


@app.command()
def migrate() -> None:
    """Create or upgrade our tables (TOPIARY_DATABASE_URL); safe to run again."""
    settings = _settings()
    configure_logging(settings.log_level)
    _migrated(settings)
    console.print("database migrated", highlight=False)


@app.command("latency-agent", add_help_option=False,
             context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def latency_agent(context: typer.Context) -> None:
    """Time ONNX models for the workers on this device (ONNX Runtime or OpenVINO, no torch);
    the secret comes from TOPIARY_LATENCY_AGENT_SECRET. Options: --help."""
    from cli.latency_agent import main as agent_main

    raise typer.Exit(code=agent_main(context.args))


for command in cli_jobs.COMMANDS:
    app.command()(command)


@app.command()
def demo(n_trials: Annotated[int, typer.Option(min=1, help="search budget")] = 12,
         trial_epochs: Annotated[int, typer.Option(min=0, help="fine-tune epochs per trial")] = 1,
         final_epochs: Annotated[int, typer.Option(min=0, help="fine-tune of the winner")] = 5,
         baseline_epochs: Annotated[int, typer.Option(min=1, help="baseline training")] = 8,
         threads: Annotated[int | None, typer.Option(
             min=1, show_default=False, help="the worker's torch threads")] = None,
         device: Annotated[Literal["cpu", "auto"], typer.Option(
             help="the worker's device")] = "cpu",
         max_latency_ratio: Annotated[float, typer.Option(
             min=0.01, max=1.0, help="the constraint: pruned latency / baseline latency")] = 0.5,
         latency_runs: Annotated[int, typer.Option(min=3, hidden=True)] = 30) -> None:
    """Run the embedded demo end to end: API + one worker on SQLite under TOPIARY_HOME.

    Prunes a ResNet-20 on the built-in digits to half its CPU latency and FLOPs, then
    downloads, reloads and re-measures the result.
    """
    from cli.demo import DemoOptions, run_demo

    options = DemoOptions(n_trials=n_trials, trial_epochs=trial_epochs,
                          final_epochs=final_epochs, baseline_epochs=baseline_epochs,
                          threads=threads, device=device,
                          latency_runs=latency_runs, max_latency_ratio=max_latency_ratio)
    raise typer.Exit(code=run_demo(options, console=console, errors=errors))


def _keys_engine() -> Engine:
    """Our database, migrated (key commands may run before the first `serve`)."""
    from service.db import create_engine_for

    settings = _settings()
    _migrated(settings)
    return create_engine_for(settings.database_url)


@keys_app.command("create")
def keys_create(tenant: Annotated[str, typer.Option(help="tenant name, created if new")]) -> None:
    """Create an API key for a tenant and print it (it is shown this once)."""
    from service.tenants import create_api_key

    engine = _keys_engine()
    try:
        new = create_api_key(engine, tenant)
    finally:
        engine.dispose()
    console.print(new.key, highlight=False, soft_wrap=True)
    errors.print(f"key {new.prefix}... created for tenant {new.tenant.name!r}; it is not "
                 "stored in clear, keep it now")


@keys_app.command("revoke")
def keys_revoke(key_or_prefix: Annotated[str, typer.Argument(help="the key or its prefix")]
                ) -> None:
    """Revoke a key (given whole or by the prefix shown when it was created)."""
    from service.tenants import revoke_api_key

    engine = _keys_engine()
    try:
        count = revoke_api_key(engine, key_or_prefix)
    except NotFoundError as error:
        errors.print(f"[red]{error}[/red]")
        raise typer.Exit(code=1) from error
    finally:
        engine.dispose()
    console.print(f"revoked {count} key(s)")


if __name__ == "__main__":
    app()
