"""``topiary demo``: the embedded default, end to end, in one command.

Starts the API (``topiary serve`` on 127.0.0.1, a free port, ``TOPIARY_AUTH=none``)
and one worker as child processes on the SQLite files under ``TOPIARY_HOME``,
submits a job (ResNet-20 on the built-in digits at 16x16, at most half the
baseline CPU latency and FLOPs), follows it, downloads the checkpoint (sha256 verified),
stops the children, then reloads the checkpoint with ``load_pruned`` and
re-measures it beside the unpruned architecture (``cli.demo_measure``).

Children run in their own session (a terminal's Ctrl-C reaches only the demo,
which stops them in order) and die with the demo if it is killed outright.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any

from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from cli.client import ClientError, TopiaryClient
from cli.processes import ChildExited, ChildProcesses, free_port
from cli.view import JobWatcher, job_summary
from service.config import Settings, settings_problems

DEMO_JOB_NAME = "topiary-demo-resnet20-digits"
ACTIVE_STATUSES = ("queued", "preparing", "searching", "finalizing")
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130
READY_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 20.0


@dataclass(frozen=True)
class DemoOptions:
    """The demo job's budget and the worker's device.

    The defaults finish in a few minutes on 2 CPU cores; tests pass smaller ones.
    """

    n_trials: int = 12
    trial_epochs: int = 1
    final_epochs: int = 5
    baseline_epochs: int = 8
    threads: int | None = None
    device: str = "cpu"
    latency_runs: int = 30
    max_latency_ratio: float = 0.5
    poll_seconds: float = 1.0


def demo_spec(options: DemoOptions) -> dict[str, Any]:
    """The job the demo submits (a plain job spec, as a user would write it)."""
    return {
        "name": DEMO_JOB_NAME,
        "model": {"arch": "cifar_resnet20", "num_classes": 10, "weights": None},
        "dataset": {"name": "digits", "image_size": 16},
        "objective": {"mode": "constrained", "constraints": {
            "max_latency_ratio": options.max_latency_ratio,
            # Latency is measured, and on a busy machine a lucky reading can pass an
            # unpruned plan; FLOPs are counted, so this guard keeps the demo honest.
            "max_flops_ratio": options.max_latency_ratio}},
        "latency": {"device": options.device, "batch_size": 1, "warmup": 5,
                    "runs": options.latency_runs},
        "search": {"sampler": "tpe", "n_trials": options.n_trials, "space": "per_layer",
                   "allow_block_removal": True, "warm_start": ["attention", "pls"]},
        "fine_tune": {"trial_epochs": options.trial_epochs, "final_epochs": options.final_epochs,
                      "baseline_epochs": options.baseline_epochs, "distill": True},
        "seed": 0,
    }


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """A SIGTERM to the demo cleans up like Ctrl-C does."""
    def interrupt(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _ignoring_interrupts() -> Iterator[None]:
    """Cleanup must finish even if Ctrl-C is pressed again."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN), signal.signal(signal.SIGTERM,
                                                                            signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])


def _topiary(arguments: list[str]) -> list[str]:
    """The ``topiary`` command line with ``arguments``, run by this Python."""
    return [sys.executable, "-m", "cli.main", *arguments]


class DemoFailed(Exception):
    """The demo cannot go on; the message says why and what to look at."""


