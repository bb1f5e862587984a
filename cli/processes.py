"""Child processes: a free port, programs started with their output in a log file, stopping.

The demo starts the API and a worker with these; the test harness (``tests.support``)
and the benchmarks start theirs with the same code. Every child runs in a session of
its own, so a terminal's Ctrl-C reaches only the parent, which stops its children in
order, and Linux's autogroup scheduling gives each child its own share of the CPU.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

_PR_SET_PDEATHSIG = 1


class ChildExited(RuntimeError):
    """A child process ended while its parent waited for it to be ready."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    """Ask Linux to SIGTERM this child when the thread that started it ends (even by
    SIGKILL of the whole parent)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


@dataclass
class ChildProcess:
    """A started child: its name, its ``Popen`` and the file its output goes to."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would; no handler runs."""
        if self.alive():
            self.popen.kill()
        self.popen.wait()

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM and wait (SIGKILL after ``timeout`` seconds); returns the exit status."""
        if self.alive():
            self.popen.terminate()
        return self.wait_or_kill(timeout)

    def wait_or_kill(self, timeout: float) -> int:
        """Wait for the child to end; SIGKILL it after ``timeout`` seconds."""
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        return int(self.popen.returncode)

    def log_tail(self, lines: int = 15) -> str:
        """The last ``lines`` lines of the child's log ("" before it wrote any)."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_until(self, ready: Callable[[], bool], timeout: float, what: str,
                   interval: float = 0.2) -> None:
        """Poll ``ready`` until it is true.

        Raises:
            ChildExited: the child ended first (the message ends with its log's tail).
            TimeoutError: ``timeout`` seconds passed first.
        """
        deadline = time.monotonic() + timeout
        while not ready():
            if not self.alive():
                raise ChildExited(f"the {self.name} process exited with status "
                                  f"{self.returncode}; its log ends with:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the {self.name} process did not {what} within "
                                   f"{timeout:g} s; see {self.log_path}")
            time.sleep(interval)


def start_child(name: str, command: Sequence[str], *, environment: Mapping[str, str],
                log_path: Path, cwd: Path | None = None,
                die_with_parent: bool = False) -> ChildProcess:
    """Start ``command`` in a session of its own, its output appended to ``log_path``.

    Args:
        name: what messages call it ("api", "worker").
        command: the program and its arguments.
        environment: its whole environment.
        log_path: stdout and stderr go here, after a line naming the command.
        cwd: its working folder (default: ours).
        die_with_parent: SIGTERM it when the thread that started it ends (Linux only);
            only for children started by the main thread of a program.

    Returns:
        The running child.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a", encoding="utf-8") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n")
        log.flush()
        popen = subprocess.Popen(
            list(command), cwd=cwd, env=dict(environment), stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=(_die_with_parent if die_with_parent and sys.platform.startswith("linux")
                        else None))
    return ChildProcess(name, popen, log_path)


class ChildProcesses:
    """Children started one by one and stopped together, the newest first.

    Args:
        environment: every child's environment.
        log_dir: child ``name`` logs to ``<log_prefix><name>.log`` here.
        cwd: the children's working folder (default: ours).
        die_with_parent: see :func:`start_child`.
        log_prefix: put before each log's name.
    """

    def __init__(self, environment: Mapping[str, str], log_dir: Path, *,
                 cwd: Path | None = None, die_with_parent: bool = False,
                 log_prefix: str = "") -> None:
        self.environment = dict(environment)
        self.log_dir = log_dir
        self.cwd = cwd
        self.die_with_parent = die_with_parent
        self.log_prefix = log_prefix
        self.started: list[ChildProcess] = []

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{self.log_prefix}{name}.log"

    def start(self, name: str, command: Sequence[str]) -> ChildProcess:
        child = start_child(name, command, environment=self.environment,
                            log_path=self.log_path(name), cwd=self.cwd,
                            die_with_parent=self.die_with_parent)
        self.started.append(child)
        return child

    def exited(self) -> ChildProcess | None:
        """A child that has ended, if any."""
        return next((child for child in self.started if not child.alive()), None)

    def stop_all(self, timeout: float = 20.0) -> None:
        """SIGTERM every child (the newest first), wait, SIGKILL what is left."""
        for child in reversed(self.started):
            if child.alive():
                child.popen.terminate()
        deadline = time.monotonic() + timeout
        for child in self.started:
            child.wait_or_kill(max(0.1, deadline - time.monotonic()))
        self.started.clear()

    def kill_all(self) -> None:
        """SIGKILL every child still running."""
        for child in self.started:
            child.kill()
