"""The ``topiary`` user commands that talk to a server: submit, status, trials, download,
cancel, upload.

They go through ``cli.client.TopiaryClient``; the server and key come from
``--server`` / ``--key`` or ``TOPIARY_SERVER`` / ``TOPIARY_KEY``. A user never sees
a traceback: every failure is one red line saying what was wrong and what to do,
with exit status 2 for bad local input (a missing or invalid spec file) and 1
for everything else (the server refused, is unreachable, or the job failed).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.markup import escape

from cli.client import DEFAULT_SERVER, ClientError, TopiaryClient
from cli.view import JobWatcher, job_summary, trials_table

console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)

LOCAL_INPUT_CODES = frozenset({"spec_file", "weights_file"})
EXIT_INTERRUPTED = 130

ServerOption = Annotated[str, typer.Option(
    "--server", envvar="TOPIARY_SERVER", help="the Topiary API's base URL")]
KeyOption = Annotated[str | None, typer.Option(
    "--key", envvar="TOPIARY_KEY", show_default=False,
    help="API key (from `topiary keys create`); not needed when the server runs with "
         "TOPIARY_AUTH=none")]
JobIdArgument = Annotated[str, typer.Argument(help="the job id (from `topiary submit`)")]
WatchOption = Annotated[bool, typer.Option("--watch", "-w", help="follow the job until it ends")]
PollOption = Annotated[float, typer.Option("--poll", min=0.1, help="seconds between reads")]


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``message`` as one red line on stderr; return the ``typer.Exit`` to raise."""
    errors.print(f"[red]error:[/red] {escape(message)}", highlight=False)
    return typer.Exit(code=code)


@contextmanager
def reported_errors() -> Iterator[None]:
    """Turn a ``ClientError`` into one red line and exit status 2 (local input) or 1."""
    try:
        yield
    except ClientError as error:
        raise fail(str(error), 2 if error.code in LOCAL_INPUT_CODES else 1) from error


def watch_job(client: TopiaryClient, job_id: str, poll: float) -> dict[str, Any]:
    """Follow a job until it ends (live view on a terminal), then print its summary.

    Raises:
        typer.Exit: 130 on Ctrl-C (the job itself keeps running).
    """
    try:
        with JobWatcher(console) as watcher:
            job = client.wait(job_id, poll=poll, on_update=watcher.update)
    except KeyboardInterrupt:
        errors.print(f"[yellow]stopped watching job {job_id}; it keeps running[/yellow] "
                     f"(`topiary status {job_id} --watch` to follow it again, "
                     f"`topiary cancel {job_id}` to stop it)", highlight=False)
        raise typer.Exit(code=EXIT_INTERRUPTED) from None
    console.print(job_summary(job))
    return job


def exit_for(job: dict[str, Any]) -> None:
    """Exit 1 with the server's reason unless the job succeeded."""
    if job["status"] == "succeeded":
        return
    if job["status"] == "cancelled":
        raise fail(f"job {job['id']} was cancelled")
    error = job.get("error") or {}
    raise fail(f"job {job['id']} failed ({error.get('code', 'unknown')}): "
               f"{error.get('message', 'no reason given')}")


def submit(spec: Annotated[Path, typer.Argument(help="job spec, YAML (see README, 'Job spec')",
                                                show_default=False)],
           watch: WatchOption = False, poll: PollOption = 2.0,
           server: ServerOption = DEFAULT_SERVER, key: KeyOption = None) -> None:
    """Submit a job spec; prints the new job's id (and follows it with --watch)."""
    with reported_errors(), TopiaryClient(server, key) as client:
        job = client.submit(spec)
        console.print(job["id"], highlight=False)
        errors.print(f"job {job['id']} ({job['name']}) queued; follow it with "
                     f"`topiary status {job['id']} --watch`", highlight=False)
        if watch:
            exit_for(watch_job(client, job["id"], poll))


def status(job_id: JobIdArgument, watch: WatchOption = False, poll: PollOption = 2.0,
           server: ServerOption = DEFAULT_SERVER, key: KeyOption = None) -> None:
    """Show a job: status, phase, trials, baseline and best metrics, downloads."""
    with reported_errors(), TopiaryClient(server, key) as client:
        if watch:
            exit_for(watch_job(client, job_id, poll))
        else:
            console.print(job_summary(client.get(job_id)))


def trials(job_id: JobIdArgument, pareto: Annotated[bool, typer.Option(
               "--pareto", help="only the trials on the accuracy / latency / memory front")]
           = False,
           server: ServerOption = DEFAULT_SERVER, key: KeyOption = None) -> None:
    """List a job's trials: state, feasibility, accuracy, latency, memory, FLOPs, params."""
    with reported_errors(), TopiaryClient(server, key) as client:
        rows = client.pareto(job_id) if pareto else client.trials(job_id)
        job = client.get(job_id) if rows else {}
    if not rows:
        errors.print(f"job {job_id} has no trials yet", highlight=False)
        return
    ended = job.get("status") not in ("queued", "preparing", "searching")
    console.print(trials_table(rows, (job.get("baseline") or {}).get("groups"), ended))


def download(job_id: JobIdArgument,
             checkpoint_format: Annotated[
                 Literal["safetensors", "onnx", "pt2", "torchscript"],
                 typer.Option("--format", "-f", help="which export")] = "safetensors",
             output: Annotated[str | None, typer.Option(
                 "--output", "-o", show_default=False,
                 help="file or folder to write; a path ending in / is a folder, created if "
                      "missing (default: the server's file name here)")] = None,
             server: ServerOption = DEFAULT_SERVER, key: KeyOption = None) -> None:
    """Download the best pruned checkpoint, verifying its sha256."""
    with reported_errors(), TopiaryClient(server, key) as client:
        path = client.download(job_id, checkpoint_format, output)
    console.print(str(path), highlight=False)
    errors.print(f"{checkpoint_format} checkpoint of job {job_id} saved, sha256 verified",
                 highlight=False)
    if checkpoint_format == "safetensors":
        errors.print("load it with: from models.export import load_pruned; "
                     f"model = load_pruned({str(path)!r})", highlight=False)


def cancel(job_id: JobIdArgument, server: ServerOption = DEFAULT_SERVER,
           key: KeyOption = None) -> None:
    """Cancel a job (its workers stop within one fine-tune step)."""
    with reported_errors(), TopiaryClient(server, key) as client:
        job = client.cancel(job_id)
    if job["status"] == "cancelled":
        console.print(f"job {job_id} cancelled", highlight=False)
    else:
        console.print(f"job {job_id}: cancel requested; its workers stop within one "
                      "training step", highlight=False)


def upload(weights: Annotated[Path, typer.Argument(
               help="the network's trained weights: a safetensors file or a torch.save-d "
                    "state dict", show_default=False)],
           server: ServerOption = DEFAULT_SERVER, key: KeyOption = None) -> None:
    """Upload a trained network's weights to start a job from; prints the upload's id."""
    with reported_errors(), TopiaryClient(server, key) as client:
        uploaded = client.upload_weights(weights)
    console.print(uploaded["id"], highlight=False)
    errors.print(f"{uploaded['filename']} uploaded ({uploaded['tensor_count']} tensors, sha256 "
                 f"{uploaded['sha256'][:12]}...); start a job from it with "
                 f"`model: {{weights: {uploaded['id']}}}` in its spec (no baseline is then "
                 "trained)", highlight=False)


COMMANDS = (submit, status, trials, download, cancel, upload)