class Demo:
    """One run of the demo (see the module docstring).

    Args:
        options: the job's budget and the worker's device.
        console: where progress and results go.
        errors: where problems go.
    """

    def __init__(self, options: DemoOptions, console: Console, errors: Console) -> None:
        self.options = options
        self.console = console
        self.errors = errors
        self.settings = Settings()
        self.settings.ensure_directories()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environment = {**os.environ, "TOPIARY_HOME": str(self.settings.home),
                       "TOPIARY_AUTH": "none", "TOPIARY_HOST": "127.0.0.1",
                       "PYTHONUNBUFFERED": "1"}
        environment.pop("TOPIARY_PORT", None)
        # Started by this (main) thread, so they may die with it.
        self.children = ChildProcesses(environment, self.settings.home / "logs",
                                       die_with_parent=True, log_prefix="demo-")
        self.client = TopiaryClient(self.url, key="", timeout=30.0)
        self.job_id: str | None = None

    def run(self) -> int:
        """The whole demo; returns the exit status (0, 1, or 130 after Ctrl-C)."""
        try:
            with _sigterm_as_interrupt():
                return self._steps()
        except KeyboardInterrupt:
            with _ignoring_interrupts():
                self.errors.print("[yellow]interrupted[/yellow]: cancelling the demo job and "
                                  "stopping the API and the worker", highlight=False)
                self._cancel_quietly()
                self.children.stop_all(STOP_TIMEOUT_SECONDS)
            return EXIT_INTERRUPTED
        except (DemoFailed, ClientError) as error:
            self.errors.print(f"[red]demo failed:[/red] {escape(str(error))}", soft_wrap=True,
                              highlight=False)
            return EXIT_FAILED
        finally:
            with _ignoring_interrupts():
                self.children.stop_all(STOP_TIMEOUT_SECONDS)
                self.client.close()

    def _steps(self) -> int:
        self.console.print(f"Topiary demo: home {self.settings.home}, database "
                           f"{self.settings.database_url}", highlight=False)
        self._start_api()
        self._cancel_leftovers()
        worker_arguments = ["worker", "--device", self.options.device]
        if self.options.threads is not None:
            worker_arguments += ["--threads", str(self.options.threads)]
        worker = self.children.start("worker", _topiary(worker_arguments))
        self.console.print(f"worker started (pid {worker.pid}, device {self.options.device}, "
                           f"log {self.children.log_path('worker')})", highlight=False,
                           soft_wrap=True)
        job = self.client.submit(demo_spec(self.options))
        self.job_id = job["id"]
        self.console.print(f"submitted job {job['id']}: cifar_resnet20 on digits 16x16, "
                           f"max_latency_ratio and max_flops_ratio "
                           f"{self.options.max_latency_ratio:g}, "
                           f"{self.options.n_trials} trials",
                           highlight=False)
        job = self._follow(job["id"])
        self.console.print(job_summary(job))
        if job["status"] != "succeeded":
            error = job.get("error") or {}
            raise DemoFailed(f"job {job['id']} ended {job['status']}"
                             + (f" ({error.get('code')}): {error.get('message')}" if error else ""))
        checkpoint = self.client.download(job["id"], "safetensors",
                                          self.settings.home / "demo" / f"{job['id']}.safetensors")
        self.console.print(f"downloaded {checkpoint} (sha256 verified)", highlight=False,
                           soft_wrap=True)
        self.children.stop_all(STOP_TIMEOUT_SECONDS)
        self.console.print("API and worker stopped; re-measuring the checkpoint here")
        from cli.demo_measure import before_after_table, remeasure

        # Three times the worker's passes, on the threads its timings used: this is the
        # number the user reads beside the worker's.
        timed_on = (job.get("best") or {}).get("threads") or self.options.threads
        comparison = remeasure(checkpoint, job, latency_runs=3 * self.options.latency_runs,
                               threads=timed_on)
        self.console.print(before_after_table(comparison))
        return 0

    def _start_api(self) -> None:
        api = self.children.start("api", _topiary(["serve", "--host", "127.0.0.1",
                                                    "--port", str(self.port)]))
        self.console.print(f"API starting on {self.url} (pid {api.pid}, log "
                           f"{api.log_path})", highlight=False)
        try:
            api.wait_until(self.client.ready, READY_TIMEOUT_SECONDS, "become ready")
        except (ChildExited, TimeoutError) as error:
            raise DemoFailed(str(error)) from error

    def _cancel_leftovers(self) -> None:
        """Cancel demo jobs an interrupted earlier run left behind, so this one goes first."""
        for status in ACTIVE_STATUSES:
            for job in self.client.list_jobs(status=status, limit=200)["data"]:
                if job["name"] == DEMO_JOB_NAME:
                    self.client.cancel(job["id"])
                    self.console.print(f"cancelled job {job['id']} left {status} by an earlier "
                                       "demo", highlight=False)

    def _follow(self, job_id: str) -> dict[str, Any]:
        def on_update(job: dict[str, Any]) -> None:
            watcher.update(job)
            stopped = self.children.exited()
            if stopped is not None:
                raise DemoFailed(f"the {stopped.name} process exited while job {job_id} was "
                                 f"{job['status']}; its log ends with:\n"
                                 f"{stopped.log_tail()}")

        with JobWatcher(self.console) as watcher:
            return self.client.wait(job_id, poll=self.options.poll_seconds, on_update=on_update)

    def _cancel_quietly(self) -> None:
        if self.job_id is None:
            return
        try:
            with TopiaryClient(self.url, key="", timeout=5.0) as quick:
                quick.cancel(self.job_id)
        except ClientError:
            pass  # already ended, or the API is gone: the next demo cancels leftovers


def run_demo(options: DemoOptions, console: Console, errors: Console) -> int:
    """Run the demo; returns the process exit status."""
    try:
        demo = Demo(options, console, errors)
    except ValidationError as error:
        errors.print(f"[red]demo failed:[/red] bad settings: "
                     f"{escape(settings_problems(error))}", highlight=False)
        return EXIT_FAILED
    except OSError as error:
        errors.print(f"[red]demo failed:[/red] cannot prepare TOPIARY_HOME: {escape(str(error))}",
                     highlight=False)
        return EXIT_FAILED
    return demo.run()
