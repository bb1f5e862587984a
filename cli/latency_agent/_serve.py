"""``topiary latency-agent``: options from the command line, the secret from the
environment (never an argument: other users can read a process's arguments)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import types
import typing
from collections.abc import Sequence
from pathlib import Path

from pydantic import SecretStr, ValidationError

from cli.latency_agent._app import create_app
from cli.latency_agent._settings import AgentSettings, SettingsError
from cli.latency_agent._store import ModelStore
from core.latency_agent import MIN_SECRET_LENGTH, SECRET_VARIABLE

__all__ = ["main", "serve"]

log = logging.getLogger("topiary.latency_agent")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="topiary latency-agent",
        description="Time ONNX models for Topiary's workers on this device, in ONNX Runtime "
                    "or OpenVINO (no torch needed). Workers name this agent in "
                    "TOPIARY_LATENCY_AGENTS and send the same secret.")
    parser.add_argument("--secret-env", default=SECRET_VARIABLE, metavar="VARIABLE",
                        help=f"environment variable holding the secret, at least "
                             f"{MIN_SECRET_LENGTH} characters (default {SECRET_VARIABLE})")
    for name, info in AgentSettings.model_fields.items():
        if name == "secret":
            continue
        flag = f"--{name.replace('_', '-')}"
        if info.annotation is bool:
            parser.add_argument(flag, action="store_true", help=info.description)
            continue
        choices = typing.get_args(info.annotation) \
            if typing.get_origin(info.annotation) is typing.Literal else None
        shown = "" if info.default is None else f" (default {info.default})"
        parser.add_argument(flag, type=_argument_type(info.annotation), default=None,
                            choices=choices, help=f"{info.description or name}{shown}")
    return parser


def _argument_type(annotation: object) -> type:
    """int, float, Path or str: the first such type in ``annotation``."""
    found = [annotation]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        found = list(typing.get_args(annotation))
    for candidate in found:
        if candidate in (int, float, Path):
            return typing.cast(type, candidate)
    return str


def settings_from(arguments: Sequence[str], environ: dict[str, str] | None = None
                  ) -> AgentSettings:
    """Parse ``arguments`` and read the secret.

    Raises:
        SettingsError: a bad option or a missing or short secret.
    """
    environ = dict(os.environ) if environ is None else environ
    parsed = vars(_parser().parse_args(list(arguments)))
    secret_variable = parsed.pop("secret_env")
    options = {name: value for name, value in parsed.items()
               if value is not None and value is not False}
    secret = environ.get(secret_variable, "")
    if len(secret) < MIN_SECRET_LENGTH:
        raise SettingsError(f"set {secret_variable} to a secret of at least "
                            f"{MIN_SECRET_LENGTH} characters (workers send the same one)")
    try:
        settings = AgentSettings(secret=SecretStr(secret), **options)
    except ValidationError as error:
        raise SettingsError("; ".join(f"--{'.'.join(map(str, item['loc'])).replace('_', '-')}"
                                      f": {item['msg']}" for item in error.errors())) from None
    settings.check_transport()
    settings.runtimes()
    return settings


def serve(settings: AgentSettings) -> None:
    """Serve until interrupted (uvicorn; at most ``max_connections`` at once)."""
    import uvicorn

    with tempfile.TemporaryDirectory(prefix="topiary-agent-") as scratch:
        store = ModelStore(settings.folder or Path(scratch), settings.max_models)
        app = create_app(settings, store)
        scheme = "https" if settings.tls_certfile else "http"
        print(f"latency agent on {scheme}://{settings.host}:{settings.port} "
              f"(runtimes: {', '.join(settings.runtimes())}; device {settings.device})",
              flush=True)
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning",
                    access_log=False, limit_concurrency=settings.max_connections,
                    timeout_keep_alive=5,
                    ssl_certfile=str(settings.tls_certfile) if settings.tls_certfile else None,
                    ssl_keyfile=str(settings.tls_keyfile) if settings.tls_keyfile else None)


def main(arguments: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2: refused to start)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        settings = settings_from(sys.argv[1:] if arguments is None else arguments)
    except SettingsError as error:
        print(f"refusing to start: {error}", file=sys.stderr)
        return 2
    serve(settings)
    return 0
